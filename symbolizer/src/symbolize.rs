//! Symbolization: file offsets in stored ELF files -> frames, via blazesym on worker threads,
//! with a bounded result cache in front.
//!
//! Why worker threads: blazesym's `Symbolizer` (and its `ElfResolver`) hold `Rc`/`RefCell` state,
//! so they are neither `Send` nor `Sync` and cannot sit behind a `Mutex` shared by the server's
//! blocking-pool threads. Thread-locals on those threads would work, but tokio's blocking pool
//! grows to hundreds of threads and retires idle ones, so every thread would parse (and hold) its
//! own copy of each ELF and lose it at random. Instead a fixed number of workers each own one
//! blazesym `Symbolizer`, and every build ID is routed to one worker by its hash: each file is
//! parsed once, stays parsed while in use, and its parsed state lives on exactly one thread.
//! The price is a channel round trip per call with cache misses (measured ~0.1-0.2 ms on a 2-vCPU
//! VM, against ~25 us for a one-offset lookup in blazesym on the calling thread, debug build):
//! small next to symbolizing a batch, and cache hits never leave the calling thread.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use blazesym::symbolize::{self as bz, CodeInfo, Input, Reason, Symbolized, source};

use crate::Error;
use crate::build_id::BuildId;
use crate::cache::ResultCache;
use crate::store::DebugInfoStore;

/// One frame at an address; an address yields several when functions were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Demangled function name.
    pub function: String,
    /// Source file path as recorded in the debuginfo (directory joined when known).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for frames inlined into the next (outer) one.
    pub inlined: bool,
}

/// Why an offset in a stored file got no frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Unsymbolized {
    /// The file has neither a symbol table nor DWARF (stripped) and no separate debuginfo was
    /// stored for it: nothing could name any address in it.
    NoSymbols,
    /// The file has symbols, but none covers this offset (e.g. code between functions, or a
    /// stripped file whose only symbols are the few exported ones).
    UnknownAddress,
    /// The offset lies in no loadable segment of the file: the profile's mapping does not match it.
    InvalidOffset,
}

impl Unsymbolized {
    /// A short machine-readable name (API field values, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Unsymbolized::NoSymbols => "stripped",
            Unsymbolized::UnknownAddress => "unknown_address",
            Unsymbolized::InvalidOffset => "invalid_offset",
        }
    }
}

/// Symbolization result for one offset: frames innermost first, or why there are none.
pub type Frames = Result<Vec<Frame>, Unsymbolized>;

/// Tuning for [`Symbolizer::with_options`].
#[derive(Clone, Debug)]
pub struct SymbolizerOptions {
    /// Bound on cached (build ID, offset) results.
    pub cache_entries: usize,
    /// Worker threads, each holding parsed ELF files for the build IDs routed to it.
    pub workers: usize,
    /// Parsed ELF files each worker keeps; the least recently used is dropped beyond this.
    pub open_files_per_worker: usize,
}

impl Default for SymbolizerOptions {
    fn default() -> Self {
        SymbolizerOptions {
            cache_entries: 1 << 20,
            // Parsing DWARF is CPU bound: more workers than cores only adds memory.
            workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            open_files_per_worker: 32,
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: usize,
}

enum Job {
    Symbolize {
        id: BuildId,
        /// The executable: its segments map file offsets to addresses.
        path: PathBuf,
        /// The separate debug file, when stored: names and lines come from it.
        debug: Option<PathBuf>,
        offsets: Vec<u64>,
        reply: mpsc::SyncSender<Result<Vec<Frames>, Error>>,
    },
    Evict {
        path: PathBuf,
    },
}

/// A build ID's files as one scope sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// The executable: its segments map file offsets to addresses.
    pub exe: PathBuf,
    /// The separate debug file, when there is one: names and lines come from it.
    pub debug: Option<PathBuf>,
}

/// Cache key: results computed from one scope's files are served to that scope only (two tenants
/// may hold different files under the same build ID).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    scope: String,
    id: BuildId,
}

struct Shared {
    cache: ResultCache<Key, Frames>,
    /// Bumped by `invalidate`: a lookup that started before it must not cache what it computed
    /// from the old file. Global rather than per build ID because invalidations are rare.
    generation: u64,
}

