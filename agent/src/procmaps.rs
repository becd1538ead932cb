//! What the agent knows about each sampled process: its executable mappings (from `/proc/PID/maps`,
//! with build IDs), executable path, cgroup and start time, in a bounded [`ProcessCache`] that notices
//! new `dlopen`s, `exec`, exit and pid reuse.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buildid::{BuildId, BuildIdCache, FileId, Lookup, MappedFile};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// The process does not exist (any more).
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

/// What an executable mapping maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// A file; `path` as the process sees it, without the kernel's ` (deleted)` suffix.
    File { path: PathBuf, deleted: bool },
    /// The kernel's vDSO (no file behind it).
    Vdso,
}

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub file: FileId,
    pub kind: MappingKind,
    /// Filled in by [`Process::load`] when the file has a GNU build ID.
    pub build_id: Option<BuildId>,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// The file offset `addr` corresponds to (the caller checked [`Mapping::contains`]).
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }

    /// The name pprof shows for this mapping: the path, or `[vdso]`.
    pub fn filename(&self) -> std::borrow::Cow<'_, str> {
        match &self.kind {
            MappingKind::File { path, .. } => path.to_string_lossy(),
            MappingKind::Vdso => "[vdso]".into(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            MappingKind::File { path, .. } => Some(path),
            MappingKind::Vdso => None,
        }
    }
}

/// The executable mappings of a `/proc/PID/maps` text, sorted by address, plus the anonymous
/// executable ranges (JIT code) so that addresses there are known not to need a refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedMaps {
    pub mappings: Vec<Mapping>,
    pub anonymous_exec: Vec<(u64, u64)>,
}

/// Parses `/proc/PID/maps`. Keeps executable file mappings and `[vdso]`; lines it cannot parse are
/// skipped (the format is the kernel's, but a robust reader costs nothing).
pub fn parse_maps(text: &str) -> ParsedMaps {
    let mut out = ParsedMaps::default();
    for line in text.lines() {
        let Some(fields) = MapsLine::parse(line) else {
            continue;
        };
        if !fields.perms.contains('x') {
            continue;
        }
        let kind = if fields.path == "[vdso]" {
            MappingKind::Vdso
        } else if fields.path.starts_with('/') && fields.inode != 0 {
            let (path, deleted) = match fields.path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (fields.path, false),
            };
            MappingKind::File {
                path: PathBuf::from(path),
                deleted,
            }
        } else {
            out.anonymous_exec.push((fields.start, fields.end));
            continue;
        };
        out.mappings.push(Mapping {
            start: fields.start,
            end: fields.end,
            offset: fields.offset,
            file: FileId {
                major: fields.major,
                minor: fields.minor,
                inode: fields.inode,
            },
            kind,
            build_id: None,
        });
    }
    out.mappings.sort_by_key(|m| m.start);
    out.anonymous_exec.sort_unstable();
    out
}

/// One line of `/proc/PID/maps` (also read by process_memory.rs, which needs every mapping).
pub(crate) struct MapsLine<'a> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) perms: &'a str,
    pub(crate) offset: u64,
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) inode: u64,
    pub(crate) path: &'a str,
}

impl<'a> MapsLine<'a> {
    /// `start-end perms offset major:minor inode   path` (path optional, may contain spaces).
    pub(crate) fn parse(line: &'a str) -> Option<Self> {
        let mut rest = line;
        let mut field = || -> Option<&'a str> {
            let trimmed = rest.trim_start_matches(' ');
            let (f, r) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
            rest = r;
            (!f.is_empty()).then_some(f)
        };
        let range = field()?;
        let perms = field()?;
        let offset = field()?;
        let dev = field()?;
        let inode = field()?;
        let path = rest.trim_start_matches(' ');
        let (start, end) = range.split_once('-')?;
        let (major, minor) = dev.split_once(':')?;
        Some(MapsLine {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            offset: u64::from_str_radix(offset, 16).ok()?,
            major: u32::from_str_radix(major, 16).ok()?,
            minor: u32::from_str_radix(minor, 16).ok()?,
            inode: inode.parse().ok()?,
            path,
        })
    }
}

