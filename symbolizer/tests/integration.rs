//! End-to-end tests: real programs compiled with gcc/g++ into a tempdir, stored by build ID, and
//! symbolized by file offset.

// Tests may panic on the unexpected; that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use kiln_symbolizer::{
    BuildId, DebugInfoStore, Error, Frame, Stored, Symbolizer, SymbolizerOptions, read_build_id,
};
use object::{Object, ObjectSegment, ObjectSymbol};

const KNOWN_C: &str = r#"#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int kiln_known_function(int x) {
    return x * 31 + (x >> 2); /* BODY */
}

int main(int argc, char **argv) {
    printf("%d\n", kiln_known_function(argc > 1 ? atoi(argv[1]) : 3));
    return 0;
}
"#;

const INLINE_C: &str = r#"#include <stdio.h>
#include <stdlib.h>

static inline __attribute__((always_inline)) int kiln_inlined_leaf(int x) {
    return (x * x) ^ (x >> 3); /* LEAF */
}

__attribute__((noinline)) int kiln_outer(int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += kiln_inlined_leaf(i ^ s); /* CALL */
    return s;
}

int main(int argc, char **argv) {
    printf("%d\n", kiln_outer(argc > 1 ? atoi(argv[1]) : 1000));
    return 0;
}
"#;

const CPP: &str = r#"#include <cstdio>
#include <cstdlib>

namespace ns {
__attribute__((noinline)) int hot(int x) {
    return x * 17 + (x >> 1); /* HOT */
}
}

int main(int argc, char **argv) {
    std::printf("%d\n", ns::hot(argc > 1 ? std::atoi(argv[1]) : 5));
    return 0;
}
"#;

/// A program compiled into a tempdir (kept alive with it).
struct Program {
    _dir: tempfile::TempDir,
    binary: PathBuf,
    source_name: String,
    source: &'static str,
}

impl Program {
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.binary).unwrap()
    }

    fn build_id(&self) -> BuildId {
        read_build_id(&self.bytes())
            .unwrap()
            .expect("gcc links with --build-id here")
    }

    /// 1-based line of the source line containing `marker`.
    fn line_of(&self, marker: &str) -> u32 {
        let i = self
            .source
            .lines()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("marker {marker} not in source"));
        u32::try_from(i + 1).unwrap()
    }

    /// (file offset, size) of the function whose symbol is `name`.
    fn function(&self, name: &str) -> (u64, u64) {
        let data = self.bytes();
        let file = object::File::parse(&*data).unwrap();
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"));
        (vaddr_to_file_offset(&file, sym.address()), sym.size())
    }
}

/// The translation the agent does: PT_LOAD segment containing the address.
fn vaddr_to_file_offset(file: &object::File<'_>, vaddr: u64) -> u64 {
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        if (seg.address()..seg.address() + size).contains(&vaddr) {
            return vaddr - seg.address() + off;
        }
    }
    panic!("address {vaddr:#x} in no segment");
}

fn compile(compiler: &str, source: &'static str, ext: &str, extra: &[&str]) -> Program {
    let dir = tempfile::tempdir().unwrap();
    let source_name = format!("prog.{ext}");
    let src = dir.path().join(&source_name);
    std::fs::write(&src, source).unwrap();
    let binary = dir.path().join("prog");
    let out = Command::new(compiler)
        .args(["-g", "-O2", "-o"])
        .arg(&binary)
        .arg(&src)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("these tests need {compiler} installed: {e}"));
    assert!(
        out.status.success(),
        "{compiler} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Program {
        _dir: dir,
        binary,
        source_name,
        source,
    }
}

fn gcc(source: &'static str, extra: &[&str]) -> Program {
    compile("gcc", source, "c", extra)
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<DebugInfoStore>,
}

fn store() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DebugInfoStore::open(dir.path().join("debuginfo")).unwrap());
    Setup { _dir: dir, store }
}

fn insert(store: &DebugInfoStore, p: &Program) -> BuildId {
    let id = p.build_id();
    store
        .insert_from_reader(&id, p.bytes().as_slice(), u64::MAX)
        .unwrap();
    id
}

fn basename(path: &str) -> &str {
    Path::new(path).file_name().unwrap().to_str().unwrap()
}