/// Symbolizes addresses in stored ELF files, with a bounded cache.
pub struct Symbolizer {
    store: Arc<DebugInfoStore>,
    shared: Mutex<Shared>,
    workers: Vec<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Symbolizer {
    /// A symbolizer caching up to `cache_entries` results, with default worker settings.
    pub fn new(store: Arc<DebugInfoStore>, cache_entries: usize) -> Symbolizer {
        Symbolizer::with_options(
            store,
            SymbolizerOptions {
                cache_entries,
                ..SymbolizerOptions::default()
            },
        )
    }

    pub fn with_options(store: Arc<DebugInfoStore>, options: SymbolizerOptions) -> Symbolizer {
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for n in 0..options.workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let open_files = options.open_files_per_worker.max(1);
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-symbolize-{n}"))
                .spawn(move || worker_loop(rx, open_files));
            match spawned {
                Ok(handle) => {
                    workers.push(tx);
                    threads.push(handle);
                }
                // Fewer workers is slower but correct; with none, `symbolize` reports an error.
                Err(e) => tracing::error!(error = %e, "cannot spawn symbolizer worker"),
            }
        }
        Symbolizer {
            store,
            shared: Mutex::new(Shared {
                cache: ResultCache::new(options.cache_entries),
                generation: 0,
            }),
            workers,
            threads,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// For each file offset in the ELF with build ID `id`: its frames, innermost (inlined) first, or
    /// `None` when no symbol covers it. `Err(Error::Missing)` when no debuginfo is stored.
    /// Blocks while uncached offsets are symbolized (call it from a blocking context).
    pub fn symbolize(
        &self,
        id: &BuildId,
        file_offsets: &[u64],
    ) -> Result<Vec<Option<Vec<Frame>>>, Error> {
        Ok(self
            .symbolize_detailed(id, file_offsets)?
            .into_iter()
            .map(Result::ok)
            .collect())
    }

    /// Like [`Symbolizer::symbolize`], with the reason for each offset left without frames.
    pub fn symbolize_detailed(
        &self,
        id: &BuildId,
        file_offsets: &[u64],
    ) -> Result<Vec<Frames>, Error> {
        let files = self.store.path(id).map(|exe| Files {
            exe,
            debug: self.store.debug_path(id),
        });
        self.symbolize_files("", id, files.as_ref(), file_offsets)
    }

    /// Like [`Symbolizer::symbolize_detailed`], with the files given by the caller (who looked
    /// them up in whichever stores `scope` may use; `None` when there are none). Results are
    /// cached per `scope`.
    pub fn symbolize_files(
        &self,
        scope: &str,
        id: &BuildId,
        files: Option<&Files>,
        file_offsets: &[u64],
    ) -> Result<Vec<Frames>, Error> {
        let key = Key {
            scope: scope.to_owned(),
            id: id.clone(),
        };
        let mut out: Vec<Option<Frames>> = vec![None; file_offsets.len()];
        let mut misses = Vec::new();
        let generation = {
            let mut shared = self.lock();
            for (slot, &off) in out.iter_mut().zip(file_offsets) {
                match shared.cache.get(&key, off) {
                    Some(frames) => *slot = Some(frames.clone()),
                    None => misses.push(off),
                }
            }
            shared.generation
        };
        let hits = file_offsets.len() - misses.len();
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(misses.len() as u64, Ordering::Relaxed);
        if misses.is_empty() {
            return Ok(out.into_iter().map(unwrap_filled).collect());
        }

        misses.sort_unstable();
        misses.dedup();
        let files = files.ok_or_else(|| Error::Missing(id.to_string()))?;
        let results =
            self.run_on_worker(id, files.exe.clone(), files.debug.clone(), misses.clone())?;
        if results.len() != misses.len() {
            return Err(Error::Symbolize(format!(
                "blazesym returned {} results for {} offsets",
                results.len(),
                misses.len()
            )));
        }

        {
            let mut shared = self.lock();
            if shared.generation == generation {
                for (&off, frames) in misses.iter().zip(&results) {
                    shared.cache.insert(&key, off, frames.clone());
                }
            }
        }
        for (slot, off) in out.iter_mut().zip(file_offsets) {
            if slot.is_none()
                && let Ok(i) = misses.binary_search(off)
            {
                *slot = results.get(i).cloned();
            }
        }
        // Every slot is filled: hits from the cache, misses from `results` (same sorted offsets).
        Ok(out.into_iter().map(unwrap_filled).collect())
    }

    /// Forgets cached results and parsed state for `id` (new debuginfo arrived).
    pub fn invalidate(&self, id: &BuildId) {
        self.invalidate_files(
            id,
            &[self.store.file_path(id), self.store.debug_file_path(id)],
        );
    }

    /// Forgets cached results for `id` in every scope, and the parsed state of `paths` (files of
    /// `id` that were replaced or deleted).
    pub fn invalidate_files(&self, id: &BuildId, paths: &[PathBuf]) {
        {
            let mut shared = self.lock();
            shared.cache.remove_where(|k| k.id == *id);
            shared.generation += 1;
        }
        // Also free the old parsed file; blazesym would reload the replaced file on its own
        // (it stats the path on every request) but keep the old version in memory.
        if let Some(worker) = self.worker_for(id) {
            for path in paths {
                if worker.send(Job::Evict { path: path.clone() }).is_err() {
                    tracing::warn!(build_id = %id, "symbolizer worker gone; nothing to evict");
                }
            }
        }
        tracing::debug!(build_id = %id, "symbolizer cache invalidated");
    }

    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_misses: self.misses.load(Ordering::Relaxed),
            cache_entries: self.lock().cache.len(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned: PoisonError<_>| {
                // A panic mid-update may have left the cache inconsistent: start it afresh.
                let mut guard = poisoned.into_inner();
                let capacity = guard.cache.capacity();
                guard.cache = ResultCache::new(capacity);
                guard.generation += 1;
                self.shared.clear_poison();
                guard
            })
    }

    fn worker_for(&self, id: &BuildId) -> Option<&mpsc::Sender<Job>> {
        if self.workers.is_empty() {
            return None;
        }
        // Build IDs are hashes already: their leading digits spread evenly.
        let prefix = &id.as_str()[..id.as_str().len().min(8)];
        let h = u32::from_str_radix(prefix, 16).unwrap_or(0) as usize;
        self.workers.get(h % self.workers.len())
    }

    fn run_on_worker(
        &self,
        id: &BuildId,
        path: PathBuf,
        debug: Option<PathBuf>,
        offsets: Vec<u64>,
    ) -> Result<Vec<Frames>, Error> {
        let worker = self
            .worker_for(id)
            .ok_or_else(|| Error::Symbolize("no symbolizer worker running".to_owned()))?;
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job::Symbolize {
            id: id.clone(),
            path,
            debug,
            offsets,
            reply,
        };
        let gone = || Error::Symbolize("symbolizer worker stopped".to_owned());
        worker.send(job).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

impl Drop for Symbolizer {
    fn drop(&mut self) {
        // Closing the channels ends the workers' loops once queued jobs are done.
        self.workers.clear();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("symbolizer worker panicked");
            }
        }
    }
}

/// A slot of `symbolize_detailed`'s output; every slot is filled by then, but an unfilled one
/// (a bug) must not panic a query: it reads as an address nothing covered.
fn unwrap_filled(slot: Option<Frames>) -> Frames {
    slot.unwrap_or(Err(Unsymbolized::UnknownAddress))
}

fn new_blazesym() -> bz::Symbolizer {
    bz::Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        // Kiln demangles itself (see `demangle`): blazesym would also try names of C functions,
        // turning a function named `a` or `b` into the C++ builtin types `signed char` and `bool`.
        .enable_demangling(false)
        // Stored files are uploads from other hosts: never resolve their debug links against
        // this host's /usr/lib/debug, which could hold an unrelated file of the same name.
        .set_debug_dirs(Some::<[&Path; 0]>([]))
        .build()
}

fn worker_loop(rx: mpsc::Receiver<Job>, open_files: usize) {
    let mut symbolizer = new_blazesym();
    // Paths with parsed state in `symbolizer`, most recently used first.
    let mut open: VecDeque<PathBuf> = VecDeque::new();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Symbolize {
                id,
                path: exe,
                debug,
                offsets,
                reply,
            } => {
                // The file blazesym parses (and keeps parsed): the debug file when there is one.
                let path = debug.clone().unwrap_or_else(|| exe.clone());
                if let Some(i) = open.iter().position(|p| *p == path) {
                    open.remove(i);
                }
                open.push_front(path.clone());
                while open.len() > open_files {
                    if let Some(old) = open.pop_back() {
                        evict(&mut symbolizer, &old);
                    }
                }
                // Uploaded files are untrusted input: a parser panic must cost one request, not
                // the worker (which every later request for its build IDs would then miss).
                let result = match catch_unwind(AssertUnwindSafe(|| {
                    symbolize_batch(&symbolizer, &id, &exe, debug.as_deref(), &offsets)
                })) {
                    Ok(Ok(frames)) => Ok(frames),
                    Ok(Err(e)) => {
                        // Do not keep half-parsed state for this file; others are unaffected.
                        tracing::warn!(build_id = %id, error = %e, "symbolization failed");
                        open.retain(|p| *p != path);
                        evict(&mut symbolizer, &path);
                        Err(e)
                    }
                    Err(_) => {
                        // Anything in this blazesym instance may be inconsistent now: start over.
                        tracing::error!(build_id = %id, "blazesym panicked; dropping its state");
                        symbolizer = new_blazesym();
                        open.clear();
                        Err(Error::Symbolize(
                            "symbolizer panicked on this file".to_owned(),
                        ))
                    }
                };
                // The caller may have given up; nothing to do then.
                let _ = reply.send(result);
            }
            Job::Evict { path } => {
                if let Some(i) = open.iter().position(|p| *p == path) {
                    open.remove(i);
                }
                evict(&mut symbolizer, &path);
            }
        }
    }
}