/// The cgroup path from `/proc/PID/cgroup`. The v2 line (`0::/path`) wins, unless it is the bare root
/// on a hybrid v1+v2 host (where every process sits in the v2 root and the v1 hierarchy carries the
/// real placement): then the `cpu` controller's line, else `memory`'s, else any v1 line.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut v1_cpu = None;
    let mut v1_memory = None;
    let mut v1_any = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1_cpu = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_memory = Some(path);
        } else if v1_any.is_none() && !controllers.is_empty() {
            v1_any = Some(path);
        }
    }
    let v1 = v1_cpu.or(v1_memory).or(v1_any);
    match (v2, v1) {
        (Some(p), _) if p != "/" => Some(p),
        (_, Some(p)) => Some(p),
        (p, None) => p,
    }
    .map(str::to_owned)
}

/// The innermost pid namespace's pid from `/proc/PID/status` (the last field of `NSpid:`).
pub fn parse_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
}

/// Devices (major, minor) of the FUSE and network filesystems in a `/proc/PID/mountinfo` text.
///
/// Why: a file there is served by a process (for FUSE, possibly the profiled container itself)
/// that may never answer, and any system call on such a file (open, `fstat`, `fstatfs`, a read)
/// may wait for it. The mountinfo text is the kernel's own, so reading it cannot stall, and the
/// device of a mapping is in `/proc/PID/maps`: such files are known without touching them.
pub fn remote_devices(mountinfo: &str) -> HashSet<(u32, u32)> {
    const REMOTE: [&str; 11] = [
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "afs", "coda", "ncpfs", "lustre",
    ];
    mountinfo
        .lines()
        .filter_map(|line| {
            // `ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
            let (mount, fs) = line.split_once(" - ")?;
            let fstype = fs.split(' ').next()?;
            let remote = fstype.starts_with("fuse") || REMOTE.contains(&fstype);
            let dev = mount.split(' ').nth(2)?;
            let (major, minor) = dev.split_once(':')?;
            remote.then_some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// Parses `/proc/PID/stat` into (comm, start time in clock ticks since boot — field 22).
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    // comm (field 2) is in parentheses and may itself contain spaces and ')': split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After ')' come fields 3.. ; field 22 is the 20th of them.
    let start_time = text.get(close + 1..)?.split_ascii_whitespace().nth(19)?;
    Some((comm, start_time.parse().ok()?))
}

fn read_start_time(pid: u32) -> Result<(String, u64), ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read_proc_file(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ProcError::Gone(pid)
        } else {
            ProcError::Read {
                path: path.clone(),
                source,
            }
        }
    })?;
    parse_stat(&text).ok_or(ProcError::Parse {
        path,
        what: "no start time in stat",
    })
}

/// A snapshot of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks since boot: with `pid`, identifies the process across pid reuse.
    pub start_time: u64,
    /// The thread-group leader's name.
    pub comm: String,
    /// `None` for kernel threads (and when unreadable).
    pub exe: Option<PathBuf>,
    pub cgroup: Option<String>,
    /// The pid as the process itself sees it, in its own pid namespace (the last `NSpid` of
    /// `/proc/PID/status`; `pid` when unreadable). A JIT names its perf map with it. Read once per
    /// (re)load, not per frame.
    pub ns_pid: u32,
    /// Executable mappings, sorted by start address.
    pub mappings: Vec<Mapping>,
    anonymous_exec: Vec<(u64, u64)>,
    /// Starts of the mappings whose file the agent was not allowed to read (permission denied):
    /// their frames say so, rather than "no build ID" (see [`Process::unreadable`]).
    unreadable: Vec<u64>,
    /// Starts of the mappings whose build ID the reader thread has not answered yet (see
    /// [`BuildIdCache::with_worker`]): the aggregator asks the cache again for them.
    pending_build_ids: Vec<u64>,
}

