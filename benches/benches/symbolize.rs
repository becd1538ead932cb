//! Issue 3, benchmark 2: symbolizations per second, cold and warm, against binutils' `addr2line`
//! on the same binary and addresses in the same run.
//!
//! Input (deterministic): a generated C++ program (`KILN_SYM_FUNCTIONS` functions, default 3,000, in
//! namespaces and templates, each with an always-inlined helper, so names need demangling and
//! addresses have inlined frames), built by `g++ -O2 -g`; three addresses in every function (entry,
//! middle, last byte), shuffled.
//!
//! - Kiln **cold**: a fresh debuginfo store and symbolizer (one worker thread), the ELF stored,
//!   then one `symbolize` call for all addresses: opening and parsing the ELF and its DWARF, every
//!   lookup, demangling. What the first query after an upload costs.
//! - Kiln **warm**: the same symbolizer again with new addresses (the file stays parsed; the result
//!   cache holds none of them): what later queries of the same binary cost.
//! - Kiln **cached**: the same addresses again: the result cache.
//! - `addr2line -a -f -i -C -e BIN` reading the addresses on stdin (one process: its DWARF parse
//!   plus every lookup), wall time.
//!
//! The run also checks that both name the same innermost function for each address (printed).
//! `cargo bench -p kiln-benches --bench symbolize` runs the full size; `cargo test --benches` runs
//! it without `--bench` at a tiny size as a smoke test.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_symbolizer::{BuildId, DebugInfoStore, Symbolizer, SymbolizerOptions};
use object::{Object, ObjectSegment, ObjectSymbol};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The C++ source: `n` functions over 10 namespaces, every 4th a class template member.
fn source(n: usize) -> String {
    let mut s = String::from("#include <cstdio>\n#include <cstdlib>\nvolatile long sink;\n");
    for i in 0..n {
        let ns = i % 10;
        let _ = writeln!(
            s,
            "namespace kb{ns} {{\n\
             static inline __attribute__((always_inline)) long mix{i}(long x) {{ \
             for (int k = 0; k < (int)(x & 7); k++) x = x * {m} + {i}; return x ^ (x >> 7); }}",
            m = 2 * i + 3
        );
        if i % 4 == 0 {
            let _ = writeln!(
                s,
                "template <typename T> struct Box{i} {{ __attribute__((noinline)) static T run(T x); }};\n\
                 template <typename T> T Box{i}<T>::run(T x) {{ sink += mix{i}(x); return x + {i}; }}\n\
                 template struct Box{i}<long>;\n\
                 long fn{i}(long x) {{ return Box{i}<long>::run(x); }}\n}}"
            );
        } else {
            let _ = writeln!(
                s,
                "__attribute__((noinline)) long fn{i}(long x) {{ sink += mix{i}(x); return x + {i}; }}\n}}"
            );
        }
    }
    s.push_str("typedef long (*fnp)(long);\nfnp table[] = {\n");
    for i in 0..n {
        let _ = writeln!(s, "  kb{}::fn{i},", i % 10);
    }
    s.push_str(
        "};\nint main(int argc, char **argv) {\n  long x = argc;\n  \
         for (unsigned i = 0; i < sizeof table / sizeof *table; i++) x += table[i](x);\n  \
         printf(\"%ld\\n\", x);\n  return 0;\n}\n",
    );
    s
}