fn evict(symbolizer: &mut bz::Symbolizer, path: &Path) {
    let target = bz::evict::Evict::Elf(bz::evict::Elf::new(path));
    if let Err(e) = symbolizer.evict(&target) {
        tracing::warn!(path = %path.display(), error = %e, "blazesym evict failed");
    }
}

fn symbolize_batch(
    symbolizer: &bz::Symbolizer,
    id: &BuildId,
    exe: &Path,
    debug: Option<&Path>,
    offsets: &[u64],
) -> Result<Vec<Frames>, Error> {
    match debug {
        None => symbolize_file_offsets(symbolizer, id, exe, offsets),
        Some(debug) => symbolize_with_debug_file(symbolizer, id, exe, debug, offsets),
    }
}

/// Through a separate debug file: its program headers carry no usable file offsets (its code
/// sections are `NOBITS`), so the executable's segments turn file offsets into addresses, and
/// blazesym looks those up in the debug file's symbols and DWARF.
fn symbolize_with_debug_file(
    symbolizer: &bz::Symbolizer,
    id: &BuildId,
    exe: &Path,
    debug: &Path,
    offsets: &[u64],
) -> Result<Vec<Frames>, Error> {
    let segments = load_segments(exe)?;
    let addrs: Vec<Option<u64>> = offsets
        .iter()
        .map(|&off| {
            segments
                .iter()
                .find(|&&(_, file_off, size)| off >= file_off && off - file_off < size)
                .map(|&(vaddr, file_off, _)| vaddr + (off - file_off))
        })
        .collect();
    let present: Vec<u64> = addrs.iter().flatten().copied().collect();
    let mut found = if present.is_empty() {
        Vec::new()
    } else {
        let has_symbols = has_symbols(debug);
        let src = source::Source::Elf(source::Elf::new(debug));
        symbolizer
            .symbolize(&src, Input::VirtOffset(&present))
            .map_err(|e| match e.kind() {
                blazesym::ErrorKind::NotFound => Error::Missing(id.to_string()),
                _ => Error::Symbolize(format!("{}: {e:#}", debug.display())),
            })?
            .into_iter()
            .zip(&present)
            .map(|(s, &addr)| to_frames(s, addr, has_symbols))
            .collect()
    }
    .into_iter();
    Ok(addrs
        .iter()
        .map(|a| match a {
            Some(_) => found.next().unwrap_or(Err(Unsymbolized::UnknownAddress)),
            None => Err(Unsymbolized::InvalidOffset),
        })
        .collect())
}

