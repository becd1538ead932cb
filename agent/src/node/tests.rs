#![allow(clippy::unwrap_used)]

use super::layout::tests::node20;
use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The node binaries the tests run against: /usr/bin/node (the machine image's Node 20) always,
/// and the official Node 18 and 22 builds `.ci/run` installs in /opt/kiln-node when present.
/// With `KILN_REQUIRE_ALL_NODES=1` (scripts/test.sh) a missing one fails the test; otherwise it
/// is reported missing on stderr.
pub(crate) fn node_binaries() -> Vec<(u32, PathBuf)> {
    let mut out = vec![(20, PathBuf::from("/usr/bin/node"))];
    for major in [18, 22] {
        let path = PathBuf::from(format!("/opt/kiln-node/{major}/bin/node"));
        if path.exists() {
            out.push((major, path));
        } else if std::env::var_os("KILN_REQUIRE_ALL_NODES").is_some_and(|v| v == "1") {
            panic!(
                "Node {major} is not installed at {} (.ci/run installs it)",
                path.display()
            );
        } else {
            eprintln!(
                "!!! Node {major} missing ({}): not tested (.ci/run installs it)",
                path.display()
            );
        }
    }
    out
}

fn layout() -> Layout {
    let c = node20();
    Layout::from_constants(|n| c.get(n).copied()).unwrap()
}

/// A process image made of words and bytes at addresses.
#[derive(Default)]
struct FakeMemory(BTreeMap<u64, u8>);

impl FakeMemory {
    fn put(&mut self, addr: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.0.insert(addr + i as u64, b);
        }
    }
    fn word(&mut self, addr: u64, w: u64) {
        self.put(addr, &w.to_le_bytes());
    }
    /// An object at `addr` whose map says `ty`.
    fn object(&mut self, addr: u64, ty: u16) {
        let map = 0x10_0000 + u64::from(ty) * 0x100;
        self.word(addr, map + 1);
        self.put(map + 12, &ty.to_le_bytes());
    }
    fn one_byte_string(&mut self, addr: u64, s: &str) {
        self.object(addr, 8);
        self.put(addr + 12, &(s.len() as i32).to_le_bytes());
        self.put(addr + 16, s.as_bytes());
    }
}

impl Memory for FakeMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            match self.0.get(&(addr + i as u64)) {
                Some(&v) => *b = v,
                None => return false,
            }
        }
        true
    }
}

const SMI: u32 = 32;
const FUNCTION: u64 = 0x20_0000;
const SHARED: u64 = 0x21_0000;
const SCRIPT: u64 = 0x22_0000;

/// A function whose SharedFunctionInfo points at `name_or_scope_info`, in script "/app/x.js".
fn function(m: &mut FakeMemory, name_or_scope_info: u64) {
    m.object(FUNCTION, 2066);
    m.word(FUNCTION + 24, SHARED + 1);
    m.object(SHARED, 262);
    m.word(SHARED + 16, name_or_scope_info);
    m.word(SHARED + 32, SCRIPT + 1);
    m.object(SCRIPT, 167);
    m.word(SCRIPT + 16, 0x23_0001);
    m.one_byte_string(0x23_0000, "/app/x.js");
}

#[test]
fn a_function_named_by_its_string_name() {
    let mut m = FakeMemory::default();
    function(&mut m, 0x24_0001);
    m.one_byte_string(0x24_0000, "alpha");
    let f = name_function(&layout(), &mut m, FUNCTION).unwrap();
    assert_eq!((&*f.name, &*f.script, f.id), ("alpha", "/app/x.js", SHARED));
}

