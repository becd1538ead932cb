//! Leases in the bucket: who may compact a partition, or apply retention, right now.
//!
//! A lease is the newest of `leases/NAME/EPOCH` objects, each made with a conditional create
//! (`If-None-Match: *`), so of two servers racing for the same epoch exactly one wins. A lease
//! whose holder died expires; the next taker creates the following epoch (again, only one can).
//! The holder checks its lease has time left before it commits, so an expired holder that wakes
//! up late does not commit over its successor.

use bytes::Bytes;

use super::client::{Bucket, BucketError};
use super::layout::{LEASES, LeaseBody};

/// A lease held by this server.
#[derive(Debug)]
pub struct Lease {
    dir: String,
    epoch: u64,
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
    let newest = bucket
        .list(&dir, None)?
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.parse::<u64>().ok())
        .max();
    let epoch = match newest {
        None => 0,
        Some(e) => {
            let body = match bucket.get(&epoch_key(&dir, e)) {
                Ok(b) => serde_json::from_slice::<LeaseBody>(&b).ok(),
                // Released between the listing and now: take the next epoch all the same.
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
    let body = LeaseBody {
        holder: holder.to_owned(),
        expires_nanos: now_nanos.saturating_add(duration_nanos),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    match bucket.create(&epoch_key(&dir, epoch), Bytes::from(json)) {
        Ok(()) => Ok(Some(Lease {
            dir,
            epoch,
            expires_nanos: body.expires_nanos,
        })),
        Err(BucketError::AlreadyExists(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives the lease back (deleting it and the expired epochs before it).
pub fn release(bucket: &Bucket, lease: Lease) {
    for e in (0..=lease.epoch).rev() {
        if let Err(err) = bucket.delete(&epoch_key(&lease.dir, e)) {
            tracing::warn!(lease = lease.dir, epoch = e, error = %err, "could not release lease; it expires by itself");
            break;
        }
        // Epochs before ours were expired leases; stop at the first gap cheaply.
        if e + 8 < lease.epoch {
            break;
        }
    }
}

fn epoch_key(dir: &str, epoch: u64) -> String {
    format!("{dir}/{epoch:010}")
}