impl Process {
    /// Reads a process from `/proc`, resolving build IDs through `build_ids`. At most
    /// `max_mappings` mappings are kept.
    pub fn load(
        pid: u32,
        build_ids: &mut BuildIdCache,
        max_mappings: usize,
    ) -> Result<Process, ProcError> {
        let (comm, start_time) = read_start_time(pid)?;
        // Kernel threads have no exe link; that is a fact, not an error.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let s = p.to_string_lossy();
                match s.strip_suffix(" (deleted)") {
                    Some(stripped) => PathBuf::from(stripped),
                    None => p,
                }
            });
        let cgroup = read_proc_file(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| parse_cgroup(&t));
        let ns_pid = read_proc_file(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| parse_ns_pid(&t))
            .unwrap_or(pid);
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let maps = read_proc_file(&maps_path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ProcError::Gone(pid)
            } else {
                ProcError::Read {
                    path: maps_path,
                    source,
                }
            }
        })?;
        let ParsedMaps {
            mut mappings,
            anonymous_exec,
        } = parse_maps(&maps);
        if mappings.len() > max_mappings {
            tracing::debug!(
                pid,
                count = mappings.len(),
                max_mappings,
                "too many mappings; keeping the first"
            );
            mappings.truncate(max_mappings);
        }
        let mut unreadable = Vec::new();
        let mut pending_build_ids = Vec::new();
        // Not read on this (the sampling) thread: files on FUSE and network filesystems.
        let remote = read_proc_file(format!("/proc/{pid}/mountinfo"))
            .map(|t| remote_devices(&t))
            .unwrap_or_default();
        for m in &mut mappings {
            let MappingKind::File { path, .. } = &m.kind else {
                continue;
            };
            if remote.contains(&(m.file.major, m.file.minor)) {
                crate::process_files::count_refusal(
                    crate::process_files::Refusal::RemoteFilesystem,
                );
                tracing::debug!(pid, path = %path.display(), "mapped file on a FUSE or network filesystem: no build ID read");
                continue;
            }
            let mapped = MappedFile {
                pid,
                start: m.start,
                end: m.end,
                path,
                inode: m.file.inode,
            };
            match build_ids.get(m.file, &mapped) {
                Lookup::Ready(id) => m.build_id = id,
                Lookup::Pending => pending_build_ids.push(m.start),
                Lookup::Unreadable => unreadable.push(m.start),
                Lookup::Failed => {}
            }
        }
        Ok(Process {
            pid,
            start_time,
            comm,
            exe,
            cgroup,
            ns_pid,
            mappings,
            anonymous_exec,
            unreadable,
            pending_build_ids,
        })
    }

    /// Whether the agent was refused reading `m`'s file (permission denied), so that its frames
    /// can say why they have no name.
    pub fn unreadable(&self, m: &Mapping) -> bool {
        self.unreadable.binary_search(&m.start).is_ok()
    }

    /// Whether `m`'s build ID was still being read when this snapshot was taken.
    pub fn build_id_pending(&self, m: &Mapping) -> bool {
        self.pending_build_ids.binary_search(&m.start).is_ok()
    }

    /// Whether any build ID was still being read when this snapshot was taken.
    pub fn has_pending_build_ids(&self) -> bool {
        !self.pending_build_ids.is_empty()
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        m.contains(addr).then_some(m)
    }

    /// True if `addr` is explained by what we read: a mapping, or anonymous executable memory (JIT).
    pub fn covers(&self, addr: u64) -> bool {
        self.find(addr).is_some() || self.in_anonymous_exec(addr)
    }

    /// True if `addr` is in anonymous executable memory (JIT code) as the snapshot saw it.
    pub fn in_anonymous_exec(&self, addr: u64) -> bool {
        let i = self.anonymous_exec.partition_point(|&(s, _)| s <= addr);
        i.checked_sub(1)
            .and_then(|i| self.anonymous_exec.get(i))
            .is_some_and(|&(s, e)| (s..e).contains(&addr))
    }

    /// `service_name`: the executable's file name, or the comm for kernel threads.
    pub fn service_name(&self) -> &str {
        self.exe
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.comm)
    }
}

/// Limits of a [`ProcessCache`].
#[derive(Clone, Debug)]
pub struct ProcessCacheConfig {
    /// Most processes cached; beyond it the least recently used is evicted.
    pub max_processes: usize,
    /// Most executable mappings kept per process.
    pub max_mappings_per_process: usize,
    /// Most files whose build ID is remembered.
    pub max_build_ids: usize,
    /// Shortest time between two re-reads of one process; doubled (up to `max_refresh_interval`)
    /// each time a re-read did not explain the unknown address.
    pub min_refresh_interval: Duration,
    pub max_refresh_interval: Duration,
    /// Read build IDs on a worker thread (the agent) instead of the caller's (tests, tools): the
    /// files are the profiled containers', and the caller is the sampling thread.
    pub build_id_worker: bool,
    /// With the worker: how long a miss waits for its answer (see [`BuildIdCache::with_worker`]).
    pub build_id_wait: Duration,
}

