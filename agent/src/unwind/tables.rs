//! Per-object unwind tables (`.eh_frame` + `.eh_frame_hdr`, or `.debug_frame`) read once per file
//! and kept in a cache bounded by approximate bytes, evicting the least recently used.
//!
//! Where the files are read: the objects are files of the profiled processes, which a container
//! controls (a FUSE filesystem that stops answering, a huge object on a slow disk), so the agent
//! reads them on a worker thread of their own ([`TableCache::with_background_loads`]). A lookup
//! waits for the worker's answer, bounded (at most 2 s once per object, and after a wait that ran
//! out none for 30 s: without the wait the first samples of every new process were cut short —
//! the native accuracy matrix fell to 80–95 % under load), then answers
//! [`Lookup::Loading`] until the worker is done, and the unwinder built meanwhile lacks
//! that object (its stacks say so: `unwind::Truncation::TablesLoading`). A stalled read holds up
//! only the worker; requests beyond its bounded queue are dropped (counted) and asked for again at
//! the next build. Without a worker (benchmarks, tests that measure walks) tables are read on the
//! calling thread.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, Range};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};

use framehop::{ExplicitModuleSectionInfo, Module};
use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment};

use crate::buildid::{
    BuildId, BuildIdError, FileId, MAX_OBJECT_BYTES, MappedFile, open_mapped_file,
};
use crate::procmaps::Mapping;

/// Why an object's unwind tables could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error(transparent)]
    Open(#[from] BuildIdError),
    #[error("cannot parse {path} as an object file: {source}")]
    Parse {
        path: PathBuf,
        source: object::read::Error,
    },
    #[error("{0} has neither .eh_frame nor .debug_frame")]
    NoUnwindInfo(PathBuf),
}

/// Section bytes shared between the cache and every process's framehop module (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct SectionBytes(Arc<[u8]>);

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A `PT_LOAD` segment: where file bytes land in the object's own (stated) address space.
#[derive(Clone, Copy, Debug)]
struct LoadSegment {
    file_offset: u64,
    file_size: u64,
    vaddr: u64,
}

/// The unwind information of one object file.
#[derive(Debug)]
pub struct ObjectTables {
    name: String,
    /// `.eh_frame` with its stated address range (pointer encodings are relative to it).
    eh_frame: Option<(Range<u64>, SectionBytes)>,
    eh_frame_hdr: Option<(Range<u64>, SectionBytes)>,
    /// Only read when there is no `.eh_frame` (framehop uses one or the other).
    debug_frame: Option<SectionBytes>,
    text_svma: Option<Range<u64>>,
    got_svma: Option<Range<u64>>,
    segments: Vec<LoadSegment>,
}

