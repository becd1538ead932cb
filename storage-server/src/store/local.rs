//! [`LocalStore`]: the embedded engine — a write-ahead log (the head) in front of immutable blocks.
//!
//! - **WAL / head.** Appends go to the active segment and are fsync'd before `append` returns, so
//!   an acknowledged profile survives `kill -9`. The head's in-memory index holds only where each
//!   record lives (not the profile), and the head is bounded: the active segment is sealed once it
//!   reaches `max_segment_bytes` or `max_segment_age_secs`, and sealed segments are flushed.
//! - **Flush.** Sealed segments are turned into one block per hour of profile time (see
//!   [`super::block`]), each written atomically; only then are the segments deleted.
//! - **Retention** deletes blocks older than `retention_age_secs`, then the oldest blocks while
//!   everything on disk exceeds `retention_bytes`. **Compaction** then merges the blocks of an
//!   hour still open into one, and rolls the blocks of a day's closed hours (half an hour after
//!   each ends, [`ROLLUP_AFTER_NANOS`]) up into one block of the day that also carries per-hour
//!   sums, so a query over days reads a block per day, and whole hours of it from their sums
//!   (`Inner::add_series`). A background thread runs flush, retention and compaction every
//!   `maintenance_interval_secs`.
//! - **Start-up** rebuilds the head index from the segments (skipping damaged records, cutting a
//!   torn tail), loads block footers, and finishes or undoes what a crash interrupted: blocks
//!   replaced by a compaction are deleted, a partial flush is discarded and its segments replayed,
//!   segments already covered by a complete flush are deleted.
//! - **Damage** to a block is quarantined: a block whose footer is unreadable is moved to
//!   `blocks/quarantine/`; a section that fails its CRC (found by the background verification that
//!   follows start-up, or by the first read that hits it) hides its series, or the whole block for
//!   the shared tables, from reads and label listings alike. Damaged blocks are not compacted;
//!   retention deletes them (and set-aside files) by age and size like any other. Losses are
//!   counted in [`StoreStats`] and logged with the file's path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kiln_proto::pprof::Profile;
use prost::Message;

use super::block::{self, BlockBuilder, BlockMeta, Provenance, SeriesData, SeriesMeta, Tables};
use super::headagg::{self, Delta, HeadAgg};
use super::segment::{self, FrameError, SEGMENT_MAGIC};
use super::stacks::{MergedStacks, StackShape, StackTrie};
use super::{
    Labels, Merged, MergedProfile, NewProfile, ReadRequest, Store, StoreError, StoreStats,
    StoredProfile, io_err,
};
use crate::config::StoreConfig;
use crate::query::selector::Selector;
use crate::query::time::{self, TimeRange};

/// Largest decompressed block section accepted. Sections are CRC'd before inflating, so this only
/// guards against a footer that is consistent but absurd.
const MAX_SECTION_BYTES: usize = 1 << 31;

/// Under the blocks directory: blocks whose footer is unreadable, kept for inspection until
/// retention deletes them.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Where one head record lives.
#[derive(Clone, Debug)]
struct Entry {
    time_nanos: i64,
    segment: u64,
    /// Where the record's payload starts in the segment file.
    offset: u64,
    len: u32,
    /// The payload's CRC, checked again when it is read back.
    crc: u32,
    profile_types: Arc<[String]>,
    /// Folded into the head's aggregate ([`headagg`]).
    aggregated: bool,
}

struct Series {
    labels: Arc<Labels>,
    entries: Vec<Entry>,
}

/// The head's index: series → records in WAL segments, plus their pre-merged sums.
#[derive(Default)]
struct Index {
    series: Vec<Series>,
    by_labels: HashMap<Arc<Labels>, usize>,
    /// Interned profile-type lists: most records share one of a handful.
    type_sets: HashSet<Arc<[String]>>,
    profiles: u64,
    agg: HeadAgg,
}

impl Index {
    /// Adds a record, folding `profile` (its pprof, encoded and decompressed, when there is one)
    /// into the aggregate.
    fn add(&mut self, labels: Labels, mut entry: Entry, profile: Option<&[u8]>) {
        let labels = match self.by_labels.get_key_value(&labels) {
            Some((l, _)) => l.clone(),
            None => Arc::new(labels),
        };
        entry.aggregated = self.agg.add(&labels, entry.time_nanos, profile);
        self.add_arc(labels, entry);
    }

    fn add_arc(&mut self, labels: Arc<Labels>, mut entry: Entry) {
        entry.profile_types = match self.type_sets.get(&entry.profile_types) {
            Some(t) => t.clone(),
            None => {
                self.type_sets.insert(entry.profile_types.clone());
                entry.profile_types
            }
        };
        let i = match self.by_labels.get(&labels) {
            Some(&i) => i,
            None => {
                self.series.push(Series {
                    labels: labels.clone(),
                    entries: Vec::new(),
                });
                self.by_labels.insert(labels, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        self.series[i].entries.push(entry);
        self.profiles += 1;
    }

    /// The index without the records of `segments`, whose contribution to the aggregate is
    /// `delta` (see [`HeadAgg::delta`]).
    fn without(mut self, segments: &BTreeSet<u64>, delta: Delta) -> Index {
        let mut out = Index::default();
        for s in &self.series {
            for e in &s.entries {
                if !segments.contains(&e.segment) {
                    out.add_arc(s.labels.clone(), e.clone());
                }
            }
        }
        let remaining = out.series.iter().flat_map(|s| {
            s.entries
                .iter()
                .map(|e| (&s.labels, e.time_nanos, e.aggregated))
        });
        self.agg.apply(delta, remaining);
        out.agg = self.agg;
        out
    }
}

/// A block on disk: its footer and an open handle (which keeps it readable by an in-flight query
/// even after retention or compaction unlinks it).
struct Block {
    meta: BlockMeta,
    /// Per series of `meta.series`, its labels (the footer's copy is dropped to save memory).
    labels: Vec<Arc<Labels>>,
    path: PathBuf,
    file: File,
    size: u64,
    /// Set once any part of the block is known damaged (the fast path of every read checks it).
    damaged: AtomicBool,
    health: Mutex<Health>,
    /// Set when the block belongs to the bucket (see [`super::bucket`]): its key there. Such a
    /// block lives in the bucket store's outbox or cache, never in `blocks/`, and its lifecycle
    /// (compaction, retention, eviction) is the bucket store's.
    bucket_key: Option<Arc<str>>,
    /// Its decoded tables, kept after the first merged read while the cache has room (see
    /// [`Decoded`]); dropped with the block when compaction or retention retires it.
    decoded: Mutex<Option<Arc<Decoded>>>,
}

/// Bytes of decoded block data ([`Decoded`]) all blocks together may keep between queries.
pub const DECODED_CACHE_BYTES: usize = 512 << 20;

/// What merged reads of a block need, decoded once: its tables, their stack trie and symbols
/// ([`StackShape`]), and the per-series sums read so far. Charged to [`Inner::decoded_bytes`]
/// while kept (given back on drop); past [`DECODED_CACHE_BYTES`] a read decodes for itself.
struct Decoded {
    tables: Tables,
    shape: Arc<StackShape>,
    /// By (series index, 0 for the whole series or 1 + hour index in a rollup's
    /// [`SeriesMeta::hour_totals`]).
    sums: Mutex<HashMap<(usize, usize), Arc<block::SeriesSums>>>,
    /// Bytes charged to `budget` (0 when this copy is not kept).
    charged: AtomicU64,
    budget: Arc<std::sync::atomic::AtomicUsize>,
}

impl Decoded {
    /// Charges `bytes` to the cache when it has room; false (nothing charged) when not.
    fn charge(&self, bytes: usize) -> bool {
        let ok = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= DECODED_CACHE_BYTES).then_some(used + bytes)
            })
            .is_ok();
        if ok {
            self.charged.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        ok
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        let charged = *self.charged.get_mut() as usize;
        self.budget.fetch_sub(charged, Ordering::Relaxed);
    }
}

/// What is known about a block's sections.
#[derive(Default)]
struct Health {
    /// Every section's CRC has been checked (blocks written by this process start verified).
    verified: bool,
    /// Why no profile of the block can be read (its symbol or stack table is damaged).
    broken: Option<String>,
    /// Series (indices into `meta.series`) with a damaged section.
    bad_series: BTreeSet<usize>,
}

/// Losses found since the store was opened (see [`StoreStats`]).
#[derive(Default)]
struct Losses {
    blocks: AtomicU64,
    profiles: AtomicU64,
    wal_bytes: AtomicU64,
}

impl Losses {
    fn wal(&self, damage: &segment::Damage) {
        self.profiles.fetch_add(1, Ordering::Relaxed);
        self.wal_bytes.fetch_add(damage.len, Ordering::Relaxed);
    }
}

/// One shared copy of each label set across blocks: a series spans many hourly blocks.
#[derive(Default)]
struct Interner(HashSet<Arc<Labels>>);

impl Interner {
    fn get(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(l) = self.0.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.0.insert(l.clone());
        l
    }
    /// Forgets label sets no block uses any more (after retention or compaction).
    fn prune(&mut self) {
        self.0.retain(|l| Arc::strong_count(l) > 1);
    }
}

impl Block {
    fn new(
        mut meta: BlockMeta,
        path: PathBuf,
        file: File,
        size: u64,
        interner: &Mutex<Interner>,
        verified: bool,
    ) -> Block {
        let labels = {
            let mut interner = lock(interner);
            meta.series
                .iter()
                .map(|s| interner.get(s.labels()))
                .collect()
        };
        for s in &mut meta.series {
            s.labels = Vec::new();
        }
        Block {
            meta,
            labels,
            path,
            file,
            size,
            damaged: AtomicBool::new(false),
            health: Mutex::new(Health {
                verified,
                ..Health::default()
            }),
            bucket_key: None,
            decoded: Mutex::new(None),
        }
    }

    fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    /// Whether series `i` can be read (as far as is known).
    fn readable(&self, i: usize) -> bool {
        if !self.is_damaged() {
            return true;
        }
        let h = lock(&self.health);
        h.broken.is_none() && !h.bad_series.contains(&i)
    }

    /// Profiles in the block's readable series.
    fn readable_profiles(&self) -> u64 {
        if !self.is_damaged() {
            return self.meta.profiles;
        }
        let h = lock(&self.health);
        if h.broken.is_some() {
            return 0;
        }
        self.meta
            .series
            .iter()
            .enumerate()
            .filter(|(i, _)| !h.bad_series.contains(i))
            .map(|(_, s)| s.profiles)
            .sum()
    }

    /// Bytes of the footer (and trailer): everything after the last section.
    fn footer_bytes(&self) -> u64 {
        let end = |r: &Option<block::SectionRef>| r.as_ref().map_or(0, |r| r.offset + r.len);
        let m = &self.meta;
        let last = m
            .series
            .iter()
            .flat_map(|s| [end(&s.profiles_section), end(&s.rows_section)])
            .chain([end(&m.symbols), end(&m.stacks)])
            .max()
            .unwrap_or(0);
        self.size.saturating_sub(last)
    }

    fn overlaps(&self, range: TimeRange) -> bool {
        self.meta.min_time <= range.until && range.from <= self.meta.max_time
    }

    /// Indices of readable series matching `selector` whose time span overlaps `range`.
    fn candidates<'a>(
        &'a self,
        selector: &'a Selector,
        range: TimeRange,
    ) -> impl Iterator<Item = (usize, &'a SeriesMeta)> + 'a {
        self.meta.series.iter().enumerate().filter(move |(i, s)| {
            s.min_time <= range.until
                && range.from <= s.max_time
                && selector.matches(&self.labels[*i])
                && self.readable(*i)
        })
    }

    /// The profile types of series `s` if it has a profile in `range`: from the footer when the
    /// range covers the series' whole span, else exactly from its profile table.
    fn in_range(
        &self,
        s: &SeriesMeta,
        range: TimeRange,
    ) -> Result<Option<Vec<String>>, StoreError> {
        if range.from <= s.min_time && s.max_time <= range.until {
            return Ok((s.profiles > 0).then(|| s.profile_types.clone()));
        }
        let profiles = block::load_series_profiles(&self.file, &self.path, s, MAX_SECTION_BYTES)?;
        let mut any = false;
        let mut set = BTreeSet::new();
        for p in profiles
            .into_iter()
            .filter(|p| range.contains(p.time_nanos))
        {
            any = true;
            set.extend(p.profile_types);
        }
        Ok(any.then(|| set.into_iter().collect()))
    }
}

/// What readers see, swapped atomically by flushes, compactions and retention.
#[derive(Default)]
struct State {
    head: Index,
    blocks: Vec<Arc<Block>>,
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: File,
    len: u64,
    opened: Instant,
}

struct Inner {
    dir: PathBuf,
    blocks_dir: PathBuf,
    config: StoreConfig,
    /// Decompressed size limit when reading a WAL record back.
    max_profile_bytes: usize,
    state: RwLock<State>,
    /// Serializes appends; held across write + fsync + index update.
    active: Mutex<Active>,
    /// Read handles of WAL segments, by id (the active one included).
    readers: RwLock<HashMap<u64, Arc<File>>>,
    /// Sizes of sealed segments.
    sealed: Mutex<HashMap<u64, u64>>,
    /// Serializes flush, compaction and retention.
    maintenance: Mutex<()>,
    /// Next block / flush id.
    next_id: AtomicU64,
    interner: Mutex<Interner>,
    losses: Losses,
    /// Whether compaction and retention of blocks are this engine's job.
    role: Role,
    /// The head aggregate's estimated size, as of the last change (read without the state lock).
    agg_bytes: std::sync::atomic::AtomicUsize,
    /// Bytes of decoded block data kept for merged reads (see [`Decoded`]).
    decoded_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Who compacts and expires the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// This engine: the embedded default.
    Standalone,
    /// The bucket store wrapping this engine ([`super::bucket`]): the engine keeps the WAL, the
    /// head and blocks not yet uploaded, and reads whatever bucket blocks it is handed.
    BucketHead,
}

/// A block flushed here and not yet handed to the bucket.
#[derive(Clone, Debug)]
pub(crate) struct PendingBlock {
    pub id: u64,
    pub partition_start: i64,
    pub min_time: i64,
    pub max_time: i64,
    pub profiles: u64,
    pub size: u64,
}

/// The embedded storage engine. Dropping it stops its background thread.
pub struct LocalStore {
    inner: Arc<Inner>,
    background: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

/// One head record selected for reading, with the file that holds it.
struct HeadRead {
    labels: Arc<Labels>,
    entry: Entry,
    file: Option<Arc<File>>,
}

impl LocalStore {
    /// Opens (creating) the store in `dir` — WAL segments in `dir`, blocks in `dir/blocks` —
    /// recovering from any interrupted flush or compaction, and starts the background thread.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: StoreConfig,
        max_profile_bytes: usize,
    ) -> Result<LocalStore, StoreError> {
        LocalStore::open_as(dir, config, max_profile_bytes, Role::Standalone)
    }

    /// [`LocalStore::open`] in the given role.
    pub(crate) fn open_as(
        dir: impl Into<PathBuf>,
        config: StoreConfig,
        max_profile_bytes: usize,
        role: Role,
    ) -> Result<LocalStore, StoreError> {
        let inner = Arc::new(Inner::open(dir.into(), config, max_profile_bytes, role)?);
        if inner.config.verify_on_open {
            inner.verify_blocks();
        }
        let (tx, rx) = mpsc::channel::<()>();
        let weak = Arc::downgrade(&inner);
        let interval = inner.config.maintenance_interval();
        let handle = std::thread::Builder::new()
            .name("kiln-store".into())
            .spawn(move || {
                // First check the blocks found on disk (their CRCs: reads and listings then agree
                // on what is readable), unless start-up did already.
                if let Some(inner) = weak.upgrade() {
                    inner.verify_blocks();
                }
                // Any message, or the sender dropping, means stop.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    let Some(inner) = weak.upgrade() else { break };
                    if let Err(e) = inner.maintain(time::now_nanos(), false) {
                        tracing::error!(error = %e, "store maintenance failed; will retry");
                    }
                }
            })
            .map_err(io_err(&inner.dir))?;
        Ok(LocalStore {
            inner,
            background: Mutex::new(Some((tx, handle))),
        })
    }

    /// Seals the active segment and flushes every sealed one into blocks.
    pub fn flush_head(&self) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.flush(true)
    }

    /// Compacts blocks of the same hour together, and the closed hours of a day (as of
    /// `now_nanos`) into rollups.
    pub fn compact(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.compact(now_nanos)
    }

    /// Applies retention as of `now_nanos`.
    pub fn apply_retention(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.apply_retention(now_nanos)
    }

    /// Checks the CRC of every section of every block not checked yet, quarantining what is
    /// damaged; returns how many blocks are damaged in all. The background thread does this once
    /// after start-up (or `StoreConfig::verify_on_open` before `open` returns).
    pub fn verify_blocks(&self) -> usize {
        self.inner.verify_blocks()
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        if let Some((tx, handle)) = lock(&self.background).take() {
            let _ = tx.send(());
            if handle.join().is_err() {
                tracing::error!("store background thread panicked");
            }
        }
    }
}

