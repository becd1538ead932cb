//! Durable profile storage behind the [`Store`] trait: what ingest writes to and queries read from.
//!
//! [`LocalStore`] is the embedded engine: a write-ahead log of CRC-framed segments (fsync'd before a
//! push is acknowledged) whose sealed segments are flushed in the background into immutable,
//! hour-partitioned, columnar blocks with deduplicated symbols and stacks ([`block`]); blocks of
//! an open hour are compacted together, those of a day's closed hours rolled up into one block of
//! the day, and blocks are deleted by age and total size (retention).
//! [`BucketStore`] runs the same engine as a head in front of S3-compatible object storage, for
//! several servers sharing one bucket ([`bucket`]).
//!
//! Merged reads ([`Store::read_merged`], what flame graphs and top tables use) read pre-merged data
//! where it answers the query exactly: the head keeps its profiles' values summed per series,
//! per 10 minutes and per deduplicated stack as they arrive (`headagg`), and each block carries
//! each series' rows summed per stack (`block`'s totals section) — a day's rollup also per hour,
//! so a range that starts or ends inside the day reads the sums of the hours it covers whole.
//! Anything else — the profiles of an hour a range cuts through, blocks written before totals
//! existed, sample-label filters (which use [`Store::read`]) — is read exactly, profile by
//! profile.
//!
//! Damage on disk costs only what is damaged: WAL replay skips a bad record and carries on at the
//! next good one ([`segment`]); a block section that fails its CRC hides only the series (or, for
//! the shared tables, the block) it holds, counted in [`StoreStats`]; [`check`] reports it all
//! offline (`kiln check`).

pub mod block;
pub mod bucket;
pub mod check;
mod headagg;
mod local;
mod segment;
pub mod stacks;

use std::sync::Arc;

use kiln_proto::pprof::Profile;

use crate::query::selector::Selector;
use crate::query::time::TimeRange;

pub use bucket::BucketStore;
pub use local::LocalStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem is full or the quota is exhausted (ENOSPC, EDQUOT): the append was rolled
    /// back and the store goes on once space returns.
    #[error("no space left for the store at {path}: {source}")]
    DiskFull {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("record too large to store ({0} bytes)")]
    RecordTooLarge(usize),
    #[error("bad block {path}: {reason}")]
    Block { path: String, reason: String },
    /// The object store failed or answered something unusable (see [`bucket`]).
    #[error("object storage: {0}")]
    Bucket(String),
    /// A read needs more bucket blocks than the local cache may hold.
    #[error("{0}")]
    CacheTooSmall(String),
}

impl StoreError {
    /// The error for a failed operation on `path`: [`StoreError::DiskFull`] when the disk or quota
    /// is full, else [`StoreError::Io`].
    pub fn io(path: &std::path::Path, source: std::io::Error) -> StoreError {
        let path = path.display().to_string();
        match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::DiskFull { path, source }
            }
            _ => StoreError::Io { path, source },
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// `map_err` adapter for [`StoreError::io`].
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::io(path, source)
}

