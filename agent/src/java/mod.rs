//! Java (HotSpot): Java methods by class, name and line in the samples of an unmodified JVM, in
//! interpreted and JIT-compiled frames, with the stack unwound through JIT code that has no frame
//! pointers and no DWARF.
//!
//! Everything is done in userspace, from what the sampler already records (registers and a copy
//! of the top of the user stack), plus reads of the JVM's memory through `/proc/PID/mem`:
//!
//! 1. **Recognise** ([`detect`], on the `kiln-java` thread): a process that maps `libjvm.so`
//!    exporting `gHotSpotVMStructs` is a HotSpot JVM. Its own introspection tables
//!    ([`vmstructs`]) give every offset used below; a JVM whose tables lack one keeps its native
//!    frames and gets a frame saying why (`[java: vmStructs lack nmethod::_compile_id]`).
//! 2. **Unwind** ([`JitWalk`], a hook of the unwinder): at a frame whose pc is in the code cache
//!    ([`codecache`]), a compiled method's or stub's frame is stepped over by its blob's fixed
//!    frame size (return address and saved rbp at the top of it); an interpreted frame by its
//!    frame pointer, and its `Method*` and bytecode pointer are taken from their fixed slots
//!    (rbp−24, rbp−64 on x86-64) in the stack copy, i.e. as they were when the sample was taken.
//!    Everything else is unwound by DWARF as before.
//! 3. **Name** ([`Java::resolve`]): a compiled frame's pc is looked up in its nmethod's `PcDesc`s
//!    and scope chain, which lists the methods inlined there (innermost first) with their
//!    bytecode indexes; a `Method*` is named from its `ConstMethod`, `ConstantPool` and class
//!    `Symbol`s, and a bytecode index gets its line from the method's compressed line table.
//!    Names are cached by (process, `Method*`) and re-checked against the JVM's memory once per
//!    window (a class unloaded and its metadata reused is noticed); code blobs are cached for one
//!    window only, keyed by address and checked by compile id (nmethods are freed and their space
//!    reused all the time).
//!
//! What the profiled JVM pays: nothing in the process itself (no agent, no flag, no safepoint);
//! the agent's reads of its memory are a few `pread`s per new pc or method.

pub mod codecache;
pub mod mem;
pub mod vmstructs;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kiln_sampler_bpf::UserRegs;
use object::read::ReadCache;
use object::{Object, ObjectSegment, ObjectSymbol};

use crate::detector::{Answer, Detector};
use crate::procmaps::{MappingKind, Process};
use crate::unwind::JitFrames;
use codecache::{Blob, BlobKind, BlobKindName, Heap};
use mem::{Mem, Unreadable};
use vmstructs::{Offsets, Symbols, Tables, VmStructsError};

/// Largest `libjvm.so` parsed for its symbols.
const MAX_LIBJVM_BYTES: u64 = 1 << 30;
/// Most methods whose names are cached (all JVMs); beyond it the cache is emptied.
pub const MAX_CACHED_METHODS: usize = 32_768;
/// Most code blob lookups cached per window (all JVMs).
const MAX_CACHED_BLOBS: usize = 32_768;
/// Longest class or method name read (bytes).
const MAX_SYMBOL: u64 = 1024;
/// Largest line table read (bytes).
const MAX_LINE_TABLE: usize = 4096;
/// Interpreted frame slots on x86-64, in words from rbp (HotSpot's `frame_x86.hpp`:
/// `interpreter_frame_sender_sp_offset`, `…_method_offset`, `…_bcp_offset`).
const INTERP_SENDER_SP: i64 = -1;
const INTERP_METHOD: i64 = -3;
const INTERP_BCP: i64 = -8;

/// A JVM the agent can read.
#[derive(Debug)]
pub struct Jvm {
    /// The process (keys the per-window caches).
    pub pid: u32,
    pub offsets: Offsets,
    mem: Mem,
    /// The code heaps, once the JVM has made them (it may be sampled during start-up).
    heaps: OnceLock<Vec<Heap>>,
    /// `CodeBlob::_name` pointers seen, by kind.
    blob_names: std::sync::Mutex<HashMap<u64, BlobKindName>>,
}