/// A compiled function keeps its name in its ScopeInfo, after the context locals' names and
/// infos and a few Smis; a two-byte name and a cons string are read too.
#[test]
fn a_function_named_by_its_scope_info() {
    let mut m = FakeMemory::default();
    let info = 0x25_0000;
    function(&mut m, info + 1);
    m.object(info, 261);
    // Slots from +8: flags, parameter count, 2 context locals, 2 names, 2 infos, receiver info,
    // then the function variable's name.
    let slots = [
        1u64 << SMI,
        1 << SMI,
        2 << SMI,
        0x26_0001,
        0x26_1001,
        5 << SMI,
        6 << SMI,
        7 << SMI,
        0x27_0001,
    ];
    for (i, w) in slots.iter().enumerate() {
        m.word(info + 8 + 8 * i as u64, *w);
    }
    m.one_byte_string(0x26_0000, "local_a");
    m.one_byte_string(0x26_1000, "local_b");
    // "héllo", two-byte, as the cons string "hé" + "llo".
    m.object(0x27_0000, 33);
    m.put(0x27_000c, &5i32.to_le_bytes());
    m.word(0x27_0010, 0x28_0001);
    m.word(0x27_0018, 0x29_0001);
    m.object(0x28_0000, 0);
    m.put(0x28_000c, &2i32.to_le_bytes());
    m.put(0x28_0010, &[b'h', 0, 0xe9, 0]);
    m.one_byte_string(0x29_0000, "llo");
    assert_eq!(
        &*name_function(&layout(), &mut m, FUNCTION).unwrap().name,
        "h\u{e9}llo"
    );
    // No name (Smi zero sentinel) and no inferred name: anonymous.
    m.word(info + 8 + 8 * 8, 0);
    m.word(info + 8 + 8 * 9, 0x2a_0001);
    m.object(0x2a_0000, 300); // undefined (an oddball): not a string, the search stops
    assert_eq!(
        &*name_function(&layout(), &mut m, FUNCTION).unwrap().name,
        "(anonymous)"
    );
}

/// A word that is not a JSFunction (its `shared` is not a SharedFunctionInfo) is never named.
#[test]
fn a_word_that_is_not_a_function_is_refused() {
    let mut m = FakeMemory::default();
    function(&mut m, 0x24_0001);
    m.object(SHARED, 167);
    assert_eq!(
        name_function(&layout(), &mut m, FUNCTION),
        Err(NameError::NotAFunction)
    );
    assert_eq!(
        name_function(&layout(), &mut m, 0x9_0000),
        Err(NameError::Unreadable)
    );
}

/// JavaScript frames are those of V8 code with a heap object in the context slot; typed frames
/// (a Smi marker there) and native code are not.
#[test]
fn frames_with_a_function_slot_are_javascript_frames() {
    let sp = 0x7000_0000u64;
    let mut copy = vec![0u8; 256];
    let mut put = |addr: u64, w: u64| {
        let o = (addr - sp) as usize;
        copy[o..o + 8].copy_from_slice(&w.to_le_bytes());
    };
    // A JS frame at fp sp+64, a stub frame (Smi marker) at sp+128, a JS frame at sp+192.
    put(sp + 64 - 8, 0x5555_0001);
    put(sp + 64 - 16, 0x6666_0001);
    put(sp + 128 - 8, 4 << SMI);
    put(sp + 128 - 16, 0x6666_1001);
    put(sp + 192 - 8, 0x5555_0001);
    put(sp + 192 - 16, 0x6666_2001);
    let frames = [0x1000, 0x1001, 0x1002, 0x9000, 0x1003];
    let fps = [sp + 64, sp + 64, sp + 128, sp + 128, sp + 192];
    let got = js_functions(&layout(), &frames, &fps, sp, &copy, |a| a < 0x2000);
    assert_eq!(
        got,
        [
            Some(0x6666_0000),
            Some(0x6666_0000),
            None,
            None,
            Some(0x6666_2000)
        ]
    );
    // A frame pointer outside the copy: not readable, not a JS frame.
    let got = js_functions(&layout(), &[0x1000], &[sp + 4096], sp, &copy, |_| true);
    assert_eq!(got, [None]);
}

/// The real thing: the layout from each installed node's own constants, and functions of a
/// running node named from its memory (their addresses printed by V8's %DebugPrint).
#[test]
fn functions_of_a_running_node_are_named() {
    for (major, node) in node_binaries() {
        eprintln!("Node {major}: {}", node.display());
        functions_of_a_running_node_are_named_with(&node);
    }
}