/// Files anywhere under `dir` (to prove failed uploads leave nothing behind).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn symbolizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Symbolizer>();
    check::<DebugInfoStore>();
}

#[test]
fn known_c_function_name_file_line() {
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, size) = p.function("kiln_known_function");
    assert!(size > 0);
    let sym = Symbolizer::new(s.store.clone(), 100);

    let out = sym.symbolize(&id, &[off, off + size / 2]).unwrap();
    assert_eq!(out.len(), 2);
    for frames in &out {
        let frames = frames.as_ref().expect("function covers the offset");
        assert_eq!(frames.len(), 1, "nothing inlined here: {frames:?}");
        let f = &frames[0];
        assert_eq!(f.function, "kiln_known_function");
        assert_eq!(basename(f.file.as_deref().unwrap()), p.source_name);
        assert_eq!(f.line, Some(p.line_of("/* BODY */")));
        assert!(!f.inlined);
    }
}

#[test]
fn inline_chain_innermost_first() {
    let p = gcc(INLINE_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (start, size) = p.function("kiln_outer");
    let sym = Symbolizer::new(s.store.clone(), 1000);

    // Every byte of the function: the inlined leaf must show up somewhere, and wherever it does
    // the chain must be exactly leaf (inlined, its own line) -> outer (at the call site).
    let offsets: Vec<u64> = (start..start + size).collect();
    let out = sym.symbolize(&id, &offsets).unwrap();
    let leaf = Frame {
        function: "kiln_inlined_leaf".to_owned(),
        file: None,
        line: Some(p.line_of("/* LEAF */")),
        inlined: true,
    };
    let mut inlined_seen = 0;
    for (off, frames) in offsets.iter().zip(&out) {
        let frames = frames
            .as_ref()
            .unwrap_or_else(|| panic!("{off:#x} not symbolized"));
        let outer = frames.last().unwrap();
        assert_eq!(outer.function, "kiln_outer", "at {off:#x}: {frames:?}");
        assert!(!outer.inlined);
        if frames.len() > 1 {
            inlined_seen += 1;
            assert_eq!(frames.len(), 2, "at {off:#x}: {frames:?}");
            let inner = &frames[0];
            assert_eq!(
                Frame {
                    file: None,
                    ..inner.clone()
                },
                leaf,
                "at {off:#x}: {frames:?}"
            );
            assert_eq!(basename(inner.file.as_deref().unwrap()), p.source_name);
            assert_eq!(outer.line, Some(p.line_of("/* CALL */")), "at {off:#x}");
            assert_eq!(basename(outer.file.as_deref().unwrap()), p.source_name);
        }
    }
    assert!(
        inlined_seen > 0,
        "no offset in kiln_outer reported the inlined leaf"
    );
}

#[test]
fn cpp_names_are_demangled() {
    let p = compile("g++", CPP, "cpp", &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, _) = p.function("_ZN2ns3hotEi");
    let sym = Symbolizer::new(s.store.clone(), 100);
    let out = sym.symbolize(&id, &[off]).unwrap();
    let frames = out[0].as_ref().unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].function, "ns::hot(int)");
    assert_eq!(frames[0].line, Some(p.line_of("/* HOT */")));
}

#[test]
fn symbol_table_only_when_stripped_of_debuginfo() {
    // No -g effect: strip the DWARF; names still come from .symtab, without file/line.
    let p = gcc(KNOWN_C, &["-Wl,--strip-debug"]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, _) = p.function("kiln_known_function");
    let sym = Symbolizer::new(s.store.clone(), 100);
    let out = sym.symbolize(&id, &[off]).unwrap();
    let frames = out[0].as_ref().unwrap();
    assert_eq!(frames[0].function, "kiln_known_function");
    assert_eq!(frames[0].line, None);
}

#[test]
fn uncovered_offsets_are_none_and_missing_is_an_error() {
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, _) = p.function("kiln_known_function");
    let sym = Symbolizer::new(s.store.clone(), 100);
    // Offset 0 is the ELF header (mapped, but no symbol); the huge one is in no segment.
    let out = sym.symbolize(&id, &[0, off, 1 << 40, off]).unwrap();
    assert_eq!(out[0], None);
    assert!(out[1].is_some());
    assert_eq!(out[2], None);
    assert_eq!(out[3], out[1], "duplicate offsets answer alike");
    assert!(sym.symbolize(&id, &[]).unwrap().is_empty());

    let other = BuildId::parse("0123456789abcdef").unwrap();
    assert!(matches!(
        sym.symbolize(&other, &[off]),
        Err(Error::Missing(m)) if m == other.as_str()
    ));
}