impl Inner {
    fn open(
        dir: PathBuf,
        config: StoreConfig,
        max_profile_bytes: usize,
        role: Role,
    ) -> Result<Inner, StoreError> {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let blocks_dir = dir.join("blocks");
        fs::create_dir_all(&blocks_dir).map_err(io_err(&blocks_dir))?;

        let mut seg_ids = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_segment_name)
            {
                seg_ids.insert(id);
            }
        }

        let interner = Mutex::new(Interner::default());
        let losses = Losses::default();
        let blocks = load_blocks(&blocks_dir, &mut seg_ids, &dir, &interner, &losses)?;
        let mut next_id = 1;
        let mut seg_floor = 0;
        for b in &blocks {
            next_id = next_id
                .max(b.meta.id + 1)
                .max(b.meta.flush_id + 1)
                .max(b.meta.replaces.iter().max().map_or(0, |m| m + 1));
            seg_floor = seg_floor.max(b.meta.sources.iter().copied().max().unwrap_or(0));
        }

        let mut index = Index::default();
        let mut readers = HashMap::new();
        let mut sealed = HashMap::new();
        let mut active = None;
        let ids: Vec<u64> = seg_ids.into_iter().collect();
        for (i, &id) in ids.iter().enumerate() {
            let path = segment::segment_path(&dir, id);
            let scan = segment::scan(&path).map_err(io_err(&path))?;
            let last = i + 1 == ids.len();
            // Only a sound segment of today's layout takes more appends.
            let appendable = last
                && scan.magic_ok
                && scan.version == Some(segment::Version::V2)
                && id > seg_floor;
            if !scan.magic_ok && scan.version.is_some() {
                tracing::warn!(
                    segment = %path.display(),
                    "segment magic damaged; its records are read by their frames"
                );
            }
            for d in &scan.damaged {
                tracing::error!(
                    segment = %path.display(),
                    offset = d.offset,
                    bytes = d.len,
                    reason = %d.reason,
                    "skipping a damaged WAL record; the records after it are kept"
                );
                losses.wal(d);
            }
            if let Some(d) = &scan.tail {
                let what = if appendable {
                    "truncating the segment after its last good record"
                } else {
                    "ignoring the rest of this sealed segment"
                };
                tracing::warn!(
                    segment = %path.display(),
                    offset = d.offset,
                    dropped_bytes = d.len,
                    reason = %d.reason,
                    "unreadable tail (a torn append, or damage to the last record); {what}"
                );
                losses.wal(d);
            }
            let file = File::open(&path).map_err(io_err(&path))?;
            for r in scan.records {
                let labels = r.header.labels();
                let entry = Entry {
                    time_nanos: r.header.time_nanos,
                    segment: id,
                    offset: r.offset,
                    len: r.len,
                    crc: r.crc,
                    profile_types: r.header.profile_types.into(),
                    aggregated: false,
                };
                // Folded into the aggregate as at append time (a record that does not decode is
                // left to the exact path, which reports it).
                let profile = read_payload(&dir, max_profile_bytes, &entry, &file).ok();
                index.add(labels, entry, profile.as_deref());
            }
            readers.insert(id, Arc::new(file));
            if appendable {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                if scan.good_len != scan.file_len {
                    file.set_len(scan.good_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                }
                active = Some(Active {
                    id,
                    file,
                    len: scan.good_len,
                    opened: Instant::now(),
                });
            } else {
                sealed.insert(id, scan.file_len);
            }
        }
        let active = match active {
            Some(a) => a,
            // No segment yet, or the newest one is unusable (bad magic): start a fresh one. Ids
            // never go back below those recorded in blocks, so a block's `sources` stay unique.
            None => {
                let id = ids.last().copied().unwrap_or(0).max(seg_floor) + 1;
                let a = create_segment(&dir, id)?;
                let reader = File::open(segment::segment_path(&dir, id)).map_err(io_err(&dir))?;
                readers.insert(id, Arc::new(reader));
                a
            }
        };
        tracing::info!(
            dir = %dir.display(),
            segments = readers.len(),
            blocks = blocks.len(),
            head_series = index.series.len(),
            head_profiles = index.profiles,
            "store opened"
        );
        let agg_bytes = index.agg.bytes();
        Ok(Inner {
            dir,
            blocks_dir,
            config,
            max_profile_bytes,
            state: RwLock::new(State {
                head: index,
                blocks: blocks.into_iter().map(Arc::new).collect(),
            }),
            active: Mutex::new(active),
            readers: RwLock::new(readers),
            sealed: Mutex::new(sealed),
            maintenance: Mutex::new(()),
            next_id: AtomicU64::new(next_id),
            interner,
            losses,
            role,
            agg_bytes: std::sync::atomic::AtomicUsize::new(agg_bytes),
            decoded_bytes: Arc::default(),
        })
    }

    fn quarantine_dir(&self) -> PathBuf {
        self.blocks_dir.join(QUARANTINE_DIR)
    }

    /// Records that series `series` of `b` (or, with `None`, the whole block) cannot be read:
    /// from now on reads and label listings leave it out. Counted and logged once.
    fn quarantine(&self, b: &Block, series: Option<usize>, why: &str) {
        let mut h = lock(&b.health);
        if h.broken.is_some() {
            return;
        }
        let first = h.bad_series.is_empty();
        let lost = match series {
            None => {
                h.broken = Some(why.to_owned());
                b.meta
                    .series
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !h.bad_series.contains(i))
                    .map(|(_, s)| s.profiles)
                    .sum()
            }
            Some(i) => {
                if !h.bad_series.insert(i) {
                    return;
                }
                b.meta.series.get(i).map_or(0, |s| s.profiles)
            }
        };
        b.damaged.store(true, Ordering::Relaxed);
        drop(h);
        if first {
            self.losses.blocks.fetch_add(1, Ordering::Relaxed);
        }
        self.losses.profiles.fetch_add(lost, Ordering::Relaxed);
        let series = series
            .and_then(|i| b.labels.get(i))
            .map(|l| format!("{l:?}"));
        tracing::error!(
            block = %b.path.display(),
            series = series.as_deref().unwrap_or("(all: shared tables damaged)"),
            profiles_lost = lost,
            reason = why,
            "quarantined damaged block data; the rest of the block stays readable"
        );
    }

    /// Checks the section CRCs of `b` unless that was done; quarantines what is damaged.
    fn verify_block(&self, b: &Block) {
        if std::mem::replace(&mut lock(&b.health).verified, true) {
            return;
        }
        let verdict = block::verify(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES, false);
        if let Some(why) = &verdict.tables {
            self.quarantine(b, None, why);
        }
        for (i, why) in &verdict.series {
            self.quarantine(b, Some(*i), why);
        }
    }

    fn verify_blocks(&self) -> usize {
        let blocks = read_lock(&self.state).blocks.clone();
        let started = Instant::now();
        for b in &blocks {
            self.verify_block(b);
        }
        let damaged = blocks.iter().filter(|b| b.is_damaged()).count();
        tracing::info!(
            blocks = blocks.len(),
            damaged,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "verified block checksums"
        );
        damaged
    }

    /// Blocks set aside in the quarantine directory: (path, size, oldest and newest possible
    /// profile time).
    fn set_aside(&self) -> Vec<(PathBuf, u64, i64, i64)> {
        let dir = self.quarantine_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let name = e.file_name();
            // The file name keeps the partition; failing that, the time it was written.
            let (min_time, max_time) = name
                .to_str()
                .and_then(block::parse_block_name)
                .map(|(p, _)| (p, p.saturating_add(block::PARTITION_NANOS - 1)))
                .or_else(|| {
                    let t = md
                        .modified()
                        .ok()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?;
                    let t = i64::try_from(t.as_nanos()).ok()?;
                    Some((t, t))
                })
                .unwrap_or((i64::MIN, i64::MIN));
            out.push((e.path(), md.len(), min_time, max_time));
        }
        out
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a new segment (the caller checked that one is due).
    fn rotate(&self, active: &mut Active) -> Result<(), StoreError> {
        let next = create_segment(&self.dir, active.id + 1)?;
        let path = segment::segment_path(&self.dir, next.id);
        let reader = File::open(&path).map_err(io_err(&path))?;
        write_lock(&self.readers).insert(next.id, Arc::new(reader));
        lock(&self.sealed).insert(active.id, active.len);
        tracing::debug!(segment = next.id, "rotated to a new segment");
        *active = next;
        Ok(())
    }

    fn rotation_due(&self, active: &Active) -> bool {
        let full = active.len >= self.config.max_segment_bytes;
        let old = active.opened.elapsed() >= self.config.max_segment_age();
        (full || old) && active.len > SEGMENT_MAGIC.len() as u64
    }

    fn read_entry(&self, entry: &Entry, file: &File) -> Result<Profile, StoreError> {
        read_record(&self.dir, self.max_profile_bytes, entry, file)
    }
}

/// Reads and decodes the head record `entry` of segment `file` (in `dir`).
fn read_record(
    dir: &Path,
    max_profile_bytes: usize,
    entry: &Entry,
    file: &File,
) -> Result<Profile, StoreError> {
    let raw = read_payload(dir, max_profile_bytes, entry, file)?;
    Profile::decode(raw.as_slice()).map_err(|e| StoreError::Corrupt {
        segment: entry.segment,
        offset: entry.offset,
        reason: format!("bad pprof: {e}"),
    })
}

/// Reads the head record `entry` of segment `file` (in `dir`): its pprof, CRC-checked and
/// decompressed, still encoded.
fn read_payload(
    dir: &Path,
    max_profile_bytes: usize,
    entry: &Entry,
    file: &File,
) -> Result<Vec<u8>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        segment: entry.segment,
        offset: entry.offset,
        reason,
    };
    let mut payload = vec![0u8; entry.len as usize];
    let path = segment::segment_path(dir, entry.segment);
    file.read_exact_at(&mut payload, entry.offset)
        .map_err(io_err(&path))?;
    let decoded = segment::verify_payload(entry.crc, &payload)
        .and_then(|()| segment::split_payload(&payload))
        .and_then(|(_, body)| segment::decompress(body, max_profile_bytes));
    match decoded {
        Ok(raw) => Ok(raw),
        Err(FrameError::Corrupt(why)) => Err(corrupt(why)),
        Err(FrameError::Io(e)) => Err(io_err(&path)(e)),
    }
}

