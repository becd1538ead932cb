//! A hostile container against the agent's door to process files (root only; CI runs it as root).
//!
//! A JIT stand-in (tests/workloads/jit_spin.c) runs chrooted in its own mount and pid namespaces
//! (`unshare --mount --pid --fork`, a tmpfs as its root and another on its /tmp), spinning in
//! anonymous executable memory that only its perf map can name. The real sampler and aggregator
//! sample the node while the test plants, in turn, at the workload's `/tmp/perf-1.map`:
//! a FIFO, a symlink to a file outside its root (by absolute path and by `..`), a link to
//! `/etc/shadow` through `/proc/1/root`, a 1 TiB sparse file, and a real perf map that then grows by
//! a million lines. Each time the workload must be
//! sampled at the full rate (samples ≈ its CPU time × the frequency), the sampling loop must keep
//! answering, nothing outside the root may name a frame, and the grown perf map must be parsed
//! once (bytes parsed = its size), not re-read whole.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_agent::kallsyms::Kallsyms;
use kiln_agent::metrics::AgentMetrics;
use kiln_agent::process_files::Refusal;
use kiln_agent::procmaps::{ProcessCache, ProcessCacheConfig};
use kiln_agent::profile::{Aggregator, AggregatorConfig, ProcessProfile};
use kiln_agent::sampling::{MIN_DRAIN_INTERVAL, Sampler, SamplerConfig};
use kiln_agent::unwind::Unwinder;

const HZ: u32 = 199;

/// The workload, chrooted in its own namespaces, and how to reach it.
struct Contained {
    unshare: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Its pid as the agent sees it.
    pid: u32,
    /// The spinning JIT page.
    page: u64,
    _dir: tempfile::TempDir,
    /// A file outside the workload's root, holding a perf-map line that names the page.
    secret: PathBuf,
}

impl Drop for Contained {
    fn drop(&mut self) {
        // Killing the pid namespace's init (the workload) ends the namespace.
        // SAFETY: plain kill(2) of the workload this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl Contained {
    fn start() -> Contained {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("jit_spin");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/jit_spin.c");
        let built = Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .expect("gcc runs (CI installs it)");
        assert!(built.success(), "gcc failed on {}", src.display());
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        // Its /tmp/perf-1.map points here when the test plants a link out of the root.
        let secret = dir.path().join("secret.map");
        let script = r#"set -e
R=$1
mount -t tmpfs kiln-root "$R"
mkdir -p "$R/usr" "$R/tmp" "$R/etc" "$R/opt" "$R/proc"
mount -t proc kiln-proc "$R/proc"
mount --bind /usr "$R/usr"
for d in lib lib32 lib64 bin sbin; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$R/$d";
  elif [ -d "/$d" ]; then mkdir "$R/$d"; mount --bind "/$d" "$R/$d"; fi
done
mount -t tmpfs kiln-tmp "$R/tmp"
cp "$2" "$R/opt/jit_spin"
exec chroot "$R" /opt/jit_spin
"#;
        let mut unshare = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "sh", "-c", script, "sh"])
            .arg(&root)
            .arg(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let stdin = unshare.stdin.take().expect("piped stdin");
        let stdout = unshare.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the workload starts and prints its pid and page");
        let (ns_pid, page) = first.split_once(' ').expect("PID PAGE");
        assert_eq!(
            ns_pid, "1",
            "the workload is its pid namespace's first process"
        );
        let page = u64::from_str_radix(page, 16).expect("hex page");
        // The workload is the child of unshare's fork.
        let u = unshare.id();
        let children = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children"))
            .expect("unshare's children");
        let pid: u32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("unshare forked the workload");
        std::fs::write(&secret, format!("{page:x} 1000 host_secret\n")).expect("secret");
        Contained {
            unshare,
            stdin,
            lines,
            pid,
            page,
            _dir: dir,
            secret,
        }
    }

    /// The workload's perf map, as the test (root, trusted) reaches it.
    fn perf_map(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/tmp/perf-1.map", self.pid))
    }

    fn clear_perf_map(&self) {
        match std::fs::remove_file(self.perf_map()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the perf map: {e}"),
        }
    }

