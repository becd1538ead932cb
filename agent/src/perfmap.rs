//! JIT symbols from perf maps: runtimes that compile code at run time (V8/Node with `--perf-basic-prof`,
//! the JVM with perf-map-agent, .NET with `DOTNET_PerfMapEnabled`, LuaJIT, …) write
//! `/tmp/perf-PID.map` — one `START SIZE name` line (hex) per compiled function, appended as code is
//! compiled. Addresses in anonymous executable memory are named from it; without it they stay
//! unnamed.
//!
//! The file belongs to the profiled process (a container may plant anything there), so:
//! * it is opened through the door to process files (process_files.rs): inside the process's root,
//!   regular files only, at most [`PerfMapConfig::max_file_bytes`];
//! * it is read by a worker thread of its own, never by the sampling thread: a lookup only consults
//!   what is parsed so far, and when an address is not named it asks the worker (at most once per
//!   [`PerfMapConfig::refresh_interval`] per process, through a bounded queue) to read more;
//! * only appended lines are parsed: the worker remembers the byte offset after the last complete
//!   line and the file's inode (a new file, or a shorter one, starts over);
//! * entries per process and processes are capped.
//!
//! The pid in the file name is the process's own (its pid namespace's), cached in
//! [`Process::ns_pid`] rather than read per frame.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_proto::ProfileBuilder;

use crate::metrics::AgentMetrics;
use crate::process_files::ProcessRoot;
use crate::procmaps::Process;

/// The pseudo-mapping of perf-map-named frames (already symbolized: the server keeps the name).
pub const PERF_MAP_MAPPING: &str = "[perf-map]";

/// Bytes read from a perf map at a time: the worker parses a chunk, then merges it under the lock
/// the sampling thread's lookups take, so a chunk bounds how long a lookup can wait.
const CHUNK_BYTES: usize = 1 << 20;

/// Limits of [`PerfMaps`].
#[derive(Clone, Debug)]
pub struct PerfMapConfig {
    /// Shortest time between two reads of one process's perf map (asked for by an unnamed JIT
    /// address).
    pub refresh_interval: Duration,
    /// Perf maps larger than this are refused (a runaway runtime must not cost the agent its memory).
    pub max_file_bytes: u64,
    /// Most entries kept per process; later lines are skipped.
    pub max_entries_per_process: usize,
    /// Most entries kept over all processes (~70 bytes each with a short name).
    pub max_entries: usize,
    /// Processes whose perf maps are kept; beyond it the least recently read is dropped.
    pub max_processes: usize,
    /// Reads waiting for the worker; beyond it requests are dropped (and asked for again later).
    pub queue: usize,
}

impl Default for PerfMapConfig {
    fn default() -> Self {
        PerfMapConfig {
            refresh_interval: Duration::from_secs(1),
            max_file_bytes: 256 << 20,
            max_entries_per_process: 1 << 21,
            max_entries: 1 << 22,
            max_processes: 64,
            queue: 64,
        }
    }
}

/// One perf map, parsed: start → (end exclusive, name). A later line for the same start replaces
/// the earlier (the runtime reused the address).
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: BTreeMap<u64, (u64, Box<str>)>,
}

impl PerfMap {
    /// Parses perf-map text; malformed lines are skipped (the file may be mid-write).
    pub fn parse(text: &str) -> PerfMap {
        let mut m = PerfMap::default();
        m.extend(parse_lines(text), usize::MAX);
        m
    }

    /// Adds entries while fewer than `max` are kept; returns how many were skipped.
    fn extend(&mut self, entries: Vec<(u64, u64, Box<str>)>, max: usize) -> usize {
        let mut skipped = 0;
        for (start, end, name) in entries {
            if self.entries.len() >= max && !self.entries.contains_key(&start) {
                skipped += 1;
                continue;
            }
            self.entries.insert(start, (end, name));
        }
        skipped
    }

    /// The function covering `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (start, (end, name)) = self.entries.range(..=addr).next_back()?;
        (*start <= addr && addr < *end).then_some(&**name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `START SIZE name` lines (hex, `0x` optional) → (start, end, name); others skipped.
fn parse_lines(text: &str) -> Vec<(u64, u64, Box<str>)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let name = parts.next()?.trim();
            (size > 0 && !name.is_empty()).then(|| (start, start.saturating_add(size), name.into()))
        })
        .collect()
}

/// A process across pid reuse: (pid, start time).
type ProcessKey = (u32, u64);