impl Inner {
    /// [`Inner::snapshot`] for a merged read of `profile_type`: the head records whose part of
    /// the aggregate the read can use come back summed into one profile (with how many stored
    /// profiles it stands for), the other selected records as records to read exactly.
    #[allow(clippy::type_complexity)]
    fn head_merged(
        &self,
        req: &ReadRequest<'_>,
        profile_type: &str,
    ) -> (
        Option<(MergedStacks, usize)>,
        Vec<HeadRead>,
        Vec<Arc<Block>>,
    ) {
        let state = read_lock(&self.state);
        let readers = read_lock(&self.readers);
        let agg = &state.head.agg;
        let mut head = Vec::new();
        let mut acc = Vec::new();
        let mut profiles = 0;
        for s in state
            .head
            .series
            .iter()
            .filter(|s| req.selector.matches(&s.labels))
        {
            let usable = agg.usable(&s.labels, req.range);
            for &bucket in &usable {
                profiles += agg.add_to(&s.labels, bucket, profile_type, &mut acc);
            }
            for e in &s.entries {
                if !req.range.contains(e.time_nanos)
                    || !e.profile_types.iter().any(|p| p == profile_type)
                    || (e.aggregated && usable.contains(&headagg::bucket_of(e.time_nanos)))
                {
                    continue;
                }
                head.push(HeadRead {
                    labels: s.labels.clone(),
                    entry: e.clone(),
                    file: readers.get(&e.segment).cloned(),
                });
            }
        }
        // Built under the read lock (the tables change with appends): one pass over the
        // selection's distinct stacks.
        let merged = (profiles > 0).then(|| (agg.merged_stacks(profile_type, &acc), profiles));
        (merged, head, state.blocks.clone())
    }

    /// Block `b`'s decoded tables: the kept copy, or decoded now (and kept when the cache has
    /// room).
    fn decoded(&self, b: &Block) -> Result<Arc<Decoded>, StoreError> {
        if let Some(d) = lock(&b.decoded).as_ref() {
            return Ok(d.clone());
        }
        // Decoded without the block's lock (a second reader may decode it too; one copy is kept).
        let tables = Tables::load(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES)?;
        let shape = Arc::new(StackShape::new(
            tables.symbols_profile(),
            StackTrie::of(&tables),
        ));
        let d = Arc::new(Decoded {
            shape,
            tables,
            sums: Mutex::new(HashMap::new()),
            charged: AtomicU64::new(0),
            budget: self.decoded_bytes.clone(),
        });
        let mut kept = lock(&b.decoded);
        if let Some(other) = kept.as_ref() {
            return Ok(other.clone());
        }
        let bytes = d.shape.bytes() + d.tables.bytes();
        if d.charge(bytes) {
            *kept = Some(d.clone());
        }
        Ok(d)
    }

    /// The pre-summed rows of series `i` (`s`) of block `b`, kept with its decoded tables `d`:
    /// the whole series' (`hour` `None`), or one hour's of a rollup (an index into
    /// [`SeriesMeta::hour_totals`]).
    fn series_sums(
        &self,
        b: &Block,
        d: &Decoded,
        i: usize,
        s: &SeriesMeta,
        hour: Option<usize>,
    ) -> Result<Option<Arc<block::SeriesSums>>, StoreError> {
        let key = (i, hour.map_or(0, |h| h + 1));
        if let Some(sums) = lock(&d.sums).get(&key) {
            return Ok(Some(sums.clone()));
        }
        let sums = match hour.and_then(|h| s.hour_totals.get(h)) {
            Some(h) => block::load_hour_totals(&b.file, &b.path, h, MAX_SECTION_BYTES)?,
            None if hour.is_some() => return Ok(None),
            None => match block::load_series_totals(&b.file, &b.path, s, MAX_SECTION_BYTES)? {
                Some(sums) => sums,
                None => return Ok(None),
            },
        };
        let sums = Arc::new(sums);
        if d.charged.load(Ordering::Relaxed) > 0 && d.charge(sums.bytes()) {
            lock(&d.sums).insert(key, sums.clone());
        }
        Ok(Some(sums))
    }

    /// Adds series `i` (`s`) of block `b` within `range` into `acc` (by stack id) from the
    /// coarsest pre-summed data that answers it exactly: the whole series' sums when the range
    /// covers its span, else in a rollup the sums of each hour the range covers whole plus the
    /// rows of the hours it cuts, else its rows. Returns how many profiles were added; on an
    /// error nothing was added (everything is read before anything is summed).
    #[allow(clippy::too_many_arguments)]
    fn add_series(
        &self,
        b: &Block,
        d: &Decoded,
        i: usize,
        s: &SeriesMeta,
        range: TimeRange,
        profile_type: &str,
        acc: &mut Vec<i64>,
    ) -> Result<usize, StoreError> {
        let covers = |min: i64, max: i64| range.from <= min && max <= range.until;
        if covers(s.min_time, s.max_time)
            && let Some(sums) = self.series_sums(b, d, i, s, None)?
        {
            return Ok(sums.add_to(&d.tables, profile_type, acc));
        }
        // Hours summed whole, and hours read from their rows: those the range cuts (every one
        // in a block without hour sums).
        let mut whole = Vec::new();
        let mut cut: Vec<(i64, i64)> = Vec::new();
        for (h, hour) in s.hour_totals.iter().enumerate() {
            if hour.max_time < range.from || range.until < hour.min_time {
                continue;
            }
            if covers(hour.min_time, hour.max_time) {
                whole.push(self.series_sums(b, d, i, s, Some(h))?);
            } else {
                cut.push((hour.min_time, hour.max_time));
            }
        }
        let all_rows = s.hour_totals.is_empty();
        let data = if all_rows || !cut.is_empty() {
            Some(SeriesData::load(&b.file, &b.path, s, MAX_SECTION_BYTES)?)
        } else {
            None
        };
        let mut merged = 0;
        for sums in whole.iter().flatten() {
            merged += sums.add_to(&d.tables, profile_type, acc);
        }
        let Some(data) = data else {
            return Ok(merged);
        };
        merged += data.aggregate(
            &d.tables,
            |meta| {
                range.contains(meta.time_nanos)
                    && (all_rows
                        || cut
                            .iter()
                            .any(|&(lo, hi)| lo <= meta.time_nanos && meta.time_nanos <= hi))
            },
            profile_type,
            acc,
        );
        Ok(merged)
    }