/// (virtual address, file offset, file size) of each loadable segment of the ELF at `path`.
fn load_segments(path: &Path) -> Result<Vec<(u64, u64, u64)>, Error> {
    use object::{Object, ObjectSegment};
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing(path.display().to_string()),
        _ => Error::Io(e),
    })?;
    let cache = object::read::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| Error::NotElf(e.to_string()))?;
    Ok(elf
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (s.address(), off, size)
        })
        .collect())
}

fn symbolize_file_offsets(
    symbolizer: &bz::Symbolizer,
    id: &BuildId,
    path: &Path,
    offsets: &[u64],
) -> Result<Vec<Frames>, Error> {
    let has_symbols = has_symbols(path);
    let src = source::Source::Elf(source::Elf::new(path));
    let results = symbolizer
        .symbolize(&src, Input::FileOffset(offsets))
        .map_err(|e| match e.kind() {
            // Raced with a removal of the file between our check and the open.
            blazesym::ErrorKind::NotFound => Error::Missing(id.to_string()),
            _ => Error::Symbolize(format!("{}: {e:#}", path.display())),
        })?;
    Ok(results
        .into_iter()
        .zip(offsets)
        .map(|(s, &off)| to_frames(s, off, has_symbols))
        .collect())
}

/// Whether the ELF at `path` has a symbol table or DWARF. blazesym answers "unknown address" for
/// a stripped executable's local functions (it still has `.dynsym`), which would hide the real
/// reason; this tells the two apart. Reads only the section headers. Unreadable: assume symbols,
/// so the answer degrades to "unknown address" rather than a wrong "stripped".
pub fn has_symbols(path: &Path) -> bool {
    use object::{Object, ObjectSection};
    let Ok(file) = std::fs::File::open(path) else {
        return true;
    };
    let cache = object::read::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return true;
    };
    elf.sections()
        .any(|s| matches!(s.name(), Ok(".symtab" | ".debug_info" | ".zdebug_info")) && s.size() > 0)
}

