//! [`LocalStore`]: the embedded engine — a write-ahead log (the head) in front of immutable blocks.
//!
//! - **WAL / head.** Appends go to the active segment and are fsync'd before `append` returns, so
//!   an acknowledged profile survives `kill -9`. The head's in-memory index holds only where each
//!   record lives (not the profile), and the head is bounded: the active segment is sealed once it
//!   reaches `max_segment_bytes` or `max_segment_age_secs`, and sealed segments are flushed.
//! - **Flush.** Sealed segments are turned into one block per hour of profile time (see
//!   [`super::block`]), each written atomically; only then are the segments deleted.
//! - **Compaction** merges the blocks of one hour into one. **Retention** deletes blocks older than
//!   `retention_age_secs`, then the oldest blocks while everything on disk exceeds
//!   `retention_bytes`. A background thread runs flush, compaction and retention every
//!   `maintenance_interval_secs`.
//! - **Start-up** rebuilds the head index from the segments (cutting a torn tail), loads block
//!   footers, and finishes or undoes what a crash interrupted: blocks replaced by a compaction are
//!   deleted, a partial flush is discarded and its segments replayed, segments already covered by
//!   a complete flush are deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kiln_proto::pprof::Profile;
use prost::Message;

use super::block::{self, BlockBuilder, BlockMeta, Provenance, SeriesData, SeriesMeta, Tables};
use super::segment::{self, FRAME_HEADER_LEN, FrameError, SEGMENT_MAGIC};
use super::{
    Labels, MergedProfile, NewProfile, ReadRequest, Store, StoreError, StoreStats, StoredProfile,
};
use crate::config::StoreConfig;
use crate::query::selector::Selector;
use crate::query::time::{self, TimeRange};

/// Largest decompressed block section accepted. Sections are CRC'd before inflating, so this only
/// guards against a footer that is consistent but absurd.
const MAX_SECTION_BYTES: usize = 1 << 31;

/// Where one head record lives.
#[derive(Clone, Debug)]
struct Entry {
    time_nanos: i64,
    segment: u64,
    offset: u64,
    len: u32,
    profile_types: Arc<[String]>,
}

struct Series {
    labels: Arc<Labels>,
    entries: Vec<Entry>,
}

/// The head's index: series → records in WAL segments.
#[derive(Default)]
struct Index {
    series: Vec<Series>,
    by_labels: HashMap<Arc<Labels>, usize>,
    /// Interned profile-type lists: most records share one of a handful.
    type_sets: HashSet<Arc<[String]>>,
    profiles: u64,
}

impl Index {
    fn add(&mut self, labels: Labels, entry: Entry) {
        let labels = match self.by_labels.get_key_value(&labels) {
            Some((l, _)) => l.clone(),
            None => Arc::new(labels),
        };
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

    /// The index without the records of `segments`.
    fn without(&self, segments: &BTreeSet<u64>) -> Index {
        let mut out = Index::default();
        for s in &self.series {
            for e in &s.entries {
                if !segments.contains(&e.segment) {
                    out.add_arc(s.labels.clone(), e.clone());
                }
            }
        }
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
        }
    }

    fn overlaps(&self, range: TimeRange) -> bool {
        self.meta.min_time <= range.until && range.from <= self.meta.max_time
    }