#[test]
fn cache_serves_repeats_and_invalidate_picks_up_new_debuginfo() {
    // Two different programs with the same (explicit) build ID: the second stands in for better
    // debuginfo arriving later for the same build (the first has no DWARF, so the second, which
    // has, may replace it).
    let forced = "0x00112233445566778899aabbccddeeff00112233";
    let a = gcc(KNOWN_C, &[&format!("-Wl,--build-id={forced}"), "-g0"]);
    let b = gcc(INLINE_C, &[&format!("-Wl,--build-id={forced}")]);
    let s = store();
    let id = insert(&s.store, &a);
    assert_eq!(id, b.build_id());
    let (a_off, _) = a.function("kiln_known_function");
    let (b_off, _) = b.function("kiln_outer");
    let sym = Symbolizer::new(s.store.clone(), 100);

    let name = |out: &[Option<Vec<Frame>>]| out[0].as_ref().map(|f| f[0].function.clone());
    assert_eq!(
        name(&sym.symbolize(&id, &[a_off]).unwrap()).as_deref(),
        Some("kiln_known_function")
    );
    let st = sym.stats();
    assert_eq!(
        (st.cache_hits, st.cache_misses, st.cache_entries),
        (0, 1, 1)
    );
    sym.symbolize(&id, &[a_off]).unwrap();
    assert_eq!(sym.stats().cache_hits, 1);

    insert(&s.store, &b);
    // Cached results are kept until told otherwise (the server invalidates on upload).
    assert_eq!(
        name(&sym.symbolize(&id, &[a_off]).unwrap()).as_deref(),
        Some("kiln_known_function")
    );
    sym.invalidate(&id);
    assert_eq!(sym.stats().cache_entries, 0);
    assert_eq!(
        name(&sym.symbolize(&id, &[b_off]).unwrap()).as_deref(),
        Some("kiln_outer")
    );
    assert_ne!(
        name(&sym.symbolize(&id, &[a_off]).unwrap()).as_deref(),
        Some("kiln_known_function")
    );
}