impl Jvm {
    fn heaps(&self) -> Option<&[Heap]> {
        if let Some(h) = self.heaps.get() {
            return Some(h);
        }
        match codecache::read_heaps(&self.mem, &self.offsets) {
            Ok(h) if !h.is_empty() => Some(self.heaps.get_or_init(|| h)),
            _ => None,
        }
    }

    fn blob(&self, pc: u64) -> Result<Option<Blob>, Unreadable> {
        let Some(heaps) = self.heaps() else {
            return Ok(None);
        };
        let mem = &self.mem;
        let mut names = |p: u64| -> Option<BlobKindName> {
            let mut seen = self.blob_names.lock().ok()?;
            if let Some(k) = seen.get(&p) {
                return Some(*k);
            }
            let k = BlobKindName::of(&mem.c_string(p, 128).ok()?);
            // Names are static strings of libjvm: a handful of them.
            if seen.len() < 4096 {
                seen.insert(p, k);
            }
            Some(k)
        };
        codecache::find_blob(mem, &self.offsets, heaps, &mut names, pc)
    }
}

/// What a process is, as far as Java goes.
#[derive(Clone, Debug)]
pub enum Detection {
    NotJava,
    Readable(Arc<Jvm>),
    /// A JVM that cannot be read; the reason becomes a frame `[java: <reason>]`.
    Unreadable(Arc<str>),
}

/// Recognises a HotSpot JVM from its mappings and reads its vmStructs.
pub fn detect(p: &Process) -> Detection {
    let Some((m, path)) = p.mappings.iter().find_map(|m| match &m.kind {
        MappingKind::File { path, .. }
            if path.file_name().and_then(|n| n.to_str()) == Some("libjvm.so") =>
        {
            Some((m, path))
        }
        _ => None,
    }) else {
        return Detection::NotJava;
    };
    let unreadable = |why: String| Detection::Unreadable(format!("[java: {why}]").into());
    let mapped = crate::buildid::MappedFile {
        pid: p.pid,
        start: m.start,
        end: m.end,
        path,
        inode: m.file.inode,
    };
    let file = match crate::buildid::open_mapped_file(&mapped) {
        Ok(f) if f.len() <= MAX_LIBJVM_BYTES => f,
        Ok(_) => return unreadable("libjvm.so too large".into()),
        Err(e) => return unreadable(format!("libjvm.so unreadable ({e})")),
    };
    let cache = ReadCache::new(file.file());
    let Ok(obj) = object::File::parse(&cache) else {
        return unreadable("libjvm.so is not ELF".into());
    };
    let Some(bias) = obj.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        (off..off + size).contains(&m.offset).then(|| {
            m.start
                .wrapping_sub(m.offset)
                .wrapping_add(off)
                .wrapping_sub(seg.address())
        })
    }) else {
        return unreadable("no segment maps libjvm.so".into());
    };
    let mut syms = Symbols::default();
    for s in obj.dynamic_symbols() {
        if let Ok(name) = s.name()
            && let Some(&known) = vmstructs::SYMBOL_NAMES.iter().find(|&&n| n == name)
        {
            syms.addrs.insert(known, s.address().wrapping_add(bias));
        }
    }
    if syms.addrs.len() < vmstructs::SYMBOL_NAMES.len() {
        return unreadable(VmStructsError::NoSymbols.to_string());
    }
    let mem = match Mem::open(p.pid, p.start_time) {
        Ok(m) => m,
        Err(e) => return unreadable(format!("memory unreadable ({e})")),
    };
    let offsets = match Tables::read(&mem, &syms).and_then(|t| Offsets::from_tables(&t)) {
        Ok(o) => o,
        Err(e) => return unreadable(e.to_string()),
    };
    Detection::Readable(Arc::new(Jvm {
        pid: p.pid,
        offsets,
        mem,
        heaps: OnceLock::new(),
        blob_names: std::sync::Mutex::new(HashMap::new()),
    }))
}

/// A Java frame as found by the walk, before naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawFrame {
    /// An interpreted frame: its `Method*` and bytecode pointer, read from the stack copy.
    Interpreted { method: u64, bcp: u64 },
    /// A frame in compiled code at `pc` (leaf: the sampled pc; else a return address).
    Compiled { blob: Blob, pc: u64 },
}

