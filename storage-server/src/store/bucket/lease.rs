//! Leases in the bucket: who may compact a partition, or apply retention, right now.
//!
//! A lease is the newest of `leases/NAME/EPOCH` objects, each made with a conditional create
//! (`If-None-Match: *`), so of two servers racing for the same epoch exactly one wins. A lease
//! whose holder died expires; the next taker creates the following epoch (again, only one can).
//!
//! Long work renews its lease ([`renew`]) by creating the next epoch itself: that create fails if
//! another server took over after the lease ran out, so a holder that was stalled (a long merge, a
//! paused VM) learns it lost the lease *before* it commits, and drops its work instead of
//! committing over its successor's. Epoch numbers never go back: a release writes a `released`
//! epoch rather than deleting the newest one, and [`renew`] also checks no newer epoch exists (old
//! epochs are deleted, so a create alone could succeed on a reused number).

use bytes::Bytes;

use super::client::{Bucket, BucketError};
use super::layout::{LEASES, LeaseBody};

/// Older epochs a release deletes at most (the rest were deleted by earlier releases).
const MAX_EPOCHS_DELETED: u64 = 8;
/// The holder name of a released epoch.
const RELEASED: &str = "-released-";

/// A lease held by this server.
#[derive(Debug)]
pub struct Lease {
    dir: String,
    epoch: u64,
    holder: String,
    duration_nanos: i64,
    pub expires_nanos: i64,
}

impl Lease {
    /// True while the lease has at least `margin_nanos` left.
    pub fn valid(&self, now_nanos: i64, margin_nanos: i64) -> bool {
        now_nanos.saturating_add(margin_nanos) < self.expires_nanos
    }
}