#[test]
fn cache_stays_within_bound() {
    let p = gcc(INLINE_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (start, size) = p.function("kiln_outer");
    let sym = Symbolizer::new(s.store.clone(), 5);
    let offsets: Vec<u64> = (start..start + size).collect();
    let first = sym.symbolize(&id, &offsets).unwrap();
    assert!(sym.stats().cache_entries <= 5);
    // Results do not depend on what the cache kept.
    assert_eq!(sym.symbolize(&id, &offsets).unwrap(), first);
    assert!(sym.stats().cache_entries <= 5);
}

#[test]
fn store_layout_path_and_size() {
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = p.build_id();
    assert!(!s.store.contains(&id));
    assert_eq!(s.store.path(&id), None);
    assert_eq!(s.store.size(&id), None);
    insert(&s.store, &p);
    assert!(s.store.contains(&id));
    let path = s.store.path(&id).unwrap();
    let hex = id.as_str();
    assert_eq!(
        path,
        s.store
            .root()
            .join(&hex[..2])
            .join(format!("{}.elf", &hex[2..]))
    );
    assert_eq!(std::fs::read(&path).unwrap(), p.bytes());
    assert_eq!(s.store.size(&id), Some(p.bytes().len() as u64));
    // Re-inserting is fine and leaves exactly one file.
    insert(&s.store, &p);
    assert_eq!(files_under(s.store.root()), vec![path]);
    // Reopening keeps what is stored.
    let reopened = DebugInfoStore::open(s.store.root()).unwrap();
    assert!(reopened.contains(&id));
}

#[test]
fn store_rejects_wrong_build_id_and_stores_nothing() {
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let wrong = BuildId::parse("deadbeefdeadbeefdeadbeefdeadbeefdeadbeef").unwrap();
    let err = s
        .store
        .insert_from_reader(&wrong, p.bytes().as_slice(), u64::MAX)
        .unwrap_err();
    match err {
        Error::WrongBuildId { expected, actual } => {
            assert_eq!(expected, wrong.as_str());
            assert_eq!(actual.as_deref(), Some(p.build_id().as_str()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!s.store.contains(&wrong));
    assert!(!s.store.contains(&p.build_id()));
    assert!(files_under(s.store.root()).is_empty());
}

#[test]
fn store_rejects_elf_without_build_id() {
    let p = gcc(KNOWN_C, &["-Wl,--build-id=none"]);
    assert_eq!(read_build_id(&p.bytes()).unwrap(), None);
    let s = store();
    let id = BuildId::parse("abcdef").unwrap();
    let err = s
        .store
        .insert_from_reader(&id, p.bytes().as_slice(), u64::MAX)
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongBuildId { actual: None, .. }),
        "{err:?}"
    );
    assert!(files_under(s.store.root()).is_empty());
}

#[test]
fn store_rejects_non_elf() {
    let s = store();
    let id = BuildId::parse("abcdef").unwrap();
    for junk in [
        b"#!/bin/sh\necho not an elf\n".as_slice(),
        b"\x7fEL".as_slice(),
        b"".as_slice(),
        // Right magic, garbage after it.
        b"\x7fELF\x02\x01\x01\0garbagegarbagegarbage".as_slice(),
        // Right magic, impossible class, byte order, version.
        b"\x7fELF\x09\x01\x01\0garbagegarbagegarbage".as_slice(),
        b"\x7fELF\x02\x03\x01\0garbagegarbagegarbage".as_slice(),
        b"\x7fELF\x02\x01\x07\0garbagegarbagegarbage".as_slice(),
    ] {
        let err = s.store.insert_from_reader(&id, junk, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::NotElf(_)), "{junk:?}: {err:?}");
    }
    assert!(!s.store.contains(&id));
    assert!(files_under(s.store.root()).is_empty());
}

#[test]
fn store_rejects_too_large() {
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = p.build_id();
    let len = p.bytes().len() as u64;
    let err = s
        .store
        .insert_from_reader(&id, p.bytes().as_slice(), len - 1)
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit } if limit == len - 1),
        "{err:?}"
    );
    assert!(files_under(s.store.root()).is_empty());
    // Exactly at the limit is allowed.
    s.store
        .insert_from_reader(&id, p.bytes().as_slice(), len)
        .unwrap();
    assert!(s.store.contains(&id));
}

/// A stripped file may be replaced by the full one (it carries more), never the other way round;
/// the same bytes again change nothing.
#[test]
fn replacement_only_when_the_upload_carries_more() {
    let p = gcc(KNOWN_C, &[]);
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("stripped");
    assert!(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&p.binary)
            .status()
            .unwrap()
            .success()
    );
    let stripped = std::fs::read(&stripped).unwrap();
    let s = store();
    let id = p.build_id();
    let full = p.bytes();
    assert_eq!(
        s.store
            .insert_from_reader(&id, stripped.as_slice(), u64::MAX)
            .unwrap(),
        Stored::New {
            bytes: stripped.len() as u64
        }
    );
    assert_eq!(
        s.store
            .insert_from_reader(&id, stripped.as_slice(), u64::MAX)
            .unwrap(),
        Stored::Unchanged {
            bytes: stripped.len() as u64
        }
    );
    assert_eq!(
        s.store
            .insert_from_reader(&id, full.as_slice(), u64::MAX)
            .unwrap(),
        Stored::Replaced {
            bytes: full.len() as u64,
            old_bytes: stripped.len() as u64
        }
    );
    let err = s
        .store
        .insert_from_reader(&id, stripped.as_slice(), u64::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(s.store.size(&id), Some(full.len() as u64));
    // Nothing left in the temp directory by the refused upload.
    assert_eq!(files_under(s.store.root()).len(), 1);
}

