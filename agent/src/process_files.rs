//! The agent's one door to files of profiled processes.
//!
//! Everything the agent reads from a profiled process's filesystem — perf maps, mapped objects
//! (for build IDs, unwind tables and debuginfo uploads), separate debug files — is chosen by that
//! process, and the process may be a hostile container. So every such open goes through here, and
//! follows one rule:
//!
//! * **Inside the process's root.** A path is resolved against the process's root directory
//!   (`/proc/PID/root`, held open as an `O_PATH` descriptor) with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`: an absolute symlink or `..` cannot leave the root, and magic links
//!   (`/proc/self/root`, `/proc/1/cwd` …) are refused. Kernels without `openat2` (before 5.6) get an
//!   equivalent walk, one component at a time with `O_NOFOLLOW`, symlinks resolved by hand.
//! * **Regular files only.** The path is first opened `O_PATH` (which opens nothing: no FIFO
//!   handshake, no device driver `open`), checked with `fstat`, and only then reopened for reading,
//!   `O_NONBLOCK`. A FIFO, device, socket or directory is refused before anything blocks on it.
//! * **Size-capped.** The caller says how large a file it is prepared to read; a larger one (a huge
//!   sparse file costs its owner nothing) is refused.
//!
//! Refusals are counted by reason ([`refusal_totals`], published as
//! `kiln_agent_process_files_refused_total{reason}`).
//!
//! Where the reading happens is the callers' half of the rule. Perf maps are read by their own
//! worker thread (perfmap.rs) and debuginfo candidates on a blocking thread of the runtime
//! (debuginfo.rs), unwind tables by theirs (unwind/tables.rs). Build IDs (an object's headers and
//! notes, a few pages) are read on the sampling thread when a process is first seen, so that its
//! first samples already carry them; those are files the process has mapped (through
//! `/proc/PID/map_files`), so never a FIFO or device, and files on FUSE or network filesystems
//! (whose server may never answer; even `fstat` or `fstatfs` would ask it) are not opened there at
//! all: they are recognised by their device in the process's mountinfo, which the kernel answers
//! ([`Refusal::RemoteFilesystem`]).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a file of a process was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A FIFO, device, socket or directory where a regular file was expected.
    NotRegular,
    /// Larger than the caller's cap.
    TooLarge,
    /// The path goes through a magic link, or through too many symlinks.
    UnsafeLink,
    /// On a FUSE or network filesystem, whose server (possibly the container itself) may never
    /// answer: not read on the sampling thread (see `procmaps::remote_devices`).
    RemoteFilesystem,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::NotRegular,
        Refusal::TooLarge,
        Refusal::UnsafeLink,
        Refusal::RemoteFilesystem,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotRegular => "not_regular",
            Refusal::TooLarge => "too_large",
            Refusal::UnsafeLink => "unsafe_link",
            Refusal::RemoteFilesystem => "remote_filesystem",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusals so far in this process, by [`Refusal::index`]. Process-wide rather than per caller:
/// files are opened on several threads (sampling, perf-map worker, uploader), and the aggregator
/// publishes the totals once per window.
static REFUSED: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Refusals counted so far, by reason.
pub fn refusal_totals() -> [(Refusal, u64); 4] {
    Refusal::ALL.map(|r| (r, REFUSED[r.index()].load(Ordering::Relaxed)))
}

