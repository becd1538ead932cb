//! The agent's own cost on a busy machine, against `perf record --call-graph dwarf` + `perf script`
//! on the same workload in the same run.
//!
//! What runs: two CPU-burning workloads with known call chains, one per CPU (built here with gcc from
//! `tests/workloads/`: `callchain.c` at -O0 with frame pointers, `nofp_chain.c` at -O2
//! -fomit-frame-pointer with 8 extra frames), a real `kiln server`, and then, for each frequency,
//!
//! 1. the real `kiln agent` (the release binary, `target/release/kiln` or `$KILN_BIN`) pushing to
//!    that server: after a warm-up its CPU (`usage_usec` of a cgroup v2 made for it; `/proc/PID/stat`
//!    utime + stime where there is no cgroup v2) and the samples it received (its own `/metrics`)
//!    are read over a fixed interval; its RSS (`VmRSS`, peak `VmHWM`, and the anon/file split) at
//!    the end; its own stack-walk and unwinder-build times and stack count from `/metrics`
//!    (`kiln_agent_unwind_seconds_total`, `kiln_agent_unwind_build_seconds_total`,
//!    `kiln_agent_unwind_stacks_total`);
//! 2. `perf record -e cpu-clock -F <same> -a --call-graph dwarf` for the same interval, then
//!    `perf script --no-inline` over its output (`KILN_OH_PERF_INLINE=1`: plain `perf script`, which
//!    also runs addr2line for inlined frames and can take minutes): each one's CPU from `wait4`'s
//!    rusage (its children included), samples counted in the script's output.
//!
//! Printed: the agent's % of one CPU per 100 samples/s (target <= 0.3 %), its peak RSS (target
//! <= 64 MiB), and the unwinding cost per sample, kiln's vs `perf script`'s (target: kiln >= 100x
//! cheaper). Needs root, `perf`, `gcc` and a release build of `kiln` (`cargo build --release`).
//!
//! `cargo test --benches` runs this without `--bench`: it then only checks its `/proc` parsers on
//! itself and returns (no root, no perf, no release build needed).
//!
//! Knobs: `KILN_OH_CHURN=1` (add a gcc compile loop: a build machine, new processes all the
//! time), `KILN_OH_FREQS` (default `19,99`), `KILN_OH_WARMUP` (s, default 15), `KILN_OH_SECONDS`
//! (s, default 40), `KILN_OH_AGENT_ARGS` (extra agent flags, space-separated), `KILN_OH_NO_PERF=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        smoke();
        return;
    }
    if let Err(e) = run() {
        eprintln!("agent_overhead: {e}");
        std::process::exit(1);
    }
}

/// Test mode: the parsers, on this process.
fn smoke() {
    let me = std::process::id();
    let cpu = cpu_seconds(me).expect("own /proc/self/stat");
    let mem = memory(me).expect("own /proc/self/status");
    assert!(cpu >= 0.0);
    assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
    let m = "# HELP x\nkiln_agent_samples_received_total 12\nkiln_agent_unwind_seconds_total 0.5\n";
    assert_eq!(metric(m, "kiln_agent_samples_received_total"), Some(12.0));
    assert_eq!(metric(m, "kiln_agent_unwind_seconds_total"), Some(0.5));
    assert_eq!(
        metric_sum("", "kiln_agent_samples_dropped_total").to_string(),
        "0"
    );
    let stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
    assert_eq!(usage_seconds(stat), Some(1.5));
    assert_eq!(usage_seconds("user_usec 1\n"), None);
    println!(
        "agent_overhead: test mode (no --bench): parsers checked; the measurement needs \
         `cargo bench -p kiln-benches --bench agent_overhead` as root"
    );
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Kills (SIGKILL) and reaps a child when dropped, so an early return leaves nothing running.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
    /// SIGTERM, then waits up to `grace` before SIGKILL.
    fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.0.take() else { return };
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a pid we spawned; no memory is passed.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A cgroup v2 holding only the agent: `cpu.stat`'s `usage_usec` counts all its threads to the
/// microsecond, exited ones included (`/proc/PID/stat` counts in 10 ms ticks: at 19 Hz a 40 s run
/// of the agent is a handful of ticks).
struct CpuCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl CpuCgroup {
    /// `None` when there is no cgroup v2 mount to use (the caller falls back to ticks).
    fn create(name: &str, pid: u32) -> Option<CpuCgroup> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        let parent = mounts.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })?;
        let dir = parent.join(name);
        std::fs::create_dir(&dir).ok()?;
        let cg = CpuCgroup { dir, parent };
        std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        cg.cpu_seconds().ok()?;
        Some(cg)
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).map_err(|e| e.to_string())?;
        usage_seconds(&stat).ok_or_else(|| format!("no usage_usec in {}", self.dir.display()))
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in seconds.
fn usage_seconds(cpu_stat: &str) -> Option<f64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|us| us / 1e6)
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // Whatever still runs in it goes back to the parent, so that the directory can go.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// utime + stime of `pid`, in seconds (all its threads).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let ticks = |i: usize| -> Result<f64> {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("bad stat field {i}"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