impl Default for ProcessCacheConfig {
    fn default() -> Self {
        ProcessCacheConfig {
            max_processes: 8192,
            max_mappings_per_process: 16_384,
            max_build_ids: 32_768,
            min_refresh_interval: Duration::from_secs(1),
            max_refresh_interval: Duration::from_secs(60),
            build_id_worker: false,
            build_id_wait: Duration::from_secs(2),
        }
    }
}

impl From<&crate::config::AgentConfig> for ProcessCacheConfig {
    fn from(c: &crate::config::AgentConfig) -> Self {
        ProcessCacheConfig {
            max_processes: c.max_cached_processes,
            build_id_worker: true,
            ..Default::default()
        }
    }
}

struct Entry {
    process: Arc<Process>,
    loaded_at: Instant,
    refresh_interval: Duration,
    last_used: Instant,
    /// [`BuildIdCache::generation`] when `process` was loaded: if it moved and the snapshot still
    /// waits for build IDs, a re-load picks them up.
    build_id_generation: u64,
}

/// What a [`ProcessCache::sweep`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub exited: usize,
    pub reused: usize,
    pub execed: usize,
}

/// Processes by pid, bounded, refreshed lazily. Not thread-safe by design: the aggregation loop owns it.
pub struct ProcessCache {
    config: ProcessCacheConfig,
    entries: HashMap<u32, Entry>,
    build_ids: BuildIdCache,
    /// Pids whose `/proc/PID/maps` the agent was refused (permission denied: another user's
    /// process without CAP_SYS_PTRACE), so that their frames can say why they have no name.
    /// Emptied at each sweep; at most `max_processes`.
    denied: std::collections::HashSet<u32>,
}

impl ProcessCache {
    pub fn new(config: ProcessCacheConfig) -> Self {
        ProcessCache {
            build_ids: if config.build_id_worker {
                BuildIdCache::with_worker(config.max_build_ids, config.build_id_wait)
            } else {
                BuildIdCache::new(config.max_build_ids)
            },
            entries: HashMap::new(),
            denied: std::collections::HashSet::new(),
            config,
        }
    }