    /// Head records matching `keep`, with their files, plus the current blocks: one consistent
    /// snapshot (a concurrent flush either has or has not happened for all of it).
    fn snapshot(
        &self,
        series: impl Fn(&Labels) -> bool,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> (Vec<HeadRead>, Vec<Arc<Block>>) {
        let state = read_lock(&self.state);
        let readers = read_lock(&self.readers);
        let mut head = Vec::new();
        for s in state.head.series.iter().filter(|s| series(&s.labels)) {
            for e in &s.entries {
                if keep(e) {
                    head.push(HeadRead {
                        labels: s.labels.clone(),
                        entry: e.clone(),
                        file: readers.get(&e.segment).cloned(),
                    });
                }
            }
        }
        (head, state.blocks.clone())
    }

    fn maintain(&self, now_nanos: i64, force_flush: bool) -> Result<(), StoreError> {
        let _m = lock(&self.maintenance);
        // Compaction and retention run even when the flush failed: on a full disk, retention is
        // what frees space for the flush to succeed next time.
        let flushed = self.flush(force_flush);
        let rest = self.compact_and_expire(now_nanos);
        flushed.and(rest)
    }

    /// Retention, then compaction (whether or not retention succeeded), then forgetting label
    /// sets of deleted blocks. Caller holds `maintenance`.
    fn compact_and_expire(&self, now_nanos: i64) -> Result<(), StoreError> {
        if self.role == Role::BucketHead {
            // The bucket store does both, once for all servers.
            return Ok(());
        }
        // Retention first: it works block by block, so it drops the oldest hours before they are
        // rolled up into a day (and on a full disk it frees the space compaction's output needs).
        let expired = self.apply_retention(now_nanos);
        let compacted = self.compact(now_nanos);
        lock(&self.interner).prune();
        compacted.and(expired)
    }

    /// Flushes sealed segments into blocks (sealing the active one first if `force` or due), then
    /// deletes them. Caller holds `maintenance`.
    fn flush(&self, force: bool) -> Result<(), StoreError> {
        let (active_id, rotated) = {
            let mut active = lock(&self.active);
            let rotated = if (force && active.len > SEGMENT_MAGIC.len() as u64)
                || self.rotation_due(&active)
            {
                self.rotate(&mut active)
            } else {
                Ok(())
            };
            (active.id, rotated)
        };
        // A failed rotation (a full disk, say) still lets what is already sealed be flushed.
        let mut sealed: Vec<u64> = read_lock(&self.readers)
            .keys()
            .copied()
            .filter(|&id| id != active_id)
            .collect();
        sealed.sort_unstable();
        // A few segments at a time, oldest first, so that a long backlog (say, after an outage)
        // never has to fit in memory at once.
        let budget = self.config.max_segment_bytes.saturating_mul(4).max(1);
        let sizes = lock(&self.sealed).clone();
        let mut batch = BTreeSet::new();
        let mut bytes = 0u64;
        for id in sealed {
            if bytes >= budget {
                self.flush_segments(&batch)?;
                batch.clear();
                bytes = 0;
            }
            bytes += sizes.get(&id).copied().unwrap_or(0);
            batch.insert(id);
        }
        if !batch.is_empty() {
            self.flush_segments(&batch)?;
        }
        rotated
    }

    /// Writes the records of `sealed` into blocks, then deletes those segments.
    fn flush_segments(&self, sealed: &BTreeSet<u64>) -> Result<(), StoreError> {
        let started = Instant::now();
        let (records, _) = self.snapshot(|_| true, |e| sealed.contains(&e.segment));
        let n_records = records.len();
        let mut builders: BTreeMap<i64, BlockBuilder> = BTreeMap::new();
        // What these records put into the head's aggregate, taken out with them below.
        let mut delta = Delta::default();
        for r in records {
            let profile = match &r.file {
                Some(f) => self.read_entry(&r.entry, f),
                None => Err(StoreError::Corrupt {
                    segment: r.entry.segment,
                    offset: r.entry.offset,
                    reason: "segment file is not open".into(),
                }),
            };
            match profile {
                Ok(p) => {
                    if r.entry.aggregated {
                        // Read-only on the aggregate: appends go on meanwhile.
                        read_lock(&self.state).head.agg.delta(
                            &r.labels,
                            r.entry.time_nanos,
                            &p,
                            &mut delta,
                        );
                    }
                    builders
                        .entry(block::partition_of(r.entry.time_nanos))
                        .or_default()
                        .add(&r.labels, r.entry.time_nanos, &r.entry.profile_types, &p)
                }
                // It failed its CRC or does not decode: nothing a retry would fix.
                Err(e) => {
                    tracing::error!(error = %e, "dropping unreadable WAL record at flush");
                    self.losses.profiles.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let flush_id = self.next_id();
        let parts = builders.len() as u32;
        let sources: Vec<u64> = sealed.iter().copied().collect();
        let mut new_blocks: Vec<Arc<Block>> = Vec::with_capacity(builders.len());
        for (_, b) in builders {
            let written = b
                .write(
                    &self.blocks_dir,
                    Provenance {
                        id: self.next_id(),
                        flush_id,
                        flush_parts: parts,
                        sources: sources.clone(),
                        replaces: Vec::new(),
                    },
                )
                .and_then(|(meta, path, size)| {
                    let file = File::open(&path).map_err(io_err(&path))?;
                    Ok((meta, path, size, file))
                });
            let (meta, path, size, file) = match written {
                Ok(w) => w,
                Err(e) => {
                    // The segments stay and the next flush starts over: the blocks this one did
                    // write must go, or a restart after that flush would see their profiles twice.
                    for b in &new_blocks {
                        if let Err(rm) = fs::remove_file(&b.path) {
                            tracing::warn!(block = %b.path.display(), error = %rm, "could not remove a block of a failed flush");
                        }
                    }
                    return Err(e);
                }
            };
            new_blocks.push(Arc::new(Block::new(
                meta,
                path,
                file,
                size,
                &self.interner,
                true,
            )));
        }
        {
            let mut state = write_lock(&self.state);
            let head = std::mem::take(&mut state.head);
            state.head = head.without(sealed, delta);
            self.agg_bytes
                .store(state.head.agg.bytes(), Ordering::Relaxed);
            state.blocks.extend(new_blocks.iter().cloned());
        }
        // Only now, with every block durable, may the WAL behind them go.
        {
            let mut readers = write_lock(&self.readers);
            let mut sizes = lock(&self.sealed);
            for id in sealed {
                readers.remove(id);
                sizes.remove(id);
                let path = segment::segment_path(&self.dir, *id);
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(segment = %path.display(), error = %e, "could not delete flushed segment");
                }
            }
        }
        block::sync_dir(&self.dir)?;
        tracing::info!(
            segments = sealed.len(),
            profiles = n_records,
            blocks = new_blocks.len(),
            bytes = new_blocks.iter().map(|b| b.size).sum::<u64>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed head into blocks"
        );
        Ok(())
    }

    /// Merges the blocks of each open hour into one, and those of each day's closed hours (see
    /// [`rollup_partition`]) into a rollup, as long as the result stays under `max_block_bytes`.
    /// Caller holds `maintenance`.
    fn compact(&self, now_nanos: i64) -> Result<(), StoreError> {
        let blocks = read_lock(&self.state).blocks.clone();
        let mut by_partition: BTreeMap<(i64, bool), Vec<Arc<Block>>> = BTreeMap::new();
        for b in blocks {
            // A damaged block is never merged: its readable part stays where it is (and retention
            // deletes it in time), and a merge would fail on it again every time.
            self.verify_block(&b);
            if b.is_damaged() {
                continue;
            }
            let key = match rollup_partition(&b.meta, now_nanos) {
                Some(day) => (day, true),
                None => (b.meta.partition_start, false),
            };
            by_partition.entry(key).or_default().push(b);
        }
        for ((_, rollup), mut group) in by_partition {
            group.sort_by_key(|b| b.size);
            let mut take = Vec::new();
            let mut total = 0;
            for b in group {
                if total + b.size > self.config.max_block_bytes && !take.is_empty() {
                    break;
                }
                total += b.size;
                take.push(b);
            }
            if take.len() >= 2 {
                self.merge(&take, rollup)?;
            }
        }
        Ok(())
    }

    fn merge(&self, inputs: &[Arc<Block>], rollup: bool) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut sources: Vec<u64> = inputs
            .iter()
            .flat_map(|b| b.meta.sources.iter().copied())
            .collect();
        sources.sort_unstable();
        sources.dedup();
        let id = self.next_id();
        let replaces: Vec<u64> = inputs.iter().map(|b| b.meta.id).collect();
        let Some((meta, path, size)) = self.build_merged(
            inputs,
            &self.blocks_dir,
            Provenance {
                id,
                flush_id: id,
                flush_parts: 1,
                sources,
                replaces: replaces.clone(),
            },
            rollup,
            &|| false,
        )?
        else {
            return Ok(());
        };
        let file = File::open(&path).map_err(io_err(&path))?;
        let merged = Arc::new(Block::new(meta, path, file, size, &self.interner, true));
        {
            let mut state = write_lock(&self.state);
            state.blocks.retain(|b| !replaces.contains(&b.meta.id));
            state.blocks.push(merged.clone());
        }
        for b in inputs {
            if let Err(e) = fs::remove_file(&b.path) {
                tracing::warn!(block = %b.path.display(), error = %e, "could not delete compacted block");
            }
        }
        block::sync_dir(&self.blocks_dir)?;
        tracing::info!(
            inputs = inputs.len(),
            input_bytes = inputs.iter().map(|b| b.size).sum::<u64>(),
            output_bytes = size,
            rollup,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted blocks"
        );
        Ok(())
    }

    /// Merges `inputs` into a new block in `dir` (a rollup of their day when `rollup`); `None` if
    /// an input turned out damaged (it is quarantined and the merge is skipped), or if
    /// `cancelled` (polled per series: a bucket compaction that lost its lease) says stop.
    fn build_merged(
        &self,
        inputs: &[Arc<Block>],
        dir: &Path,
        provenance: Provenance,
        rollup: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(BlockMeta, PathBuf, u64)>, StoreError> {
        let mut builder = if rollup {
            BlockBuilder::rollup()
        } else {
            BlockBuilder::new()
        };
        for b in inputs {
            // Damage found only now (it happened after verification): quarantine it and leave
            // this hour uncompacted rather than fail every maintenance run from now on.
            let tables = match Tables::load(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES) {
                Ok(t) => t,
                Err(e) => {
                    self.quarantine(b, None, &e.to_string());
                    return Ok(None);
                }
            };
            for (i, s) in b.meta.series.iter().enumerate() {
                if cancelled() {
                    return Ok(None);
                }
                let data = match SeriesData::load(&b.file, &b.path, s, MAX_SECTION_BYTES) {
                    Ok(d) => d,
                    Err(e) => {
                        self.quarantine(b, Some(i), &e.to_string());
                        return Ok(None);
                    }
                };
                data.for_each(
                    &tables,
                    |_| true,
                    |meta, p| builder.add(&b.labels[i], meta.time_nanos, &meta.profile_types, &p),
                );
            }
        }
        builder.write(dir, provenance).map(Some)
    }

    fn wal_bytes(&self) -> u64 {
        lock(&self.active).len + lock(&self.sealed).values().sum::<u64>()
    }

    /// Deletes blocks past the age limit, then the oldest while over the size limit. Damaged
    /// blocks and those set aside in the quarantine directory count and go like any other. Caller
    /// holds `maintenance`.
    fn apply_retention(&self, now_nanos: i64) -> Result<(), StoreError> {
        /// What retention may delete.
        enum Victim {
            Block(Arc<Block>),
            SetAside(PathBuf),
        }
        // (order, newest profile time, size, what), oldest first: blocks by their newest profile,
        // set-aside files (whose contents are unknown) ahead of every block of their hour.
        let mut all: Vec<((i64, u64), i64, u64, Victim)> = read_lock(&self.state)
            .blocks
            .iter()
            .map(|b| {
                let t = b.meta.max_time;
                ((t, b.meta.id), t, b.size, Victim::Block(b.clone()))
            })
            .collect();
        all.extend(
            self.set_aside()
                .into_iter()
                .map(|(path, size, min, max)| ((min, 0), max, size, Victim::SetAside(path))),
        );
        all.sort_by_key(|(order, _, _, _)| *order);
        let mut doomed: Vec<(u64, i64, Victim, &str)> = Vec::new();
        let mut kept = Vec::new();
        let cutoff = self
            .config
            .retention_age()
            .map(|age| now_nanos.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX)));
        for (_, t, size, v) in all {
            match cutoff {
                Some(c) if t < c => doomed.push((size, t, v, "age")),
                _ => kept.push((size, t, v)),
            }
        }
        if self.config.retention_bytes > 0 {
            // Debuginfo counts too (`other_bytes`): it shares the data directory's budget.
            let mut total = self.wal_bytes()
                + kept.iter().map(|(size, _, _)| size).sum::<u64>()
                + self.config.other_bytes();
            let mut kept = kept.into_iter();
            while total > self.config.retention_bytes {
                let Some((size, t, v)) = kept.next() else {
                    tracing::warn!(
                        bytes = total,
                        limit = self.config.retention_bytes,
                        "the WAL (with debuginfo) alone exceeds retention_bytes; it shrinks as it is flushed"
                    );
                    break;
                };
                total -= size;
                doomed.push((size, t, v, "size"));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        {
            let ids: HashSet<u64> = doomed
                .iter()
                .filter_map(|(_, _, v, _)| match v {
                    Victim::Block(b) => Some(b.meta.id),
                    Victim::SetAside(_) => None,
                })
                .collect();
            write_lock(&self.state)
                .blocks
                .retain(|b| !ids.contains(&b.meta.id));
        }
        let mut set_aside = false;
        for (size, max_time, v, why) in &doomed {
            let path = match v {
                Victim::Block(b) => &b.path,
                Victim::SetAside(p) => {
                    set_aside = true;
                    p
                }
            };
            tracing::info!(
                block = %path.display(),
                bytes = size,
                max_time,
                reason = why,
                "retention: deleting block"
            );
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(block = %path.display(), error = %e, "could not delete block");
            }
        }
        if set_aside {
            block::sync_dir(&self.quarantine_dir())?;
        }
        block::sync_dir(&self.blocks_dir)
    }
}

/// How long after an hour ends its blocks wait before being rolled up into their day: a WAL
/// segment is flushed up to `max_segment_age_secs` (15 minutes by default) after its profiles
/// arrived, and rolling an hour up before its last flush would only rewrite the day again.
pub const ROLLUP_AFTER_NANOS: i64 = 30 * 60 * 1_000_000_000;

/// The day (rollup partition start) a block of partition start `partition_start` and length
/// `partition_nanos` goes into as of `now_nanos`: rollups always stay in theirs, an hourly block
/// once its hour has been over for [`ROLLUP_AFTER_NANOS`]; `None` for an hour still open, whose
/// blocks are merged by hour. Shared with the bucket store, so both compact alike.
pub(crate) fn rollup_day(
    partition_start: i64,
    partition_nanos: i64,
    now_nanos: i64,
) -> Option<i64> {
    let len = if partition_nanos > 0 {
        partition_nanos
    } else {
        block::PARTITION_NANOS
    };
    let closed = partition_start
        .saturating_add(len)
        .saturating_add(ROLLUP_AFTER_NANOS)
        <= now_nanos;
    (len > block::PARTITION_NANOS || closed).then(|| block::rollup_of(partition_start))
}

fn rollup_partition(meta: &BlockMeta, now_nanos: i64) -> Option<i64> {
    rollup_day(meta.partition_start, meta.partition_nanos, now_nanos)
}

/// Loads block footers from `dir`, then settles what a crash may have left half done. Segments
/// whose records are already in complete blocks are deleted and removed from `seg_ids`.
fn load_blocks(
    dir: &Path,
    seg_ids: &mut BTreeSet<u64>,
    seg_dir: &Path,
    interner: &Mutex<Interner>,
    losses: &Losses,
) -> Result<Vec<Block>, StoreError> {
    let quarantine = dir.join(QUARANTINE_DIR);
    // Moves a block out of the way of future starts, keeping its bytes for inspection.
    let set_aside = |path: &Path, name: &str| -> Result<(), StoreError> {
        fs::create_dir_all(&quarantine).map_err(io_err(&quarantine))?;
        let to = quarantine.join(name);
        fs::rename(path, &to).map_err(io_err(path))?;
        block::sync_dir(&quarantine)?;
        block::sync_dir(dir)
    };
    let mut blocks = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.ends_with(".tmp") {
            // A block whose write never finished: its data is still in the WAL (or its inputs).
            tracing::info!(path = %path.display(), "removing unfinished block");
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".corrupt") {
            // Set aside by an older version next to the blocks: where they go now.
            set_aside(&path, &format!("{stem}.blk"))?;
            continue;
        }
        if !block::is_block_name(&name) {
            continue;
        }
        match block::read_meta(&path) {
            Ok((meta, file, size)) => {
                if !block::leading_magic_ok(&file, &path)? {
                    tracing::warn!(
                        block = %path.display(),
                        "block's leading magic is damaged; nothing is lost (its footer and sections carry their own CRCs), and compaction rewrites it"
                    );
                }
                blocks.push(Block::new(meta, path, file, size, interner, false))
            }
            Err(e) => {
                // Without its footer nothing in the block can be found, so all of it goes; how
                // much that is, the block's own profile tables still tell.
                let lost = block::count_without_footer(&path, MAX_SECTION_BYTES);
                tracing::error!(
                    block = %path.display(),
                    error = %e,
                    profiles_lost = lost.profiles(),
                    count = lost.how(),
                    "block footer unreadable: moving the block to {QUARANTINE_DIR}/ (its profiles are lost)"
                );
                losses.blocks.fetch_add(1, Ordering::Relaxed);
                losses
                    .profiles
                    .fetch_add(lost.profiles(), Ordering::Relaxed);
                set_aside(&path, &name)?;
            }
        }
    }
    let mut removed = false;
    // 1. A compaction finished writing its output but not deleting its inputs.
    let replaced: HashSet<u64> = blocks
        .iter()
        .flat_map(|b| b.meta.replaces.iter().copied())
        .collect();
    // 2. A flush wrote some of its blocks but not all: its segments are still here, so drop the
    //    partial output and replay them.
    let mut flush_counts: HashMap<u64, u32> = HashMap::new();
    for b in &blocks {
        *flush_counts.entry(b.meta.flush_id).or_default() += 1;
    }
    blocks.retain(|b| {
        let partial = flush_counts
            .get(&b.meta.flush_id)
            .is_some_and(|&n| n < b.meta.flush_parts)
            && b.meta.sources.iter().any(|s| seg_ids.contains(s));
        let drop = replaced.contains(&b.meta.id) || partial;
        if drop {
            tracing::info!(block = %b.path.display(), partial, "removing block superseded or left by an interrupted flush");
            if let Err(e) = fs::remove_file(&b.path) {
                tracing::warn!(block = %b.path.display(), error = %e, "could not remove block");
            }
            removed = true;
        }
        !drop
    });
    if removed {
        block::sync_dir(dir)?;
    }
    // 3. A flush completed but its segments were not all deleted.
    let covered: BTreeSet<u64> = blocks
        .iter()
        .flat_map(|b| b.meta.sources.iter().copied())
        .filter(|s| seg_ids.contains(s))
        .collect();
    for id in &covered {
        let path = segment::segment_path(seg_dir, *id);
        tracing::info!(segment = %path.display(), "removing segment already flushed into blocks");
        fs::remove_file(&path).map_err(io_err(&path))?;
        seg_ids.remove(id);
    }
    if !covered.is_empty() {
        block::sync_dir(seg_dir)?;
    }
    Ok(blocks)
}

fn create_segment(dir: &Path, id: u64) -> Result<Active, StoreError> {
    let path = segment::segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let written = file
        .write_all(SEGMENT_MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&path))
        // The new directory entry must be durable too, or a crash could lose the whole file.
        .and_then(|()| block::sync_dir(dir));
    if let Err(e) = written {
        // A half-made segment (say, on a full disk) would make every later attempt at this id
        // fail: remove it so the next append tries again from scratch.
        if let Err(rm) = fs::remove_file(&path) {
            tracing::warn!(segment = %path.display(), error = %rm, "could not remove a half-made segment");
        }
        return Err(e);
    }
    Ok(Active {
        id,
        file,
        len: SEGMENT_MAGIC.len() as u64,
        opened: Instant::now(),
    })
}

