//! The sampler's Python walk on this kernel (root only; CI runs it as root): what it costs the
//! verifier, and how its bounds show in profiles.
//!
//! - `root_sampler_program_stays_within_verifier_limits`: the instructions the verifier processed
//!   for the whole sampler program (the Python walk's loop of `KILN_MAX_PY_FRAMES` = 64 frames and
//!   its thread search of `KILN_PY_MAX_THREADS` = 64 included), against the kernel's limit of
//!   1 M; the figures are in docs/ARCHITECTURE.md.
//! - `root_python_bounds_are_named_in_profiles`: a CPython process with 80 spinning threads (more
//!   than the sampler searches) and one thread 100 Python calls deep (more than it records),
//!   sampled by the real sampler and aggregator: the threads it cannot find carry
//!   `[python: thread state not found: …]`, the deep thread's stacks carry
//!   `[truncated: too many Python frames]` where the outer frames are missing, and the found
//!   threads carry their Python frames.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_agent::kallsyms::Kallsyms;
use kiln_agent::metrics::AgentMetrics;
use kiln_agent::procmaps::{ProcessCache, ProcessCacheConfig};
use kiln_agent::profile::{Aggregator, AggregatorConfig};
use kiln_agent::python::{Python, THREAD_STATE_NOT_FOUND};
use kiln_agent::sampling::{MIN_DRAIN_INTERVAL, Sampler, SamplerConfig};

/// The kernel refuses a program whose verification processes more instructions than this
/// (`BPF_COMPLEXITY_LIMIT_INSNS`, the same since 5.2, so on 5.15 too).
const KERNEL_LIMIT: u32 = 1_000_000;

fn require_root() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root,
        "this test loads eBPF and needs root: cargo test -- --ignored root_"
    );
}

fn load(hz: u64) -> Sampler {
    Sampler::load(SamplerConfig {
        frequency_hz: hz,
        stack_copy_bytes: 16384,
        ring_buffer_bytes: None,
    })
    .unwrap_or_else(|e| panic!("sampler failed to load as root: {e}"))
}

#[test]
#[ignore = "needs root"]
fn root_sampler_program_stays_within_verifier_limits() {
    require_root();
    let sampler = load(19);
    let info = sampler.program_info().expect("the sampler's program info");
    let verified = info
        .verified_instruction_count()
        .expect("this kernel (5.16+) reports verified instructions");
    eprintln!(
        "sampler program: {verified} instructions processed by the verifier (limit {KERNEL_LIMIT}), \
         {} translated bytes ({} instructions), {} JITed bytes",
        info.size_translated().unwrap_or(0),
        info.size_translated().unwrap_or(0) / 8,
        info.size_jitted()
    );
    // Half the limit: the headroom for older verifiers (5.15 prunes fewer states) and for the
    // other runtimes' walks that share this program.
    assert!(
        verified <= KERNEL_LIMIT / 2,
        "the verifier processed {verified} instructions: within {} of the kernel's limit",
        KERNEL_LIMIT - verified
    );
}

/// The test's CPython: Debian's 3.11 where installed (CI installs it), else `python3`.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3.11").exists() {
        "/usr/bin/python3.11"
    } else {
        "python3"
    }
}

const WORKLOAD: &str = r#"
import sys, threading

def shallow_spin():
    x = 0
    while True:
        x = (x * 31 + 7) % 1000003

def deep(n):
    if n == 0:
        x = 0
        while True:
            x = (x * 31 + 7) % 1000003
    return deep(n - 1)

# Thread states are listed newest first and the sampler searches 64 of them: started last, the
# deep thread is found; the main thread and the 16 oldest spinners are not.
for _ in range(80):
    threading.Thread(target=shallow_spin, daemon=True).start()