fn memory(pid: u32) -> Result<Memory> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:") + field("RssShmem:"),
    })
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sum over every label set of `name{...} value` (and the unlabelled line).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            let base = n.split('{').next()?;
            (base == name)
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        // Not `.sum()`: an empty f64 sum is -0.0, printed as "-0".
        .fold(0.0, |a, b| a + b)
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
    }
    // Chunked bodies (axum streams /metrics): good enough to de-chunk by dropping size lines.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut text = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            text.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        return Ok(text);
    }
    Ok(body.to_owned())
}

fn wait_healthy(addr: &str, child: &mut Guard, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_get(addr, "/healthz").is_ok() {
            return Ok(());
        }
        if let Some(c) = child.0.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            return Err(format!("{what} exited early: {status}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not healthy on {addr} after 30 s"))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn gcc(src: &Path, out: &Path, flags: &[&str]) -> Result<()> {
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("gcc failed on {}", src.display()))
}

/// Runs `cmd` to completion, handing each stdout line to `on_line`; returns its user + system CPU
/// seconds (all threads; its children included).
fn run_measured(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<f64> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let Some(out) = child.stdout.take() {
        let mut r = BufReader::with_capacity(1 << 20, out);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => on_line(&line),
            }
        }
    }
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into valid locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4 on {cmd:?} failed"));
    }
    // The Child was reaped by wait4; forget it so its Drop does nothing further.
    std::mem::forget(child);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(secs(ru.ru_utime) + secs(ru.ru_stime))
}

struct AgentRun {
    freq: u64,
    seconds: f64,
    cpu_s: f64,
    samples: f64,
    unwind_s: f64,
    build_s: f64,
    stacks: f64,
    frames: f64,
    memo_hits: f64,
    ring_drops: f64,
    mem: Memory,
}

struct PerfRun {
    record_cpu_s: f64,
    script_cpu_s: f64,
    samples: u64,
    data_bytes: u64,
}

fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (loads the eBPF sampler; perf record -a)".into());
    }
    let root = workspace();
    let kiln = std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/kiln"));
    if !kiln.exists() {
        return Err(format!(
            "{} missing: build it first with `cargo build --release --bin kiln`",
            kiln.display()
        ));
    }
    let freqs: Vec<u64> = std::env::var("KILN_OH_FREQS")
        .unwrap_or_else(|_| "19,99".into())
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .collect();
    let warmup = Duration::from_secs(env_u64("KILN_OH_WARMUP", 15));
    let seconds = Duration::from_secs(env_u64("KILN_OH_SECONDS", 40));
    let with_perf = std::env::var_os("KILN_OH_NO_PERF").is_none();
    let extra: Vec<String> = std::env::var("KILN_OH_AGENT_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fp = dir.path().join("callchain_fp");
    let nofp = dir.path().join("nofp_chain");
    let wl = root.join("tests/workloads");
    gcc(
        &wl.join("callchain.c"),
        &fp,
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )?;
    gcc(
        &wl.join("nofp_chain.c"),
        &nofp,
        &["-O2", "-g", "-fomit-frame-pointer"],
    )?;
    let spawn = |cmd: &mut Command| -> Result<Guard> {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|c| Guard(Some(c)))
            .map_err(|e| format!("{cmd:?}: {e}"))
    };
    let _w1 = spawn(Command::new(&fp).arg("100000"))?;
    let _w2 = spawn(Command::new(&nofp).args(["100000", "8"]))?;
    // The build-machine case: a new compiler process tree (gcc, cc1, as, collect2, ld) every few
    // hundred milliseconds, each a new process whose maps, build IDs and tables the agent reads.
    let churn = std::env::var_os("KILN_OH_CHURN").is_some();
    let _w3 = if churn {
        let out = dir.path().join("churn.out");
        let src = wl.join("nofp_chain.c");
        Some(spawn(Command::new("sh").arg("-c").arg(format!(
            "while :; do gcc -O2 -g -o '{}' '{}' || exit 1; done",
            out.display(),
            src.display()
        )))?)
    } else {
        None
    };

    let server_addr = format!("127.0.0.1:{}", free_port()?);
    let mut server = spawn(
        Command::new(&kiln)
            .args(["server", "--listen", &server_addr, "--data-dir"])
            .arg(dir.path().join("data")),
    )?;
    wait_healthy(&server_addr, &mut server, "kiln server")?;
    println!(
        "agent_overhead: kiln {} ; workloads: {} (gcc -O0, FP) and {} (gcc -O2 -fomit-frame-pointer, \
         8 extra frames), one per CPU{}; warm-up {} s, measured {} s",
        kiln.display(),
        fp.display(),
        nofp.display(),
        if churn {
            ", plus a gcc compile loop (KILN_OH_CHURN)"
        } else {
            ""
        },
        warmup.as_secs(),
        seconds.as_secs()
    );

    let mut agent_runs = Vec::new();
    let mut perf_runs = Vec::new();
    for &freq in &freqs {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let mut agent = spawn(
            Command::new(&kiln)
                .args(["agent", "--server-url"])
                .arg(format!("http://{server_addr}"))
                .args(["--frequency", &freq.to_string()])
                .args(["--metrics-listen", &metrics_addr])
                .args(&extra),
        )?;
        wait_healthy(&metrics_addr, &mut agent, "kiln agent")?;
        let pid = agent.pid();
        // A cgroup of its own: microsecond CPU totals of all its threads, exited ones included.
        let cgroup = CpuCgroup::create(
            &format!("kiln-agent-overhead-{}-{freq}", std::process::id()),
            pid,
        );
        let cpu = |pid: u32| -> Result<f64> {
            match &cgroup {
                Some(cg) => cg.cpu_seconds(),
                None => cpu_seconds(pid),
            }
        };
        std::thread::sleep(warmup);
        let m0 = http_get(&metrics_addr, "/metrics")?;
        let (c0, t0) = (cpu(pid)?, Instant::now());
        std::thread::sleep(seconds);
        let c1 = cpu(pid)?;
        let elapsed = t0.elapsed().as_secs_f64();
        let m1 = http_get(&metrics_addr, "/metrics")?;
        let mem = memory(pid)?;
        agent.stop(Duration::from_secs(10));
        let d = |name: &str| metric_sum(&m1, name) - metric_sum(&m0, name);
        let run = AgentRun {
            freq,
            seconds: elapsed,
            cpu_s: c1 - c0,
            samples: d("kiln_agent_samples_received_total"),
            unwind_s: d("kiln_agent_unwind_seconds_total"),
            build_s: d("kiln_agent_unwind_build_seconds_total"),
            stacks: d("kiln_agent_unwind_stacks_total"),
            frames: d("kiln_agent_unwind_frames_total"),
            memo_hits: d("kiln_agent_unwind_memo_hits_total"),
            ring_drops: metric_sum(&m1, "kiln_agent_samples_dropped_total"),
            mem,
        };
        println!(
            "  agent {freq} Hz: {:.3} s CPU ({}) in {:.1} s, {:.0} samples ({:.0}/s), {:.0} stacks \
             unwound ({:.1} frames/stack; {:.1} % from the stack memo; walks {:.3} s, unwinder \
             builds {:.3} s), {:.0} samples dropped since start, RSS {} KiB (anon {} KiB, file {} KiB), peak {} KiB",
            run.cpu_s,
            if cgroup.is_some() {
                "cgroup cpu.stat"
            } else {
                "/proc/PID/stat ticks"
            },
            run.seconds,
            run.samples,
            run.samples / run.seconds,
            run.stacks,
            run.frames / run.stacks.max(1.0),
            100.0 * run.memo_hits / run.stacks.max(1.0),
            run.unwind_s,
            run.build_s,
            run.ring_drops,
            mem.rss_kib,
            mem.anon_kib,
            mem.file_kib,
            mem.hwm_kib
        );
        agent_runs.push(run);

        if with_perf {
            let data = dir.path().join(format!("perf-{freq}.data"));
            let record_cpu = run_measured(
                Command::new("perf")
                    .args(["record", "-e", "cpu-clock", "-F", &freq.to_string()])
                    .args(["-a", "--call-graph", "dwarf", "-q", "-o"])
                    .arg(&data)
                    .args(["--", "sleep", &seconds.as_secs().to_string()]),
                |_| {},
            )?;
            let data_bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            let mut samples = 0u64;
            // perf script's default also runs addr2line on every DSO for inlined frames, which
            // on a machine with big Rust/LLVM libraries takes minutes; `--no-inline` keeps its
            // DWARF unwinding and symbol lookup. KILN_OH_PERF_INLINE=1 measures the default.
            let mut script = Command::new("perf");
            script.args(["script", "-i"]).arg(&data);
            if std::env::var_os("KILN_OH_PERF_INLINE").is_none() {
                script.arg("--no-inline");
            }
            let script_cpu = run_measured(&mut script, |l| {
                // A sample starts with an unindented header line; frames are indented.
                if !l.starts_with([' ', '\t', '\n']) {
                    samples += 1;
                }
            })?;
            let _ = std::fs::remove_file(&data);
            println!(
                "  perf  {freq} Hz: record {record_cpu:.2} s CPU, script {script_cpu:.2} s CPU, \
                 {samples} samples, {:.1} MB of perf.data",
                data_bytes as f64 / 1e6
            );
            perf_runs.push(PerfRun {
                record_cpu_s: record_cpu,
                script_cpu_s: script_cpu,
                samples,
                data_bytes,
            });
        }
    }
    server.stop(Duration::from_secs(10));

    println!();
    println!(
        "| freq | agent CPU | samples/s | agent % of a CPU per 100 samples/s (<= 0.3) | agent RSS end / peak MiB (<= 64) | kiln unwind us/sample: walk + unwinder builds = total | perf record+script CPU us/sample | perf script us/sample | perf script / kiln unwind total (>= 100x) | perf script / kiln walk |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, a) in agent_runs.iter().enumerate() {
        let rate = a.samples / a.seconds;
        let pct = 100.0 * a.cpu_s / a.seconds;
        let per100 = pct / (rate / 100.0).max(f64::MIN_POSITIVE);
        let walk_us = 1e6 * a.unwind_s / a.stacks.max(1.0);
        let build_us = 1e6 * a.build_s / a.stacks.max(1.0);
        let unwind_us = walk_us + build_us;
        let (perf_all, perf_script, ratio, ratio_walk) = match perf_runs.get(i) {
            Some(p) if p.samples > 0 => {
                let all = 1e6 * (p.record_cpu_s + p.script_cpu_s) / p.samples as f64;
                let script = 1e6 * p.script_cpu_s / p.samples as f64;
                let _ = p.data_bytes;
                (
                    format!("{all:.1}"),
                    format!("{script:.1}"),
                    format!("{:.0}x", script / unwind_us.max(1e-9)),
                    format!("{:.0}x", script / walk_us.max(1e-9)),
                )
            }
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} Hz | {:.3} % | {:.0} | {:.3} % | {:.1} / {:.1} | {:.2} + {:.2} = {:.2} | {} | {} | {} | {} |",
            a.freq,
            pct,
            rate,
            per100,
            a.mem.rss_kib as f64 / 1024.0,
            a.mem.hwm_kib as f64 / 1024.0,
            walk_us,
            build_us,
            unwind_us,
            perf_all,
            perf_script,
            ratio,
            ratio_walk
        );
    }
    println!(
        "\nagent CPU per sample (all of it: unwind, aggregation, pprof, shipping), us: {}",
        agent_runs
            .iter()
            .map(|a| format!("{} Hz {:.1}", a.freq, 1e6 * a.cpu_s / a.samples.max(1.0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