/// What is known of one process's perf map.
#[derive(Default)]
struct ProcessMap {
    map: PerfMap,
    /// Inode of the file read, and the offset just after its last complete line parsed.
    inode: Option<u64>,
    offset: u64,
    /// When a read was last asked for.
    requested: Option<Instant>,
    /// A read is queued or under way.
    reading: bool,
}

/// Parsed perf maps, shared by the sampling thread (lookups) and the worker (reads).
type Maps = Mutex<HashMap<ProcessKey, ProcessMap>>;

fn lock(maps: &Maps) -> MutexGuard<'_, HashMap<ProcessKey, ProcessMap>> {
    maps.lock().unwrap_or_else(|p| p.into_inner())
}

/// A read for the worker.
struct Request {
    key: ProcessKey,
    ns_pid: u32,
}

/// Perf maps of the profiled processes, read off the sampling thread. Owned by the aggregator.
pub struct PerfMaps {
    config: PerfMapConfig,
    maps: Arc<Maps>,
    metrics: AgentMetrics,
    /// The worker's queue; the worker starts with the first request and ends when this is dropped.
    worker: Option<SyncSender<Request>>,
}

impl PerfMaps {
    pub fn new(config: PerfMapConfig, metrics: AgentMetrics) -> Self {
        PerfMaps {
            config,
            maps: Arc::default(),
            metrics,
            worker: None,
        }
    }

    /// The perf-map name of `addr` in `process`, from what is parsed so far. The worker is asked
    /// (at most once per refresh interval) to read what the runtime appended; a later sample gets
    /// it.
    pub fn lookup(&mut self, process: &Process, addr: u64) -> Option<String> {
        let key = (process.pid, process.start_time);
        let now = Instant::now();
        let name = {
            let mut maps = lock(&self.maps);
            if !maps.contains_key(&key) && maps.len() >= self.config.max_processes {
                evict_least_recent(&mut maps);
            }
            let e = maps.entry(key).or_default();
            let name = e.map.lookup(addr).map(str::to_owned);
            // Named or not, what the runtime appended since is read once per interval: a JIT
            // reuses the addresses of collected code, and the later line is the right name.
            let due = e
                .requested
                .is_none_or(|t| now.duration_since(t) >= self.config.refresh_interval);
            if e.reading || !due {
                return name;
            }
            e.requested = Some(now);
            e.reading = true;
            name
        };
        let request = Request {
            key,
            ns_pid: process.ns_pid,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.worker().try_send(request)
        {
            self.metrics.perf_map_requests_dropped.inc();
            if let Some(e) = lock(&self.maps).get_mut(&key) {
                e.reading = false;
            }
        }
        name
    }

    /// Forgets processes that exited (those `alive` says no to).
    pub fn retain(&mut self, mut alive: impl FnMut(u32, u64) -> bool) {
        lock(&self.maps).retain(|&(pid, start), e| e.reading || alive(pid, start));
    }

    /// Whether no read is queued or under way (tests wait for it).
    pub fn idle(&self) -> bool {
        lock(&self.maps).values().all(|e| !e.reading)
    }

    fn worker(&mut self) -> &SyncSender<Request> {
        self.worker.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(self.config.queue.max(1));
            let (maps, config, metrics) =
                (self.maps.clone(), self.config.clone(), self.metrics.clone());
            let spawned = std::thread::Builder::new()
                .name("kiln-perfmap".into())
                .spawn(move || serve(rx, &maps, &config, &metrics));
            if let Err(e) = spawned {
                // The queue's receiver is gone with the closure: requests fail and are counted.
                tracing::warn!(error = %e, "cannot start the perf-map reader; JIT frames stay unnamed");
            }
            tx
        })
    }
}

fn evict_least_recent(maps: &mut HashMap<ProcessKey, ProcessMap>) {
    let oldest = maps
        .iter()
        .filter(|(_, e)| !e.reading)
        .min_by_key(|(_, e)| e.requested)
        .map(|(k, _)| *k);
    if let Some(k) = oldest {
        maps.remove(&k);
    }
}

/// The worker: serves reads until the [`PerfMaps`] is dropped.
fn serve(rx: Receiver<Request>, maps: &Maps, config: &PerfMapConfig, metrics: &AgentMetrics) {
    for req in rx {
        read_appended(&req, maps, config, metrics);
        if let Some(e) = lock(maps).get_mut(&req.key) {
            e.reading = false;
        }
    }
}