    /// Indices of series matching `selector` whose time span overlaps `range`.
    fn candidates<'a>(
        &'a self,
        selector: &'a Selector,
        range: TimeRange,
    ) -> impl Iterator<Item = (usize, &'a SeriesMeta)> + 'a {
        self.meta.series.iter().enumerate().filter(move |(i, s)| {
            s.min_time <= range.until
                && range.from <= s.max_time
                && selector.matches(&self.labels[*i])
        })
    }

    /// The profile types of series `s` if it has a profile in `range`: from the footer when the
    /// range covers the series' whole span, else exactly from its profile table.
    fn in_range(&self, s: &SeriesMeta, range: TimeRange) -> Option<Vec<String>> {
        if range.from <= s.min_time && s.max_time <= range.until {
            return (s.profiles > 0).then(|| s.profile_types.clone());
        }
        match block::load_series_profiles(&self.file, &self.path, s, MAX_SECTION_BYTES) {
            Ok(profiles) => {
                let mut any = false;
                let mut set = BTreeSet::new();
                for p in profiles
                    .into_iter()
                    .filter(|p| range.contains(p.time_nanos))
                {
                    any = true;
                    set.extend(p.profile_types);
                }
                any.then(|| set.into_iter().collect())
            }
            Err(e) => {
                tracing::error!(error = %e, "skipping unreadable series");
                None
            }
        }
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
}

/// The embedded storage engine. Dropping it stops its background thread.
pub struct LocalStore {
    inner: Arc<Inner>,
    background: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
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
        let inner = Arc::new(Inner::open(dir.into(), config, max_profile_bytes)?);
        let (tx, rx) = mpsc::channel::<()>();
        let weak = Arc::downgrade(&inner);
        let interval = inner.config.maintenance_interval();
        let handle = std::thread::Builder::new()
            .name("kiln-store".into())
            .spawn(move || {
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

    /// Compacts blocks of the same hour together.
    pub fn compact(&self) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.compact()
    }

    /// Applies retention as of `now_nanos`.
    pub fn apply_retention(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.apply_retention(now_nanos)
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
        let blocks = load_blocks(&blocks_dir, &mut seg_ids, &dir, &interner)?;
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
            if let Some(why) = &scan.stopped {
                if last {
                    tracing::warn!(
                        segment = %path.display(),
                        kept_bytes = scan.good_len,
                        dropped_bytes = scan.file_len - scan.good_len,
                        "{why}; truncating the segment after its last good record"
                    );
                } else {
                    tracing::warn!(
                        segment = %path.display(),
                        "{why}; ignoring the rest of this sealed segment"
                    );
                }
            }
            for r in scan.records {
                let labels = r.header.labels();
                index.add(
                    labels,
                    Entry {
                        time_nanos: r.header.time_nanos,
                        segment: id,
                        offset: r.offset,
                        len: r.len,
                        profile_types: r.header.profile_types.into(),
                    },
                );
            }
            let file = File::open(&path).map_err(io_err(&path))?;
            readers.insert(id, Arc::new(file));
            if last && scan.good_len >= SEGMENT_MAGIC.len() as u64 && id > seg_floor {
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
        })
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
        let corrupt = |reason: String| StoreError::Corrupt {
            segment: entry.segment,
            offset: entry.offset,
            reason,
        };
        let mut buf = vec![0u8; FRAME_HEADER_LEN as usize + entry.len as usize];
        let path = segment::segment_path(&self.dir, entry.segment);
        file.read_exact_at(&mut buf, entry.offset)
            .map_err(io_err(&path))?;
        let (fh, payload) = buf.split_at(FRAME_HEADER_LEN as usize);
        let mut header = [0u8; 8];
        header.copy_from_slice(fh);
        let decoded = segment::verify_frame(header, payload)
            .and_then(|()| segment::split_payload(payload))
            .and_then(|(_, body)| segment::decompress(body, self.max_profile_bytes));
        let raw = match decoded {
            Ok(raw) => raw,
            Err(FrameError::Truncated) => return Err(corrupt("truncated".into())),
            Err(FrameError::Corrupt(why)) => return Err(corrupt(why)),
            Err(FrameError::Io(e)) => return Err(io_err(&path)(e)),
        };
        Profile::decode(raw.as_slice()).map_err(|e| corrupt(format!("bad pprof: {e}")))
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
        self.flush(force_flush)?;
        self.compact_and_expire(now_nanos)
    }

    /// Compaction, then retention, then forgetting label sets of deleted blocks. Caller holds
    /// `maintenance`.
    fn compact_and_expire(&self, now_nanos: i64) -> Result<(), StoreError> {
        let result = self
            .compact()
            .and_then(|()| self.apply_retention(now_nanos));
        lock(&self.interner).prune();
        result
    }

    /// Flushes sealed segments into blocks (sealing the active one first if `force` or due), then
    /// deletes them. Caller holds `maintenance`.
    fn flush(&self, force: bool) -> Result<(), StoreError> {
        let active_id = {
            let mut active = lock(&self.active);
            if (force && active.len > SEGMENT_MAGIC.len() as u64) || self.rotation_due(&active) {
                self.rotate(&mut active)?;
            }
            active.id
        };
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
        Ok(())
    }

    /// Writes the records of `sealed` into blocks, then deletes those segments.
    fn flush_segments(&self, sealed: &BTreeSet<u64>) -> Result<(), StoreError> {
        let started = Instant::now();
        let (records, _) = self.snapshot(|_| true, |e| sealed.contains(&e.segment));
        let n_records = records.len();
        let mut builders: BTreeMap<i64, BlockBuilder> = BTreeMap::new();
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
                Ok(p) => builders
                    .entry(block::partition_of(r.entry.time_nanos))
                    .or_default()
                    .add(&r.labels, r.entry.time_nanos, &r.entry.profile_types, &p),
                // It failed its CRC or does not decode: nothing a retry would fix.
                Err(e) => tracing::error!(error = %e, "dropping unreadable WAL record at flush"),
            }
        }
        let flush_id = self.next_id();
        let parts = builders.len() as u32;
        let sources: Vec<u64> = sealed.iter().copied().collect();
        let mut new_blocks = Vec::with_capacity(builders.len());
        for (_, b) in builders {
            let (meta, path, size) = b.write(
                &self.blocks_dir,
                Provenance {
                    id: self.next_id(),
                    flush_id,
                    flush_parts: parts,
                    sources: sources.clone(),
                    replaces: Vec::new(),
                },
            )?;
            let file = File::open(&path).map_err(io_err(&path))?;
            new_blocks.push(Arc::new(Block::new(meta, path, file, size, &self.interner)));
        }
        {
            let mut state = write_lock(&self.state);
            state.head = state.head.without(sealed);
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

    /// Merges the blocks of each hour into one, as long as the result stays under
    /// `max_block_bytes`. Caller holds `maintenance`.
    fn compact(&self) -> Result<(), StoreError> {
        let blocks = read_lock(&self.state).blocks.clone();
        let mut by_partition: BTreeMap<i64, Vec<Arc<Block>>> = BTreeMap::new();
        for b in blocks {
            by_partition
                .entry(b.meta.partition_start)
                .or_default()
                .push(b);
        }
        for (_, mut group) in by_partition {
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
                self.merge(&take)?;
            }
        }
        Ok(())
    }

    fn merge(&self, inputs: &[Arc<Block>]) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut builder = BlockBuilder::new();
        for b in inputs {
            let tables = Tables::load(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES)?;
            for (i, s) in b.meta.series.iter().enumerate() {
                let data = SeriesData::load(&b.file, &b.path, s, MAX_SECTION_BYTES)?;
                data.for_each(
                    &tables,
                    |_| true,
                    |meta, p| builder.add(&b.labels[i], meta.time_nanos, &meta.profile_types, &p),
                );
            }
        }
        let mut sources: Vec<u64> = inputs
            .iter()
            .flat_map(|b| b.meta.sources.iter().copied())
            .collect();
        sources.sort_unstable();
        sources.dedup();
        let id = self.next_id();
        let replaces: Vec<u64> = inputs.iter().map(|b| b.meta.id).collect();
        let (meta, path, size) = builder.write(
            &self.blocks_dir,
            Provenance {
                id,
                flush_id: id,
                flush_parts: 1,
                sources,
                replaces: replaces.clone(),
            },
        )?;
        let file = File::open(&path).map_err(io_err(&path))?;
        let merged = Arc::new(Block::new(meta, path, file, size, &self.interner));
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
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted blocks"
        );
        Ok(())
    }

    fn wal_bytes(&self) -> u64 {
        lock(&self.active).len + lock(&self.sealed).values().sum::<u64>()
    }

    /// Deletes blocks past the age limit, then the oldest while over the size limit. Caller holds
    /// `maintenance`.
    fn apply_retention(&self, now_nanos: i64) -> Result<(), StoreError> {
        let mut blocks = read_lock(&self.state).blocks.clone();
        // Oldest first: by the newest profile they hold, then by id.
        blocks.sort_by_key(|b| (b.meta.max_time, b.meta.id));
        let mut doomed: Vec<(Arc<Block>, &str)> = Vec::new();
        let mut kept = Vec::new();
        let cutoff = self
            .config
            .retention_age()
            .map(|age| now_nanos.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX)));
        for b in blocks {
            match cutoff {
                Some(c) if b.meta.max_time < c => doomed.push((b, "age")),
                _ => kept.push(b),
            }
        }
        if self.config.retention_bytes > 0 {
            let mut total = self.wal_bytes() + kept.iter().map(|b| b.size).sum::<u64>();
            let mut kept = kept.into_iter();
            while total > self.config.retention_bytes {
                let Some(b) = kept.next() else {
                    tracing::warn!(
                        bytes = total,
                        limit = self.config.retention_bytes,
                        "the WAL alone exceeds retention_bytes; it shrinks as it is flushed"
                    );
                    break;
                };
                total -= b.size;
                doomed.push((b, "size"));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        {
            let ids: HashSet<u64> = doomed.iter().map(|(b, _)| b.meta.id).collect();
            write_lock(&self.state)
                .blocks
                .retain(|b| !ids.contains(&b.meta.id));
        }
        for (b, why) in &doomed {
            tracing::info!(
                block = %b.path.display(),
                bytes = b.size,
                max_time = b.meta.max_time,
                reason = why,
                "retention: deleting block"
            );
            if let Err(e) = fs::remove_file(&b.path) {
                tracing::warn!(block = %b.path.display(), error = %e, "could not delete block");
            }
        }
        block::sync_dir(&self.blocks_dir)
    }
}