impl ObjectTables {
    /// Reads the tables of the file behind `m` (only the sections needed, not the whole file).
    pub fn load(pid: u32, m: &Mapping) -> Result<ObjectTables, TableError> {
        let path = m.path().map(PathBuf::from).unwrap_or_default();
        let mapped = open_mapped_file(&MappedFile {
            pid,
            start: m.start,
            end: m.end,
            path: &path,
            inode: m.file.inode,
        })?;
        let (file, opened) = (mapped.file(), mapped.shown_path().to_owned());
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|source| TableError::Parse {
            path: opened.clone(),
            source,
        })?;
        let name = path.to_string_lossy().into_owned();
        if let Some(tables) = Self::from_object(&obj, name.clone()) {
            return Ok(tables);
        }
        // No CFI left in the file: a stripped binary whose only CFI was .debug_frame (Go's linker
        // emits no .eh_frame). Its separate debug file, found as the uploader finds it, has it.
        let debug = m.build_id.as_ref().and_then(|id| {
            let root = crate::process_files::ProcessRoot::of_process(pid).ok()?;
            crate::debuglink::find_debug_file(&root, file, &path, id, MAX_OBJECT_BYTES)
        });
        if let Some(debug) = debug {
            let debug_path = debug.shown_path();
            let debug_cache = ReadCache::new(debug.file());
            if let Ok(debug_obj) = object::File::parse(&debug_cache)
                && let Some(tables) = Self::from_objects(&obj, Some(&debug_obj), name)
            {
                tracing::debug!(path = %debug_path.display(), "unwind tables from separate debuginfo");
                return Ok(tables);
            }
        }
        Err(TableError::NoUnwindInfo(opened))
    }

    /// Extracts the tables from a parsed object; `None` when it has no CFI at all.
    pub fn from_object<'d, R: object::ReadRef<'d>>(
        obj: &object::File<'d, R>,
        name: String,
    ) -> Option<ObjectTables> {
        Self::from_objects::<R, R>(obj, None, name)
    }

    /// [`ObjectTables::from_object`], taking `.debug_frame` from `debug` (the object's separate
    /// debug file) when the object has no CFI of its own; the layout is always the object's.
    fn from_objects<'d, R: object::ReadRef<'d>, D: object::ReadRef<'d>>(
        obj: &object::File<'d, R>,
        debug: Option<&object::File<'d, D>>,
        name: String,
    ) -> Option<ObjectTables> {
        let section = |n: &str| -> Option<(Range<u64>, SectionBytes)> {
            let s = obj.section_by_name(n)?;
            // Compressed sections are inflated: Go's linker compresses .debug_frame (its only CFI).
            let data = s.uncompressed_data().ok()?;
            if data.is_empty() {
                return None;
            }
            Some((
                s.address()..s.address() + s.size(),
                SectionBytes(Arc::from(&*data)),
            ))
        };
        let range = |n: &str| {
            obj.section_by_name(n)
                .map(|s| s.address()..s.address() + s.size())
        };
        let eh_frame = section(".eh_frame");
        let eh_frame_hdr = eh_frame.as_ref().and_then(|_| section(".eh_frame_hdr"));
        let debug_frame = match eh_frame {
            Some(_) => None,
            None => section(".debug_frame").map(|(_, d)| d).or_else(|| {
                let data = debug?
                    .section_by_name(".debug_frame")?
                    .uncompressed_data()
                    .ok()?;
                (!data.is_empty()).then(|| SectionBytes(Arc::from(&*data)))
            }),
        };
        if eh_frame.is_none() && debug_frame.is_none() {
            return None;
        }
        let segments = obj
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                LoadSegment {
                    file_offset,
                    file_size,
                    vaddr: s.address(),
                }
            })
            .collect();
        Some(ObjectTables {
            name,
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            // The text bytes would let framehop analyse prologues/epilogues of functions without
            // CFI, but they are the bulk of a binary: compilers emit asynchronous CFI (exact at every
            // instruction) for x86-64, so the agent does not keep them.
            text_svma: range(".text"),
            got_svma: range(".got"),
            segments,
        })
    }

    /// Tables of `bytes` bytes of `.eh_frame` that describe nothing (tests of the caches).
    #[cfg(test)]
    pub fn synthetic(bytes: usize) -> ObjectTables {
        ObjectTables {
            name: String::new(),
            eh_frame: Some((0..bytes as u64, SectionBytes(Arc::from(vec![0u8; bytes])))),
            eh_frame_hdr: None,
            debug_frame: None,
            text_svma: None,
            got_svma: None,
            segments: Vec::new(),
        }
    }

    /// Its `.eh_frame` bytes, weakly: alive as long as anything (a module) holds them (tests).
    #[cfg(test)]
    pub fn eh_frame_weak(&self) -> Option<Weak<[u8]>> {
        self.eh_frame.as_ref().map(|(_, d)| Arc::downgrade(&d.0))
    }

    /// Approximate heap bytes (what the cache's budget counts).
    pub fn approx_bytes(&self) -> usize {
        let len = |s: &Option<(Range<u64>, SectionBytes)>| s.as_ref().map_or(0, |(_, d)| d.len());
        len(&self.eh_frame)
            + len(&self.eh_frame_hdr)
            + self.debug_frame.as_ref().map_or(0, |d| d.len())
            + self.segments.len() * std::mem::size_of::<LoadSegment>()
            + self.name.len()
            + std::mem::size_of::<Self>()
    }

    /// The framehop module for this object mapped at `avma` (which maps file offset `offset`).
    /// `None` when no load segment contains that offset (not the file we think it is).
    pub fn module(&self, avma: Range<u64>, offset: u64) -> Option<Module<SectionBytes>> {
        // The kernel maps a segment from its page-aligned file offset to its page-aligned address,
        // so the mapping's offset names its segment — not "the segment containing the offset":
        // linkers often start the executable segment inside the page where a read-only one ends.
        let page_down = |a: u64| a & !(PAGE - 1);
        let seg = self
            .segments
            .iter()
            .find(|s| s.file_size > 0 && page_down(s.file_offset) == offset)
            .or_else(|| {
                self.segments.iter().find(|s| {
                    s.file_size > 0
                        && (s.file_offset..s.file_offset + s.file_size).contains(&offset)
                })
            })?;
        // The stated address of the mapping's first byte; the difference to where it really is
        // (the load bias) is what framehop calls the base AVMA (ELF images state base 0).
        let svma = seg
            .vaddr
            .checked_add(offset)?
            .checked_sub(seg.file_offset)?;
        let base_avma = avma.start.wrapping_sub(svma);
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, d)| d.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, d)| d.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        };
        Some(Module::new(self.name.clone(), avma, base_avma, info))
    }
}