/// A series' label set: sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Sorts by name; for a duplicated name the last value wins (callers validate before this).
    pub fn new(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Labels(pairs)
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One profile to append.
#[derive(Clone, Debug)]
pub struct NewProfile {
    pub labels: Labels,
    pub time_nanos: i64,
    /// `type:unit` for each sample type, so queries can filter without decoding.
    pub profile_types: Vec<String>,
    /// The encoded pprof `Profile`, uncompressed or gzipped (a gzipped one is stored as is).
    pub pprof: Vec<u8>,
}

/// One profile read back.
#[derive(Clone, Debug)]
pub struct StoredProfile {
    pub labels: Arc<Labels>,
    pub time_nanos: i64,
    pub profile: Profile,
}

/// Stored profiles merged by the store for one profile type, standing for `profiles` stored
/// profiles. Merging it is equivalent to merging each.
#[derive(Clone, Debug)]
pub struct MergedProfile {
    pub data: Merged,
    pub profiles: usize,
}

/// The forms a merged read hands over.
#[derive(Clone, Debug)]
pub enum Merged {
    /// A pprof holding (at least) the read's sample type.
    Profile(Profile),
    /// Sums over a table's stack trie (block or head): what a flame graph merges fastest.
    Stacks(stacks::MergedStacks),
}

impl MergedProfile {
    /// One stored (or merged) pprof standing for `profiles` profiles.
    pub fn pprof(profile: Profile, profiles: usize) -> MergedProfile {
        MergedProfile {
            data: Merged::Profile(profile),
            profiles,
        }
    }

    /// As a pprof (rebuilt for stack sums): for callers that need one.
    pub fn to_profile(&self) -> std::borrow::Cow<'_, Profile> {
        match &self.data {
            Merged::Profile(p) => std::borrow::Cow::Borrowed(p),
            Merged::Stacks(s) => std::borrow::Cow::Owned(s.to_profile()),
        }
    }

    /// Decoded bytes this stands for (what a query's read budget counts).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Merged::Profile(p) => prost::Message::encoded_len(p),
            Merged::Stacks(s) => s.bytes(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes on disk: WAL segments plus blocks.
    pub bytes: u64,
    /// WAL segment files (the head not yet flushed into blocks).
    pub segments: u64,
    /// Immutable blocks.
    pub blocks: u64,
    pub series: u64,
    /// Readable profiles (those in damaged block sections are not counted).
    pub profiles: u64,
    /// Blocks found damaged, whole or in part, since the store was opened.
    pub quarantined_blocks: u64,
    /// Bytes of damaged blocks still on disk (in place or set aside in `blocks/quarantine/`).
    pub quarantined_bytes: u64,
    /// Profiles found unreadable since the store was opened: those of damaged block sections, plus
    /// one per damaged WAL record (a damaged stretch holds at least one).
    pub profiles_lost: u64,
    /// WAL bytes skipped as damaged since the store was opened.
    pub wal_damaged_bytes: u64,
    /// Blocks flushed but not yet in the object store (0 on local disk).
    pub upload_backlog_blocks: u64,
    /// Their bytes.
    pub upload_backlog_bytes: u64,
    /// Object store requests that failed since the store was opened.
    pub bucket_request_errors: u64,
    /// Bytes of decoded block data kept for merged reads (bounded by
    /// `local::DECODED_CACHE_BYTES`).
    pub decoded_cache_bytes: u64,
    /// Object store requests made since the store was opened, by kind (0 on local disk).
    pub bucket_requests: bucket::client::RequestCounts,
}

/// What a read would touch in one tier of the store: the figures of Pyroscope's `AnalyzeQuery`
/// query scopes (see [`Store::read_scope`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeStats {
    /// Files holding a selected profile: blocks, or WAL segments for the head.
    pub blocks: u64,
    /// Distinct series (label sets) read.
    pub series: u64,
    /// Stored profiles the read decodes.
    pub profiles: u64,
    /// Their samples (pprof samples; block rows).
    pub samples: u64,
    /// Index bytes read from disk: block footers (the head's index is in memory: 0).
    pub index_bytes: u64,
    /// Compressed bytes of the profiles themselves: block series sections, WAL records.
    pub profile_bytes: u64,
    /// Compressed bytes of shared symbol and stack tables (blocks only: a WAL record is a whole
    /// pprof, its symbols are in `profile_bytes`).
    pub symbol_bytes: u64,
}

/// [`ScopeStats`] of the head (WAL, short term) and of the blocks (long term).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadScope {
    pub head: ScopeStats,
    pub blocks: ScopeStats,
}