/// The unwinder hook for one sample of one JVM: steps over code-cache frames and records the
/// Java frames it met, by their index in the walked stack.
pub struct JitWalk<'a> {
    jvm: &'a Jvm,
    blobs: &'a mut HashMap<(u32, u64), Option<Blob>>,
    pub frames: Vec<(usize, RawFrame)>,
}

impl JitWalk<'_> {
    fn blob(&mut self, pc: u64) -> Option<Blob> {
        let key = (self.jvm.pid, pc);
        if let Some(b) = self.blobs.get(&key) {
            return *b;
        }
        let b = self.jvm.blob(pc).ok().flatten();
        if self.blobs.len() >= MAX_CACHED_BLOBS {
            self.blobs.clear();
        }
        self.blobs.insert(key, b);
        b
    }
}

impl JitFrames for JitWalk<'_> {
    fn step(
        &mut self,
        index: usize,
        regs: UserRegs,
        read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> Option<Result<UserRegs, u64>> {
        // A return address may be the first byte after its call at the very end of a blob.
        let lookup = if index == 0 { regs.ip } else { regs.ip - 1 };
        let blob = self.blob(lookup)?;
        let mut word = |a: u64| read(a).map_err(|()| a);
        let at = |base: u64, words: i64| base.wrapping_add_signed(words * 8);
        let step = match blob.kind {
            BlobKind::Interpreter => (|| {
                let bp = regs.bp;
                let method = word(at(bp, INTERP_METHOD))?;
                let bcp = word(at(bp, INTERP_BCP))?;
                self.frames
                    .push((index, RawFrame::Interpreted { method, bcp }));
                Ok(UserRegs {
                    ip: word(at(bp, 1))?,
                    // The caller's sp before the interpreter extended it for locals: what a
                    // compiled caller's frame size counts from.
                    sp: word(at(bp, INTERP_SENDER_SP))?,
                    bp: word(bp)?,
                })
            })(),
            _ if blob.frame_words >= 2 => (|| {
                if let BlobKind::Nmethod { .. } = blob.kind {
                    self.frames
                        .push((index, RawFrame::Compiled { blob, pc: regs.ip }));
                }
                let caller_sp = regs.sp + u64::from(blob.frame_words) * 8;
                Ok(UserRegs {
                    ip: word(caller_sp - 8)?,
                    sp: caller_sp,
                    bp: word(caller_sp - 16)?,
                })
            })(),
            // Stubs without a frame size of their own (the call stub, adapters): rbp-linked.
            _ => (|| {
                let bp = regs.bp;
                Ok(UserRegs {
                    ip: word(at(bp, 1))?,
                    sp: at(bp, 2),
                    bp: word(bp)?,
                })
            })(),
        };
        Some(step)
    }
}

/// A named Java frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFrame {
    /// `Method*` (the location's address in the profile), 0 for an error frame.
    pub method: u64,
    /// `pkg.Class.method`, or `[java: …]`.
    pub name: Arc<str>,
    pub line: i64,
}

/// The Java frames of one sample: per index of the walked stack, the frames (innermost first)
/// that replace it.
#[derive(Clone, Debug, Default)]
pub struct JavaStack {
    pub frames: Vec<(usize, Vec<NamedFrame>)>,
    /// A JVM that cannot be read: this frame goes at the root end.
    pub unreadable: Option<Arc<str>>,
}

/// What a `Method*` says about itself.
#[derive(Debug)]
struct MethodInfo {
    name: Arc<str>,
    code_base: u64,
    /// (bci, line) pairs in bci order.
    lines: Box<[(u32, u32)]>,
    /// `_constMethod` when read: re-checked once per window.
    identity: u64,
    checked_window: u64,
}

struct ProcState {
    start_time: u64,
    mappings: usize,
    detection: Detection,
}

/// (`Method*`, bytecode index) at a compiled pc, innermost first.
type Scopes = Arc<[(u64, i32)]>;