/// What identifies an object's tables: its build ID, or (device, inode) for files without one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TableKey {
    BuildId(BuildId),
    File(FileId),
}

impl TableKey {
    pub fn of(m: &Mapping) -> TableKey {
        match &m.build_id {
            Some(b) => TableKey::BuildId(b.clone()),
            None => TableKey::File(m.file),
        }
    }
}

impl TableError {
    /// Whether the failure may not happen again (the process exited before its file was opened,
    /// the file was replaced): then it is remembered for [`TRANSIENT_FAILURE_SECS`] only.
    fn is_transient(&self) -> bool {
        matches!(self, TableError::Open(e) if !matches!(e, BuildIdError::Open(d) if d.refusal().is_some()))
    }
}

/// Reads an object's tables: [`ObjectTables::load`], or a stand-in in tests.
pub type LoadFn = Arc<dyn Fn(u32, &Mapping) -> Result<ObjectTables, TableError> + Send + Sync>;

/// What [`TableCache::get`] knows of an object's tables.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Read (`None`: the object has none, or they could not be read).
    Ready(Option<Arc<ObjectTables>>),
    /// Being read by the worker (or to be asked for again: its queue was full).
    Loading,
}

impl Lookup {
    /// The tables if they are ready.
    pub fn ready(self) -> Option<Arc<ObjectTables>> {
        match self {
            Lookup::Ready(t) => t,
            Lookup::Loading => None,
        }
    }
}

/// How long a failure to open an object (see [`TableError::is_transient`]) is remembered: with
/// reads off the sampling thread, a short-lived process (a compiler run) often exits before its
/// objects are read, and its objects (keyed by build ID) are then read for the next process that
/// maps them, not marked as having no tables for good.
const TRANSIENT_FAILURE_SECS: u64 = 10;

/// Most reads waiting for the worker.
const LOAD_QUEUE: usize = 64;

/// Longest the sampling thread waits for one object's tables (once per object).
const WAIT_PER_OBJECT: std::time::Duration = std::time::Duration::from_secs(2);

/// After a wait for tables ran out, how long the sampling thread waits for none.
const STALL_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

type LoadRequest = (TableKey, u32, Mapping);
type LoadResult = (TableKey, Result<ObjectTables, TableError>);

/// The worker that reads tables, and what was asked of it.
struct Background {
    requests: SyncSender<LoadRequest>,
    results: Receiver<LoadResult>,
    /// Asked for, not yet answered.
    pending: HashSet<TableKey>,
    /// Objects whose answer the caller already waited for (see [`TableCache::wait_for`]).
    waited_for: HashSet<TableKey>,
    /// After a wait ran out: no waiting until then.
    stalled_until: Option<std::time::Instant>,
}