/// Takes lease `name` for `duration_nanos` unless another server holds it: `Ok(None)` then.
pub fn acquire(
    bucket: &Bucket,
    name: &str,
    holder: &str,
    now_nanos: i64,
    duration_nanos: i64,
) -> Result<Option<Lease>, BucketError> {
    let dir = format!("{LEASES}/{name}");
    let epoch = match newest(bucket, &dir)? {
        None => 0,
        Some(e) => {
            let body = match bucket.get(&epoch_key(&dir, e)) {
                Ok(b) => serde_json::from_slice::<LeaseBody>(&b).ok(),
                // Deleted between the listing and now (only older epochs are): take the next one.
                Err(BucketError::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            if let Some(b) = body
                && b.expires_nanos > now_nanos
                && b.holder != holder
            {
                return Ok(None);
            }
            e + 1
        }
    };
    let mut lease = Lease {
        dir,
        epoch,
        holder: holder.to_owned(),
        duration_nanos,
        expires_nanos: now_nanos.saturating_add(duration_nanos),
    };
    match create_epoch(bucket, &lease, epoch, &lease.holder, lease.expires_nanos) {
        Ok(()) => Ok(Some(lease)),
        Err(BucketError::AlreadyExists(_)) => Ok(None),
        Err(e) => {
            // The create may have landed before the error: a later release cleans it up.
            lease.expires_nanos = 0;
            Err(e)
        }
    }
}

/// Extends `lease` to `now + duration`, proving it is still held: `Ok(false)` if another server
/// took it over (then the caller must drop its work uncommitted).
pub fn renew(bucket: &Bucket, lease: &mut Lease, now_nanos: i64) -> Result<bool, BucketError> {
    if !lease.valid(now_nanos, 0) {
        // Expired: someone may have taken it and be done already (and released it).
        return Ok(false);
    }
    let next = lease.epoch + 1;
    let expires = now_nanos.saturating_add(lease.duration_nanos);
    match create_epoch(bucket, lease, next, &lease.holder, expires) {
        Ok(()) => {}
        Err(BucketError::AlreadyExists(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    // Ours only if nothing newer exists (our epoch number may have been freed by a deletion).
    if newest(bucket, &lease.dir)? != Some(next) {
        return Ok(false);
    }
    lease.epoch = next;
    lease.expires_nanos = expires;
    Ok(true)
}

/// Gives the lease back: writes a released epoch after ours (so the numbering keeps going up) and
/// deletes the epochs before it.
pub fn release(bucket: &Bucket, lease: Lease) {
    match create_epoch(bucket, &lease, lease.epoch + 1, RELEASED, 0) {
        // Taken over already: the newer epochs are not ours to touch.
        Ok(()) | Err(BucketError::AlreadyExists(_)) => {}
        Err(err) => {
            tracing::warn!(lease = lease.dir, error = %err, "could not release lease; it expires by itself");
            return;
        }
    }
    let oldest = lease.epoch.saturating_sub(MAX_EPOCHS_DELETED);
    for e in (oldest..=lease.epoch).rev() {
        if let Err(err) = bucket.delete(&epoch_key(&lease.dir, e)) {
            tracing::warn!(lease = lease.dir, epoch = e, error = %err, "could not delete an old lease epoch");
            break;
        }
    }
}

fn newest(bucket: &Bucket, dir: &str) -> Result<Option<u64>, BucketError> {
    Ok(bucket
        .list(dir, None)?
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.parse::<u64>().ok())
        .max())
}

fn create_epoch(
    bucket: &Bucket,
    lease: &Lease,
    epoch: u64,
    holder: &str,
    expires_nanos: i64,
) -> Result<(), BucketError> {
    let body = LeaseBody {
        holder: holder.to_owned(),
        expires_nanos,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    bucket.create(&epoch_key(&lease.dir, epoch), Bytes::from(json))
}

fn epoch_key(dir: &str, epoch: u64) -> String {
    format!("{dir}/{epoch:010}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn bucket() -> Bucket {
        Bucket::new(Arc::new(object_store::memory::InMemory::new()), "p").unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_a_dead_holders_lease_expires() {
        let b = bucket();
        let a = acquire(&b, "x", "a", 0, 10).unwrap().unwrap();
        assert!(acquire(&b, "x", "b", 5, 10).unwrap().is_none(), "held by a");
        let taken = acquire(&b, "x", "b", 11, 10).unwrap().unwrap();
        assert!(taken.epoch > a.epoch);
    }

    #[test]
    fn a_stalled_holder_cannot_renew_after_a_takeover() {
        let b = bucket();
        let mut a = acquire(&b, "x", "a", 0, 10).unwrap().unwrap();
        assert!(renew(&b, &mut a, 5).unwrap(), "renewed in time");
        assert_eq!(a.expires_nanos, 15);
        // a stalls past its lease; b takes over, finishes and releases.
        let taken = acquire(&b, "x", "b", 16, 10).unwrap().unwrap();
        // a wakes up with a clock that says it still has time (a jump): the create tells.
        let mut stale = Lease {
            expires_nanos: i64::MAX,
            ..a
        };
        assert!(
            !renew(&b, &mut stale, 17).unwrap(),
            "b holds the next epoch"
        );
        release(&b, taken);
        // Even after b's release deleted the older epochs, a cannot get back in.
        assert!(!renew(&b, &mut stale, 18).unwrap(), "a newer epoch exists");
        // And the lease is free for anyone.
        assert!(acquire(&b, "x", "c", 19, 10).unwrap().is_some());
    }

    #[test]
    fn release_frees_the_lease_and_epochs_only_go_up() {
        let b = bucket();
        let a = acquire(&b, "x", "a", 0, 10).unwrap().unwrap();
        let first = a.epoch;
        release(&b, a);
        let c = acquire(&b, "x", "c", 1, 10).unwrap().unwrap();
        assert!(c.epoch > first + 1, "after the released marker");
        assert_eq!(
            b.list("leases/x", None).unwrap().len(),
            2,
            "old epochs deleted"
        );
    }
}