fn functions_of_a_running_node_are_named_with(node: &std::path::Path) {
    let script = tempfile::NamedTempFile::with_suffix(".js").unwrap();
    std::fs::write(
        script.path(),
        r#"
function js_alpha(x) { let s = 0; for (let i = 0; i < x; i++) s += i; return s; }
const js_arrow = (y) => { const z = y * 2; return () => z; };
class Klass { method_one(a) { return a + 1; } }
function many_locals() {
  let a1=1,a2=2,a3=3,a4=4,a5=5,a6=6,a7=7,a8=8,a9=9;
  return () => a1+a2+a3+a4+a5+a6+a7+a8+a9;
}
js_alpha(10); js_arrow(1)(); new Klass().method_one(1); many_locals()();
%DebugPrint(js_alpha);
%DebugPrint(js_arrow);
%DebugPrint(Klass.prototype.method_one);
%DebugPrint(many_locals);
process.stdin.resume();
"#,
    )
    .unwrap();
    let mut child = std::process::Command::new(node)
        .arg("--allow-natives-syntax")
        .arg(script.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let pid = child.id();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut addresses = Vec::new();
    while addresses.len() < 4 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("node exited before printing its functions");
        }
        if let Some(rest) = line.strip_prefix("DebugPrint: 0x") {
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            addresses.push(u64::from_str_radix(&hex, 16).unwrap() - 1);
        }
    }
    let p = Process::load(pid, &mut crate::buildid::BuildIdCache::new(64), 4096).unwrap();
    let Detection::Readable(target) = detect(&p) else {
        panic!("node not readable: {:?}", detect(&p));
    };
    let (b0, b1) = target.builtins;
    assert!(
        b0 < b1 && p.find(b0).is_some(),
        "builtins inside node's code"
    );
    let mut mem = crate::process_memory::ProcessMemory::open(pid, p.start_time).unwrap();
    let names: Vec<(String, String)> = addresses
        .iter()
        .map(|&a| {
            let f = name_function(&target.layout, &mut mem, a).unwrap();
            (f.name.to_string(), f.script.to_string())
        })
        .collect();
    let path = script.path().to_string_lossy().into_owned();
    assert_eq!(
        names,
        [
            ("js_alpha".to_owned(), path.clone()),
            ("js_arrow".to_owned(), path.clone()),
            ("method_one".to_owned(), path.clone()),
            ("many_locals".to_owned(), path.clone()),
        ]
    );
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn node_file_names() {
    for yes in ["node", "nodejs", "node20", "node18.19", "libnode.so.115"] {
        assert!(is_node_file(yes), "{yes}");
    }
    for no in ["node-pty.node", "nodemon", "binding.node", "python3"] {
        assert!(!is_node_file(no), "{no}");
    }
}

/// The kernel's walk follows saved rbp values: each frame's rbp is read from the copy.
#[test]
fn frame_pointers_of_a_kernel_walk_follow_the_chain() {
    let sp = 0x7000_0000u64;
    let mut copy = vec![0u8; 128];
    copy[16..24].copy_from_slice(&(sp + 64).to_le_bytes());
    copy[64..72].copy_from_slice(&(sp + 4096).to_le_bytes());
    let mut out = Vec::new();
    frame_pointer_chain(sp + 16, sp, &copy, 4, &mut out);
    assert_eq!(out, [sp + 16, sp + 64, sp + 4096, 0]);
}

/// Positions against a running node: a function TurboFan optimized with three others inlined.
/// Every pc of its code is mapped; some must give the whole inlined chain innermost first, each
/// function with a line inside its own body in the script, and the function's current code is
/// the only code accepted. For each installed node (18, 20, 22): this checks the offsets
/// layout.rs derives per V8 version.
#[test]
fn optimized_code_expands_into_its_inlined_functions_with_lines() {
    for (major, node) in node_binaries() {
        eprintln!("Node {major}: {}", node.display());
        optimized_code_expands_with(major, &node);
    }
}