/// A real ELF followed by zeros: refused while streaming once the zero run passes the limit (the
/// rest is never read), and a shorter tail outside every section and segment is refused too.
#[test]
fn padded_elf_is_refused() {
    use kiln_symbolizer::{MAX_UNCOVERED_BYTES, MAX_ZERO_RUN};
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = p.build_id();
    let bytes = p.bytes();

    // 512 MiB of zeros behind the ELF, counted as it is read.
    let read = std::sync::atomic::AtomicU64::new(0);
    struct Counting<'a, R>(R, &'a std::sync::atomic::AtomicU64);
    impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }
    let bomb = std::io::Read::chain(
        bytes.as_slice(),
        std::io::Read::take(std::io::repeat(0), 512 << 20),
    );
    let err = s
        .store
        .insert_from_reader(&id, Counting(bomb, &read), u64::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::Padding(_)), "{err:?}");
    let consumed = read.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        consumed < bytes.len() as u64 + MAX_ZERO_RUN + (1 << 20),
        "read {consumed} bytes"
    );

    // Non-zero garbage (no long zero run) beyond the last section and segment.
    let mut padded = bytes.clone();
    padded.extend((0..MAX_UNCOVERED_BYTES + (1 << 20)).map(|i| (i % 251) as u8 | 1));
    let err = s
        .store
        .insert_from_reader(&id, padded.as_slice(), u64::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::Padding(_)), "{err:?}");
    assert!(files_under(s.store.root()).is_empty());
    assert!(!s.store.contains(&id));
}

/// Junk behind the ELF magic is refused from its identification bytes, before the rest is read.
#[test]
fn bad_identification_stops_reading_early() {
    let s = store();
    let id = BuildId::parse("abcdef").unwrap();
    let endless = std::io::Read::chain(b"\x7fELF\x05".as_slice(), std::io::repeat(1));
    let err = s
        .store
        .insert_from_reader(&id, endless, u64::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::NotElf(_)), "{err:?}");
    assert!(files_under(s.store.root()).is_empty());
}

#[test]
fn too_large_stops_reading_early() {
    // An endless stream must not be drained: the limit ends the upload.
    let s = store();
    let id = BuildId::parse("abcdef").unwrap();
    let endless = std::io::Read::chain(b"\x7fELF\x02\x01\x01".as_slice(), std::io::repeat(0));
    let err = s
        .store
        .insert_from_reader(&id, endless, 1 << 20)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(files_under(s.store.root()).is_empty());
}

#[test]
fn concurrent_readers_while_debuginfo_is_replaced() {
    let p = gcc(INLINE_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, _) = p.function("kiln_outer");
    let sym = Arc::new(Symbolizer::with_options(
        s.store.clone(),
        SymbolizerOptions {
            cache_entries: 100,
            workers: 2,
            open_files_per_worker: 4,
        },
    ));
    let bytes = p.bytes();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let sym = sym.clone();
            let id = id.clone();
            scope.spawn(move || {
                for _ in 0..50 {
                    let out = sym.symbolize(&id, &[off]).unwrap();
                    let frames = out[0].as_ref().unwrap();
                    assert_eq!(frames.last().unwrap().function, "kiln_outer");
                    // Drop cached results often so readers really hit the file being replaced.
                    sym.invalidate(&id);
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..20 {
                s.store
                    .insert_from_reader(&id, bytes.as_slice(), u64::MAX)
                    .unwrap();
            }
        });
    });
    assert!(s.store.contains(&id));
}