/// Which profiles a read wants.
#[derive(Clone, Copy, Debug)]
pub struct ReadRequest<'a> {
    pub selector: &'a Selector,
    pub range: TimeRange,
    /// Only profiles with this `type:unit` sample type; `None` for all.
    pub profile_type: Option<&'a str>,
    /// When set and raised (by the query: its client went away or its budget is spent), the read
    /// ends early, between series and between profiles, and returns what it visited so far.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl ReadRequest<'_> {
    /// True once the reader asked the read to end early.
    pub fn stopped(&self) -> bool {
        self.stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Storage for profiles. Methods block (disk I/O): call them from `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Durably appends all of `profiles` (on disk before this returns `Ok`), or none of them.
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError>;
    /// [`Store::append`] from a caller that has already inflated the profiles:
    /// `decompressed[i]`, when there, is `profiles[i].pprof` decompressed (missing or `None`
    /// where it is not). An engine that reads every appended profile (the local head's
    /// aggregate) reads that instead of inflating it a second time. The default ignores it.
    fn append_decompressed(
        &self,
        profiles: Vec<NewProfile>,
        decompressed: Vec<Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let _ = decompressed;
        self.append(profiles)
    }
    /// Sorted label names of series with a profile in range.
    fn label_names(&self, selector: &Selector, range: TimeRange) -> Vec<String>;
    /// Sorted values of label `name` among selected series with a profile in range.
    fn label_values(&self, name: &str, selector: &Selector, range: TimeRange) -> Vec<String>;
    /// Sorted `type:unit` profile types present among selected profiles in range.
    fn profile_types(&self, selector: &Selector, range: TimeRange) -> Vec<String>;
    /// Calls `visit` with each selected series that has a profile in range and the sorted
    /// `type:unit` types of its profiles in range: what label and profile-type listings need to
    /// evaluate Pyroscope's profile-type labels (see [`crate::query::profile_type`]). A series may
    /// be visited more than once (e.g. once per block holding it). The default decodes every
    /// selected profile; an engine with a series index overrides it.
    fn for_each_series(
        &self,
        selector: &Selector,
        range: TimeRange,
        visit: &mut dyn FnMut(&Labels, &[String]),
    ) {
        let mut series: std::collections::BTreeMap<
            Arc<Labels>,
            std::collections::BTreeSet<String>,
        > = Default::default();
        let read = self.read(
            ReadRequest {
                selector,
                range,
                profile_type: None,
                stop: None,
            },
            &mut |p| {
                let types = series.entry(p.labels.clone()).or_default();
                for st in &p.profile.sample_type {
                    types.insert(format!(
                        "{}:{}",
                        p.profile.str(st.r#type),
                        p.profile.str(st.unit)
                    ));
                }
            },
        );
        if let Err(e) = read {
            tracing::warn!(error = %e, "listing series failed part way");
        }
        for (labels, types) in series {
            visit(&labels, &types.into_iter().collect::<Vec<_>>());
        }
    }
    /// The times (ns) of the oldest and newest selected profiles, or `None` when none is stored:
    /// what Pyroscope's `GetProfileStats` reports. The default reads every selected profile; an
    /// engine with per-series time spans overrides it.
    fn time_bounds(&self, selector: &Selector) -> Option<(i64, i64)> {
        let mut bounds: Option<(i64, i64)> = None;
        let read = self.read(
            ReadRequest {
                selector,
                range: TimeRange::ALL,
                profile_type: None,
                stop: None,
            },
            &mut |p| {
                let (lo, hi) = bounds.get_or_insert((p.time_nanos, p.time_nanos));
                *lo = (*lo).min(p.time_nanos);
                *hi = (*hi).max(p.time_nanos);
            },
        );
        if let Err(e) = read {
            tracing::warn!(error = %e, "reading profile times failed part way");
        }
        bounds
    }
    /// Calls `visit` for every selected profile; returns how many were visited.
    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError>;
    fn stats(&self) -> StoreStats;
    /// What [`Store::read`] of `req` would touch, without reading it where the engine has an
    /// index: Pyroscope's `AnalyzeQuery`. Stops early (partial figures) when `req.stop` is raised.
    /// The default reads every selected profile and counts it as head.
    fn read_scope(&self, req: ReadRequest<'_>) -> Result<ReadScope, StoreError> {
        let mut head = ScopeStats::default();
        let mut series = std::collections::HashSet::new();
        self.read(req, &mut |p| {
            head.profiles += 1;
            head.samples += p.profile.sample.len() as u64;
            head.profile_bytes += prost::Message::encoded_len(&p.profile) as u64;
            series.insert(p.labels);
        })?;
        head.series = series.len() as u64;
        Ok(ReadScope {
            head,
            blocks: ScopeStats::default(),
        })
    }
    /// Like [`Store::read`] for flame graphs and tables: calls `visit` with the selection already
    /// merged where the store can do it cheaply (the local engine sums each block's rows by stack
    /// id, so the caller resolves every stack once per block instead of once per profile). Sample
    /// labels are not kept. Returns how many stored profiles were covered. The default passes
    /// each profile through unmerged.
    fn read_merged(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(MergedProfile),
    ) -> Result<usize, StoreError> {
        self.read(req, &mut |p| visit(MergedProfile::pprof(p.profile, 1)))
    }
    /// Moves everything appended so far out of the head into long-term storage (blocks) and
    /// truncates the WAL behind it. Implementations without a head do nothing. The engine also
    /// does this by itself in the background; this is for tests, benchmarks and shutdown.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Runs compaction and retention (as of `now_nanos`) now, as the background thread would.
    fn maintain(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _ = now_nanos;
        Ok(())
    }
}

pub type SharedStore = Arc<dyn Store>;