fn optimized_code_expands_with(major: u32, node: &std::path::Path) {
    let script = tempfile::NamedTempFile::with_suffix(".js").unwrap();
    // Lines: hot 2-6, beta 7, alpha 8, main 9-13.
    std::fs::write(
        script.path(),
        "'use strict';
function hot(n) {
  let x = 0;
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) | 0; }
  return x;
}
function beta(n) { return hot(n) + 1; }
function alpha(n) { return beta(n) + 1; }
function main() {
  let t = 0;
  for (let i = 0; i < 20; i++) t = (t + alpha(100)) | 0;
  return t;
}
for (let k = 0; k < 20000; k++) main();
%DebugPrint(main);
process.stdin.resume();
",
    )
    .unwrap();
    let mut child = std::process::Command::new(node)
        .arg("--allow-natives-syntax")
        .arg(script.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let pid = child.id();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let function = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("node exited before printing main");
        }
        if let Some(rest) = line.strip_prefix("DebugPrint: 0x") {
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            break u64::from_str_radix(&hex, 16).unwrap() - 1;
        }
    };
    let p = Process::load(pid, &mut crate::buildid::BuildIdCache::new(64), 4096).unwrap();
    let Detection::Readable(target) = detect(&p) else {
        panic!("node not readable: {:?}", detect(&p));
    };
    let l = &target.layout;
    let pos = match &l.positions {
        Ok(pos) => pos,
        Err(why) => panic!("Node {major}: no positions layout: {why}"),
    };
    let mut mem = crate::process_memory::ProcessMemory::open(pid, p.start_time).unwrap();
    let outer = name_function(l, &mut mem, function).unwrap();
    assert_eq!(&*outer.name, "main");
    let code = l
        .heap_object(mem.word(function + pos.jsfunction_code).unwrap())
        .unwrap();
    let start = pos.instruction_start(&mut mem, code).unwrap();
    let mut b = [0u8; 4];
    assert!(Memory::read(
        &mut mem,
        code + pos.code_instruction_size,
        &mut b
    ));
    let size = u64::from(u32::from_le_bytes(b));
    assert!((16..1 << 20).contains(&size), "code size {size}");
    let ends = {
        let script_word = identity(l, &mut mem, function).unwrap().script;
        lines::script_line_ends(l, &mut mem, l.heap_object(script_word).unwrap()).unwrap()
    };
    assert_eq!(ends.len(), 17, "line ends of the script: {ends:?}");
    let mut whole_chains = 0;
    for off in 0..size {
        let at = lines::At::Code {
            pc: start + off,
            return_address: false,
        };
        let Ok(chain) = lines::chain(l, &mut mem, function, outer.id, at) else {
            continue;
        };
        let named: Vec<(String, u32)> = chain
            .iter()
            .map(|&(shared, offset)| {
                let id = identity_of_shared(l, &mut mem, shared).unwrap();
                let name = name_identity(l, &mut mem, id).name.to_string();
                (name, offset.map_or(0, |o| position::line_of(&ends, o)))
            })
            .collect();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        if names == ["hot", "beta", "alpha", "main"] {
            whole_chains += 1;
            let lines: Vec<u32> = named.iter().map(|n| n.1).collect();
            assert!((2..=6).contains(&lines[0]), "hot's line {lines:?}");
            assert_eq!(&lines[1..], [7, 8, 11], "call sites of beta, alpha, main");
        }
        assert_eq!(names.last(), Some(&"main"), "{names:?}");
    }
    assert!(
        whole_chains > 0,
        "no pc of main's code is in the inlined hot"
    );
    // A pc outside the function's current code is not mapped.
    assert_eq!(
        lines::chain(
            l,
            &mut mem,
            function,
            outer.id,
            lines::At::Code {
                pc: start + size,
                return_address: false
            }
        ),
        Err(lines::Unmapped::OtherCode)
    );
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}

/// An interpreted frame: its BytecodeArray and offset slots lead through the array's position
/// table to a script offset (hand-built objects with Node 20's layout).
#[test]
fn an_interpreted_frame_is_placed_by_its_bytecode_offset() {
    let mut m = FakeMemory::default();
    let array = 0x30_0000u64;
    let table = 0x31_0000u64;
    m.object(array, 191);
    m.word(array + 32, table + 1);
    m.object(table, 190);
    // Statement at bytecode 0 (delta 1 from -1, zig-zag 2), script offset 10 (position word
    // (10 + 1) << 1 = 22, zig-zag 44); expression at bytecode 6 (delta 6 → -7, zig-zag 13), script
    // offset 40 (word 82, delta 60, zig-zag 120).
    let bytes = [0x02, 0x2c, 0x0d, 0x78];
    m.word(table + 8, (bytes.len() as u64) << SMI);
    m.put(table + 16, &bytes);
    let l = layout();
    // The frame's offset slot counts from the tagged array pointer: header 54, minus the tag.
    let at = |bytecode: u64| lines::At::Bytecode {
        array: array + 1,
        offset: (53 + bytecode) << SMI,
    };
    let chain = |m: &mut FakeMemory, bytecode| lines::chain(&l, m, FUNCTION, SHARED, at(bytecode));
    assert_eq!(chain(&mut m, 0), Ok(vec![(SHARED, Some(10))]));
    assert_eq!(chain(&mut m, 5), Ok(vec![(SHARED, Some(10))]));
    assert_eq!(chain(&mut m, 9), Ok(vec![(SHARED, Some(40))]));
    // A table not built yet (undefined in the slot) and a slot that is not a BytecodeArray.
    m.word(array + 32, 0x32_0001);
    m.object(0x32_0000, 300);
    assert_eq!(chain(&mut m, 9), Err(lines::Unmapped::NotCollected));
    m.object(array, 190);
    assert_eq!(chain(&mut m, 9), Err(lines::Unmapped::Unreadable));
    // A budget of reads: the lookup fails rather than read on.
    m.object(array, 191);
    m.word(array + 32, table + 1);
    let mut budget = lines::Budget::new(&mut m, 3);
    assert!(lines::chain(&l, &mut budget, FUNCTION, SHARED, at(9)).is_err());
    assert!(budget.exhausted());
}