/// Per-agent Java state: which processes are JVMs, and the method and code blob caches.
pub struct Java {
    procs: HashMap<u32, ProcState>,
    methods: foldhash::HashMap<(u32, u64, u64), MethodInfo>,
    blobs: HashMap<(u32, u64), Option<Blob>>,
    /// The (method, bci) scopes of compiled pcs, for one window, keyed by (process, blob start,
    /// compile id, pc): a blob freed and reused by another compilation has another compile id.
    scopes: foldhash::HashMap<(u32, u64, u32, u64), Scopes>,
    window: u64,
    detector: Option<Detector<Detection>>,
}

impl Default for Java {
    fn default() -> Self {
        Self::new()
    }
}

impl Java {
    pub fn new() -> Java {
        Java {
            procs: HashMap::new(),
            methods: Default::default(),
            blobs: HashMap::new(),
            scopes: Default::default(),
            window: 0,
            detector: None,
        }
    }

    /// Reads JVMs' vmStructs on a worker thread (`kiln-java`): a process is unwound and named as
    /// Java once the worker has read it (its first samples carry native frames only).
    pub fn with_detector(mut self) -> Java {
        self.detector = Detector::spawn("kiln-java", detect);
        self
    }

    /// Whether `p` is a JVM (asked once per process, again when its mappings change while it is
    /// not recognised: `libjvm.so` is mapped after exec).
    pub fn observe(&mut self, p: &Arc<Process>) -> Detection {
        if let Some(d) = &mut self.detector {
            for Answer {
                pid,
                start_time,
                mappings,
                detection,
            } in d.answers()
            {
                match &detection {
                    Detection::Readable(_) => {
                        tracing::info!(pid, "HotSpot JVM recognised: Java frames on")
                    }
                    Detection::Unreadable(why) => {
                        tracing::info!(pid, reason = %why, "JVM that cannot be read")
                    }
                    Detection::NotJava => {}
                }
                self.procs.insert(
                    pid,
                    ProcState {
                        start_time,
                        mappings,
                        detection,
                    },
                );
            }
        }
        let fresh = match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => {
                !matches!(s.detection, Detection::NotJava) || s.mappings == p.mappings.len()
            }
            _ => false,
        };
        if !fresh {
            match &mut self.detector {
                None => {
                    let detection = detect(p);
                    self.procs.insert(
                        p.pid,
                        ProcState {
                            start_time: p.start_time,
                            mappings: p.mappings.len(),
                            detection,
                        },
                    );
                }
                Some(d) => d.ask(p),
            }
        }
        match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => s.detection.clone(),
            _ => Detection::NotJava,
        }
    }

    /// The unwinder hook for a sample of `jvm`.
    pub fn walk<'a>(&'a mut self, jvm: &'a Jvm) -> JitWalk<'a> {
        JitWalk {
            jvm,
            blobs: &mut self.blobs,
            frames: Vec::new(),
        }
    }

    /// Names the Java frames a walk found.
    pub fn resolve(&mut self, p: &Process, jvm: &Jvm, raw: &[(usize, RawFrame)]) -> JavaStack {
        let mut out = JavaStack::default();
        for &(index, f) in raw {
            let named = match f {
                RawFrame::Interpreted { method, bcp } => {
                    vec![self.frame(p, jvm, method, Bci::Pointer(bcp))]
                }
                RawFrame::Compiled { blob, pc } => {
                    let BlobKind::Nmethod { method, compile_id } = blob.kind else {
                        continue;
                    };
                    let key = (p.pid, blob.start, compile_id, pc);
                    let scopes = match self.scopes.get(&key) {
                        Some(s) => s.clone(),
                        None => {
                            let s: Scopes = codecache::scopes_at(&jvm.mem, &jvm.offsets, &blob, pc)
                                .unwrap_or_default()
                                .into();
                            if self.scopes.len() >= MAX_CACHED_BLOBS {
                                self.scopes.clear();
                            }
                            self.scopes.insert(key, s.clone());
                            s
                        }
                    };
                    if scopes.is_empty() {
                        vec![self.frame(p, jvm, method, Bci::Index(-1))]
                    } else {
                        scopes
                            .iter()
                            .map(|&(m, bci)| self.frame(p, jvm, m, Bci::Index(bci)))
                            .collect()
                    }
                }
            };
            out.frames.push((index, named));
        }
        out
    }

    fn frame(&mut self, p: &Process, jvm: &Jvm, method: u64, bci: Bci) -> NamedFrame {
        match self.method(p, jvm, method) {
            Ok(info) => {
                let bci = match bci {
                    Bci::Index(i) => i64::from(i),
                    Bci::Pointer(bcp) => bcp.wrapping_sub(info.code_base) as i64,
                };
                NamedFrame {
                    method,
                    name: info.name.clone(),
                    line: line_of(&info.lines, bci),
                }
            }
            Err(why) => NamedFrame {
                method: 0,
                name: why.into(),
                line: 0,
            },
        }
    }

    fn method(&mut self, p: &Process, jvm: &Jvm, method: u64) -> Result<&MethodInfo, &'static str> {
        let key = (p.pid, p.start_time, method);
        let o = &jvm.offsets;
        let valid = match self.methods.get(&key) {
            Some(info) if info.checked_window == self.window => true,
            Some(info) => jvm.mem.u64(method + o.method_const_method) == Ok(info.identity),
            None => false,
        };
        if !valid {
            let info = read_method(jvm, method).map_err(|_| "[java: method unreadable]")?;
            if self.methods.len() >= MAX_CACHED_METHODS {
                self.methods.clear();
            }
            self.methods.insert(key, info);
        }
        let window = self.window;
        let info = self
            .methods
            .get_mut(&key)
            .ok_or("[java: method unreadable]")?;
        info.checked_window = window;
        Ok(info)
    }

    /// Ends a window: code blobs are looked up afresh, methods re-checked when next used, and
    /// processes that are gone forgotten.
    pub fn end_window(&mut self, mut alive: impl FnMut(u32, u64) -> bool) {
        self.window += 1;
        self.blobs.clear();
        self.scopes.clear();
        self.procs.retain(|pid, s| alive(*pid, s.start_time));
        let procs = &self.procs;
        self.methods.retain(|k, _| procs.contains_key(&k.0));
    }
}

