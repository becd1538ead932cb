//! The agent's own cost on a busy machine, against `perf record --call-graph dwarf` + `perf script`
//! on the same workload in the same run.
//!
//! What runs: for each workload set (`KILN_OH_WORKLOADS`, default `native,python,java,node`), two
//! CPU-burning threads with known call chains, one per CPU, a real `kiln server`, and then, for each
//! frequency, the agent and the baseline below. The sets:
//!
//! - `native`: built here with gcc from `tests/workloads/`: `callchain.c` at -O0 with frame
//!   pointers, `nofp_chain.c` at -O2 -fomit-frame-pointer with 8 extra frames;
//! - `python`: two CPython processes (`python3`, Debian's or pyenv's) running
//!   `benches/workloads/oh_chain.py`: a pure-Python hot loop under main -> alpha -> 20 levels ->
//!   beta -> hot;
//! - `java`: one JVM (`java` of openjdk-17, the class built with `javac`) running
//!   `benches/workloads/OhChain.java` on two threads, the same chain;
//! - `node`: two `node` processes running `benches/workloads/oh_chain.js`, the same chain.
//!
//! The agent runs with its defaults, so the runtime sets measure whatever it does with those
//! processes: reading Python frames in the sampler and naming them, and whatever it learns to do
//! for Java and Node.js, with no change here.
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
//! An interval in which the agent uploaded debuginfo (once per binary: compressing Node's 99 MB
//! `node` costs ~0.5 s) is printed with its figure and measured again, up to four times, so the
//! table shows the steady-state cost per sample the target is about.
//!
//! Printed: the agent's % of one CPU per 100 samples/s (target <= 0.3 %), its peak RSS (target
//! <= 64 MiB), and the unwinding cost per sample, kiln's vs `perf script`'s (target: kiln >= 100x
//! cheaper). Needs root, `perf`, `gcc` and a release build of `kiln` (`cargo build --release`).
//!
//! `cargo test --benches` runs this without `--bench`: it then only checks its `/proc` parsers on
//! itself and returns (no root, no perf, no release build needed).
//!
//! Knobs: `KILN_OH_WORKLOADS` (default `native,python,java,node`), `KILN_OH_CHURN=1` (add a gcc
//! compile loop: a build machine, new processes all the time), `KILN_OH_FREQS` (default `19,99`), `KILN_OH_WARMUP` (s, default 15), `KILN_OH_SECONDS`
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
    // The runtime workloads parse (cheap: no JVM; javac would take seconds).
    let programs = workspace().join("benches/workloads");
    for (tool_name, args) in [
        (
            "python3",
            vec![
                "-c".into(),
                "import ast, sys; ast.parse(open(sys.argv[1]).read())".into(),
                programs.join("oh_chain.py").display().to_string(),
            ],
        ),
        (
            "node",
            vec![
                "--check".into(),
                programs.join("oh_chain.js").display().to_string(),
            ],
        ),
    ] {
        match tool(tool_name) {
            Ok(t) => {
                let st = Command::new(t).args(&args).status().expect(tool_name);
                assert!(
                    st.success(),
                    "{tool_name} {args:?} failed: the workload does not parse"
                );
            }
            Err(e) => println!("agent_overhead: workload syntax not checked: {e}"),
        }
    }
    assert!(programs.join("OhChain.java").is_file());
    assert_eq!(
        Workload::ALL.map(Workload::name).join(","),
        "native,python,java,node"
    );
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

