//! Build IDs of mapped ELF files: opening a mapping's file through the door to process files
//! (process_files.rs), reading its identity with [`kiln_buildid`] (only the headers and notes are
//! read, not the whole file), and a cache per (device, inode) so a shared library is read once
//! however many processes map it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use object::read::ReadCache;

use crate::process_files::{self, DoorError, ProcessRoot, RegularFile};

/// Largest mapped object file opened (for its build ID, unwind tables, upload): far above real
/// binaries with debug info, far below what a sparse file can claim.
pub const MAX_OBJECT_BYTES: u64 = 16 << 30;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildIdError {
    #[error(transparent)]
    Open(#[from] DoorError),
    #[error("{path} is inode {found}, but the mapping is inode {expected} (replaced on disk?)")]
    InodeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot read an ELF build ID from {path}: {source}")]
    Parse {
        path: PathBuf,
        source: object::read::Error,
    },
}

impl BuildIdError {
    /// The agent may not open the file (or the process's root): a missing capability
    /// (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) rather than a file without a build ID.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            BuildIdError::Open(DoorError::Open { source, .. } | DoorError::Root { source, .. }) => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// A GNU build ID (the bytes of the `NT_GNU_BUILD_ID` note; usually 20, never empty).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(Box<[u8]>);

impl BuildId {
    /// `None` for an empty note, which identifies nothing.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty()).then(|| BuildId(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, as the server's debuginfo API and pprof mappings spell it.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({})", self.to_hex())
    }
}

/// Identity of a file as `/proc/PID/maps` reports it: device (major, minor) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
}

/// Where a process maps a file, enough to open that file from outside the process's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile<'a> {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The path as the process sees it (inside its mount namespace).
    pub path: &'a Path,
    pub inode: u64,
}

/// An object file seen mapped by a live process: its build ID and where to open it. This is what
/// the aggregator hands to the debuginfo uploader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub build_id: BuildId,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The path as the process sees it.
    pub path: PathBuf,
    pub inode: u64,
}

impl ObjectRef {
    pub fn mapped(&self) -> MappedFile<'_> {
        MappedFile {
            pid: self.pid,
            start: self.start,
            end: self.end,
            path: &self.path,
            inode: self.inode,
        }
    }
}

/// Opens the file behind a mapping, through the door to process files (regular files of at most
/// [`MAX_OBJECT_BYTES`] only). `/proc/PID/map_files/<start>-<end>` is the mapped file itself (right
/// even if the path was replaced since, and across mount namespaces) but needs privileges; the
/// path inside the process's root is the fallback, accepted only if its inode is still the mapped
/// one.
pub fn open_mapped_file(m: &MappedFile<'_>) -> Result<RegularFile, BuildIdError> {
    match process_files::open_mapped(m.pid, m.start, m.end, MAX_OBJECT_BYTES) {
        Ok(f) => return Ok(f),
        // The mapped file itself is not one we read: its path would name the same thing.
        Err(e) if e.refusal().is_some() => return Err(e.into()),
        // No map_files without CAP_SYS_ADMIN (or the mapping is gone): try the path.
        Err(_) => {}
    }
    let f = ProcessRoot::of_process(m.pid)?.open_file(m.path, MAX_OBJECT_BYTES)?;
    if f.inode() != m.inode {
        return Err(BuildIdError::InodeMismatch {
            path: f.shown_path().to_owned(),
            expected: m.inode,
            found: f.inode(),
        });
    }
    Ok(f)
}