/// Counts a refusal decided before any open (a file on a remote filesystem, by its device).
pub fn count_refusal(reason: Refusal) {
    REFUSED[reason.index()].fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoorError {
    /// The process's root directory (or the directory used as root) cannot be opened: usually the
    /// process exited.
    #[error("cannot open the root directory {root}: {source}")]
    Root { root: PathBuf, source: io::Error },
    #[error("{path} (in {root}) refused: {reason}")]
    Refused {
        root: PathBuf,
        path: PathBuf,
        reason: Refusal,
    },
    #[error("cannot open {path} (in {root}): {source}")]
    Open {
        root: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
}

impl DoorError {
    /// The file does not exist in the process's root (the common, unremarkable failure).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DoorError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            DoorError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// An open regular file of a process, at most the cap the caller gave in bytes when opened.
#[derive(Debug)]
pub struct RegularFile {
    file: File,
    len: u64,
    inode: u64,
    /// Where it was found, for messages: `/proc/PID/root` joined with the path.
    shown: PathBuf,
}

impl RegularFile {
    /// The size when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The path it was found at, as the agent would spell it (for logs).
    pub fn shown_path(&self) -> &Path {
        &self.shown
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

/// A process's root directory, held open: paths opened through it resolve inside it.
#[derive(Debug)]
pub struct ProcessRoot {
    dir: OwnedFd,
    /// `/proc/PID/root` (or the directory given), for messages.
    shown: PathBuf,
}

impl ProcessRoot {
    /// The root directory of process `pid` (`/proc/PID/root`; its mount namespace's view).
    pub fn of_process(pid: u32) -> Result<ProcessRoot, DoorError> {
        ProcessRoot::at(Path::new(&format!("/proc/{pid}/root")))
    }

    /// Any directory used as a root (tests plant files in a temporary one).
    pub fn at(dir: &Path) -> Result<ProcessRoot, DoorError> {
        let root_err = |source| DoorError::Root {
            root: dir.to_owned(),
            source,
        };
        let c = cstring(dir.as_os_str()).map_err(root_err)?;
        // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        Ok(ProcessRoot {
            dir: owned(fd).map_err(root_err)?,
            shown: dir.to_owned(),
        })
    }

    /// Opens `path` (as the process sees it; absolute or not, it is taken from the root) for
    /// reading, if it is a regular file of at most `max_bytes`. Refusals are counted.
    pub fn open_file(&self, path: &Path, max_bytes: u64) -> Result<RegularFile, DoorError> {
        self.open_resolved_by(resolve_in_root, path, max_bytes)
    }

    fn open_resolved_by(
        &self,
        resolve: fn(&OwnedFd, &Path) -> io::Result<OwnedFd>,
        path: &Path,
        max_bytes: u64,
    ) -> Result<RegularFile, DoorError> {
        let located = resolve(&self.dir, path).map_err(|source| {
            // ELOOP: a magic link (RESOLVE_NO_MAGICLINKS) or a symlink loop; either way a path we
            // will not follow.
            if source.raw_os_error() == Some(libc::ELOOP) {
                self.refused(path, Refusal::UnsafeLink)
            } else {
                DoorError::Open {
                    root: self.shown.clone(),
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        self.check_located(located, path, max_bytes)
    }

    fn refused(&self, path: &Path, reason: Refusal) -> DoorError {
        REFUSED[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(root = %self.shown.display(), path = %path.display(), %reason, "process file refused");
        DoorError::Refused {
            root: self.shown.clone(),
            path: path.to_owned(),
            reason,
        }
    }
}

/// Opens the file that process `pid` maps at `start..end`, through `/proc/PID/map_files` (the
/// mapped file itself, whatever its path now names; needs `CAP_SYS_ADMIN`), with the same checks
/// as [`ProcessRoot::open_file`]: regular files of at most `max_bytes` only (a process can map a
/// device).
pub fn open_mapped(
    pid: u32,
    start: u64,
    end: u64,
    max_bytes: u64,
) -> Result<RegularFile, DoorError> {
    let dir = PathBuf::from(format!("/proc/{pid}/map_files"));
    let root = ProcessRoot {
        dir: ProcessRoot::at(&dir)?.dir,
        shown: dir,
    };
    // A map_files entry is a magic link by design: opened O_PATH, it names the mapped file without
    // opening it, and the checks below apply as for any other path.
    let name = format!("{start:x}-{end:x}");
    let c = cstring(OsStr::new(&name)).map_err(|source| root.open_error(&name, source))?;
    // SAFETY: valid directory descriptor and NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::openat(
            root.dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    let located = owned(fd).map_err(|source| root.open_error(&name, source))?;
    root.check_located(located, Path::new(&name), max_bytes)
}

impl ProcessRoot {
    fn open_error(&self, path: &str, source: io::Error) -> DoorError {
        DoorError::Open {
            root: self.shown.clone(),
            path: PathBuf::from(path),
            source,
        }
    }

    /// The checks of [`ProcessRoot::open_file`] after resolution, for an `O_PATH` descriptor.
    fn check_located(
        &self,
        located: OwnedFd,
        path: &Path,
        max_bytes: u64,
    ) -> Result<RegularFile, DoorError> {
        let err = |source| DoorError::Open {
            root: self.shown.clone(),
            path: path.to_owned(),
            source,
        };
        let meta = fstat(located.as_raw_fd()).map_err(err)?;
        if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(self.refused(path, Refusal::NotRegular));
        }
        let len = u64::try_from(meta.st_size).unwrap_or(0);
        if len > max_bytes {
            return Err(self.refused(path, Refusal::TooLarge));
        }
        let file = reopen_for_reading(&located).map_err(err)?;
        Ok(RegularFile {
            len,
            inode: meta.st_ino,
            file,
            shown: self.shown.join(path.strip_prefix("/").unwrap_or(path)),
        })
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor this function's caller just got from the kernel and owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the call; `st` is a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens what an `O_PATH` descriptor names for reading (through the agent's own
/// `/proc/self/fd/N`), non-blocking, never as a controlling terminal.
fn reopen_for_reading(located: &OwnedFd) -> io::Result<File> {
    let path = cstring(OsStr::new(&format!(
        "/proc/self/fd/{}",
        located.as_raw_fd()
    )))?;
    // SAFETY: valid NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    Ok(File::from(owned(fd)?))
}

/// Whether `openat2` is missing (kernels before 5.6): then the walk is done by hand from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// An `O_PATH` descriptor of `path` resolved inside `root`.
fn resolve_in_root(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_in_root(root, path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    walk_in_root(root, path)
}

fn openat2_in_root(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let c = cstring(if relative.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        relative.as_os_str()
    })?;
    // SAFETY: an all-zero open_how is valid (no flags); the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // RESOLVE_IN_ROOT answers EAGAIN when a rename raced the walk: try again a few times.
    let mut last = io::Error::from_raw_os_error(libc::EAGAIN);
    for _ in 0..4 {
        // SAFETY: valid descriptor, NUL-terminated path, and a pointer to an open_how of the size
        // passed; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(fd as RawFd) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// Most symlinks followed in one walk (the kernel's limit is also 40).
const MAX_LINKS: usize = 40;

/// What `openat2(RESOLVE_IN_ROOT)` does, by hand: each component opened `O_PATH | O_NOFOLLOW`
/// from the directory before it; a symlink's target is read and walked in its place (an absolute
/// one from the root); `..` never climbs above the root.
fn walk_in_root(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    fn push_components(pending: &mut Vec<OsString>, path: &Path) {
        // Reversed, so that `pop` yields them in order.
        for c in path.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_owned()),
                Component::ParentDir => pending.push(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut pending = Vec::new();
    push_components(&mut pending, path);
    // The directories walked so far below the root; the current one is the last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            dirs.pop();
            continue;
        }
        let at = dirs.last().unwrap_or(root);
        let c = cstring(&name)?;
        // SAFETY: valid directory descriptor and NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                at.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let fd = owned(fd)?;
        let mode = fstat(fd.as_raw_fd())?.st_mode & libc::S_IFMT;
        if mode == libc::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = read_link_at(&fd)?;
            if target.is_absolute() {
                dirs.clear();
            }
            push_components(&mut pending, &target);
            continue;
        }
        if !pending.is_empty() && mode != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        dirs.push(fd);
    }
    match dirs.pop() {
        Some(fd) => Ok(fd),
        None => root.try_clone(),
    }
}

/// The target of the symlink an `O_PATH | O_NOFOLLOW` descriptor names.
fn read_link_at(fd: &OwnedFd) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid descriptor, empty NUL-terminated path (the descriptor itself), and a buffer of
    // the length passed.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(n);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, symlink};

    /// A directory used as a process's root, and a file outside it that must never be read.
    struct Planted {
        _outer: tempfile::TempDir,
        root: PathBuf,
        secret: PathBuf,
    }

    fn planted() -> Planted {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/inside"), "inside the root\n").unwrap();
        let secret = outer.path().join("secret");
        std::fs::write(&secret, "outside the root\n").unwrap();
        Planted {
            root,
            secret,
            _outer: outer,
        }
    }

    fn read(f: RegularFile) -> String {
        let mut s = String::new();
        f.into_file().read_to_string(&mut s).unwrap();
        s
    }

    /// Both ways of resolving: the kernel's (openat2) and the hand walk of older kernels.
    fn both(root: &ProcessRoot, path: &str, max: u64) -> [Result<String, String>; 2] {
        let via_kernel = root.open_file(Path::new(path), max);
        let walked = root.open_resolved_by(walk_in_root, Path::new(path), max);
        [via_kernel, walked].map(|r| r.map(read).map_err(|e| e.to_string()))
    }

    #[test]
    fn reads_regular_files_inside_the_root() {
        let p = planted();
        let root = ProcessRoot::at(&p.root).unwrap();
        for r in both(&root, "/etc/inside", 1 << 20) {
            assert_eq!(r.unwrap(), "inside the root\n");
        }
        // A relative symlink inside the root is fine.
        symlink("../etc/inside", p.root.join("tmp/rel")).unwrap();
        for r in both(&root, "/tmp/rel", 1 << 20) {
            assert_eq!(r.unwrap(), "inside the root\n");
        }
    }

    #[test]
    fn links_out_of_the_root_resolve_inside_it() {
        let p = planted();
        let root = ProcessRoot::at(&p.root).unwrap();
        // An absolute link to the secret's real path, and one climbing with `..`: both stay in the
        // root, where no such file exists.
        symlink(&p.secret, p.root.join("tmp/abs")).unwrap();
        symlink("/../../../../../../secret", p.root.join("tmp/climb")).unwrap();
        symlink("../../../secret", p.root.join("tmp/rel_climb")).unwrap();
        for link in ["/tmp/abs", "/tmp/climb", "/tmp/rel_climb", "/../secret"] {
            for r in both(&root, link, 1 << 20) {
                let e = r.unwrap_err();
                assert!(e.contains("No such file"), "{link}: {e}");
            }
        }
        // The same link pointed at a path that exists inside the root reads the root's file.
        symlink("/../../etc/inside", p.root.join("tmp/to_inside")).unwrap();
        for r in both(&root, "/tmp/to_inside", 1 << 20) {
            assert_eq!(r.unwrap(), "inside the root\n");
        }
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let p = planted();
        let fifo = p.root.join("tmp/fifo");
        let c = cstring(fifo.as_os_str()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        symlink("/dev/null", p.root.join("tmp/dev")).unwrap();
        std::fs::create_dir_all(p.root.join("dev")).unwrap();
        let root = ProcessRoot::at(&p.root).unwrap();
        let before = REFUSED[Refusal::NotRegular.index()].load(Ordering::Relaxed);
        // Opening a FIFO for reading would wait for a writer forever; this returns at once.
        let e = root.open_file(Path::new("/tmp/fifo"), 1 << 20).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::NotRegular), "{e}");
        let e = root.open_file(Path::new("/tmp"), 1 << 20).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::NotRegular), "{e}");
        // /dev/null inside this root does not exist; the host's is not reached.
        assert!(
            root.open_file(Path::new("/tmp/dev"), 1 << 20)
                .unwrap_err()
                .is_not_found()
        );
        // A real device, from a root where it exists.
        let host = ProcessRoot::at(Path::new("/")).unwrap();
        let e = host.open_file(Path::new("/dev/null"), 1 << 20).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::NotRegular));
        assert!(REFUSED[Refusal::NotRegular.index()].load(Ordering::Relaxed) >= before + 3);
    }

    #[test]
    fn huge_sparse_files_are_refused_by_size() {
        let p = planted();
        let f = File::create(p.root.join("tmp/sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        let root = ProcessRoot::at(&p.root).unwrap();
        let e = root
            .open_file(Path::new("/tmp/sparse"), 64 << 20)
            .unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::TooLarge), "{e}");
        let ok = root.open_file(Path::new("/tmp/sparse"), 1 << 40).unwrap();
        assert_eq!(ok.len(), 1 << 40);
    }

    #[test]
    fn magic_links_and_loops_are_refused() {
        let p = planted();
        // A link into /proc's magic links: from a root that has /proc (the host's), refused.
        let host = ProcessRoot::at(Path::new("/")).unwrap();
        let e = host
            .open_file(Path::new("/proc/self/root/etc/hostname"), 1 << 20)
            .unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::UnsafeLink), "{e}");
        symlink("loop_b", p.root.join("tmp/loop_a")).unwrap();
        symlink("loop_a", p.root.join("tmp/loop_b")).unwrap();
        let root = ProcessRoot::at(&p.root).unwrap();
        for r in both(&root, "/tmp/loop_a", 1 << 20) {
            assert!(r.unwrap_err().contains("unsafe_link"));
        }
    }

    #[test]
    fn mapped_files_open_through_map_files() {
        // The test binary's own text mapping.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()) && l.contains("r-xp"))
            .unwrap();
        let (range, _) = line.split_once(' ').unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        match open_mapped(std::process::id(), s, e, u64::MAX) {
            Ok(f) => assert_eq!(f.inode(), std::fs::metadata(&exe).unwrap().ino()),
            // map_files needs CAP_SYS_ADMIN.
            Err(e) => assert!(matches!(e, DoorError::Open { .. }), "{e}"),
        }
        let e = open_mapped(std::process::id(), s, e, 16).unwrap_err();
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(e.refusal(), Some(Refusal::TooLarge));
        }
    }
}