    /// CPU time of the workload so far (utime + stime).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("number"))
            .collect();
        // SAFETY: no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Duration::from_secs_f64((f[0] + f[1]) as f64 / hz)
    }
}

/// What the test thread asks of the sampling thread.
enum Ask {
    /// Close the window now and send back the workload's profile (if any).
    Flush(mpsc::Sender<Option<ProcessProfile>>),
}

/// The agent's sampling loop (as run.rs runs it) on its own thread, keeping only the workload's
/// samples so that its numbers are the workload's alone.
struct Agent {
    asks: mpsc::Sender<Ask>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: AgentMetrics,
}

impl Agent {
    fn start(pid: u32) -> Agent {
        let mut sampler = Sampler::load(SamplerConfig {
            frequency_hz: u64::from(HZ),
            stack_copy_bytes: 4096,
            ring_buffer_bytes: None,
        })
        .unwrap_or_else(|e| panic!("sampler failed to load as root: {e}"));
        let metrics = AgentMetrics::unregistered();
        let mut agg = Aggregator::new(
            AggregatorConfig {
                frequency_hz: HZ.try_into().expect("non-zero"),
                node_name: "test".into(),
                max_processes_per_window: 16,
                max_stacks_per_process: 10_000,
            },
            ProcessCache::new(ProcessCacheConfig::default()),
            Arc::new(Kallsyms::parse("")),
            metrics.clone(),
        )
        // As the agent runs it (run.rs): objects' unwind tables read by their own worker.
        .with_unwinder(Unwinder::default().with_background_loads());
        let (asks, rx) = mpsc::channel::<Ask>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut unwound = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
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
                while let Ok(Ask::Flush(reply)) = rx.try_recv() {
                    let mine = agg.flush().into_iter().find(|p| p.pid == pid);
                    let _ = reply.send(mine);
                }
            }
        });
        Agent {
            asks,
            stop,
            thread: Some(thread),
            metrics,
        }
    }

    /// Ends the current window; fails the test if the sampling loop does not answer (stalled).
    fn flush(&self) -> Option<ProcessProfile> {
        let (tx, rx) = mpsc::channel();
        self.asks
            .send(Ask::Flush(tx))
            .expect("sampling thread alive");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the sampling loop stalled: no window flushed within 30 s")
    }

    fn refused(&self, reason: Refusal) -> u64 {
        self.metrics.process_file_refused(reason).get()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One measured window: the workload's samples and the names of its leaf frames.
struct Window {
    samples: i64,
    expected: f64,
    leaf_names: Vec<String>,
}

impl Window {
    fn rate(&self) -> f64 {
        self.samples as f64 / self.expected
    }

    fn assert_full_rate(&self, what: &str) {
        eprintln!(
            "{what}: {} samples for {:.0} expected ({:.2})",
            self.samples,
            self.expected,
            self.rate()
        );
        assert!(
            (0.75..=1.25).contains(&self.rate()),
            "{what}: {} samples where the workload's CPU time makes {:.0}",
            self.samples,
            self.expected
        );
    }

    fn names(&self, name: &str) -> bool {
        self.leaf_names.iter().any(|n| n == name)
    }
}

/// Samples until the workload has used `cpu` more CPU time, then closes the window.
fn window(agent: &Agent, w: &Contained, cpu: Duration) -> Window {
    agent.flush();
    let start = w.cpu();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.cpu() < start + cpu {
        assert!(
            Instant::now() < deadline,
            "the workload got no CPU for a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let profile = agent.flush();
    let used = w.cpu().saturating_sub(start);
    let expected = used.as_secs_f64() * f64::from(HZ);
    let Some(pp) = profile else {
        return Window {
            samples: 0,
            expected,
            leaf_names: Vec::new(),
        };
    };
    let p = &pp.profile;
    let samples = p.sample.iter().map(|s| s.value[0]).sum();
    let mut leaf_names: Vec<String> = p
        .sample
        .iter()
        .filter_map(|s| {
            let leaf = *s.location_id.first()?;
            let loc = p.location.iter().find(|l| l.id == leaf)?;
            let function = loc.line.first()?.function_id;
            let f = p.function.iter().find(|f| f.id == function)?;
            Some(p.str(f.name).to_owned())
        })
        .collect();
    leaf_names.sort();
    leaf_names.dedup();
    Window {
        samples,
        expected,
        leaf_names,
    }
}

#[test]
#[ignore = "needs root"]
fn root_hostile_perf_maps_neither_stall_sampling_nor_leak_host_files() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (scripts/test.sh does)"
    );
    let w = Contained::start();
    let agent = Agent::start(w.pid);
    let cpu = Duration::from_secs(2);

    // No perf map yet: sampled, nothing named.
    let base = window(&agent, &w, cpu);
    base.assert_full_rate("no perf map");
    assert!(!base.names("host_secret"));

    // A FIFO: opening it for reading would block until a writer came.
    let fifo = std::ffi::CString::new(w.perf_map().to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let before = agent.refused(Refusal::NotRegular);
    let win = window(&agent, &w, cpu);
    win.assert_full_rate("FIFO as perf map");
    assert!(
        agent.refused(Refusal::NotRegular) > before,
        "the FIFO was not refused"
    );

    // Links to a file outside the root: by its absolute path, and climbing with `..`. Both
    // resolve inside the workload's root, where no such file is.
    for target in [
        w.secret.clone(),
        Path::new("/../../../../..").join(w.secret.strip_prefix("/").expect("absolute")),
    ] {
        w.clear_perf_map();
        std::os::unix::fs::symlink(&target, w.perf_map()).expect("symlink");
        let win = window(&agent, &w, cpu);
        win.assert_full_rate("link out of the root");
        assert!(
            !win.names("host_secret"),
            "a frame was named from {} outside the workload's root",
            target.display()
        );
    }

    // The classic: a link to /etc/shadow through /proc's magic links. Followed from the agent's
    // side, /proc/1/root is the host's init's root; inside the workload's root it is a magic link,
    // which the door does not follow at all.
    w.clear_perf_map();
    std::os::unix::fs::symlink("/proc/1/root/etc/shadow", w.perf_map()).expect("symlink");
    let before = agent.refused(Refusal::UnsafeLink);
    let win = window(&agent, &w, cpu);
    win.assert_full_rate("link to /etc/shadow through /proc/1/root");
    assert!(
        agent.refused(Refusal::UnsafeLink) > before,
        "the magic link was not refused"
    );

    // A 1 TiB sparse file.
    w.clear_perf_map();
    std::fs::File::create(w.perf_map())
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let before = agent.refused(Refusal::TooLarge);
    let win = window(&agent, &w, cpu);
    win.assert_full_rate("sparse 1 TiB perf map");
    assert!(
        agent.refused(Refusal::TooLarge) > before,
        "the sparse file was not refused"
    );

    // A real perf map: the page gets its name.
    w.clear_perf_map();
    let first = format!("{:x} 1000 jit_spin_0\n", w.page);
    std::fs::write(w.perf_map(), &first).expect("perf map");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let win = window(&agent, &w, Duration::from_millis(500));
        if win.names("jit_spin_0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the perf map never named the page"
        );
    }
    let parsed_before = agent.metrics.perf_map_bytes_parsed.get();

    // The workload appends a million lines (the last renames the page) while it is sampled.
    writeln!(&w.stdin, "grow").expect("ask the workload to grow its perf map");
    let mut grown = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let win = window(&agent, &w, cpu);
        win.assert_full_rate("perf map growing by a million lines");
        grown = grown || w.lines.try_recv().is_ok_and(|l| l == "grown");
        if grown && win.names("jit_spin_final") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the appended lines never named the page"
        );
    }
    let size = std::fs::metadata(w.perf_map()).expect("perf map").len();
    let parsed = agent.metrics.perf_map_bytes_parsed.get();
    eprintln!("perf map: {size} bytes; parsed {parsed_before} before growing, {parsed} after");
    assert!(size > 20_000_000, "a million lines were appended");
    assert_eq!(
        parsed, size,
        "every byte parsed exactly once (appended lines only, no re-reads)"
    );
}
