//! Which build IDs stored profiles reference, so that debuginfo nobody references any more can
//! expire with retention, and so that debuginfod is asked when a build ID is first seen.
//!
//! [`ReferencingStore`] wraps the profile store: every append is passed through unchanged, and the
//! first profile of each series per [`OFFER_EVERY`] is copied onto a bounded queue. A background
//! thread decodes its mappings and marks each build ID as referenced by the series' tenant
//! ([`DebugInfo::referenced`]: the files' modification time becomes "last referenced"). A series
//! is one process, whose binaries rarely change within the hour; retention works in days. With the
//! queue full nothing is copied and the series is offered again on its next append, so ingest
//! never waits here.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use kiln_symbolizer::BuildId;

use super::{DebugInfo, lock};
use crate::query::time::TimeRange;
use crate::store::{
    MergedProfile, NewProfile, ReadRequest, SharedStore, Store, StoreError, StoreStats,
    StoredProfile,
};
use crate::tenant::{TENANT_LABEL, Tenant};

/// How often one series' (or one tenant's build ID's) reference is refreshed.
const OFFER_EVERY: Duration = Duration::from_secs(3600);
/// Profiles waiting to be decoded.
const QUEUE: usize = 64;
/// Series and (tenant, build ID) pairs remembered; past this the memory is cleared (and each is
/// offered once more), which bounds it whatever the number of series.
const MAX_REMEMBERED: usize = 100_000;

struct Job {
    tenant: Tenant,
    pprof: Vec<u8>,
}

/// The queue from ingest to the reference thread, and what was offered recently.
pub struct Tracker {
    max_decompressed: usize,
    tx: SyncSender<Job>,
    rx: Mutex<Option<Receiver<Job>>>,
    /// Series (by label hash) offered within [`OFFER_EVERY`].
    offered: Mutex<HashMap<u64, Instant>>,
    /// Jobs queued or reserved: checked before a profile is copied, so that a full queue costs
    /// ingest nothing and leaves the series to be offered again.
    queued: Arc<AtomicUsize>,
}

impl Tracker {
    pub fn new(max_decompressed: usize) -> Tracker {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Tracker {
            max_decompressed,
            tx,
            rx: Mutex::new(Some(rx)),
            offered: Mutex::new(HashMap::new()),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(super) fn start(&self, debuginfo: Weak<DebugInfo>) {
        let Some(rx) = lock(&self.rx).take() else {
            return;
        };
        let max = self.max_decompressed;
        let queued = self.queued.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-debuginfo-refs".into())
            .spawn(move || run(debuginfo, rx, max, &queued));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the debuginfo reference tracker");
        }
    }

    /// Called with every batch about to be appended: queues what is due (cheap when nothing is).
    fn offer(&self, profiles: &[NewProfile]) -> Vec<Job> {
        let now = Instant::now();
        let mut offered = lock(&self.offered);
        let mut jobs = Vec::new();
        for p in profiles {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.labels.hash(&mut h);
            let key = h.finish();
            if offered
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < OFFER_EVERY)
            {
                continue;
            }
            if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                break;
            }
            if offered.len() >= MAX_REMEMBERED {
                offered.clear();
            }
            offered.insert(key, now);
            // Stored labels were validated at ingest; an unparsable tenant is the default's.
            let tenant = p
                .labels
                .get(TENANT_LABEL)
                .and_then(|t| Tenant::parse(t).ok())
                .unwrap_or_default();
            jobs.push(Job {
                tenant,
                pprof: p.pprof.clone(),
            });
        }
        jobs
    }

    /// Queues what [`Tracker::offer`] reserved room for; `stored` false releases it.
    fn send(&self, jobs: Vec<Job>, stored: bool) {
        for job in jobs {
            if !stored || self.tx.try_send(job).is_err() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

fn run(
    debuginfo: Weak<DebugInfo>,
    rx: Receiver<Job>,
    max_decompressed: usize,
    queued: &AtomicUsize,
) {
    let mut touched: HashMap<(Tenant, BuildId), Instant> = HashMap::new();
    while let Ok(job) = rx.recv() {
        queued.fetch_sub(1, Ordering::Relaxed);
        let Some(debuginfo) = debuginfo.upgrade() else {
            return;
        };
        let profile = match kiln_proto::codec::decode_profile(&job.pprof, max_decompressed) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "stored profile unreadable for debuginfo references");
                continue;
            }
        };
        let ids: HashSet<BuildId> = profile
            .mapping
            .iter()
            .filter_map(|m| BuildId::parse(profile.str(m.build_id)).ok())
            .collect();
        let now = Instant::now();
        for id in ids {
            let key = (job.tenant.clone(), id);
            if touched
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < OFFER_EVERY)
            {
                continue;
            }
            if touched.len() >= MAX_REMEMBERED {
                touched.clear();
            }
            debuginfo.referenced(&key.0, &key.1, SystemTime::now());
            touched.insert(key, now);
        }
    }
}

/// The profile store, with every append also offered to the [`Tracker`].
pub struct ReferencingStore {
    inner: SharedStore,
    debuginfo: Arc<DebugInfo>,
}

impl ReferencingStore {
    pub fn wrap(inner: SharedStore, debuginfo: Arc<DebugInfo>) -> SharedStore {
        Arc::new(ReferencingStore { inner, debuginfo })
    }
}

// Every method forwards to the wrapped store; only the appends also offer their profiles (both
// through `append_decompressed`, which the wrapped store's `append` equals with nothing given).
impl Store for ReferencingStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        self.append_decompressed(profiles, Vec::new())
    }
    fn append_decompressed(
        &self,
        profiles: Vec<NewProfile>,
        decompressed: Vec<Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let jobs = self.debuginfo.references.offer(&profiles);
        let result = self.inner.append_decompressed(profiles, decompressed);
        self.debuginfo.references.send(jobs, result.is_ok());
        result
    }
    fn label_names(
        &self,
        selector: &crate::query::selector::Selector,
        range: TimeRange,
    ) -> Vec<String> {
        self.inner.label_names(selector, range)
    }
    fn label_values(
        &self,
        name: &str,
        selector: &crate::query::selector::Selector,
        range: TimeRange,
    ) -> Vec<String> {
        self.inner.label_values(name, selector, range)
    }
    fn profile_types(
        &self,
        selector: &crate::query::selector::Selector,
        range: TimeRange,
    ) -> Vec<String> {
        self.inner.profile_types(selector, range)
    }
    fn time_bounds(&self, selector: &crate::query::selector::Selector) -> Option<(i64, i64)> {
        self.inner.time_bounds(selector)
    }
    fn for_each_series(
        &self,
        selector: &crate::query::selector::Selector,
        range: TimeRange,
        visit: &mut dyn FnMut(&crate::store::Labels, &[String]),
    ) {
        self.inner.for_each_series(selector, range, visit)
    }
    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        self.inner.read(req, visit)
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
    fn read_scope(&self, req: ReadRequest<'_>) -> Result<crate::store::ReadScope, StoreError> {
        self.inner.read_scope(req)
    }
    fn read_merged(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(MergedProfile),
    ) -> Result<usize, StoreError> {
        self.inner.read_merged(req, visit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn maintain(&self, now_nanos: i64) -> Result<(), StoreError> {
        self.inner.maintain(now_nanos)
    }
}