/// What keeps the CPUs busy while the agent is measured (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Native,
    Python,
    Java,
    Node,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Native,
        Workload::Python,
        Workload::Java,
        Workload::Node,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Native => "native",
            Workload::Python => "python",
            Workload::Java => "java",
            Workload::Node => "node",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Native => {
                "callchain (gcc -O0, FP) and nofp_chain (gcc -O2 -fomit-frame-pointer, 8 extra frames)"
            }
            Workload::Python => "2 x python3 oh_chain.py (pure-Python hot loop, 24-deep chain)",
            Workload::Java => "1 JVM, 2 threads of OhChain (24-deep chain)",
            Workload::Node => "2 x node oh_chain.js (24-deep chain)",
        }
    }

    /// `KILN_OH_WORKLOADS`: names separated by commas.
    fn from_env() -> Result<Vec<Workload>> {
        let list =
            std::env::var("KILN_OH_WORKLOADS").unwrap_or_else(|_| "native,python,java,node".into());
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Workload::ALL
                    .into_iter()
                    .find(|w| w.name() == n)
                    .ok_or_else(|| format!("KILN_OH_WORKLOADS: unknown workload {n:?}"))
            })
            .collect()
    }

    /// Starts the workload's processes (built in `dir` where they need building).
    fn start(self, root: &Path, dir: &Path) -> Result<Vec<Guard>> {
        let programs = root.join("benches/workloads");
        // The call chain's extra depth: main -> alpha -> 20 levels -> beta -> hot.
        let depth = "20";
        match self {
            Workload::Native => {
                let fp = dir.join("callchain_fp");
                let nofp = dir.join("nofp_chain");
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
                Ok(vec![
                    spawn(Command::new(&fp).arg("100000"))?,
                    spawn(Command::new(&nofp).args(["100000", "8"]))?,
                ])
            }
            Workload::Python => (0..2)
                .map(|_| {
                    spawn(
                        Command::new(tool("python3")?)
                            .arg(programs.join("oh_chain.py"))
                            .arg(depth),
                    )
                })
                .collect(),
            Workload::Java => {
                let classes = dir.join("java-classes");
                let status = Command::new(tool("javac")?)
                    .arg("-d")
                    .arg(&classes)
                    .arg(programs.join("OhChain.java"))
                    .status()
                    .map_err(|e| format!("javac: {e}"))?;
                if !status.success() {
                    return Err("javac failed on OhChain.java".into());
                }
                Ok(vec![spawn(
                    Command::new(tool("java")?)
                        .arg("-cp")
                        .arg(&classes)
                        .args(["OhChain", depth, "2"]),
                )?])
            }
            Workload::Node => (0..2)
                .map(|_| {
                    spawn(
                        Command::new(tool("node")?)
                            .arg(programs.join("oh_chain.js"))
                            .arg(depth),
                    )
                })
                .collect(),
        }
    }
}

/// `name` from `PATH`, or a message saying what to install.
fn tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found on PATH: install it (python3; openjdk-17-jdk-headless for java \
                 and javac; Node.js for node) or leave its workload out of KILN_OH_WORKLOADS"
            )
        })
}

fn spawn(cmd: &mut Command) -> Result<Guard> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|c| Guard(Some(c)))
        .map_err(|e| format!("{cmd:?}: {e}"))
}

struct AgentRun {
    workload: Workload,
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
    /// Debuginfo the agent uploaded during the interval (bytes): a one-time cost per binary (the
    /// server keeps it by build ID), whose compression lands in the interval or not depending on
    /// the upload budget's timing; printed so a high figure can be told apart.
    uploaded: f64,
    mem: Memory,
}

struct PerfRun {
    record_cpu_s: f64,
    script_cpu_s: f64,
    samples: u64,
}