impl Background {
    fn spawn(load: LoadFn) -> Background {
        let (requests, rx) = std::sync::mpsc::sync_channel::<LoadRequest>(LOAD_QUEUE);
        let (tx, results) = std::sync::mpsc::channel::<LoadResult>();
        let spawned = std::thread::Builder::new()
            .name("kiln-tables".into())
            .spawn(move || {
                // Ends when the cache (the requests' sender) is dropped.
                for (key, pid, m) in rx {
                    if tx.send((key, load(pid, &m))).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            // The requests' receiver went with the closure: every request fails and is counted.
            tracing::warn!(error = %e, "cannot start the unwind-table reader; frame pointers only");
        }
        Background {
            requests,
            results,
            pending: HashSet::new(),
            waited_for: HashSet::new(),
            stalled_until: None,
        }
    }
}

struct Entry {
    /// `None` remembers a failure, so a file without CFI is not re-read on every sample.
    tables: Option<Arc<ObjectTables>>,
    bytes: usize,
    last_used: u64,
    /// For a failure that may not happen again: when to read the object again.
    retry_at: Option<std::time::Instant>,
}

/// Unwind tables by object, bounded by approximate bytes (LRU eviction).
///
/// Evicting an entry frees its bytes once no per-process unwinder still holds the module built
/// from it; those are rebuilt at most once per window (see `unwind::Unwinder`), so the bound holds
/// within a window's worth of processes.
pub struct TableCache {
    entries: HashMap<TableKey, Entry>,
    budget_bytes: usize,
    used_bytes: usize,
    clock: u64,
    evictions: u64,
    loads: u64,
    /// Tables still held by some process's unwinder, evicted or not: a miss reuses them instead
    /// of reading a second copy. (Measured: with many short-lived processes mapping the same large
    /// library, evicted-and-reloaded copies held by older unwinders peaked at 339 MB of heap.)
    live: HashMap<TableKey, Weak<ObjectTables>>,
    load: LoadFn,
    /// The worker, when files are read off the calling thread.
    background: Option<Background>,
    /// Reads the worker finished, since start (a change tells unwinders built without some
    /// tables to rebuild).
    completed: u64,
    /// Reads not queued because the worker's queue was full.
    dropped: u64,
}

/// The cache's size and its running totals (for the agent's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: usize,
    pub entries: usize,
    /// Entries evicted to stay within the budget, since start.
    pub evictions: u64,
    /// Objects whose tables were read from their file (misses), since start.
    pub loads: u64,
    /// Reads waiting for (or under way in) the worker.
    pub pending: usize,
    /// Reads not queued because the worker's queue was full (asked for again later).
    pub dropped: u64,
}

/// The page size of the x86-64 mappings the kernel makes.
const PAGE: u64 = 4096;

/// What a failed entry counts against the budget (so failures cannot grow the map unboundedly).
const FAILED_ENTRY_BYTES: usize = 256;

impl TableCache {
    pub fn new(budget_bytes: usize) -> Self {
        TableCache {
            entries: HashMap::new(),
            budget_bytes,
            used_bytes: 0,
            clock: 0,
            evictions: 0,
            loads: 0,
            live: HashMap::new(),
            load: Arc::new(ObjectTables::load),
            background: None,
            completed: 0,
            dropped: 0,
        }
    }

    /// Reads tables with `load` instead of [`ObjectTables::load`] (tests).
    pub fn with_loader(mut self, load: LoadFn) -> Self {
        self.load = load;
        self
    }

    /// Reads tables on a worker thread from now on (see the module documentation).
    pub fn with_background_loads(mut self) -> Self {
        self.background = Some(Background::spawn(self.load.clone()));
        self
    }

    /// The tables for `m`: from the cache, or read now (no worker), or asked of the worker.
    pub fn get(&mut self, pid: u32, m: &Mapping) -> Lookup {
        self.clock += 1;
        let key = TableKey::of(m);
        if let Some(e) = self.entries.get_mut(&key) {
            if e.retry_at.is_none_or(|t| std::time::Instant::now() < t) {
                e.last_used = self.clock;
                return Lookup::Ready(e.tables.clone());
            }
            if let Some(e) = self.entries.remove(&key) {
                self.used_bytes -= e.bytes;
            }
        }
        if let Some(t) = self.live.get(&key).and_then(Weak::upgrade) {
            self.insert(key, Some(t.clone()));
            return Lookup::Ready(Some(t));
        }
        let Some(bg) = &mut self.background else {
            self.loads += 1;
            let loaded = (self.load)(pid, m);
            return Lookup::Ready(self.loaded(key, pid, loaded));
        };
        if !bg.pending.contains(&key) {
            match bg.requests.try_send((key.clone(), pid, m.clone())) {
                Ok(()) => {
                    bg.pending.insert(key.clone());
                    bg.waited_for.remove(&key);
                    self.loads += 1;
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped += 1;
                    return Lookup::Loading;
                }
            }
        }
        self.wait_for(&key)
    }

