//! DWARF unwinding on real samples: loads the sampler into this kernel (root only: the `root_*`
//! tests are ignored by a plain `cargo test`; `scripts/test.sh` runs them as root),
//! samples purpose-built workloads compiled without frame pointers, and checks that the agent's
//! unwinder rebuilds their call chains from the registers and stack copies.
//!
//! `measure_stack_copy_sizes` (ignored; run by hand as root with `--ignored --nocapture`) prints
//! the stack-copy trade-off behind the default `--stack-copy-bytes`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_agent::buildid::BuildIdCache;
use kiln_agent::procmaps::Process;
use kiln_agent::sampling::{MIN_DRAIN_INTERVAL, Sampler, SamplerConfig};
use kiln_agent::unwind::{StackEnd, Unwinder, Unwound};
use kiln_sampler_bpf::RawSample;
use object::{Object, ObjectSegment, ObjectSymbol};

#[path = "../../tests/common/wait.rs"]
mod wait;

/// For the `root_*` tests: a clear failure, not a confusing one further in, when run without root.
fn require_root() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root,
        "this test loads eBPF and needs root: cargo test -- --ignored root_"
    );
}

fn workloads() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads")
}

/// Compiles each (source, flags) to an object and links them (gcc is a prerequisite of these tests:
/// `.ci/run` installs it).
fn build_c(dir: &Path, name: &str, units: &[(&str, &[&str])], extra: &[&str]) -> PathBuf {
    let mut objs = Vec::new();
    for (i, (src, flags)) in units.iter().enumerate() {
        let obj = dir.join(format!("{name}{i}.o"));
        let st = Command::new("gcc")
            .args(*flags)
            .args(["-O2", "-g", "-fno-optimize-sibling-calls", "-c", "-o"])
            .arg(&obj)
            .arg(workloads().join(src))
            .args(extra)
            .status();
        match st {
            Ok(s) if s.success() => objs.push(obj),
            Ok(s) => panic!("gcc failed on {src}: {s}"),
            Err(e) => panic!("gcc not runnable ({e}): install gcc to run these tests"),
        }
    }
    let exe = dir.join(name);
    let st = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .args(&objs)
        .status()
        .expect("gcc links");
    assert!(st.success(), "link failed: {st}");
    exe
}

/// Names addresses of one executable from its symbol table (PIE or not), through its mapping.
struct Symbols {
    funcs: Vec<(u64, u64, String)>,
    segments: Vec<(u64, u64, u64)>,
}

impl Symbols {
    fn load(exe: &Path) -> Symbols {
        let data = std::fs::read(exe).expect("read workload");
        let obj = object::File::parse(&*data).expect("parse workload");
        let mut funcs: Vec<_> = obj
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
            .collect();
        funcs.sort();
        let segments = obj
            .segments()
            .map(|s| (s.file_range().0, s.file_range().1, s.address()))
            .collect();
        Symbols { funcs, segments }
    }

    /// The function at `addr` in `process`, if it is in the executable.
    fn name(&self, process: &Process, exe: &Path, addr: u64) -> Option<&str> {
        let m = process.find(addr)?;
        if m.path()? != exe {
            return None;
        }
        let off = m.file_offset(addr);
        let &(fo, fs, va) = self
            .segments
            .iter()
            .find(|&&(fo, fs, _)| fs > 0 && (fo..fo + fs).contains(&off))?;
        let _ = fs;
        let svma = va + (off - fo);
        self.funcs
            .iter()
            .find(|(a, s, _)| (*a..a + s).contains(&svma))
            .map(|(_, _, n)| n.as_str())
    }

    /// Names of a stack's frames (`?` outside the executable), return addresses moved into the call.
    fn names(&self, process: &Process, exe: &Path, frames: &[u64]) -> Vec<String> {
        frames
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let a = if i == 0 { a } else { a - 1 };
                self.name(process, exe, a).unwrap_or("?").to_owned()
            })
            .collect()
    }
}

struct Recording {
    samples: Vec<RawSample<'static>>,
    process: Arc<Process>,
    /// Prepared while the workload lived (tables are read through `/proc/PID`).
    unwinder: Unwinder,
}

