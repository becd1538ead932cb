//! JIT symbols from perf maps: runtimes that compile code at run time (V8/Node with `--perf-basic-prof`,
//! the JVM with perf-map-agent, .NET with `DOTNET_PerfMapEnabled`, LuaJIT, …) write
//! `/tmp/perf-PID.map` — one `START SIZE name` line (hex) per compiled function. Addresses in
//! anonymous executable memory are named from it; without it they stay unnamed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use kiln_proto::ProfileBuilder;

use crate::procmaps::Process;

/// The pseudo-mapping of perf-map-named frames (already symbolized: the server keeps the name).
pub const PERF_MAP_MAPPING: &str = "[perf-map]";

/// Perf maps larger than this are not read (a runaway runtime must not cost the agent its memory).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Processes whose perf maps are kept parsed; beyond it the cache starts over.
const MAX_PROCESSES: usize = 256;

/// One parsed perf map: (start, end exclusive, name) sorted by start.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Parses perf-map text; malformed lines are skipped (the file may be mid-write).
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = parts.next()?.trim();
                (size > 0 && !name.is_empty())
                    .then(|| (start, start.saturating_add(size), name.to_owned()))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        PerfMap { entries }
    }

    /// The function covering `addr`. A later line for the same address wins in the runtime's
    /// view, but sorting keeps either; both name code that was there.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (*start <= addr && addr < *end).then_some(name.as_str())
    }
}

struct Cached {
    /// (modification time, length) of the file when parsed: a change means re-read.
    stamp: (SystemTime, u64),
    map: PerfMap,
}

/// Parsed perf maps by pid. A process-wide cache so the aggregator needs only a call, not state.
fn cache() -> &'static Mutex<HashMap<u32, Cached>> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Cached>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The pid as the process itself sees it (its perf map is named with that one, inside its
/// container): the last `NSpid` field of `/proc/PID/status`.
fn namespaced_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last()?.parse().ok())
        })
        .unwrap_or(pid)
}

/// Where the perf map of `pid` lives, seen from the agent.
fn perf_map_path(pid: u32) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root/tmp")).join(format!("perf-{}.map", namespaced_pid(pid)))
}

/// The perf-map name of `addr` in `pid`, reading (or re-reading, if it changed) the file at `path`.
pub fn lookup_in(path: &Path, pid: u32, addr: u64) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_FILE_BYTES {
        return None;
    }
    let stamp = (meta.modified().ok()?, meta.len());
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if cache.get(&pid).is_none_or(|c| c.stamp != stamp) {
        let text = std::fs::read_to_string(path).ok()?;
        if cache.len() >= MAX_PROCESSES {
            cache.clear();
        }
        cache.insert(
            pid,
            Cached {
                stamp,
                map: PerfMap::parse(&text),
            },
        );
    }
    cache.get(&pid)?.map.lookup(addr).map(str::to_owned)
}

/// For a user address in anonymous executable memory of `process` (JIT code) that its perf map
/// names: a symbolized location in the [`PERF_MAP_MAPPING`] pseudo-mapping. `None` otherwise
/// (file-backed addresses take the normal path; this costs them one binary search).
pub fn jit_location(
    builder: &mut ProfileBuilder,
    process: Option<&Process>,
    pid: u32,
    addr: u64,
) -> Option<u64> {
    let process = process?;
    if process.find(addr).is_some() || !process.covers(addr) {
        return None;
    }
    let name = lookup_in(&perf_map_path(pid), pid, addr)?;
    let m = builder.mapping(0, 0, 0, PERF_MAP_MAPPING, "");
    builder.mark_symbolized(m);
    let f = builder.function(&name, "");
    Some(builder.symbolized_location(m, addr, &[(f, 0)]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let mut b = ProfileBuilder::new(&[("samples", "count")]);
        let named = jit_location(&mut b, Some(&process), pid, jit + 0x10);
        let beyond = jit_location(&mut b, Some(&process), pid, jit + 0x100);
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

    #[test]
    fn rereads_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perf-1.map");
        // A pid no real process in this test run has, so the shared cache is ours.
        let pid = u32::MAX - 7;
        std::fs::write(&path, "1000 10 first\n").unwrap();
        assert_eq!(lookup_in(&path, pid, 0x1008).as_deref(), Some("first"));
        std::fs::write(&path, "1000 10 first\n2000 10 second_longer\n").unwrap();
        assert_eq!(
            lookup_in(&path, pid, 0x2000).as_deref(),
            Some("second_longer")
        );
        assert_eq!(lookup_in(&dir.path().join("none.map"), pid, 0x1000), None);
    }
}