    /// Waits for the worker's answer on `key`, bounded: a stack cut short for want of tables (or
    /// walked by frame pointers alone) is a wrong stack, and a normal read takes milliseconds
    /// (more under load: the native accuracy matrix needed several hundred). At most
    /// [`WAIT_PER_OBJECT`], once per object; after a wait that ran out (a read that stalls), none
    /// at all for [`STALL_PAUSE`]. A stalled file thus delays sampling's processing by at most
    /// [`WAIT_PER_OBJECT`] per [`STALL_PAUSE`] (samples wait in the ring buffer), never stops it.
    fn wait_for(&mut self, key: &TableKey) -> Lookup {
        let Some(bg) = &mut self.background else {
            return Lookup::Loading;
        };
        let now = std::time::Instant::now();
        if bg.stalled_until.is_some_and(|t| now < t) || !bg.waited_for.insert(key.clone()) {
            return Lookup::Loading;
        }
        if bg.waited_for.len() > 4 * LOAD_QUEUE {
            // Bounded: forget objects long answered (a pending one is at worst waited for again).
            let pending = &bg.pending;
            bg.waited_for.retain(|k| pending.contains(k));
            bg.waited_for.insert(key.clone());
        }
        let deadline = now + WAIT_PER_OBJECT;
        loop {
            let Some(bg) = &mut self.background else {
                return Lookup::Loading;
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = match bg.results.recv_timeout(left) {
                Ok(answer) => answer,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        waited_ms = WAIT_PER_OBJECT.as_millis() as u64,
                        "an object file's unwind tables are slow to read; not waiting for any for a while"
                    );
                    bg.stalled_until = Some(std::time::Instant::now() + STALL_PAUSE);
                    return Lookup::Loading;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Lookup::Loading,
            };
            let (done, result) = answer;
            bg.pending.remove(&done);
            self.completed += 1;
            let tables = self.loaded(done.clone(), 0, result);
            if done == *key {
                return Lookup::Ready(tables);
            }
        }
    }

    /// Takes what the worker has read since the last call; returns how many reads finished.
    pub fn poll(&mut self) -> usize {
        let mut done = Vec::new();
        if let Some(bg) = &mut self.background {
            while let Ok((key, result)) = bg.results.try_recv() {
                bg.pending.remove(&key);
                done.push((key, result));
            }
        }
        let n = done.len();
        for (key, result) in done {
            self.completed += 1;
            // The pid is only for the log line.
            self.loaded(key, 0, result);
        }
        n
    }