fn build_fixture(dir: &Path, n: usize) -> Option<PathBuf> {
    let src = dir.join("fixture.cpp");
    std::fs::write(&src, source(n)).expect("write fixture source");
    let exe = dir.join("fixture");
    match Command::new("g++")
        .args(["-O2", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => Some(exe),
        Ok(s) => panic!("g++ failed: {s}"),
        Err(e) => {
            eprintln!("SKIP symbolize bench: g++ not runnable ({e})");
            None
        }
    }
}

/// One address to symbolize: its virtual address (for addr2line) and file offset (for Kiln).
#[derive(Clone, Copy)]
struct Addr {
    vaddr: u64,
    offset: u64,
}

/// Entry, middle and last byte of every function of the fixture, shuffled deterministically.
fn addresses(data: &[u8]) -> Vec<Addr> {
    let obj = object::File::parse(data).expect("parse fixture");
    let segments: Vec<(u64, u64, u64)> = obj
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    let mut out = Vec::new();
    for sym in obj.symbols() {
        let Ok(name) = sym.name() else { continue };
        if sym.kind() != object::SymbolKind::Text || sym.size() < 2 || !name.contains("kb") {
            continue;
        }
        for vaddr in [
            sym.address(),
            sym.address() + sym.size() / 2,
            sym.address() + sym.size() - 1,
        ] {
            if let Some(&(va, _, off)) = segments
                .iter()
                .find(|&&(va, size, _)| (va..va + size).contains(&vaddr))
            {
                out.push(Addr {
                    vaddr,
                    offset: vaddr - va + off,
                });
            }
        }
    }
    // xorshift shuffle: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..out.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.swap(i, (state % (i as u64 + 1)) as usize);
    }
    out
}

/// A store holding the fixture, and a one-worker symbolizer over it.
fn symbolizer(dir: &Path, exe: &Path, id: &BuildId, cache_entries: usize) -> Symbolizer {
    let store = DebugInfoStore::open(dir).expect("open store");
    let file = std::fs::File::open(exe).expect("open fixture");
    store
        .insert_from_reader(id, file, u64::MAX)
        .expect("store fixture");
    Symbolizer::with_options(
        Arc::new(store),
        SymbolizerOptions {
            cache_entries,
            workers: 1,
            open_files_per_worker: 4,
        },
    )
}

/// Innermost function name per address, without parameter lists (addr2line -C prints them).
fn strip_params(name: &str) -> &str {
    name.split_once('(').map_or(name, |(n, _)| n)
}