/// Quick throughput check: `cargo test -p kiln-symbolizer -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_throughput() {
    let p = gcc(INLINE_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (start, size) = p.function("kiln_outer");
    let offsets: Vec<u64> = (start..start + size).collect();
    let rounds = 200;

    let sym = Symbolizer::new(s.store.clone(), 0);
    let t = Instant::now();
    sym.symbolize(&id, &offsets).unwrap();
    println!(
        "cold (open + parse + {} offsets): {:?}",
        offsets.len(),
        t.elapsed()
    );
    let t = Instant::now();
    for _ in 0..rounds {
        sym.symbolize(&id, &offsets).unwrap();
    }
    let n = (rounds * offsets.len()) as f64;
    println!(
        "warm file, no result cache: {:.0} offsets/s",
        n / t.elapsed().as_secs_f64()
    );

    let sym = Symbolizer::new(s.store.clone(), 10_000);
    sym.symbolize(&id, &offsets).unwrap();
    let t = Instant::now();
    for _ in 0..rounds {
        sym.symbolize(&id, &offsets).unwrap();
    }
    println!(
        "result cache hits: {:.0} offsets/s",
        n / t.elapsed().as_secs_f64()
    );

    // Per-call overhead (worker round trip included) with one-offset batches.
    let sym = Symbolizer::new(s.store.clone(), 0);
    sym.symbolize(&id, &offsets[..1]).unwrap();
    let t = Instant::now();
    for _ in 0..2000 {
        sym.symbolize(&id, &offsets[..1]).unwrap();
    }
    println!("one-offset call, warm file: {:?}/call", t.elapsed() / 2000);
    // The same on the calling thread with blazesym directly: what the worker hop costs.
    let direct = blazesym::symbolize::Symbolizer::new();
    let src = blazesym::symbolize::source::Source::Elf(blazesym::symbolize::source::Elf::new(
        s.store.path(&id).unwrap(),
    ));
    let input = blazesym::symbolize::Input::FileOffset(&offsets[..1]);
    direct.symbolize(&src, input).unwrap();
    let t = Instant::now();
    for _ in 0..2000 {
        direct.symbolize(&src, input).unwrap();
    }
    println!(
        "one-offset call, blazesym on the calling thread: {:?}/call",
        t.elapsed() / 2000
    );

    // A large binary: this test executable (Rust, full DWARF).
    let exe = std::env::current_exe().unwrap();
    let bytes = std::fs::read(&exe).unwrap();
    let Some(big) = read_build_id(&bytes).unwrap() else {
        println!("test binary has no build ID; skipping the large-file numbers");
        return;
    };
    s.store
        .insert_from_reader(&big, bytes.as_slice(), u64::MAX)
        .unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let mut offs: Vec<u64> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|s| vaddr_to_file_offset(&file, s.address() + s.size() / 2))
        .collect();
    offs.truncate(5000);
    let sym = Symbolizer::new(s.store.clone(), 100_000);
    let t = Instant::now();
    let out = sym.symbolize(&big, &offs).unwrap();
    let found = out.iter().filter(|f| f.is_some()).count();
    println!(
        "large file ({} MB): cold, {} offsets ({} symbolized): {:?}",
        bytes.len() >> 20,
        offs.len(),
        found,
        t.elapsed()
    );
    sym.invalidate(&big);
    let t = Instant::now();
    sym.symbolize(&big, &offs).unwrap();
    println!(
        "large file: same offsets, parsed file, no cached results: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    sym.symbolize(&big, &offs).unwrap();
    println!(
        "large file: same offsets, cached results: {:?}",
        t.elapsed()
    );
}

/// Why an offset has no frames: `symbolize_detailed` tells stripped files, uncovered addresses
/// and offsets outside the file apart; a separate debug file names a stripped file's functions
/// with lines.
#[test]
fn unsymbolized_reasons_and_separate_debug_file() {
    use kiln_symbolizer::Unsymbolized;
    let p = gcc(KNOWN_C, &[]);
    let s = store();
    let id = insert(&s.store, &p);
    let (off, _) = p.function("kiln_known_function");
    let sym = Symbolizer::new(s.store.clone(), 100);
    let out = sym.symbolize_detailed(&id, &[0, 1 << 40]).unwrap();
    assert_eq!(out[0], Err(Unsymbolized::UnknownAddress));
    assert_eq!(out[1], Err(Unsymbolized::InvalidOffset));

    // The same build, stripped, does not replace the stored file (it carries less); stored in a
    // fresh store, nothing can be named from it.
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("stripped");
    let debug = dir.path().join("known.debug");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    assert!(ok(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&p.binary)
        .arg(&debug)));
    assert!(ok(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&p.binary)));
    let err = s
        .store
        .insert_from_reader(&id, std::fs::File::open(&stripped).unwrap(), 1 << 30)
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    let s = store();
    let sym = Symbolizer::new(s.store.clone(), 100);
    s.store
        .insert_from_reader(&id, std::fs::File::open(&stripped).unwrap(), 1 << 30)
        .unwrap();
    let out = sym.symbolize_detailed(&id, &[off]).unwrap();
    assert_eq!(out[0], Err(Unsymbolized::NoSymbols));

    s.store
        .insert_debug_from_reader(&id, std::fs::File::open(&debug).unwrap(), 1 << 30)
        .unwrap();
    sym.invalidate(&id);
    let frames = sym
        .symbolize_detailed(&id, &[off])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(frames[0].function, "kiln_known_function");
    assert_eq!(frames[0].line, Some(5), "{frames:?}");
    assert!(
        frames[0].file.as_deref().is_some_and(|f| f.ends_with(".c")),
        "{frames:?}"
    );
}