/// Runs `cmd` and samples it for `secs` at 999 Hz with `copy` bytes of stack per sample.
fn record(cmd: &mut Command, copy: u32, secs: f64) -> Recording {
    let mut sampler = Sampler::load(SamplerConfig {
        frequency_hz: 999,
        stack_copy_bytes: copy,
        ring_buffer_bytes: None,
    })
    .unwrap_or_else(|e| panic!("sampler failed to load as root: {e}"));
    let mut child: Child = cmd.spawn().expect("spawn workload");
    let pid = child.id();
    // The mappings are read once: wait until the dynamic loader has mapped libc (the workloads are
    // dynamically linked C and Rust programs).
    wait::wait_until(wait::within(10), "the workload has libc mapped", || {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("/libc."))
    });
    let process = Arc::new(
        Process::load(pid, &mut BuildIdCache::new(64), 4096).expect("workload's /proc entry"),
    );
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        std::thread::sleep(MIN_DRAIN_INTERVAL);
        sampler.drain(|s| {
            if s.tgid == pid && s.user_regs.is_some() {
                samples.push(s.into_owned())
            }
        });
    }
    let mut unwinder = Unwinder::default();
    unwinder.prepare(&process);
    let _ = child.kill();
    let _ = child.wait();
    Recording {
        samples,
        process,
        unwinder,
    }
}

/// Of the samples whose leaf is `hot`, how many unwind to exactly `chain` (leaf first) — with the
/// DWARF unwinder and with the kernel's frame-pointer walk.
fn check_chain(rec: &mut Recording, exe: &Path, chain: &[&str]) -> (usize, usize, usize) {
    let syms = Symbols::load(exe);
    let (mut hot, mut dwarf_ok, mut fp_ok) = (0, 0, 0);
    let mut bad = Vec::new();
    for s in &rec.samples.clone() {
        let regs = s.user_regs.expect("filtered on regs");
        let u: Unwound = rec.unwinder.unwind(&rec.process, regs, &s.stack_copy);
        let names = syms.names(&rec.process, exe, &u.frames);
        if names.first().map(String::as_str) != Some(chain[0]) {
            continue;
        }
        hot += 1;
        if names.len() >= chain.len() && names[..chain.len()] == *chain {
            dwarf_ok += 1;
        } else if bad.len() < 5 {
            bad.push((names, u.end));
        }
        let fp = syms.names(&rec.process, exe, &s.user_stack);
        if fp.len() >= chain.len() && fp[..chain.len()] == *chain {
            fp_ok += 1;
        }
    }
    eprintln!(
        "{}: {hot} samples in {}, {dwarf_ok} unwound to main by DWARF, {fp_ok} by the FP walk; first misses: {bad:?}",
        exe.display(),
        chain[0]
    );
    (hot, dwarf_ok, fp_ok)
}

#[test]
#[ignore = "needs root"]
fn root_no_frame_pointer_chain_unwinds_to_main() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_c(
        dir.path(),
        "nofp_chain",
        &[("nofp_chain.c", &["-fomit-frame-pointer"])],
        &[],
    );
    let mut rec = record(Command::new(&exe).args(["20", "0"]), 8192, 3.0);
    let (hot, dwarf_ok, _) = check_chain(&mut rec, &exe, &["hot", "beta", "alpha", "main"]);
    assert!(hot >= 100, "only {hot} samples in hot");
    assert!(
        dwarf_ok * 100 >= hot * 95,
        "{dwarf_ok} of {hot} samples in hot unwound to main"
    );
}

#[test]
#[ignore = "needs root"]
fn root_mixed_frame_pointer_chain_unwinds_whole() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_c(
        dir.path(),
        "mixed",
        &[
            ("mixed_fp.c", &["-fno-omit-frame-pointer"]),
            ("mixed_nofp.c", &["-fomit-frame-pointer"]),
        ],
        &[],
    );
    let mut rec = record(Command::new(&exe).arg("20"), 8192, 3.0);
    let (hot, dwarf_ok, _) =
        check_chain(&mut rec, &exe, &["hot", "delta", "beta", "alpha", "main"]);
    assert!(hot >= 100, "only {hot} samples in hot");
    assert!(
        dwarf_ok * 100 >= hot * 95,
        "{dwarf_ok} of {hot} samples in hot unwound to main"
    );
}