/// Runs a symbolizer tool over the addresses (hex on stdin); returns its wall time and output.
fn run_tool(program: &str, args: &[&str], addrs: &[Addr]) -> Option<(Duration, String)> {
    let mut input = String::with_capacity(addrs.len() * 20);
    for a in addrs {
        let _ = writeln!(input, "{:#x}", a.vaddr);
    }
    let started = Instant::now();
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program} not runnable ({e}): no baseline");
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("stdin piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("tool output");
    let elapsed = started.elapsed();
    let _ = writer.join();
    assert!(out.status.success(), "{program} failed: {}", out.status);
    Some((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// llvm-symbolizer's output: one block per address (function, file:line:col pairs, innermost
/// first), blocks separated by an empty line. The innermost function of each.
fn llvm_innermost(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| strip_params(b.trim_start().lines().next().unwrap_or("??")).to_owned())
        .collect()
}

fn rate(n: usize, d: Duration) -> String {
    let per_sec = n as f64 / d.as_secs_f64().max(1e-9);
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.1} k/s", per_sec / 1e3)
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench {
        env_usize("KILN_SYM_FUNCTIONS", 3_000)
    } else {
        100
    };
    let runs = if bench {
        env_usize("KILN_SYM_RUNS", 5).max(1)
    } else {
        1
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_fixture(tmp.path(), n) else {
        return;
    };
    let data = std::fs::read(&exe).expect("read fixture");
    let id = kiln_symbolizer::read_build_id(&data)
        .expect("parse fixture")
        .expect("g++ links with a build ID");
    let addrs = addresses(&data);
    assert!(
        addrs.len() >= n,
        "{} addresses for {n} functions",
        addrs.len()
    );
    let half = addrs.len() / 2;
    let (first, second) = addrs.split_at(half);
    let offsets = |a: &[Addr]| a.iter().map(|a| a.offset).collect::<Vec<_>>();
    let (first_off, second_off) = (offsets(first), offsets(second));

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut cached = Vec::new();
    let mut kiln_names: Vec<String> = Vec::new();
    for run in 0..runs {
        let store_dir = tmp.path().join(format!("store{run}"));
        let sym = symbolizer(&store_dir, &exe, &id, 1 << 20);
        let t = Instant::now();
        let res = sym.symbolize(&id, &first_off).expect("symbolize cold");
        cold.push(t.elapsed());
        let t = Instant::now();
        let res2 = sym.symbolize(&id, &second_off).expect("symbolize warm");
        warm.push(t.elapsed());
        let t = Instant::now();
        let _ = sym.symbolize(&id, &first_off).expect("symbolize cached");
        cached.push(t.elapsed());
        if run == 0 {
            kiln_names = res
                .iter()
                .chain(res2.iter())
                .map(|f| {
                    f.as_ref()
                        .and_then(|frames| frames.first())
                        .map_or_else(|| "??".to_owned(), |f| f.function.clone())
                })
                .collect();
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (cold, warm, cached) = (median(&mut cold), median(&mut warm), median(&mut cached));

    let exe_str = exe.to_string_lossy().into_owned();
    let llvm = run_tool(
        "llvm-symbolizer",
        &["--obj", &exe_str, "--inlining", "--demangle"],
        &addrs,
    );
    let addr2line = run_tool(
        "addr2line",
        &["-a", "-f", "-i", "-C", "-e", &exe_str],
        &addrs,
    );
    println!(
        "symbolize: {n} C++ functions, {} addresses ({} KiB binary, -O2 -g), one core, median of {runs}",
        addrs.len(),
        data.len() / 1024
    );
    println!("| what | addresses | time | rate |");
    println!("|---|---|---|---|");
    println!(
        "| Kiln cold (parse ELF + DWARF, then look up) | {} | {:.1} ms | {} |",
        first.len(),
        cold.as_secs_f64() * 1e3,
        rate(first.len(), cold)
    );
    println!(
        "| Kiln warm (file parsed, results not cached) | {} | {:.1} ms | {} |",
        second.len(),
        warm.as_secs_f64() * 1e3,
        rate(second.len(), warm)
    );
    println!(
        "| Kiln cached | {} | {:.2} ms | {} |",
        first.len(),
        cached.as_secs_f64() * 1e3,
        rate(first.len(), cached)
    );
    let kiln_rate = (first.len() + second.len()) as f64 / (cold + warm).as_secs_f64();
    for (tool, out) in [
        ("llvm-symbolizer --inlining", &llvm),
        ("addr2line -f -i -C", &addr2line),
    ] {
        if let Some((t, _)) = out {
            println!(
                "| {tool} (parse + look up) | {} | {:.1} ms | {} |",
                addrs.len(),
                t.as_secs_f64() * 1e3,
                rate(addrs.len(), *t)
            );
        }
    }
    for (tool, out) in [("llvm-symbolizer", &llvm), ("addr2line", &addr2line)] {
        if let Some((t, _)) = out {
            let tool_rate = addrs.len() as f64 / t.as_secs_f64();
            println!(
                "Kiln cold+warm over all addresses: {:.1}x {tool}'s rate",
                kiln_rate / tool_rate
            );
        }
    }
    // Same innermost (inlined) function for each address as llvm-symbolizer, addresses in the same
    // order. (addr2line names an inlined frame after its caller, so it is not the reference.)
    if let Some((_, text)) = &llvm {
        let names = llvm_innermost(text);
        assert_eq!(
            names.len(),
            addrs.len(),
            "one llvm-symbolizer block per address"
        );
        let mut agree = 0;
        let mut differ: HashMap<(String, String), usize> = HashMap::new();
        for (k, a) in kiln_names.iter().zip(&names) {
            if strip_params(k) == a {
                agree += 1;
            } else {
                *differ.entry((k.clone(), a.clone())).or_default() += 1;
            }
        }
        println!(
            "innermost function agrees with llvm-symbolizer on {agree} of {} addresses{}",
            names.len(),
            if differ.is_empty() {
                String::new()
            } else {
                format!(
                    "; first differences (kiln, llvm-symbolizer): {:?}",
                    differ.keys().take(3).collect::<Vec<_>>()
                )
            }
        );
        assert!(
            agree * 100 >= names.len() * 95,
            "Kiln and llvm-symbolizer disagree on more than 5 % of addresses"
        );
    }
}
