//! Per-tenant ingest rate limits: a token bucket per tenant for request bytes (as sent) and one
//! for profiles (as stored, after splitting). Over the rate, ingest answers 429 with
//! `Retry-After`, so one team cannot take the whole server's write capacity.
//!
//! I/O-free: the clock is a parameter. A request bigger than a bucket's burst is admitted when the
//! bucket is full and leaves it in debt (a max-size body must always get through eventually). The
//! number of tracked tenants is bounded: when the map is full, buckets that have refilled (which
//! are the same as new ones) are dropped first, then the fullest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::tenant::Tenant;

/// Most tenants whose buckets are remembered.
pub const MAX_TRACKED_TENANTS: usize = 10_000;

/// A refill rate and the burst a bucket holds (both per second of rate; burst = 2 s of rate).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    fn new(per_sec: u64) -> Option<Rate> {
        (per_sec > 0).then_some(Rate {
            per_sec: per_sec as f64,
            burst: 2.0 * per_sec as f64,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// Takes `cost` if the bucket holds it (or is full), else says how long until it will.
    fn take(&mut self, rate: Rate, cost: f64, now: Duration) -> Result<(), Duration> {
        self.refill(rate, now);
        let need = cost.min(rate.burst);
        if self.tokens >= need {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / rate.per_sec))
        }
    }
}

/// What is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Bytes,
    Profiles,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Bytes => "bytes",
            Resource::Profiles => "profiles",
        }
    }
}

/// A request over its tenant's rate.
#[derive(Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub tenant: String,
    pub resource: Resource,
    pub limit: u64,
    pub retry_after: Duration,
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {:?} is over its ingest rate of {} {} per second; retry after {} s",
            self.tenant,
            self.limit,
            self.resource.name(),
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for RateLimited {}

impl RateLimited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl From<RateLimited> for crate::error::ApiError {
    fn from(e: RateLimited) -> Self {
        crate::error::ApiError::RateLimited {
            retry_after_secs: e.retry_after_secs(),
            msg: e.to_string(),
        }
    }
}

/// The limiter's clock: time since the first call (monotonic).
pub fn clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// One tenant's buckets.
#[derive(Debug, Default)]
struct Buckets {
    bytes: Option<Bucket>,
    profiles: Option<Bucket>,
}

/// The per-tenant limiter shared by every ingest path.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<Rate>,
    profiles: Option<Rate>,
    limits: (u64, u64),
    max_tenants: usize,
    tenants: Mutex<HashMap<String, Buckets>>,
}

impl RateLimiter {
    /// `bytes_per_sec` and `profiles_per_sec` of 0 turn that limit off.
    pub fn new(bytes_per_sec: u64, profiles_per_sec: u64) -> RateLimiter {
        Self::with_max_tenants(bytes_per_sec, profiles_per_sec, MAX_TRACKED_TENANTS)
    }

    fn with_max_tenants(bytes: u64, profiles: u64, max_tenants: usize) -> RateLimiter {
        RateLimiter {
            bytes: Rate::new(bytes),
            profiles: Rate::new(profiles),
            limits: (bytes, profiles),
            max_tenants: max_tenants.max(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `cost` of `resource` to `tenant` at `now` (any monotonic clock).
    pub fn take(
        &self,
        tenant: &Tenant,
        resource: Resource,
        cost: u64,
        now: Duration,
    ) -> Result<(), RateLimited> {
        let (rate, limit) = match resource {
            Resource::Bytes => (self.bytes, self.limits.0),
            Resource::Profiles => (self.profiles, self.limits.1),
        };
        let Some(rate) = rate else {
            return Ok(());
        };
        // A poisoned lock only means another request panicked mid-update: the buckets are
        // still plain numbers, so carry on with them.
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if !tenants.contains_key(tenant.as_str()) && tenants.len() >= self.max_tenants {
            self.evict(&mut tenants, now);
        }
        let buckets = tenants.entry(tenant.as_str().to_owned()).or_default();
        let bucket = match resource {
            Resource::Bytes => &mut buckets.bytes,
            Resource::Profiles => &mut buckets.profiles,
        };
        let bucket = bucket.get_or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        bucket
            .take(rate, cost as f64, now)
            .map_err(|retry_after| RateLimited {
                tenant: tenant.as_str().to_owned(),
                resource,
                limit,
                retry_after,
            })
    }

    /// Makes room for one tenant: drops every refilled bucket set, or else the fullest one.
    fn evict(&self, tenants: &mut HashMap<String, Buckets>, now: Duration) {
        let fullness = |b: &Buckets| {
            let fill = |bucket: Option<Bucket>, rate: Option<Rate>| match (bucket, rate) {
                (Some(mut bucket), Some(rate)) => {
                    bucket.refill(rate, now);
                    bucket.tokens / rate.burst
                }
                _ => 1.0,
            };
            fill(b.bytes, self.bytes).min(fill(b.profiles, self.profiles))
        };
        tenants.retain(|_, b| fullness(b) < 1.0);
        if tenants.len() >= self.max_tenants
            && let Some(fullest) = tenants
                .iter()
                .max_by(|a, b| fullness(a.1).total_cmp(&fullness(b.1)))
                .map(|(k, _)| k.clone())
        {
            tenants.remove(&fullest);
        }
    }

    /// How many tenants are tracked now.
    pub fn tracked(&self) -> usize {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> Tenant {
        Tenant::parse(id).unwrap()
    }
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(100, 0);
        let a = t("a");
        // Burst of 2 s of rate, then refused with the time until the cost is back.
        l.take(&a, Resource::Bytes, 150, S(10)).unwrap();
        l.take(&a, Resource::Bytes, 50, S(10)).unwrap();
        let err = l.take(&a, Resource::Bytes, 50, S(10)).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_millis(500));
        assert_eq!(err.retry_after_secs(), 1);
        assert!(err.to_string().contains("100 bytes per second"), "{err}");
        l.take(&a, Resource::Bytes, 50, S(10) + Duration::from_millis(500))
            .unwrap();
        // Profiles are not limited here; other tenants have their own buckets.
        l.take(&a, Resource::Profiles, 1 << 40, S(10)).unwrap();
        l.take(&t("b"), Resource::Bytes, 200, S(10)).unwrap();
    }

    #[test]
    fn oversized_request_passes_when_full_then_waits() {
        let l = RateLimiter::new(0, 10);
        let a = t("a");
        l.take(&a, Resource::Profiles, 1000, S(0)).unwrap();
        let err = l.take(&a, Resource::Profiles, 1, S(1)).unwrap_err();
        // A full bucket (20) paid 1000: -980, refilled to -970 a second later; 1 token needs
        // 971 more at 10/s: 97.1 s, rounded up.
        assert_eq!(err.retry_after_secs(), 98);
    }

    #[test]
    fn tracked_tenants_bounded() {
        let l = RateLimiter::with_max_tenants(10, 0, 3);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            l.take(&t(id), Resource::Bytes, 20 - i as u64, S(0))
                .unwrap();
        }
        assert_eq!(l.tracked(), 3);
        // Full map, nobody refilled: the fullest ("c") goes; "a" keeps its empty bucket.
        l.take(&t("d"), Resource::Bytes, 1, S(0)).unwrap();
        assert_eq!(l.tracked(), 3);
        assert!(l.take(&t("a"), Resource::Bytes, 1, S(0)).is_err());
        // Later every bucket has refilled: all are dropped for the newcomer.
        l.take(&t("e"), Resource::Bytes, 1, S(100)).unwrap();
        assert_eq!(l.tracked(), 1);
    }
}