/// Reads and parses what was appended to the perf map of `req` since the last read.
fn read_appended(req: &Request, maps: &Maps, config: &PerfMapConfig, metrics: &AgentMetrics) {
    let (pid, _) = req.key;
    let path = PathBuf::from(format!("/tmp/perf-{}.map", req.ns_pid));
    let file = match ProcessRoot::of_process(pid)
        .and_then(|root| root.open_file(&path, config.max_file_bytes))
    {
        Ok(f) => f,
        Err(e) => {
            // No perf map is the common case (JIT code without one); refusals are counted.
            if !e.is_not_found() {
                tracing::debug!(pid, error = %e, "perf map not read");
            }
            return;
        }
    };
    let end = file.len();
    let mut offset = {
        let mut maps = lock(maps);
        let Some(e) = maps.get_mut(&req.key) else {
            return;
        };
        // Another file (the runtime restarted, or exec'd) or a shorter one: start over.
        if e.inode != Some(file.inode()) || end < e.offset {
            *e = ProcessMap {
                inode: Some(file.inode()),
                requested: e.requested,
                reading: true,
                ..ProcessMap::default()
            };
        }
        e.offset
    };
    // Up to the size when opened; what is appended meanwhile is read next time.
    let mut buf = vec![0u8; CHUNK_BYTES];
    while offset < end {
        let want = usize::try_from(end - offset).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
        let n = match file.file().read_at(&mut buf[..want], offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(pid, error = %e, "reading perf map");
                break;
            }
        };
        let Some(last_newline) = buf[..n].iter().rposition(|&b| b == b'\n') else {
            if n == CHUNK_BYTES {
                // A "line" of a whole chunk is no perf-map line: skip it.
                offset += n as u64;
                continue;
            }
            // The last line is still being written.
            break;
        };
        let complete = &buf[..=last_newline];
        let entries = parse_lines(&String::from_utf8_lossy(complete));
        offset += complete.len() as u64;
        metrics.perf_map_bytes_parsed.inc_by(complete.len() as u64);
        let mut maps = lock(maps);
        let total: usize = maps.values().map(|e| e.map.len()).sum();
        let Some(e) = maps.get_mut(&req.key) else {
            return;
        };
        let room = config.max_entries.saturating_sub(total - e.map.len());
        let skipped = e
            .map
            .extend(entries, config.max_entries_per_process.min(room));
        e.offset = offset;
        if skipped > 0 {
            tracing::debug!(
                pid,
                skipped,
                max = config.max_entries_per_process,
                "perf map entries over the limit skipped"
            );
        }
    }
}