/// Loads block footers from `dir`, then settles what a crash may have left half done. Segments
/// whose records are already in complete blocks are deleted and removed from `seg_ids`.
fn load_blocks(
    dir: &Path,
    seg_ids: &mut BTreeSet<u64>,
    seg_dir: &Path,
    interner: &Mutex<Interner>,
) -> Result<Vec<Block>, StoreError> {
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
        if !block::is_block_name(&name) {
            continue;
        }
        match block::read_meta(&path) {
            Ok((meta, file, size)) => blocks.push(Block::new(meta, path, file, size, interner)),
            Err(e) => {
                // Keep the bytes for inspection, out of the way of future starts.
                tracing::error!(error = %e, "setting aside an unreadable block");
                let aside = path.with_extension("corrupt");
                fs::rename(&path, &aside).map_err(io_err(&path))?;
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
    file.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    // The new directory entry must be durable too, or a crash could lose the whole file.
    block::sync_dir(dir)?;
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
                if let Some(types) = b.in_range(s, range) {
                    f(&b.labels[i], &mut types.into_iter());
                }
            }
        }
    }
}

impl Store for LocalStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
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
        for (p, (at, frame_len)) in profiles.into_iter().zip(frames) {
            state.head.add(
                p.labels,
                Entry {
                    time_nanos: p.time_nanos,
                    segment,
                    offset: start + at,
                    len: (frame_len as u64 - FRAME_HEADER_LEN) as u32,
                    profile_types: p.profile_types.into(),
                },
            );
        }
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
                    tracing::error!(error = %e, "skipping unreadable block");
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
                        tracing::error!(error = %e, "skipping unreadable series");
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
            return self.read(req, &mut |p| {
                visit(MergedProfile {
                    profile: p.profile,
                    profiles: 1,
                })
            });
        };
        let wants_type = |types: &[String]| types.iter().any(|p| p == profile_type);
        let (head, blocks) = self.inner.snapshot(
            |l| req.selector.matches(l),
            |e| req.range.contains(e.time_nanos) && wants_type(&e.profile_types),
        );
        let mut n = 0;
        for b in blocks.iter().filter(|b| b.overlaps(req.range)) {
            if req.stopped() {
                return Ok(n);
            }
            let series: Vec<&SeriesMeta> = b
                .candidates(req.selector, req.range)
                .filter(|(_, s)| wants_type(&s.profile_types))
                .map(|(_, s)| s)
                .collect();
            if series.is_empty() {
                continue;
            }
            let tables = match Tables::load(&b.file, &b.path, &b.meta, MAX_SECTION_BYTES) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable block");
                    continue;
                }
            };
            let mut acc = Vec::new();
            let mut merged = 0;
            for s in series {
                if req.stopped() {
                    return Ok(n);
                }
                match SeriesData::load(&b.file, &b.path, s, MAX_SECTION_BYTES) {
                    Ok(data) => {
                        merged += data.aggregate(
                            &tables,
                            |meta| req.range.contains(meta.time_nanos),
                            profile_type,
                            &mut acc,
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "skipping unreadable series"),
                }
            }
            if merged > 0 {
                n += merged;
                visit(MergedProfile {
                    profile: tables.merged_profile(profile_type, &acc),
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
                    visit(MergedProfile {
                        profile,
                        profiles: 1,
                    });
                }
                Err(e) => tracing::error!(error = %e, "skipping unreadable profile"),
            }
        }
        Ok(n)
    }

    fn stats(&self) -> StoreStats {
        let wal = self.inner.wal_bytes();
        let segments = read_lock(&self.inner.readers).len() as u64;
        let state = read_lock(&self.inner.state);
        let block_series: HashSet<&Arc<Labels>> =
            state.blocks.iter().flat_map(|b| b.labels.iter()).collect();
        let mut series = block_series.len() as u64;
        series += state
            .head
            .series
            .iter()
            .filter(|s| !block_series.contains(&s.labels))
            .count() as u64;
        StoreStats {
            bytes: wal + state.blocks.iter().map(|b| b.size).sum::<u64>(),
            segments,
            blocks: state.blocks.len() as u64,
            series,
            profiles: state.head.profiles
                + state.blocks.iter().map(|b| b.meta.profiles).sum::<u64>(),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_head()
    }

    fn maintain(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _m = lock(&self.inner.maintenance);
        self.inner.compact_and_expire(now_nanos)
    }
}