#[derive(Clone, Copy)]
enum Bci {
    Index(i32),
    Pointer(u64),
}

/// The line of bytecode index `bci` (0: unknown).
fn line_of(lines: &[(u32, u32)], bci: i64) -> i64 {
    if bci < 0 {
        return 0;
    }
    lines
        .iter()
        .take_while(|(b, _)| i64::from(*b) <= bci)
        .last()
        .map_or(0, |&(_, l)| i64::from(l))
}

fn read_method(jvm: &Jvm, method: u64) -> Result<MethodInfo, Unreadable> {
    let (mem, o) = (&jvm.mem, &jvm.offsets);
    let cm = mem.u64(method + o.method_const_method)?;
    let cp = mem.u64(cm + o.const_method_constants)?;
    let name_index = u64::from(mem.u16(cm + o.const_method_name_index)?);
    let holder = mem.u64(cp + o.constant_pool_holder)?;
    let method_name = symbol(mem, o, mem.u64(cp + o.constant_pool_size + name_index * 8)?)?;
    let class_name = symbol(mem, o, mem.u64(holder + o.klass_name)?)?;
    let code_base = cm + o.const_method_size;
    let code_size = u64::from(mem.u16(cm + o.const_method_code_size)?);
    let flags = mem.u16(cm + o.const_method_flags)?;
    let lines = if flags & o.has_line_table != 0 {
        // The table follows the bytecodes; metadata after it may end at a page: try less.
        let at = code_base + code_size;
        let bytes = mem
            .bytes(at, MAX_LINE_TABLE)
            .or_else(|_| mem.bytes(at, (4096 - (at % 4096)) as usize))?;
        decode_lines(&bytes)
    } else {
        Vec::new()
    };
    Ok(MethodInfo {
        name: format!("{}.{method_name}", class_name.replace('/', ".")).into(),
        code_base,
        lines: lines.into_boxed_slice(),
        identity: cm,
        checked_window: 0,
    })
}