/// Demangles Rust (v0 `_R…`, legacy `_ZN…E`) and C++ (Itanium `_Z…`) names; anything else —
/// C, Go, already readable names — is kept as it is.
pub(crate) fn demangle(name: &str) -> String {
    if name.starts_with("_R") || name.starts_with("_Z") || name.starts_with("__Z") {
        if let Ok(d) = rustc_demangle::try_demangle(name) {
            // `{:#}` leaves out the legacy hash suffix (`::h0123…`).
            return format!("{d:#}");
        }
        if let Some(d) = cpp_demangle::Symbol::new(name)
            .ok()
            .and_then(|s| s.demangle().ok())
        {
            return d;
        }
    }
    name.to_owned()
}

fn to_frames(symbolized: Symbolized<'_>, offset: u64, has_symbols: bool) -> Frames {
    match symbolized {
        Symbolized::Sym(sym) => {
            let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
            // blazesym lists inlined calls outermost first, each with its own location (the
            // innermost one carries the address's line); Kiln wants innermost first.
            for f in sym.inlined.iter().rev() {
                frames.push(Frame {
                    function: demangle(&f.name),
                    file: f.code_info.as_ref().map(file_of),
                    line: f.code_info.as_ref().and_then(|c| c.line),
                    inlined: true,
                });
            }
            frames.push(Frame {
                function: demangle(&sym.name),
                file: sym.code_info.as_deref().map(file_of),
                line: sym.code_info.as_ref().and_then(|c| c.line),
                inlined: false,
            });
            Ok(frames)
        }
        Symbolized::Unknown(reason) => {
            tracing::trace!(offset = format_args!("{offset:#x}"), %reason, "offset not symbolized");
            Err(match reason {
                Reason::InvalidFileOffset => Unsymbolized::InvalidOffset,
                _ if !has_symbols => Unsymbolized::NoSymbols,
                Reason::MissingSyms => Unsymbolized::NoSymbols,
                _ => Unsymbolized::UnknownAddress,
            })
        }
    }
}

fn file_of(code_info: &CodeInfo<'_>) -> String {
    code_info.to_path().to_string_lossy().into_owned()
}

#[cfg(test)]
mod demangle_tests {
    use super::demangle;

    #[test]
    fn only_mangled_names_are_demangled() {
        assert_eq!(demangle("a"), "a");
        assert_eq!(demangle("b"), "b");
        assert_eq!(demangle("main.hot"), "main.hot");
        assert_eq!(demangle("_ZN2ns3hotEi"), "ns::hot(int)");
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    }
}