threading.Thread(target=deep, args=(100,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the profiles of the workload showed so far, in samples.
#[derive(Debug, Default)]
struct Tally {
    total: i64,
    /// Samples whose stack carries the thread-state-not-found frame.
    not_found: i64,
    /// Samples of a found spinner: `shallow_spin` by name.
    found: i64,
    /// Samples of the deep thread with the truncation frame rootward of its `deep` frames.
    deep_truncated: i64,
    /// Samples of the deep thread without it (must be none: it is always over 64 frames).
    deep_unmarked: i64,
    /// Samples naming `shallow_spin` and carrying the not-found frame (must be none).
    contradictory: i64,
}

#[test]
#[ignore = "needs root"]
fn root_python_bounds_are_named_in_profiles() {
    require_root();
    const HZ: u32 = 499;
    let mut sampler = load(u64::from(HZ));
    // BPF run-time statistics while this runs (the fd keeps them on): the walk's cost per sample.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let python_map = sampler.take_python_map().expect("the sampler's Python map");
    let mut agg = Aggregator::new(
        AggregatorConfig {
            frequency_hz: HZ.try_into().expect("non-zero"),
            node_name: "test".into(),
            max_processes_per_window: 16,
            max_stacks_per_process: 100_000,
        },
        ProcessCache::new(ProcessCacheConfig::default()),
        Arc::new(Kallsyms::parse("")),
        AgentMetrics::unregistered(),
    )
    .with_python(Python::new(Some(python_map)).with_detector());

    let mut child = Command::new(python())
        .args(["-c", WORKLOAD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the workload says it is ready");
    assert_eq!(line.trim(), "ready");
    let pid = child.id();
    let _workload = Workload(child);

    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut unwound = Vec::new();
    let mut window_started = Instant::now();
    while tally.not_found < 50 || tally.found < 50 || tally.deep_truncated < 20 {
        assert!(
            Instant::now() < deadline,
            "not every bound showed within 90 s: {tally:?}"
        );
        std::thread::sleep(MIN_DRAIN_INTERVAL);
        agg.unwind_pass(&mut unwound, |sink| {
            sampler.drain(|s| {
                if s.tgid == pid {
                    sink(&s)
                }
            })
        });
        for s in unwound.drain(..) {
            agg.aggregate(s);
        }
        if window_started.elapsed() < Duration::from_secs(2) {
            continue;
        }
        window_started = Instant::now();
        for pp in agg.flush().into_iter().filter(|p| p.pid == pid) {
            let p = &pp.profile;
            for s in &p.sample {
                let names: Vec<&str> = s
                    .location_id
                    .iter()
                    .filter_map(|id| {
                        let loc = p.location.iter().find(|l| l.id == *id)?;
                        let function = loc.line.first()?.function_id;
                        let f = p.function.iter().find(|f| f.id == function)?;
                        Some(p.str(f.name))
                    })
                    .collect();
                let n = s.value[0];
                tally.total += n;
                let marked = names.contains(&THREAD_STATE_NOT_FOUND);
                let shallow = names.contains(&"shallow_spin");
                tally.not_found += if marked { n } else { 0 };
                tally.found += if shallow && !marked { n } else { 0 };
                tally.contradictory += if shallow && marked { n } else { 0 };
                if let Some(last_deep) = names.iter().rposition(|&f| f == "deep") {
                    let cut = names
                        .iter()
                        .position(|&f| f == "[truncated: too many Python frames]");
                    if cut.is_some_and(|c| c > last_deep) {
                        tally.deep_truncated += n;
                    } else {
                        tally.deep_unmarked += n;
                    }
                }
            }
        }
        eprintln!("{tally:?}");
    }
    assert_eq!(tally.contradictory, 0, "{tally:?}");
    assert_eq!(tally.deep_unmarked, 0, "{tally:?}");
    if stats.is_some() {
        let info = sampler.program_info().expect("program info");
        eprintln!(
            "sampler program while this ran (all CPUs, every process): {} runs, {:.0} ns per run",
            info.run_count(),
            info.run_time().as_nanos() as f64 / info.run_count().max(1) as f64
        );
    }
}