    /// Reads the worker finished since start.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Records a read's result; returns the tables.
    fn loaded(
        &mut self,
        key: TableKey,
        pid: u32,
        result: Result<ObjectTables, TableError>,
    ) -> Option<Arc<ObjectTables>> {
        let tables = match result {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::debug!(pid, error = %e, "no unwind tables; frame pointers only there");
                let retry_at = e.is_transient().then(|| {
                    std::time::Instant::now()
                        + std::time::Duration::from_secs(TRANSIENT_FAILURE_SECS)
                });
                self.insert(key.clone(), None);
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.retry_at = retry_at;
                }
                return None;
            }
        };
        if self.live.len() >= 2 * self.entries.len() + 64 {
            self.live.retain(|_, w| w.strong_count() > 0);
        }
        self.live.insert(key.clone(), Arc::downgrade(&tables));
        self.insert(key, Some(tables.clone()));
        Some(tables)
    }

    /// Adds an entry, evicting the least recently used until the budget holds.
    pub fn insert(&mut self, key: TableKey, tables: Option<Arc<ObjectTables>>) {
        let mut bytes = tables
            .as_ref()
            .map_or(FAILED_ENTRY_BYTES, |t| t.approx_bytes());
        // An object larger than the whole budget is used for the unwinder being built but not
        // kept, and remembered as having no tables: re-reading it for every process that maps it
        // cost more CPU and memory (each process's unwinder held its own copy for a window) than
        // the agent's whole budget. Its frames fall back to frame pointers.
        let mut tables = tables;
        if bytes > self.budget_bytes {
            tracing::info!(
                bytes,
                budget = self.budget_bytes,
                "unwind tables larger than the cache budget: frame pointers only for this object (--unwind-table-budget)"
            );
            tables = None;
            bytes = FAILED_ENTRY_BYTES;
        }
        while self.used_bytes + bytes > self.budget_bytes && !self.entries.is_empty() {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used_bytes -= e.bytes;
                self.evictions += 1;
            }
        }
        self.used_bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                tables,
                bytes,
                last_used: self.clock,
                retry_at: None,
            },
        );
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Bytes of tables the cache evicted that some process's unwinder still holds (and forgets
    /// those nothing holds any more).
    pub fn evicted_in_use_bytes(&mut self) -> usize {
        self.live.retain(|_, w| w.strong_count() > 0);
        self.live
            .iter()
            .filter(|(k, _)| !self.entries.contains_key(*k))
            .filter_map(|(_, w)| w.upgrade())
            .map(|t| t.approx_bytes())
            .sum()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bytes: self.used_bytes,
            entries: self.entries.len(),
            evictions: self.evictions,
            loads: self.loads,
            pending: self.background.as_ref().map_or(0, |b| b.pending.len()),
            dropped: self.dropped,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(bytes: usize) -> Arc<ObjectTables> {
        Arc::new(ObjectTables::synthetic(bytes))
    }

    fn key(inode: u64) -> TableKey {
        TableKey::File(FileId {
            major: 1,
            minor: 2,
            inode,
        })
    }

    /// Regression: rustc (via bfd ld) starts the R+X segment at file offset 0x16a00, inside the page
    /// where the read-only segment ends, and the kernel maps it from offset 0x16000. Picking the
    /// segment that *contains* 0x16000 (the read-only one) put the load bias 0x1000 off and no
    /// Rust frame unwound.
    #[test]
    fn module_base_for_exec_segment_starting_mid_page() {
        let mut t = Arc::try_unwrap(fake(8)).expect("sole owner");
        t.segments = vec![
            LoadSegment {
                file_offset: 0,
                file_size: 0x16a00,
                vaddr: 0,
            },
            LoadSegment {
                file_offset: 0x16a00,
                file_size: 0x3f300,
                vaddr: 0x17a00,
            },
        ];
        let start = 0x5580_bfd0_0000u64;
        let m = t
            .module(start..start + 0x40000, 0x16000)
            .expect("a segment");
        // Mapping start (offset 0x16000) is stated address 0x17000: the bias is start - 0x17000.
        assert_eq!(m.base_avma(), start - 0x17000);
    }

    #[test]
    fn evicted_tables_still_in_use_are_reused_not_reloaded() {
        let mut c = TableCache::new(1000);
        let m = Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            file: FileId {
                major: 1,
                minor: 2,
                inode: 7,
            },
            kind: crate::procmaps::MappingKind::File {
                path: "/nonexistent/kiln-test-object".into(),
                deleted: false,
            },
            build_id: None,
        };
        let held = fake(600);
        c.live.insert(TableKey::of(&m), Arc::downgrade(&held));
        // Not in the cache (evicted), but a process's unwinder still holds it: no reload.
        let got = c.get(std::process::id(), &m).ready().expect("reused");
        assert!(Arc::ptr_eq(&got, &held));
        assert_eq!(c.loads, 0);
        // Once nobody holds it, a miss loads (here: fails, the file does not exist).
        drop((got, held));
        c.entries.clear();
        c.used_bytes = 0;
        assert!(c.get(std::process::id(), &m).ready().is_none());
        assert_eq!(c.loads, 1);
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let overhead = fake(0).approx_bytes();
        let mut c = TableCache::new(3 * (1000 + overhead));
        for i in 0..3 {
            c.clock += 1;
            c.insert(key(i), Some(fake(1000)));
        }
        assert_eq!(c.len(), 3);
        // Touch 0 so that 1 is the oldest.
        c.clock += 1;
        if let Some(e) = c.entries.get_mut(&key(0)) {
            e.last_used = c.clock;
        }
        c.clock += 1;
        c.insert(key(3), Some(fake(1000)));
        assert_eq!(c.len(), 3);
        assert!(c.entries.contains_key(&key(0)));
        assert!(!c.entries.contains_key(&key(1)));
        assert!(c.used_bytes() <= 3 * (1000 + overhead));
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.stats().entries, 3);
        // Bigger than the whole budget: remembered as a failure (not re-read), tables not kept.
        c.insert(key(9), Some(fake(10_000)));
        assert!(c.entries.get(&key(9)).is_some_and(|e| e.tables.is_none()));
        assert!(c.used_bytes() <= 3 * (1000 + overhead));
    }
}