    /// The process `pid`, loading it on first sight. It is re-read (rate-limited) when an address in
    /// `addrs` is not covered by what we know (a new `dlopen`), or when `leader_comm` — the comm of a
    /// sample taken on the thread-group leader — differs from the cached one (an `exec`).
    /// `None` if the process cannot be read (it exited, or is not a process).
    pub fn resolve(
        &mut self,
        pid: u32,
        leader_comm: Option<&str>,
        addrs: &[u64],
    ) -> Option<Arc<Process>> {
        let now = Instant::now();
        if let Some(e) = self.entries.get_mut(&pid) {
            e.last_used = now;
            let exec_suspected = leader_comm.is_some_and(|c| c != e.process.comm);
            let miss = addrs.iter().any(|&a| !e.process.covers(a));
            let generation = self.build_ids.generation();
            let build_ids_read =
                e.process.has_pending_build_ids() && generation != e.build_id_generation;
            if !(exec_suspected || miss || build_ids_read)
                || now.duration_since(e.loaded_at) < e.refresh_interval
            {
                return Some(e.process.clone());
            }
            let prev = e.refresh_interval;
            e.build_id_generation = generation;
            match Process::load(
                pid,
                &mut self.build_ids,
                self.config.max_mappings_per_process,
            ) {
                Ok(p) => {
                    let explained = addrs.iter().all(|&a| p.covers(a));
                    // A re-read that finds nothing changed keeps the snapshot, so that what was
                    // built for it stays valid: the unwinder (its cached rules and memoized stacks
                    // are tied to it) is rebuilt only for a new snapshot. Re-reads that change
                    // nothing are common: a frame-pointer walk through code without frame pointers
                    // reports addresses no mapping covers (the no-FP bench workload was re-read 6
                    // times in 50 s).
                    if p != *e.process {
                        e.process = Arc::new(p);
                    }
                    e.loaded_at = now;
                    // Back off on processes whose unknown addresses a re-read does not explain (e.g.
                    // a JIT whose code is not in anonymous exec memory), so we don't re-read them
                    // every second.
                    e.refresh_interval = if explained {
                        self.config.min_refresh_interval
                    } else {
                        (prev * 2).min(self.config.max_refresh_interval)
                    };
                    return Some(e.process.clone());
                }
                Err(err) => {
                    tracing::debug!(pid, error = %err, "re-reading process failed; keeping the old snapshot");
                    e.loaded_at = now;
                    return Some(e.process.clone());
                }
            }
        }
        let build_id_generation = self.build_ids.generation();
        let p = match Process::load(
            pid,
            &mut self.build_ids,
            self.config.max_mappings_per_process,
        ) {
            Ok(p) => Arc::new(p),
            Err(err) => {
                tracing::debug!(pid, error = %err, "cannot read process");
                if matches!(&err, ProcError::Read { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
                    && self.denied.len() < self.config.max_processes
                {
                    self.denied.insert(pid);
                }
                return None;
            }
        };
        if self.entries.len() >= self.config.max_processes {
            self.evict_lru();
        }
        self.entries.insert(
            pid,
            Entry {
                process: p.clone(),
                loaded_at: now,
                refresh_interval: self.config.min_refresh_interval,
                last_used: now,
                build_id_generation,
            },
        );
        Some(p)
    }

    /// Whether reading `pid`'s maps was refused since the last sweep (permission denied).
    pub fn is_denied(&self, pid: u32) -> bool {
        self.denied.contains(&pid)
    }

    /// The build ID of a file as far as it is known now, without reading anything (see
    /// [`BuildIdCache::known`]).
    pub fn known_build_id(&self, file: FileId) -> Option<Option<BuildId>> {
        self.build_ids.known(file)
    }

    /// The cached snapshot of `pid`, without touching `/proc`.
    pub fn cached(&self, pid: u32) -> Option<Arc<Process>> {
        self.entries.get(&pid).map(|e| e.process.clone())
    }

    fn evict_lru(&mut self) {
        if let Some(pid) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(&pid, _)| pid)
        {
            self.entries.remove(&pid);
        }
    }

    /// Drops processes that exited, whose pid now belongs to another process (start time changed),
    /// or that exec'd (exe changed; they are re-read on their next sample). Call periodically, e.g.
    /// after each window is flushed (so the flushed window could still use them).
    pub fn sweep(&mut self) -> SweepStats {
        self.denied.clear();
        let mut stats = SweepStats::default();
        self.entries.retain(|&pid, e| match read_start_time(pid) {
            Err(_) => {
                stats.exited += 1;
                false
            }
            Ok((_, start)) if start != e.process.start_time => {
                stats.reused += 1;
                false
            }
            Ok(_) => {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                let same = match (&exe, &e.process.exe) {
                    (None, None) => true,
                    (Some(now), Some(was)) => {
                        now == was
                            || now.to_string_lossy().strip_suffix(" (deleted)") == was.to_str()
                    }
                    // Can't tell (permission, racing exit): keep it until the stat says otherwise.
                    (None, Some(_)) => true,
                    (Some(_), None) => false,
                };
                if !same {
                    stats.execed += 1;
                }
                same
            }
        });
        if stats != SweepStats::default() {
            tracing::debug!(?stats, cached = self.entries.len(), "process cache sweep");
        }
        stats
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads a `/proc` file whole. Its size reads as 0, so `fs::read_to_string` would start from a
/// 32-byte buffer and double it, a syscall each time (8 reads for an ordinary maps file); 16 KiB
/// takes most in one.
pub(crate) fn read_proc_file(path: impl AsRef<Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(16 << 10);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1048601                    /usr/bin/cat
55d0c8a02000-55d0c8a07000 r-xp 00002000 fd:01 1048601                    /usr/bin/cat
7f1c2a000000-7f1c2a100000 rwxp 00000000 00:00 0 
7f1c2a228000-7f1c2a3bd000 r-xp 00028000 fd:01 1050000                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a401000 r-xp 00001000 08:10 77                         /opt/my app/lib x.so (deleted)
7ffd5b5f0000-7ffd5b5f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";

    #[test]
    fn parses_executable_mappings() {
        let p = parse_maps(MAPS);
        let names: Vec<_> = p
            .mappings
            .iter()
            .map(|m| m.filename().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "/usr/bin/cat",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/opt/my app/lib x.so",
                "[vdso]"
            ]
        );
        let cat = &p.mappings[0];
        assert_eq!(
            (cat.start, cat.end, cat.offset),
            (0x55d0c8a02000, 0x55d0c8a07000, 0x2000)
        );
        assert_eq!(
            cat.file,
            FileId {
                major: 0xfd,
                minor: 1,
                inode: 1048601
            }
        );
        assert_eq!(cat.file_offset(0x55d0c8a02010), 0x2010);
        assert!(matches!(
            p.mappings[2].kind,
            MappingKind::File { deleted: true, .. }
        ));
        assert_eq!(p.mappings[2].file.major, 8);
        assert_eq!(p.mappings[3].kind, MappingKind::Vdso);
        // Anonymous rwx (JIT) and [vsyscall] are known but not file mappings.
        assert_eq!(
            p.anonymous_exec,
            vec![
                (0x7f1c2a000000, 0x7f1c2a100000),
                (0xffffffffff600000, 0xffffffffff601000)
            ]
        );
    }

    #[test]
    fn ns_pid_is_the_innermost_namespaces() {
        let status = "Name:\tnode\nTgid:\t4242\nNSpid:\t4242\t17\t1\nPPid:\t1\n";
        assert_eq!(parse_ns_pid(status), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_ns_pid(&me).is_some());
    }

    #[test]
    fn fuse_and_network_mounts_are_known_by_their_device() {
        let mountinfo = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
35 22 0:31 / /mnt/sshfs rw,nosuid,nodev,relatime shared:20 - fuse.sshfs user@host:/ rw,user_id=0
36 22 0:32 / /mnt/nfs rw,relatime shared:21 - nfs4 server:/export rw,vers=4.2
37 22 0:33 / /var/lib/docker/overlay2/x/merged rw,relatime - overlay overlay rw,lowerdir=/a
38 22 8:17 / /mnt/ntfs rw,relatime shared:22 - fuseblk /dev/sdb1 rw
39 22 0:34 / /mnt/share rw - cifs //srv/share rw
garbage
";
        let remote = remote_devices(mountinfo);
        let mut got: Vec<_> = remote.into_iter().collect();
        got.sort();
        assert_eq!(got, vec![(0, 31), (0, 32), (0, 34), (8, 17)]);
        // This process's own mounts parse (the test machine's root is not remote).
        let me = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_dev = std::fs::metadata("/proc/self/exe").map(|m| {
            use std::os::unix::fs::MetadataExt;
            (libc::major(m.dev()), libc::minor(m.dev()))
        });
        assert!(!remote_devices(&me).contains(&root_dev.unwrap()));
    }

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(stat), Some(("a) b) c".to_owned(), 987654)));
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn picks_the_informative_cgroup_line() {
        assert_eq!(
            parse_cgroup("0::/kubepods/pod1/abc\n").as_deref(),
            Some("/kubepods/pod1/abc")
        );
        let hybrid =
            "12:memory:/docker/m\n4:cpu,cpuacct:/docker/c\n1:name=systemd:/init.scope\n0::/\n";
        assert_eq!(parse_cgroup(hybrid).as_deref(), Some("/docker/c"));
        assert_eq!(
            parse_cgroup("12:memory:/docker/m\n0::/\n").as_deref(),
            Some("/docker/m")
        );
        assert_eq!(parse_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_cgroup(""), None);
    }

    #[inline(never)]
    fn a_function_in_the_test_binary() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn the_test_process_maps_its_own_code() {
        let addr = a_function_in_the_test_binary as *const () as usize as u64;
        let pid = std::process::id();
        let mut cache = ProcessCache::new(ProcessCacheConfig::default());
        let p = cache.resolve(pid, None, &[addr]).unwrap();
        assert_eq!(p.pid, pid);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(p.exe.as_deref(), Some(exe.as_path()));
        let m = p.find(addr).expect("our own code is mapped");
        assert_eq!(m.path(), Some(exe.as_path()));
        assert!(m.file_offset(addr) >= m.offset);

        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let expected = object::Object::build_id(&object::File::parse(&*bytes).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(m.build_id.as_ref().unwrap().as_bytes(), expected);
        // The file offset points at the same bytes the process runs.
        let off = m.file_offset(addr) as usize;
        let code = unsafe { std::slice::from_raw_parts(addr as usize as *const u8, 16) };
        assert_eq!(&bytes[off..off + 16], code);
        assert!(p.cgroup.is_some());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.sweep(), SweepStats::default());
    }

    #[test]
    fn exit_and_pid_reuse_drop_entries() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut cache = ProcessCache::new(ProcessCacheConfig::default());
        // Right after fork the child may still be the test binary; wait for exec to finish.
        let deadline = Instant::now() + Duration::from_secs(5);
        let p = loop {
            let p = Process::load(pid, &mut BuildIdCache::new(4), 64).unwrap();
            // comm changes early in exec, before the new executable is mapped: wait for both.
            if (p.comm == "sleep" && !p.mappings.is_empty()) || Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(p.service_name(), "sleep");
        let cached = cache.resolve(pid, None, &[]).unwrap();
        assert_eq!(cached.start_time, p.start_time);
        assert!(!cached.mappings.is_empty());

        // Pretend the pid was reused: the cached start time no longer matches /proc.
        if let Some(e) = cache.entries.get_mut(&pid) {
            Arc::make_mut(&mut e.process).start_time += 1;
        }
        assert_eq!(
            cache.sweep(),
            SweepStats {
                reused: 1,
                ..Default::default()
            }
        );
        assert!(cache.cached(pid).is_none());

        cache.resolve(pid, None, &[]).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            cache.sweep(),
            SweepStats {
                exited: 1,
                ..Default::default()
            }
        );
        assert!(cache.is_empty());
        assert!(
            cache.resolve(pid, None, &[]).is_none(),
            "gone processes are not cached"
        );
    }