/// Fraction of samples unwound to main (DWARF), mean bytes copied, agent unwind time per sample.
fn measure(rec: &mut Recording, exe: &Path, main_contains: &str) -> (f64, f64, f64, usize) {
    let syms = Symbols::load(exe);
    let unwinder = &mut rec.unwinder;
    // Warm the table cache so the figure is the steady state.
    for s in rec.samples.iter().take(10) {
        let _ = unwinder.unwind(&rec.process, s.user_regs.expect("regs"), &s.stack_copy);
    }
    let t = Instant::now();
    let out: Vec<Unwound> = rec
        .samples
        .iter()
        .map(|s| unwinder.unwind(&rec.process, s.user_regs.expect("regs"), &s.stack_copy))
        .collect();
    let per_sample = t.elapsed().as_secs_f64() / rec.samples.len().max(1) as f64;
    let reached = out
        .iter()
        .filter(|u| {
            syms.names(&rec.process, exe, &u.frames)
                .iter()
                .any(|n| n.contains(main_contains))
        })
        .count();
    let bytes: usize = rec.samples.iter().map(|s| s.stack_copy.len()).sum();
    let n = rec.samples.len().max(1) as f64;
    let _ = out.iter().filter(|u| u.end == StackEnd::Complete).count();
    (
        reached as f64 / n,
        bytes as f64 / n,
        per_sample * 1e6,
        rec.samples.len(),
    )
}

#[test]
#[ignore = "measurement: run as root with --ignored --nocapture"]
fn measure_stack_copy_sizes() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = build_c(
        dir.path(),
        "nofp_pad",
        &[("nofp_chain.c", &["-fomit-frame-pointer", "-DPAD=200"])],
        &[],
    );
    let rust = dir.path().join("rust_chain");
    let st = Command::new("rustc")
        .args(["-O", "-o"])
        .arg(&rust)
        .arg(workloads().join("rust_chain.rs"))
        .status()
        .expect("rustc");
    assert!(st.success());
    println!(
        "workload | depth | copy KiB | samples | reached main | bytes/sample | unwind us/sample"
    );
    for (exe, depth, main) in [
        (&c, "12", "main"),
        (&c, "40", "main"),
        (&rust, "10", "rust_chain4main"),
        (&rust, "40", "rust_chain4main"),
    ] {
        for kib in [4u32, 8, 16, 32] {
            let mut rec = record(Command::new(exe).args(["20", depth]), kib * 1024, 2.0);
            let (frac, bytes, us, n) = measure(&mut rec, exe, main);
            println!(
                "{} | {depth} | {kib} | {n} | {:.1} % | {bytes:.0} | {us:.2}",
                exe.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
                frac * 100.0
            );
        }
    }
}

/// Samples inside the vDSO (no file behind it) are named from the agent's own copy of the image and
/// unwound through its `.eh_frame`, out of libc's `clock_gettime` into the caller. (Without the
/// vDSO's tables, framehop's frame-pointer guess for the leaf still gets ~98 % of them out here:
/// the naming is what this test pins down; the tables take the rest.)
#[test]
#[ignore = "needs root"]
fn root_vdso_frames_are_named_and_unwound_through() {
    require_root();
    let vdso = kiln_agent::vdso::Vdso::get().expect("this kernel maps a vDSO");
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_c(
        dir.path(),
        "vdso_loop",
        &[("vdso_loop.c", &["-fomit-frame-pointer"])],
        &[],
    );
    let mut rec = record(Command::new(&exe).arg("20"), 8192, 3.0);
    let syms = Symbols::load(&exe);
    let (mut in_vdso, mut reached) = (0, 0);
    let mut misses = Vec::new();
    for s in &rec.samples.clone() {
        let u = rec
            .unwinder
            .unwind(&rec.process, s.user_regs.expect("regs"), &s.stack_copy);
        let leaf = u.frames[0];
        let Some(name) = rec.process.find(leaf).and_then(|m| vdso.lookup(m, leaf)) else {
            continue;
        };
        assert!(
            name.starts_with("__vdso_") || name.contains("clock_gettime"),
            "vDSO leaf named {name}"
        );
        in_vdso += 1;
        let names = syms.names(&rec.process, &exe, &u.frames);
        let chain = names.iter().position(|n| n == "spin_clock");
        if chain.is_some_and(|i| names.get(i + 1).map(String::as_str) == Some("main")) {
            reached += 1;
        } else if misses.len() < 5 {
            misses.push((names, u.end));
        }
    }
    eprintln!(
        "{in_vdso} samples in the vDSO, {reached} unwound to spin_clock -> main; misses: {misses:?}"
    );
    assert!(in_vdso >= 100, "only {in_vdso} samples in the vDSO");
    assert!(
        reached * 100 >= in_vdso * 95,
        "{reached} of {in_vdso} vDSO samples unwound to main"
    );
}