/// For a user address in anonymous executable memory of `process` (JIT code) that its perf map
/// names: a symbolized location in the [`PERF_MAP_MAPPING`] pseudo-mapping. `None` otherwise
/// (file-backed addresses take the normal path; this costs them one binary search).
pub fn jit_location(
    builder: &mut ProfileBuilder,
    perf_maps: &mut PerfMaps,
    process: Option<&Process>,
    addr: u64,
) -> Option<u64> {
    let process = process?;
    if process.find(addr).is_some() || !process.covers(addr) {
        return None;
    }
    let name = perf_maps.lookup(process, addr)?;
    let m = builder.mapping(0, 0, 0, PERF_MAP_MAPPING, "");
    builder.mark_symbolized(m);
    let f = builder.function(&name, "");
    Some(builder.symbolized_location(m, addr, &[(f, 0)]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn parses_and_looks_up() {
        let m = PerfMap::parse(
            "7f0000001000 40 LazyCompile:*hot /app/x.js:1\n\
             garbage line\n\
             0x7f0000000000 100 Builtin:Call\n\
             7f0000002000 0 empty\n",
        );
        assert_eq!(
            m.lookup(0x7f00_0000_1000),
            Some("LazyCompile:*hot /app/x.js:1")
        );
        assert_eq!(
            m.lookup(0x7f00_0000_103f),
            Some("LazyCompile:*hot /app/x.js:1")
        );
        assert_eq!(m.lookup(0x7f00_0000_1040), None);
        assert_eq!(m.lookup(0x7f00_0000_0080), Some("Builtin:Call"));
        assert_eq!(
            m.lookup(0x7f00_0000_2000),
            None,
            "zero-size entries name nothing"
        );
        assert_eq!(m.lookup(0x10), None);
    }

    /// A real process with anonymous executable memory and a perf map naming it (as a JIT
    /// runtime does): the address becomes a symbolized `[perf-map]` location with that name.
    #[test]
    fn names_jit_code_of_a_live_process() {
        use crate::procmaps::{ProcessCache, ProcessCacheConfig};
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("jit.c");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    FILE *f = fopen(path, "w");
    fprintf(f, "%lx 100 jitted_hot\n", (unsigned long)p);
    fclose(f);
    printf("%lx\n", (unsigned long)p);
    fflush(stdout);
    pause();
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("jit");
        let built = std::process::Command::new("gcc")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        if !built {
            eprintln!("SKIPPED: gcc is not available to build the JIT stand-in");
            return;
        }
        let mut child = std::process::Command::new(&exe)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let jit = u64::from_str_radix(line.trim(), 16).unwrap();
        let mut cache = ProcessCache::new(ProcessCacheConfig::default());
        let process = cache.resolve(pid, None, &[]).unwrap();
        let mut maps = fast_perf_maps(AgentMetrics::unregistered());
        let mut b = ProfileBuilder::new(&[("samples", "count")]);
        // The first lookup asks the worker; the name comes with a later sample.
        let named = wait_for(|| jit_location(&mut b, &mut maps, Some(&process), jit + 0x10));
        let beyond = jit_location(&mut b, &mut maps, Some(&process), jit + 0x100);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
        let loc = named.expect("JIT address not named from the perf map");
        assert!(beyond.is_none(), "outside the perf map entry");
        b.add_sample(&[loc], &[1], &[]);
        let p = b.finish();
        let l = p.location.iter().find(|l| l.id == loc).unwrap();
        let f = p
            .function
            .iter()
            .find(|f| f.id == l.line[0].function_id)
            .unwrap();
        assert_eq!(p.str(f.name), "jitted_hot");
        let m = p.mapping.iter().find(|m| m.id == l.mapping_id).unwrap();
        assert_eq!(p.str(m.filename), PERF_MAP_MAPPING);
    }

    /// A worker that reads again on every unnamed address (tests wait for conditions).
    fn fast_perf_maps(metrics: AgentMetrics) -> PerfMaps {
        PerfMaps::new(
            PerfMapConfig {
                refresh_interval: Duration::ZERO,
                ..PerfMapConfig::default()
            },
            metrics,
        )
    }

    /// Polls `f` until it gives something, for at most 10 s.
    fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// This test process, with a pid-namespace pid no real process has, so that its perf map
    /// `/tmp/perf-<ns_pid>.map` (seen through /proc/self/root) is this test's own file.
    fn me_as(ns_pid: u32) -> (Process, PathBuf) {
        use crate::procmaps::{ProcessCache, ProcessCacheConfig};
        let mut cache = ProcessCache::new(ProcessCacheConfig::default());
        let mut me = (*cache.resolve(std::process::id(), None, &[]).unwrap()).clone();
        me.ns_pid = ns_pid;
        let path = PathBuf::from(format!("/tmp/perf-{ns_pid}.map"));
        let _ = std::fs::remove_file(&path);
        (me, path)
    }

    #[test]
    fn parses_only_the_appended_lines() {
        use std::io::Write;
        let (me, path) = me_as(u32::MAX - 11);
        let metrics = AgentMetrics::unregistered();
        let mut maps = fast_perf_maps(metrics.clone());
        let first = "1000 10 first\n2000 10 second\n";
        std::fs::write(&path, first).unwrap();
        assert_eq!(
            wait_for(|| maps.lookup(&me, 0x1008)).as_deref(),
            Some("first")
        );
        assert_eq!(metrics.perf_map_bytes_parsed.get(), first.len() as u64);

        // A line being written (no newline yet) is left for the next read.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"3000 10 thi").unwrap();
        assert!(wait_for(|| maps.idle().then_some(())).is_some());
        assert_eq!(maps.lookup(&me, 0x3000), None);
        assert!(wait_for(|| maps.idle().then_some(())).is_some());
        assert_eq!(metrics.perf_map_bytes_parsed.get(), first.len() as u64);
        f.write_all(b"rd\n4000 10 fourth\n").unwrap();
        assert_eq!(
            wait_for(|| maps.lookup(&me, 0x4004)).as_deref(),
            Some("fourth")
        );
        assert_eq!(maps.lookup(&me, 0x3000).as_deref(), Some("third"));
        assert_eq!(maps.lookup(&me, 0x1000).as_deref(), Some("first"), "kept");
        // Each byte parsed once: the first lines were not read again.
        let whole = std::fs::metadata(&path).unwrap().len();
        assert_eq!(metrics.perf_map_bytes_parsed.get(), whole);

        // Code collected and another function compiled at the same address: the later line wins,
        // though the address was already named.
        f.write_all(b"1000 10 recompiled\n").unwrap();
        assert_eq!(
            wait_for(|| maps.lookup(&me, 0x1000).filter(|n| n == "recompiled")).as_deref(),
            Some("recompiled")
        );

        // A new file (the runtime restarted) starts over.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "5000 10 fifth\n").unwrap();
        assert_eq!(
            wait_for(|| maps.lookup(&me, 0x5000)).as_deref(),
            Some("fifth")
        );
        assert_eq!(
            maps.lookup(&me, 0x1000),
            None,
            "the old file's names are gone"
        );
        let _ = std::fs::remove_file(&path);
    }

    /// A FIFO planted as the perf map: refused by the door, and no lookup ever waits on it.
    #[test]
    fn a_planted_fifo_is_refused_without_stalling_lookups() {
        use crate::process_files::{Refusal, refusal_totals};
        let not_regular = || {
            refusal_totals()
                .into_iter()
                .find(|(r, _)| *r == Refusal::NotRegular)
                .map_or(0, |(_, n)| n)
        };
        let (me, path) = me_as(u32::MAX - 12);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let before = not_regular();
        let mut maps = fast_perf_maps(AgentMetrics::unregistered());
        let started = Instant::now();
        for _ in 0..1000 {
            assert_eq!(maps.lookup(&me, 0x1000), None);
        }
        assert!(wait_for(|| (not_regular() > before).then_some(())).is_some());
        assert!(
            wait_for(|| maps.idle().then_some(())).is_some(),
            "the worker is not stuck"
        );
        let _ = std::fs::remove_file(&path);
        // 1000 lookups are microseconds each; a blocked open would never return at all.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn entries_per_process_are_capped() {
        let (me, path) = me_as(u32::MAX - 13);
        let text: String = (0..100)
            .map(|i| format!("{:x} 10 f{i}\n", 0x1000 + i * 0x100))
            .collect();
        std::fs::write(&path, text).unwrap();
        let mut maps = PerfMaps::new(
            PerfMapConfig {
                refresh_interval: Duration::ZERO,
                max_entries_per_process: 10,
                ..PerfMapConfig::default()
            },
            AgentMetrics::unregistered(),
        );
        assert_eq!(wait_for(|| maps.lookup(&me, 0x1000)).as_deref(), Some("f0"));
        assert!(wait_for(|| maps.idle().then_some(())).is_some());
        assert_eq!(maps.lookup(&me, 0x1000 + 9 * 0x100).as_deref(), Some("f9"));
        assert_eq!(maps.lookup(&me, 0x1000 + 10 * 0x100), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn entries_in_all_are_capped() {
        let (a, path_a) = me_as(u32::MAX - 14);
        let (mut b, path_b) = me_as(u32::MAX - 15);
        // Another process (as the cache keys them) with its own perf map.
        b.start_time += 1;
        let lines = |name: &str| -> String {
            (0..10)
                .map(|i| format!("{:x} 10 {name}{i}\n", 0x1000 + i * 0x100))
                .collect()
        };
        std::fs::write(&path_a, lines("a")).unwrap();
        std::fs::write(&path_b, lines("b")).unwrap();
        let mut maps = PerfMaps::new(
            PerfMapConfig {
                refresh_interval: Duration::ZERO,
                max_entries: 15,
                ..PerfMapConfig::default()
            },
            AgentMetrics::unregistered(),
        );
        assert_eq!(wait_for(|| maps.lookup(&a, 0x1000)).as_deref(), Some("a0"));
        assert!(wait_for(|| maps.idle().then_some(())).is_some());
        assert_eq!(wait_for(|| maps.lookup(&b, 0x1000)).as_deref(), Some("b0"));
        assert!(wait_for(|| maps.idle().then_some(())).is_some());
        assert_eq!(maps.lookup(&a, 0x1000 + 9 * 0x100).as_deref(), Some("a9"));
        assert_eq!(maps.lookup(&b, 0x1000 + 4 * 0x100).as_deref(), Some("b4"));
        assert_eq!(maps.lookup(&b, 0x1000 + 5 * 0x100), None, "over the total");
        let _ = std::fs::remove_file(&path_a);
        let _ = std::fs::remove_file(&path_b);
    }
}