    #[test]
    fn exec_is_noticed_through_the_leader_comm_and_sweep() {
        let pid = std::process::id();
        let mut cache = ProcessCache::new(ProcessCacheConfig {
            min_refresh_interval: Duration::ZERO,
            ..Default::default()
        });
        let real = cache.resolve(pid, None, &[]).unwrap();
        if let Some(e) = cache.entries.get_mut(&pid) {
            let p = Arc::make_mut(&mut e.process);
            p.comm = "before-exec".into();
            p.exe = Some(PathBuf::from("/bin/old"));
        }
        // A leader sample with the real comm triggers a re-read.
        let again = cache.resolve(pid, Some(&real.comm), &[]).unwrap();
        assert_eq!(again.comm, real.comm);
        // A changed exe is dropped by the sweep.
        if let Some(e) = cache.entries.get_mut(&pid) {
            Arc::make_mut(&mut e.process).exe = Some(PathBuf::from("/bin/old"));
        }
        assert_eq!(cache.sweep().execed, 1);
    }

    #[test]
    fn misses_refresh_with_backoff_and_the_cache_is_bounded() {
        let pid = std::process::id();
        let mut cache = ProcessCache::new(ProcessCacheConfig {
            max_processes: 1,
            min_refresh_interval: Duration::ZERO,
            max_refresh_interval: Duration::from_secs(60),
            ..Default::default()
        });
        let first = cache.resolve(pid, None, &[]).unwrap();
        // An address nothing maps: a re-read happens, cannot explain it, and the interval backs off.
        let reread = cache.resolve(pid, None, &[8]).unwrap();
        assert!(
            Arc::ptr_eq(&first, &reread),
            "a re-read that finds nothing changed keeps the snapshot"
        );
        let e = &cache.entries[&pid];
        assert_eq!(e.refresh_interval, Duration::ZERO); // 0 * 2: the floor we configured
        cache.entries.get_mut(&pid).unwrap().refresh_interval = Duration::from_secs(1);
        cache.entries.get_mut(&pid).unwrap().loaded_at = Instant::now() - Duration::from_secs(2);
        cache.resolve(pid, None, &[8]).unwrap();
        assert_eq!(cache.entries[&pid].refresh_interval, Duration::from_secs(2));

        // A second process evicts the first: at most one is kept.
        let ppid = std::os::unix::process::parent_id();
        cache.resolve(ppid, None, &[]).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(cache.cached(ppid).is_some());
    }
}