/// A `Symbol`'s text (modified UTF-8; read lossily).
fn symbol(mem: &Mem, o: &Offsets, sym: u64) -> Result<String, Unreadable> {
    let len = u64::from(mem.u16(sym + o.symbol_length)?).min(MAX_SYMBOL);
    let bytes = mem.bytes(sym + o.symbol_body, len as usize)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// HotSpot's compressed line number table: pairs of (bci delta, line delta), one byte
/// (`bci_delta << 3 | line_delta`) when they fit 5 and 3 bits, else 0xFF and two signed UNSIGNED5
/// numbers; a 0 byte ends it.
fn decode_lines(data: &[u8]) -> Vec<(u32, u32)> {
    let (mut bci, mut line) = (0i64, 0i64);
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(&b) = data.get(pos) {
        pos += 1;
        match b {
            0 => break,
            0xFF => {
                let (Some(db), Some(dl)) = (
                    codecache::read_signed5(data, &mut pos),
                    codecache::read_signed5(data, &mut pos),
                ) else {
                    break;
                };
                bci += i64::from(db);
                line += i64::from(dl);
            }
            _ => {
                bci += i64::from(b >> 3);
                line += i64::from(b & 7);
            }
        }
        if let (Ok(b), Ok(l)) = (u32::try_from(bci), u32::try_from(line)) {
            out.push((b, l));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A JVM running `Spin` (main → alpha → beta → hot, hot a hot loop), killed on drop.
    struct Spin(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

    impl Drop for Spin {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    const SPIN: &str = r#"public class Spin {
    static long sink;
    static long hot(long n) {
        long s = 0;
        for (long i = 0; i < n; i++) {
            s += i * i ^ (s >>> 3);
        }
        return s;
    }
    static long beta(long n) { return hot(n) + 1; }
    static long alpha(long n) { return beta(n) + 1; }
    public static void main(String[] a) {
        while (true) {
            sink += alpha(1000000);
        }
    }
}
"#;

    fn spin() -> Spin {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Spin.java"), SPIN).unwrap();
        let ok = std::process::Command::new("javac")
            .arg("Spin.java")
            .current_dir(dir.path())
            .status()
            .expect("javac (openjdk-17-jdk-headless) is installed");
        assert!(ok.success());
        let child = std::process::Command::new("java")
            .args(["-cp", &dir.path().to_string_lossy(), "Spin"])
            .spawn()
            .unwrap();
        Spin(child, dir)
    }

    fn readable(pid: u32, deadline: Instant) -> (Arc<Process>, Arc<Jvm>) {
        loop {
            let p = Arc::new(
                Process::load(pid, &mut crate::buildid::BuildIdCache::new(64), 4096).unwrap(),
            );
            if let Detection::Readable(jvm) = detect(&p) {
                return (p, jvm);
            }
            assert!(Instant::now() < deadline, "the JVM never became readable");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every nmethod in the code cache, by walking the heaps' blocks (test only: the agent looks
    /// blobs up by pc).
    fn nmethods(jvm: &Jvm, tables: &Tables) -> Vec<Blob> {
        let used = tables.fields[&("HeapBlock::Header".into(), "_used".into())];
        let mut out = Vec::new();
        for h in jvm.heaps().unwrap_or(&[]) {
            let mut at = h.low;
            while at < h.high {
                let Ok(len) = jvm.mem.u64(at) else { break };
                if len == 0 {
                    break;
                }
                if jvm.mem.u8(at + used) == Ok(1) {
                    let start = at + jvm.offsets.heap_block_size;
                    if let Ok(code) = jvm.mem.u64(start + jvm.offsets.blob_code_begin)
                        && let Ok(Some(b)) = jvm.blob(code)
                        && matches!(b.kind, BlobKind::Nmethod { .. })
                    {
                        out.push(b);
                    }
                }
                at += len << h.log2_segment;
            }
        }
        out
    }

    /// vmStructs of the installed JDK 17: every offset the agent needs is there, the code cache is
    /// found, its blobs found from a pc inside them, and a compiled method named with its class,
    /// its inlined callees and their lines from the JVM's own tables.
    #[test]
    fn a_running_jvm_is_read_through_its_vmstructs() {
        let jvm_proc = spin();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (p, jvm) = readable(jvm_proc.0.id(), deadline);
        let o = &jvm.offsets;
        assert!(o.pc_desc_size >= 16 && o.heap_block_size >= 16, "{o:?}");
        // The tables again, for the test's own block walk.
        let mut syms = Symbols::default();
        let lib = p
            .mappings
            .iter()
            .find(|m| matches!(&m.kind, MappingKind::File { path, .. } if path.ends_with("libjvm.so")))
            .unwrap();
        // (detect() already proved the symbols; read them the same way.)
        if let MappingKind::File { path, .. } = &lib.kind {
            let data = std::fs::read(format!("/proc/{}/root{}", p.pid, path.display())).unwrap();
            let obj = object::File::parse(&*data).unwrap();
            let bias = obj
                .segments()
                .find_map(|seg| {
                    let (off, size) = seg.file_range();
                    (off..off + size).contains(&lib.offset).then(|| {
                        lib.start
                            .wrapping_sub(lib.offset)
                            .wrapping_add(off)
                            .wrapping_sub(seg.address())
                    })
                })
                .unwrap();
            for s in obj.dynamic_symbols() {
                if let Some(&n) = vmstructs::SYMBOL_NAMES.iter().find(|&&n| Ok(n) == s.name()) {
                    syms.addrs.insert(n, s.address().wrapping_add(bias));
                }
            }
        }
        let tables = Tables::read(&jvm.mem, &syms).unwrap();
        assert!(tables.fields.len() > 500, "{} fields", tables.fields.len());

        let mut java = Java::new();
        let hot = loop {
            let found = nmethods(&jvm, &tables).into_iter().find(|b| {
                let BlobKind::Nmethod { method, .. } = b.kind else {
                    return false;
                };
                read_method(&jvm, method).is_ok_and(|m| &*m.name == "Spin.hot")
            });
            if let Some(b) = found {
                break b;
            }
            assert!(Instant::now() < deadline, "Spin.hot was never compiled");
            std::thread::sleep(Duration::from_millis(50));
        };
        // A pc in the middle of the code finds the same blob.
        let mid = hot.code_begin + (hot.code_end - hot.code_begin) / 2;
        assert_eq!(jvm.blob(mid).unwrap(), Some(hot));
        assert!(hot.frame_words >= 2, "{hot:?}");
        // Named from a pc in it: the innermost scope is Spin.hot, its line within the loop.
        let stack = java.resolve(&p, &jvm, &[(0, RawFrame::Compiled { blob: hot, pc: mid })]);
        let names: Vec<_> = stack.frames[0]
            .1
            .iter()
            .map(|f| (&*f.name, f.line))
            .collect();
        assert_eq!(names.last().unwrap().0, "Spin.hot", "{names:?}");
        assert!(
            names
                .iter()
                .all(|(n, l)| *n == "Spin.hot" && (4..=8).contains(l)),
            "{names:?}"
        );
        // Not JIT code: a pc of libc.
        assert_eq!(jvm.blob(libc::getpid as *const () as u64).unwrap(), None);
    }

    /// A process with a `libjvm.so` that has no vmStructs (here: a copy of libdl preloaded into
    /// `sleep`) is a JVM the agent cannot read, and says why.
    #[test]
    fn a_jvm_without_vmstructs_is_named_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libjvm.so");
        std::fs::copy("/lib/x86_64-linux-gnu/libdl.so.2", &fake).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .env("LD_PRELOAD", &fake)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let detection = loop {
            let p = Process::load(child.id(), &mut crate::buildid::BuildIdCache::new(64), 4096)
                .unwrap();
            match detect(&p) {
                Detection::NotJava if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                d => break d,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        match detection {
            Detection::Unreadable(why) => assert_eq!(&*why, "[java: vmStructs not found]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn line_tables_decode_short_and_long_pairs() {
        // (0,3) short; (+40 bci, +1000 lines) long; end.
        let mut data = vec![3u8, 0xFF];
        // signed 40 → 80; signed 1000 → 2000 = 192 + (1808 % 64 = 16) → 208, 1808 >> 6 = 28.
        data.extend([80, 208, 28, 0, 9]);
        assert_eq!(decode_lines(&data), [(0, 3), (40, 1003)]);
        assert_eq!(line_of(&[(0, 3), (40, 1003)], 39), 3);
        assert_eq!(line_of(&[(0, 3), (40, 1003)], 40), 1003);
        assert_eq!(line_of(&[(0, 3)], -1), 0);
    }
}