/// What one measurement needs besides the workload.
struct Setup {
    kiln: PathBuf,
    server_addr: String,
    warmup: Duration,
    seconds: Duration,
    extra: Vec<String>,
    dir: PathBuf,
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
    let workloads = Workload::from_env()?;
    let freqs: Vec<u64> = std::env::var("KILN_OH_FREQS")
        .unwrap_or_else(|_| "19,99".into())
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .collect();
    let with_perf = std::env::var_os("KILN_OH_NO_PERF").is_none();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let setup = Setup {
        kiln: kiln.clone(),
        server_addr: format!("127.0.0.1:{}", free_port()?),
        warmup: Duration::from_secs(env_u64("KILN_OH_WARMUP", 15)),
        seconds: Duration::from_secs(env_u64("KILN_OH_SECONDS", 40)),
        extra: std::env::var("KILN_OH_AGENT_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        dir: dir.path().to_path_buf(),
    };

    // The build-machine case: a new compiler process tree (gcc, cc1, as, collect2, ld) every few
    // hundred milliseconds, each a new process whose maps, build IDs and tables the agent reads.
    let churn = std::env::var_os("KILN_OH_CHURN").is_some();
    let _churn = if churn {
        let out = dir.path().join("churn.out");
        let src = root.join("tests/workloads/nofp_chain.c");
        Some(spawn(Command::new("sh").arg("-c").arg(format!(
            "while :; do gcc -O2 -g -o '{}' '{}' || exit 1; done",
            out.display(),
            src.display()
        )))?)
    } else {
        None
    };

    let mut server = spawn(
        Command::new(&kiln)
            .args(["server", "--listen", &setup.server_addr, "--data-dir"])
            .arg(dir.path().join("data")),
    )?;
    wait_healthy(&setup.server_addr, &mut server, "kiln server")?;
    println!(
        "agent_overhead: kiln {}; workloads {}{}; warm-up {} s, measured {} s",
        kiln.display(),
        workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(", "),
        if churn {
            ", each beside a gcc compile loop (KILN_OH_CHURN)"
        } else {
            ""
        },
        setup.warmup.as_secs(),
        setup.seconds.as_secs()
    );

    let mut runs: Vec<(AgentRun, Option<PerfRun>)> = Vec::new();
    for &workload in &workloads {
        println!("workload {}: {}", workload.name(), workload.describe());
        let _running = workload.start(&root, dir.path())?;
        for &freq in &freqs {
            let agent = measure_agent(&setup, workload, freq)?;
            let perf = if with_perf {
                Some(measure_perf(&setup, freq)?)
            } else {
                None
            };
            runs.push((agent, perf));
        }
    }
    server.stop(Duration::from_secs(10));
    print_table(&runs);
    Ok(())
}

/// The agent at `freq` on the running workload: CPU over the measured interval, samples, RSS.
fn measure_agent(setup: &Setup, workload: Workload, freq: u64) -> Result<AgentRun> {
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let mut agent = spawn(
        Command::new(&setup.kiln)
            .args(["agent", "--server-url"])
            .arg(format!("http://{}", setup.server_addr))
            .args(["--frequency", &freq.to_string()])
            .args(["--metrics-listen", &metrics_addr])
            .args(&setup.extra),
    )?;
    wait_healthy(&metrics_addr, &mut agent, "kiln agent")?;
    let pid = agent.pid();
    // A cgroup of its own: microsecond CPU totals of all its threads, exited ones included.
    let cgroup = CpuCgroup::create(
        &format!(
            "kiln-agent-overhead-{}-{}-{freq}",
            std::process::id(),
            workload.name()
        ),
        pid,
    );
    let cpu = |pid: u32| -> Result<f64> {
        match &cgroup {
            Some(cg) => cg.cpu_seconds(),
            None => cpu_seconds(pid),
        }
    };
    std::thread::sleep(setup.warmup);
    // The agent uploads each binary's debuginfo once (the server keeps it by build ID), paced by
    // its upload budget, so whether a large one (Node's 99 MB `node`: ~0.5 s of compression)
    // lands in the interval depends on timing. What the target is about is the cost per sample
    // in steady state: an interval with an upload is printed and measured again (at most
    // `MAX_INTERVALS` times; the last one counts whatever it holds).
    const MAX_INTERVALS: usize = 4;
    let mut attempt = 0;
    let (m0, m1, c0, c1, elapsed) = loop {
        attempt += 1;
        let m0 = http_get(&metrics_addr, "/metrics")?;
        let (c0, t0) = (cpu(pid)?, Instant::now());
        std::thread::sleep(setup.seconds);
        let c1 = cpu(pid)?;
        let elapsed = t0.elapsed().as_secs_f64();
        let m1 = http_get(&metrics_addr, "/metrics")?;
        let uploaded = metric_sum(&m1, "kiln_agent_debuginfo_upload_bytes_total")
            - metric_sum(&m0, "kiln_agent_debuginfo_upload_bytes_total");
        if uploaded == 0.0 || attempt == MAX_INTERVALS {
            break (m0, m1, c0, c1, elapsed);
        }
        let samples = metric_sum(&m1, "kiln_agent_samples_received_total")
            - metric_sum(&m0, "kiln_agent_samples_received_total");
        println!(
            "  agent {freq} Hz: interval {attempt} held {:.1} MB of one-time debuginfo upload: \
             {:.3} s CPU for {samples:.0} samples ({:.3} % of a CPU per 100 samples/s); measuring \
             again",
            uploaded / 1e6,
            c1 - c0,
            100.0 * (c1 - c0) / elapsed / (samples / elapsed / 100.0).max(1e-9),
        );
    };
    let mem = memory(pid)?;
    agent.stop(Duration::from_secs(10));
    let d = |name: &str| metric_sum(&m1, name) - metric_sum(&m0, name);
    let run = AgentRun {
        workload,
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
        uploaded: d("kiln_agent_debuginfo_upload_bytes_total"),
        mem,
    };
    println!(
        "  agent {freq} Hz: {:.3} s CPU ({}) in {:.1} s, {:.0} samples ({:.0}/s), {:.0} stacks \
         unwound ({:.1} frames/stack; {:.1} % from the stack memo; walks {:.3} s, unwinder \
         builds {:.3} s), {:.0} samples dropped since start, {:.1} MB of debuginfo uploaded, RSS {} KiB \
         (anon {} KiB, file {} KiB), peak {} KiB",
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
        run.uploaded / 1e6,
        mem.rss_kib,
        mem.anon_kib,
        mem.file_kib,
        mem.hwm_kib
    );
    Ok(run)
}

/// The baseline: `perf record --call-graph dwarf` for the same interval, then `perf script`.
fn measure_perf(setup: &Setup, freq: u64) -> Result<PerfRun> {
    let data = setup.dir.join(format!("perf-{freq}.data"));
    let record_cpu = run_measured(
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", &freq.to_string()])
            .args(["-a", "--call-graph", "dwarf", "-q", "-o"])
            .arg(&data)
            .args(["--", "sleep", &setup.seconds.as_secs().to_string()]),
        |_| {},
    )?;
    let data_bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
    let mut samples = 0u64;
    // perf script's default also runs addr2line on every DSO for inlined frames, which on a
    // machine with big Rust/LLVM libraries takes minutes; `--no-inline` keeps its DWARF
    // unwinding and symbol lookup. KILN_OH_PERF_INLINE=1 measures the default.
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
    Ok(PerfRun {
        record_cpu_s: record_cpu,
        script_cpu_s: script_cpu,
        samples,
    })
}

/// The agent's figures against the targets and against `perf script` in the same run.
fn print_table(runs: &[(AgentRun, Option<PerfRun>)]) {
    println!();
    println!(
        "| workload | freq | agent CPU | samples/s | agent % of a CPU per 100 samples/s (<= 0.3) | agent RSS end / peak MiB (<= 64) | targets | kiln unwind us/sample: walk + unwinder builds = total | perf record+script CPU us/sample | perf script us/sample | perf script / kiln unwind total (>= 100x) | perf script / kiln walk |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (a, perf) in runs {
        let rate = a.samples / a.seconds;
        let pct = 100.0 * a.cpu_s / a.seconds;
        let per100 = pct / (rate / 100.0).max(f64::MIN_POSITIVE);
        let peak_mib = a.mem.hwm_kib as f64 / 1024.0;
        let walk_us = 1e6 * a.unwind_s / a.stacks.max(1.0);
        let build_us = 1e6 * a.build_s / a.stacks.max(1.0);
        let unwind_us = walk_us + build_us;
        let (perf_all, perf_script, ratio, ratio_walk) = match perf {
            Some(p) if p.samples > 0 => {
                let all = 1e6 * (p.record_cpu_s + p.script_cpu_s) / p.samples as f64;
                let script = 1e6 * p.script_cpu_s / p.samples as f64;
                (
                    format!("{all:.1}"),
                    format!("{script:.1}"),
                    format!("{:.0}x", script / unwind_us.max(1e-9)),
                    format!("{:.0}x", script / walk_us.max(1e-9)),
                )
            }
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let met = if per100 <= 0.3 && peak_mib <= 64.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "| {} | {} Hz | {:.3} % | {:.0} | {:.3} % | {:.1} / {:.1} | {met} | {:.2} + {:.2} = {:.2} | {} | {} | {} | {} |",
            a.workload.name(),
            a.freq,
            pct,
            rate,
            per100,
            a.mem.rss_kib as f64 / 1024.0,
            peak_mib,
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
        "\nagent CPU per sample (all of it: unwind, runtime frames, aggregation, pprof, shipping), us: {}",
        runs.iter()
            .map(|(a, _)| format!(
                "{} {} Hz {:.1}",
                a.workload.name(),
                a.freq,
                1e6 * a.cpu_s / a.samples.max(1.0)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