// A poisoned lock means a thread panicked mid-update of plain data; the data is still usable
// (appends roll back on failure), so recover the guard rather than propagate a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalStore {
    /// Selected series labels with a profile in range, head and blocks.
    fn for_each_series_in_range(
        &self,
        selector: &Selector,
        range: TimeRange,
        mut f: impl FnMut(&Labels, &mut dyn Iterator<Item = String>),
    ) {
        let (head, blocks) = self
            .inner
            .snapshot(|l| selector.matches(l), |e| range.contains(e.time_nanos));
        for r in &head {
            f(&r.labels, &mut r.entry.profile_types.iter().cloned());
        }
        for b in blocks.iter().filter(|b| b.overlaps(range)) {
            for (i, s) in b.candidates(selector, range) {
                match b.in_range(s, range) {
                    Ok(Some(types)) => f(&b.labels[i], &mut types.into_iter()),
                    Ok(None) => {}
                    Err(e) => self.inner.quarantine(b, Some(i), &e.to_string()),
                }
            }
        }
    }
}

impl Store for LocalStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        self.append_decompressed(profiles, Vec::new())
    }

    fn append_decompressed(
        &self,
        profiles: Vec<NewProfile>,
        decompressed: Vec<Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        if profiles.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        // Frames at offsets relative to the batch, and their lengths.
        let mut buf = Vec::with_capacity(profiles.iter().map(|p| p.pprof.len() + 256).sum());
        let mut frames = Vec::with_capacity(profiles.len());
        for p in &profiles {
            let at = buf.len() as u64;
            frames.push((at, segment::encode_record(p, &mut buf)?));
        }
        // Each profile decompressed for the head's aggregate before any lock is taken (the
        // caller's copy when it has one, else inflated here); not when the aggregate is full
        // (then these records are read exactly, see [`headagg`]).
        let fold = inner.agg_bytes.load(Ordering::Relaxed) < headagg::MAX_BYTES;
        let mut decompressed = decompressed.into_iter();
        let profiles: Vec<(NewProfile, Option<Vec<u8>>)> = profiles
            .into_iter()
            .map(|mut p| {
                let given = decompressed.next().flatten();
                let raw = match given {
                    _ if !fold => None,
                    Some(raw) => Some(raw),
                    None if kiln_proto::codec::is_gzip(&p.pprof) => {
                        kiln_proto::codec::gunzip_limited(&p.pprof, inner.max_profile_bytes).ok()
                    }
                    // Not compressed: the bytes themselves (the WAL has its copy in `buf`).
                    None => Some(std::mem::take(&mut p.pprof)),
                };
                // As large as the flush may read back (else it could not take it out again).
                (p, raw.filter(|r| r.len() <= inner.max_profile_bytes))
            })
            .collect();
        let mut active = lock(&inner.active);
        if inner.rotation_due(&active) {
            inner.rotate(&mut active)?;
        }
        let path = segment::segment_path(&inner.dir, active.id);
        let start = active.len;
        // Positional write at our own idea of the end, so a failed earlier attempt that left bytes
        // behind is simply overwritten.
        let written = active
            .file
            .write_all_at(&buf, start)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            // Roll back so a later append does not leave a gap of garbage.
            let _ = active.file.set_len(start);
            return Err(io_err(&path)(e));
        }
        active.len = start + buf.len() as u64;
        let segment = active.id;
        // Index under the append lock, so a flush cannot seal this segment in between.
        let mut state = write_lock(&inner.state);
        for ((p, raw), (at, frame)) in profiles.into_iter().zip(frames) {
            state.head.add(
                p.labels,
                Entry {
                    time_nanos: p.time_nanos,
                    segment,
                    offset: start + at + frame.payload_at,
                    len: frame.payload_len,
                    crc: frame.crc,
                    profile_types: p.profile_types.into(),
                    aggregated: false,
                },
                raw.as_deref(),
            );
        }
        inner
            .agg_bytes
            .store(state.head.agg.bytes(), Ordering::Relaxed);
        Ok(())
    }

    fn label_names(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        let mut names = BTreeSet::new();
        self.for_each_series_in_range(selector, range, |labels, _| {
            names.extend(labels.iter().map(|(k, _)| k.to_owned()));
        });
        names.into_iter().collect()
    }

    fn label_values(&self, name: &str, selector: &Selector, range: TimeRange) -> Vec<String> {
        let mut values = BTreeSet::new();
        self.for_each_series_in_range(selector, range, |labels, _| {
            if let Some(v) = labels.get(name) {
                values.insert(v.to_owned());
            }
        });
        values.into_iter().collect()
    }

    fn profile_types(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        let mut types = BTreeSet::new();
        self.for_each_series_in_range(selector, range, |_, t| types.extend(t));
        types.into_iter().collect()
    }

    fn time_bounds(&self, selector: &Selector) -> Option<(i64, i64)> {
        let mut bounds: Option<(i64, i64)> = None;
        let mut widen = |lo: i64, hi: i64| {
            let b = bounds.get_or_insert((lo, hi));
            b.0 = b.0.min(lo);
            b.1 = b.1.max(hi);
        };
        // Head records: their times, nothing kept.
        let (_, blocks) = self.inner.snapshot(
            |l| selector.matches(l),
            |e| {
                widen(e.time_nanos, e.time_nanos);
                false
            },
        );
        // Blocks: each series' span from the footer.
        for b in &blocks {
            for (_, s) in b.candidates(selector, TimeRange::ALL) {
                if s.profiles > 0 {
                    widen(s.min_time, s.max_time);
                }
            }
        }
        bounds
    }

    fn for_each_series(
        &self,
        selector: &Selector,
        range: TimeRange,
        visit: &mut dyn FnMut(&Labels, &[String]),
    ) {
        self.for_each_series_in_range(selector, range, |labels, t| {
            let mut types: Vec<String> = t.collect();
            types.sort();
            types.dedup();
            visit(labels, &types);
        });
    }

    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        let wants_type = |types: &[String]| {
            req.profile_type
                .is_none_or(|t| types.iter().any(|p| p == t))
        };
        // Collect under the locks, read files without them so appends are not blocked.
        let (head, blocks) = self.inner.snapshot(
            |l| req.selector.matches(l),
            |e| req.range.contains(e.time_nanos) && wants_type(&e.profile_types),
        );
        let mut n = 0;
        for b in blocks.iter().filter(|b| b.overlaps(req.range)) {
            if req.stopped() {
                return Ok(n);
            }
            let series: Vec<(usize, &SeriesMeta)> = b
                .candidates(req.selector, req.range)
                .filter(|(_, s)| wants_type(&s.profile_types))
                .collect();
            if series.is_empty() {
                continue;
            }
            let tables = match Tables::load(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES) {
                Ok(t) => t,
                // One damaged block must not make every query over it fail.
                Err(e) => {
                    self.inner.quarantine(b, None, &e.to_string());
                    continue;
                }
            };
            for (i, s) in series {
                if req.stopped() {
                    return Ok(n);
                }
                let data = match SeriesData::load(&b.file, &b.path, s, MAX_SECTION_BYTES) {
                    Ok(d) => d,
                    Err(e) => {
                        self.inner.quarantine(b, Some(i), &e.to_string());
                        continue;
                    }
                };
                data.for_each(
                    &tables,
                    |meta| req.range.contains(meta.time_nanos) && wants_type(&meta.profile_types),
                    |meta, profile| {
                        n += 1;
                        visit(StoredProfile {
                            labels: b.labels[i].clone(),
                            time_nanos: meta.time_nanos,
                            profile,
                        });
                    },
                );
            }
        }
        for r in head {
            if req.stopped() {
                return Ok(n);
            }
            let profile = match &r.file {
                Some(f) => self.inner.read_entry(&r.entry, f),
                None => Err(StoreError::Corrupt {
                    segment: r.entry.segment,
                    offset: r.entry.offset,
                    reason: "segment file is not open".into(),
                }),
            };
            match profile {
                Ok(profile) => {
                    n += 1;
                    visit(StoredProfile {
                        labels: r.labels,
                        time_nanos: r.entry.time_nanos,
                        profile,
                    });
                }
                Err(e) => tracing::error!(error = %e, "skipping unreadable profile"),
            }
        }
        Ok(n)
    }

    fn read_merged(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(MergedProfile),
    ) -> Result<usize, StoreError> {
        let Some(profile_type) = req.profile_type else {
            return self.read(req, &mut |p| visit(MergedProfile::pprof(p.profile, 1)));
        };
        let wants_type = |types: &[String]| types.iter().any(|p| p == profile_type);
        // A query abandoned before it got here (its client went away) reads nothing at all.
        if req.stopped() {
            return Ok(0);
        }
        let (head_merged, head, blocks) = self.inner.head_merged(&req, profile_type);
        let mut n = 0;
        if let Some((stacks, profiles)) = head_merged
            && !req.stopped()
        {
            n += profiles;
            visit(MergedProfile {
                data: Merged::Stacks(stacks),
                profiles,
            });
        }
        for b in blocks.iter().filter(|b| b.overlaps(req.range)) {
            if req.stopped() {
                return Ok(n);
            }
            let series: Vec<(usize, &SeriesMeta)> = b
                .candidates(req.selector, req.range)
                .filter(|(_, s)| wants_type(&s.profile_types))
                .collect();
            if series.is_empty() {
                continue;
            }
            let decoded = match self.inner.decoded(b) {
                Ok(d) => d,
                Err(e) => {
                    self.inner.quarantine(b, None, &e.to_string());
                    continue;
                }
            };
            let mut acc = Vec::new();
            let mut merged = 0;
            for (i, s) in series {
                if req.stopped() {
                    return Ok(n);
                }
                match self
                    .inner
                    .add_series(b, &decoded, i, s, req.range, profile_type, &mut acc)
                {
                    Ok(k) => merged += k,
                    Err(e) => self.inner.quarantine(b, Some(i), &e.to_string()),
                }
            }
            if merged > 0 {
                n += merged;
                visit(MergedProfile {
                    data: Merged::Stacks(MergedStacks {
                        self_values: decoded.shape.trie.node_values(&acc),
                        shape: decoded.shape.clone(),
                        profile_type: profile_type.to_owned(),
                    }),
                    profiles: merged,
                });
            }
        }
        for r in head {
            if req.stopped() {
                return Ok(n);
            }
            let profile = match &r.file {
                Some(f) => self.inner.read_entry(&r.entry, f),
                None => continue,
            };
            match profile {
                Ok(profile) => {
                    n += 1;
                    visit(MergedProfile::pprof(profile, 1));
                }
                Err(e) => tracing::error!(error = %e, "skipping unreadable profile"),
            }
        }
        Ok(n)
    }

    fn stats(&self) -> StoreStats {
        let wal = self.inner.wal_bytes();
        let segments = read_lock(&self.inner.readers).len() as u64;
        let set_aside: u64 = self
            .inner
            .set_aside()
            .iter()
            .map(|(_, size, _, _)| size)
            .sum();
        let state = read_lock(&self.inner.state);
        let block_series: HashSet<&Arc<Labels>> = state
            .blocks
            .iter()
            .flat_map(|b| {
                b.labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| b.readable(*i))
                    .map(|(_, l)| l)
            })
            .collect();
        let mut series = block_series.len() as u64;
        series += state
            .head
            .series
            .iter()
            .filter(|s| !block_series.contains(&s.labels))
            .count() as u64;
        let losses = &self.inner.losses;
        StoreStats {
            bytes: wal + set_aside + state.blocks.iter().map(|b| b.size).sum::<u64>(),
            segments,
            blocks: state.blocks.len() as u64,
            series,
            profiles: state.head.profiles
                + state
                    .blocks
                    .iter()
                    .map(|b| b.readable_profiles())
                    .sum::<u64>(),
            quarantined_blocks: losses.blocks.load(Ordering::Relaxed),
            quarantined_bytes: set_aside
                + state
                    .blocks
                    .iter()
                    .filter(|b| b.is_damaged())
                    .map(|b| b.size)
                    .sum::<u64>(),
            profiles_lost: losses.profiles.load(Ordering::Relaxed),
            wal_damaged_bytes: losses.wal_bytes.load(Ordering::Relaxed),
            decoded_cache_bytes: self.inner.decoded_bytes.load(Ordering::Relaxed) as u64,
            ..StoreStats::default()
        }
    }

    fn read_scope(&self, req: ReadRequest<'_>) -> Result<super::ReadScope, StoreError> {
        let wants_type = |types: &[String]| {
            req.profile_type
                .is_none_or(|t| types.iter().any(|p| p == t))
        };
        let (head, blocks) = self.inner.snapshot(
            |l| req.selector.matches(l),
            |e| req.range.contains(e.time_nanos) && wants_type(&e.profile_types),
        );
        let mut scope = super::ReadScope::default();
        // Blocks, from their footers: what `read` decompresses is the symbol and stack tables of
        // each block with a candidate series, and each candidate series' sections whole.
        let mut series: HashSet<&Arc<Labels>> = HashSet::new();
        for b in blocks.iter().filter(|b| b.overlaps(req.range)) {
            let mut touched = false;
            for (i, s) in b
                .candidates(req.selector, req.range)
                .filter(|(_, s)| wants_type(&s.profile_types))
            {
                touched = true;
                series.insert(&b.labels[i]);
                let s_bytes = |r: &Option<block::SectionRef>| r.as_ref().map_or(0, |r| r.len);
                scope.blocks.profiles += s.profiles;
                scope.blocks.samples += s.rows;
                scope.blocks.profile_bytes +=
                    s_bytes(&s.profiles_section) + s_bytes(&s.rows_section);
            }
            if touched {
                let m = &b.meta;
                scope.blocks.blocks += 1;
                scope.blocks.symbol_bytes += [&m.symbols, &m.stacks]
                    .iter()
                    .map(|r| r.as_ref().map_or(0, |r| r.len))
                    .sum::<u64>();
                scope.blocks.index_bytes += b.footer_bytes();
            }
        }
        scope.blocks.series = series.len() as u64;
        // Head: the selected WAL records, decoded for their sample counts as a read would.
        let mut series: HashSet<&Arc<Labels>> = HashSet::new();
        let mut segments = HashSet::new();
        for r in &head {
            if req.stopped() {
                break;
            }
            series.insert(&r.labels);
            segments.insert(r.entry.segment);
            scope.head.profiles += 1;
            scope.head.profile_bytes += u64::from(r.entry.len);
            if let Some(f) = &r.file {
                match self.inner.read_entry(&r.entry, f) {
                    Ok(p) => scope.head.samples += p.sample.len() as u64,
                    Err(e) => tracing::error!(error = %e, "skipping unreadable profile"),
                }
            }
        }
        scope.head.series = series.len() as u64;
        scope.head.blocks = segments.len() as u64;
        Ok(scope)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_head()
    }

    fn maintain(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.compact_and_expire(now_nanos)
    }
}