/// Reads the GNU build ID of an open file; `Ok(None)` when it is not an object file or has no note.
pub fn read_build_id(file: &File, path: &Path) -> Result<Option<BuildId>, BuildIdError> {
    // ReadCache reads only the ranges asked for: headers, section table, notes (see
    // `elf_build_id`), a few KiB even of a 100 MB unstripped binary.
    let cache = ReadCache::new(file);
    match elf_build_id(&cache) {
        Ok(id) => Ok(id.and_then(|b| BuildId::new(&b))),
        Err(source) => Err(BuildIdError::Parse {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The identity of an ELF file (GNU build ID, else Go build ID key), read as the server reads it:
/// both use [`kiln_buildid::elf_build_id`].
pub use kiln_buildid::elf_build_id;

/// What [`BuildIdCache::get`] knows of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Read: the file's build ID, or `None` when it has none (or is not an object file).
    Ready(Option<BuildId>),
    /// Being read by the worker: ask again later ([`BuildIdCache::generation`] moves on each
    /// answer).
    Pending,
    /// The agent may not open the file (permission denied: a missing capability), so that its
    /// frames can say why they have no name.
    Unreadable,
    /// Could not be read for another reason (often transient: the process exited); logged.
    Failed,
}

/// How long the worker's failure to read a file is remembered before it is tried again: long
/// enough not to re-read on every re-load of a process, short enough that a short-lived failure
/// (the process exited while its file was opened) does not stick.
const FAILURE_MEMORY: Duration = Duration::from_secs(10);

/// After a wait for a build ID ran out, how long [`BuildIdCache::get`] waits for none.
const STALL_PAUSE: Duration = Duration::from_secs(30);

/// Most reads queued for the worker; beyond it a file is asked for again on a later re-load.
const WORKER_QUEUE: usize = 256;

/// A read the worker does: where to open the file, and under which identity to remember it.
struct Request {
    id: FileId,
    pid: u32,
    start: u64,
    end: u64,
    path: PathBuf,
    inode: u64,
}

impl Request {
    fn mapped(&self) -> MappedFile<'_> {
        MappedFile {
            pid: self.pid,
            start: self.start,
            end: self.end,
            path: &self.path,
            inode: self.inode,
        }
    }
}

type Reader = dyn Fn(&MappedFile<'_>) -> Result<Option<BuildId>, BuildIdError> + Send + Sync;

#[derive(Default)]
struct State {
    ids: HashMap<FileId, Option<BuildId>>,
    /// Files the worker failed to read, when, and whether it was a refusal (permission).
    failures: HashMap<FileId, (Instant, bool)>,
    queued: HashSet<FileId>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled by the worker after each answer (see [`BuildIdCache::get`]'s bounded wait).
    answered: Condvar,
    /// Moves on every answer the worker stores, so that a process waiting for build IDs knows
    /// when a re-load is worth it.
    generation: AtomicU64,
    capacity: usize,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, id: FileId, build_id: Option<BuildId>) {
        let mut st = self.state();
        if st.ids.len() >= self.capacity {
            // Rare (tens of thousands of distinct files): start over rather than track recency on
            // every hit.
            tracing::debug!(capacity = self.capacity, "build ID cache full; clearing it");
            st.ids.clear();
        }
        st.ids.insert(id, build_id);
    }
}

/// Build IDs by file identity, bounded. Files without a build ID are remembered too (as `None`) so
/// they are not reopened.
///
/// Two modes. [`BuildIdCache::with_worker`] (the agent): a miss is handed to a worker thread
/// (`kiln-buildids`) and answered [`Lookup::Pending`], so that opening and reading a file a
/// container controls never happens on the sampling thread, whatever that file does. The
/// aggregator fills the build ID in when the worker has it (at the latest when the window is
/// flushed). [`BuildIdCache::new`] reads on the caller's thread (tests, benchmarks, tools).
pub struct BuildIdCache {
    shared: Arc<Shared>,
    worker: Option<SyncSender<Request>>,
    reader: Arc<Reader>,
    /// How long [`BuildIdCache::get`] waits for the worker's answer (once per file).
    wait: Duration,
    /// After a wait ran out (a read that stalls): no waiting until then.
    stalled_until: Option<Instant>,
}

fn read_mapped(mapped: &MappedFile<'_>) -> Result<Option<BuildId>, BuildIdError> {
    let file = open_mapped_file(mapped)?;
    read_build_id(file.file(), file.shown_path())
}

impl BuildIdCache {
    /// A cache that reads on the caller's thread.
    pub fn new(capacity: usize) -> Self {
        BuildIdCache {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                answered: Condvar::new(),
                generation: AtomicU64::new(0),
                capacity: capacity.max(1),
            }),
            worker: None,
            reader: Arc::new(read_mapped),
            wait: Duration::ZERO,
            stalled_until: None,
        }
    }

    /// A cache whose misses are read by a worker thread. Falls back to reading on the caller's
    /// thread if the thread cannot be started (logged). A miss waits for the worker's answer at
    /// most `wait` (once per file; after a wait that ran out, none for [`STALL_PAUSE`]): a read
    /// takes milliseconds, and a mapping without its build ID for its first samples would leave a
    /// stripped binary without its separate debug file's unwind tables meanwhile.
    pub fn with_worker(capacity: usize, wait: Duration) -> Self {
        let mut cache = Self::with_worker_reading(capacity, Arc::new(read_mapped));
        cache.wait = wait;
        cache
    }

    fn with_worker_reading(capacity: usize, reader: Arc<Reader>) -> Self {
        let mut cache = BuildIdCache::new(capacity);
        cache.reader = reader.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(WORKER_QUEUE);
        let shared = cache.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-buildids".into())
            .spawn(move || {
                // Ends when the cache (the sender) is dropped.
                for req in rx {
                    let result = reader(&req.mapped());
                    match result {
                        Ok(id) => shared.remember(req.id, id),
                        Err(e) => {
                            tracing::debug!(pid = req.pid, path = %req.path.display(), error = %e, "no build ID for mapping");
                            let mut st = shared.state();
                            if st.failures.len() >= shared.capacity {
                                st.failures.clear();
                            }
                            st.failures
                                .insert(req.id, (Instant::now(), e.is_permission_denied()));
                        }
                    }
                    shared.state().queued.remove(&req.id);
                    shared.generation.fetch_add(1, Ordering::Release);
                    shared.answered.notify_all();
                }
            });
        match spawned {
            Ok(_) => cache.worker = Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the build ID reader thread; reading build IDs on the sampling thread")
            }
        }
        cache
    }

    /// The build ID of the file behind `mapped`: from the cache, read now (no worker), or queued
    /// for the worker ([`Lookup::Pending`]).
    ///
    /// (device, inode) pairs can be reused after a file is deleted; the cache accepts that small risk
    /// rather than stat'ing every file on every lookup.
    pub fn get(&mut self, id: FileId, mapped: &MappedFile<'_>) -> Lookup {
        let Some(worker) = &self.worker else {
            if let Some(hit) = self.shared.state().ids.get(&id) {
                return Lookup::Ready(hit.clone());
            }
            return match (self.reader)(mapped) {
                Ok(build_id) => {
                    self.shared.remember(id, build_id.clone());
                    Lookup::Ready(build_id)
                }
                // Failures to open are not remembered: they are often transient (process exited).
                Err(e) => {
                    tracing::debug!(pid = mapped.pid, error = %e, "no build ID for mapping");
                    if e.is_permission_denied() {
                        Lookup::Unreadable
                    } else {
                        Lookup::Failed
                    }
                }
            };
        };
        let mut st = self.shared.state();
        if let Some(hit) = st.ids.get(&id) {
            return Lookup::Ready(hit.clone());
        }
        if let Some(&(at, denied)) = st.failures.get(&id) {
            if at.elapsed() < FAILURE_MEMORY {
                return if denied {
                    Lookup::Unreadable
                } else {
                    Lookup::Failed
                };
            }
            st.failures.remove(&id);
        }
        if st.queued.contains(&id) {
            return Lookup::Pending;
        }
        let req = Request {
            id,
            pid: mapped.pid,
            start: mapped.start,
            end: mapped.end,
            path: mapped.path.to_owned(),
            inode: mapped.inode,
        };
        match worker.try_send(req) {
            Ok(()) => {
                st.queued.insert(id);
            }
            // Full: asked for again at a later re-load of the process.
            Err(TrySendError::Full(_)) => return Lookup::Pending,
            Err(TrySendError::Disconnected(_)) => return Lookup::Failed,
        }
        // A bounded wait for the answer (see `with_worker`).
        let now = Instant::now();
        if self.wait.is_zero() || self.stalled_until.is_some_and(|t| now < t) {
            return Lookup::Pending;
        }
        let (st, timeout) = self
            .shared
            .answered
            .wait_timeout_while(st, self.wait, |st| st.queued.contains(&id))
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() {
            tracing::warn!(
                waited_ms = self.wait.as_millis() as u64,
                "a mapped file's build ID is slow to read; not waiting for any for a while"
            );
            self.stalled_until = Some(Instant::now() + STALL_PAUSE);
            return Lookup::Pending;
        }
        match (st.ids.get(&id), st.failures.get(&id)) {
            (Some(hit), _) => Lookup::Ready(hit.clone()),
            (None, Some(&(_, true))) => Lookup::Unreadable,
            (None, Some(_)) => Lookup::Failed,
            (None, None) => Lookup::Pending,
        }
    }

    /// What the cache holds for `id`, without reading or queueing anything: `Some(None)` for a
    /// file known to have no build ID, `None` when not (yet) known.
    pub fn known(&self, id: FileId) -> Option<Option<BuildId>> {
        self.shared.state().ids.get(&id).cloned()
    }

    /// A counter that moves each time the worker stores an answer.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.shared.state().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object::Object;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_refused_open_is_told_apart_from_a_missing_file() {
        let open = |kind: std::io::ErrorKind| {
            BuildIdError::Open(DoorError::Open {
                root: "/proc/1/root".into(),
                path: "/usr/bin/x".into(),
                source: kind.into(),
            })
        };
        assert!(open(std::io::ErrorKind::PermissionDenied).is_permission_denied());
        assert!(!open(std::io::ErrorKind::NotFound).is_permission_denied());
        let root = BuildIdError::Open(DoorError::Root {
            root: "/proc/1/root".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
        assert!(root.is_permission_denied());
    }

    #[test]
    fn reads_the_test_binarys_own_build_id() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let expected = object::File::parse(&*exe)
            .unwrap()
            .build_id()
            .unwrap()
            .expect("rustc links with a build ID on Linux");
        let f = File::open("/proc/self/exe").unwrap();
        let got = read_build_id(&f, Path::new("/proc/self/exe"))
            .unwrap()
            .unwrap();
        assert_eq!(got.as_bytes(), expected);
        assert_eq!(got.to_hex(), hex::encode(expected));
    }

    #[test]
    fn non_elf_has_no_build_id() {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, b"#!/bin/sh\necho not elf\n").unwrap();
        let f = File::open(t.path()).unwrap();
        assert_eq!(read_build_id(&f, t.path()).unwrap(), None);
        assert_eq!(BuildId::new(&[]), None);
    }

    #[test]
    fn a_stalled_read_is_answered_pending_and_filled_in_by_the_worker() {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let reader_thread = Arc::new(Mutex::new(None::<String>));
        let seen = reader_thread.clone();
        let reader: Arc<Reader> = Arc::new(move |m: &MappedFile<'_>| {
            *seen.lock().unwrap() = std::thread::current().name().map(str::to_owned);
            // A read that does not come back until the test says so (a FIFO, a stalled FUSE
            // file). Were it on the caller's thread, `get` would not answer Pending; the 20 s
            // bound makes such a regression fail instead of hang.
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
            read_mapped(m)
        });
        let mut cache = BuildIdCache::with_worker_reading(8, reader);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let mapped = MappedFile {
            pid: std::process::id(),
            start: 1,
            end: 2,
            path: &exe,
            inode: meta.ino(),
        };
        let id = FileId {
            major: 0,
            minor: 0,
            inode: meta.ino(),
        };
        let before = cache.generation();
        assert_eq!(cache.get(id, &mapped), Lookup::Pending);
        // Asked again while the read is stuck: still pending, not queued twice.
        assert_eq!(cache.get(id, &mapped), Lookup::Pending);
        assert_eq!(cache.known(id), None);
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.generation() == before {
            assert!(Instant::now() < deadline, "the worker never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            reader_thread.lock().unwrap().as_deref(),
            Some("kiln-buildids")
        );
        let Lookup::Ready(Some(id_read)) = cache.get(id, &mapped) else {
            panic!("the worker's answer is served from the cache")
        };
        assert_eq!(cache.known(id), Some(Some(id_read)));
        assert_eq!(cache.generation(), before + 1, "one read, not two");
    }

    #[test]
    fn cache_reads_once_per_file_and_checks_inodes() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let pid = std::process::id();
        let mapped = MappedFile {
            pid,
            // No such mapping: forces the /proc/PID/root fallback.
            start: 1,
            end: 2,
            path: &exe,
            inode: meta.ino(),
        };
        let id = FileId {
            major: 0,
            minor: 0,
            inode: meta.ino(),
        };
        let mut cache = BuildIdCache::new(8);
        let Lookup::Ready(Some(first)) = cache.get(id, &mapped) else {
            panic!("the test binary has a build ID")
        };
        assert_eq!(cache.len(), 1);
        // A second lookup is served from the cache even though the mapping no longer opens.
        let gone = MappedFile {
            path: Path::new("/nonexistent"),
            ..mapped.clone()
        };
        assert_eq!(cache.get(id, &gone), Lookup::Ready(Some(first)));

        let wrong = MappedFile {
            inode: meta.ino() + 1,
            ..mapped
        };
        assert!(matches!(
            open_mapped_file(&wrong),
            Err(BuildIdError::InodeMismatch { .. })
        ));
    }
}
