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
//!
//! Work that may outlive one lease (a merge of big blocks) runs inside [`hold`]: a thread renews
//! the lease every third of its duration, so it stays held however long the work takes, and the
//! work polls [`Held::lost`] to stop promptly once a renewal finds another server took over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

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
    // The epoch we renewed from is superseded: delete it, so a lease renewed for hours leaves
    // one object, not one per renewal. A taker that listed it and finds it gone tries the next
    // number, which is ours: its create fails, as it must.
    let previous = epoch_key(&lease.dir, lease.epoch);
    lease.epoch = next;
    lease.expires_nanos = expires;
    if let Err(err) = bucket.delete(&previous) {
        tracing::debug!(lease = lease.dir, error = %err, "could not delete a renewed lease epoch; release deletes it");
    }
    Ok(true)
}

/// A lease kept alive by [`hold`] while work runs.
pub struct Held<'a> {
    bucket: &'a Bucket,
    lease: Mutex<&'a mut Lease>,
    lost: AtomicBool,
    now: fn() -> i64,
}

impl Held<'_> {
    /// True once a renewal found the lease taken over (or expired): the work must stop and commit
    /// nothing.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Renews the lease right now: the proof of ownership right before a commit, which also
    /// leaves a whole lease for it. `Ok(false)` if the lease is lost.
    pub fn renew_now(&self) -> Result<bool, BucketError> {
        if self.lost() {
            return Ok(false);
        }
        let mut lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        let held = renew(self.bucket, &mut lease, (self.now)())?;
        if !held {
            self.lost.store(true, Ordering::Release);
        }
        Ok(held)
    }

    /// When the lease runs out unless renewed.
    pub fn expires_nanos(&self) -> i64 {
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expires_nanos
    }
}

/// Runs `work` while a thread renews `lease` every third of its duration (so two renewals can
/// fail to an object-store hiccup before it runs out). Once a renewal finds the lease lost, the
/// thread stops and [`Held::lost`] turns true; `work` polls it between steps. `now` is the clock
/// the lease's expiry is measured with.
pub fn hold<R>(
    bucket: &Bucket,
    lease: &mut Lease,
    now: fn() -> i64,
    work: impl FnOnce(&Held<'_>) -> R,
) -> R {
    let every = Duration::from_nanos(u64::try_from(lease.duration_nanos / 3).unwrap_or(1).max(1));
    let name = lease.dir.clone();
    let held = Held {
        bucket,
        lease: Mutex::new(lease),
        lost: AtomicBool::new(false),
        now,
    };
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let (held, name) = (&held, &name);
        let renewer = std::thread::Builder::new()
            .name("kiln-lease-renew".into())
            .spawn_scoped(scope, move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    match held.renew_now() {
                        Ok(true) => tracing::debug!(lease = name, "renewed lease"),
                        Ok(false) => {
                            tracing::warn!(lease = name, "lost the lease while working (another server took it over, or it ran out); the work stops uncommitted");
                            break;
                        }
                        // The lease is still ours until it runs out; the next tick retries, and
                        // `renew` reports it lost once it has.
                        Err(err) => {
                            tracing::warn!(lease = name, error = %err, "could not renew lease; retrying")
                        }
                    }
                }
            });
        if let Err(err) = renewer {
            // Without the thread the work still cannot commit unowned (it renews before any
            // commit); it only risks losing the lease if it is long.
            tracing::warn!(lease = name, error = %err, "could not start the lease renewal thread");
        }
        let result = work(held);
        drop(stop);
        result
    })
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

    fn wall_clock() -> i64 {
        crate::query::time::now_nanos()
    }

    #[test]
    fn a_held_lease_outlives_its_duration_and_a_takeover_is_noticed() {
        let b = bucket();
        // Leases of 300 ms, renewed every 100 ms, held for a second.
        let ms = 1_000_000;
        let start = wall_clock();
        let mut a = acquire(&b, "x", "a", start, 300 * ms).unwrap().unwrap();
        let first = a.epoch;
        hold(&b, &mut a, wall_clock, |held| {
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(100));
                assert!(!held.lost(), "renewed in time");
                let other = acquire(&b, "x", "b", wall_clock(), 300 * ms).unwrap();
                assert!(other.is_none(), "still held by a");
            }
            assert!(
                held.expires_nanos() > start + 1_000 * ms,
                "kept past 3 durations"
            );
            // Another server forces a newer epoch (an operator, or a clock far ahead).
            let newest = newest(&b, "leases/x").unwrap().unwrap();
            let body = serde_json::to_vec(&LeaseBody {
                holder: "b".into(),
                expires_nanos: i64::MAX,
            })
            .unwrap();
            b.create(&epoch_key("leases/x", newest + 5), Bytes::from(body))
                .unwrap();
            for _ in 0..400 {
                if held.lost() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(held.lost(), "the next renewal notices the takeover");
            assert!(!held.renew_now().unwrap(), "and no commit check passes");
        });
        assert!(a.epoch > first, "renewed several times");
        assert!(
            b.list("leases/x", None).unwrap().len() <= 3,
            "renewals delete the epochs they supersede"
        );
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