/// What the bucket store ([`super::bucket`]) needs from the engine under it. Blocks handed to the
/// bucket carry their key; the engine only reads them.
impl LocalStore {
    /// Blocks flushed here and not yet handed to the bucket. Taken under the maintenance lock, so
    /// the flush that made each of them has finished (its WAL segments are gone): handing one over
    /// can then never leave both the block and its records behind for a restart to see twice.
    pub(crate) fn pending_blocks(&self) -> Vec<PendingBlock> {
        let _m = lock(&self.inner.maintenance);
        read_lock(&self.inner.state)
            .blocks
            .iter()
            .filter(|b| b.bucket_key.is_none())
            .map(|b| PendingBlock {
                id: b.meta.id,
                partition_start: b.meta.partition_start,
                min_time: b.meta.min_time,
                max_time: b.meta.max_time,
                profiles: b.meta.profiles,
                size: b.size,
            })
            .collect()
    }

    /// Moves local block `id` out of `blocks/` to `to` (the bucket store's outbox) and from now on
    /// knows it as bucket block `key`. Atomic on disk: a crash leaves the file in one place.
    pub(crate) fn hand_over(&self, id: u64, key: &str, to: &Path) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        let mut state = write_lock(&self.inner.state);
        let Some(i) = state
            .blocks
            .iter()
            .position(|b| b.meta.id == id && b.bucket_key.is_none())
        else {
            return Ok(());
        };
        let old = state.blocks[i].clone();
        let file = old.file.try_clone().map_err(io_err(&old.path))?;
        fs::rename(&old.path, to).map_err(io_err(&old.path))?;
        if let Some(dir) = to.parent() {
            block::sync_dir(dir)?;
        }
        block::sync_dir(&self.inner.blocks_dir)?;
        let health = lock(&old.health);
        state.blocks[i] = Arc::new(Block {
            meta: old.meta.clone(),
            labels: old.labels.clone(),
            path: to.to_owned(),
            file,
            size: old.size,
            damaged: AtomicBool::new(old.is_damaged()),
            health: Mutex::new(Health {
                verified: health.verified,
                broken: health.broken.clone(),
                bad_series: health.bad_series.clone(),
            }),
            bucket_key: Some(key.into()),
            decoded: Mutex::new(lock(&old.decoded).clone()),
        });
        Ok(())
    }

    /// Makes the bucket blocks readable here exactly `want` (key → file): opens the new ones,
    /// forgets those not listed (an in-flight read keeps its handle). Local blocks stay as they are.
    /// A file that cannot be opened is left out and reported.
    pub(crate) fn set_bucket_blocks(&self, want: &BTreeMap<String, PathBuf>) -> Vec<String> {
        let have: HashSet<String> = read_lock(&self.inner.state)
            .blocks
            .iter()
            .filter_map(|b| b.bucket_key.as_deref().map(str::to_owned))
            .collect();
        let mut opened = Vec::new();
        let mut failed = Vec::new();
        for (key, path) in want.iter().filter(|(k, _)| !have.contains(*k)) {
            match block::read_meta(path) {
                Ok((meta, file, size)) => {
                    let mut b =
                        Block::new(meta, path.clone(), file, size, &self.inner.interner, false);
                    b.bucket_key = Some(key.as_str().into());
                    opened.push(Arc::new(b));
                }
                Err(e) => {
                    tracing::error!(key, path = %path.display(), error = %e, "cached bucket block unreadable");
                    failed.push(key.clone());
                }
            }
        }
        let mut state = write_lock(&self.inner.state);
        state
            .blocks
            .retain(|b| b.bucket_key.as_deref().is_none_or(|k| want.contains_key(k)));
        state.blocks.extend(opened);
        drop(state);
        lock(&self.inner.interner).prune();
        failed
    }

    /// Merges the bucket blocks `keys` (all readable here) into one new block file in `dir`.
    /// `None` when one of them is missing here or damaged.
    pub(crate) fn merge_bucket_blocks(
        &self,
        keys: &[String],
        dir: &Path,
        rollup: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(PathBuf, u64)>, StoreError> {
        let inputs: Vec<Arc<Block>> = {
            let state = read_lock(&self.inner.state);
            keys.iter()
                .filter_map(|k| {
                    state
                        .blocks
                        .iter()
                        .find(|b| b.bucket_key.as_deref() == Some(k.as_str()))
                        .cloned()
                })
                .collect()
        };
        if inputs.len() != keys.len() {
            return Ok(None);
        }
        for b in &inputs {
            self.inner.verify_block(b);
            if b.is_damaged() {
                return Ok(None);
            }
        }
        let id = self.inner.next_id();
        let provenance = Provenance {
            id,
            flush_id: id,
            flush_parts: 1,
            sources: Vec::new(),
            replaces: Vec::new(),
        };
        Ok(self
            .inner
            .build_merged(&inputs, dir, provenance, rollup, cancelled)?
            .map(|(_, path, size)| (path, size)))
    }

    /// Bytes of the WAL plus blocks not yet handed to the bucket, and the profiles in them.
    pub(crate) fn local_usage(&self) -> (u64, u64) {
        let wal = self.inner.wal_bytes();
        let state = read_lock(&self.inner.state);
        let local = state.blocks.iter().filter(|b| b.bucket_key.is_none());
        let (bytes, profiles) = local.fold((wal, state.head.profiles), |(b, p), blk| {
            (b + blk.size, p + blk.readable_profiles())
        });
        (bytes, profiles)
    }
}
