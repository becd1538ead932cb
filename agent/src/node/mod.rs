//! Node.js (V8): JavaScript functions by name and script in every sample of an unmodified `node`
//! process, in place of the JIT and interpreter frames that ran them. No flag in the profiled
//! process (`--perf-basic-prof` is not needed; where it is used, perfmap.rs still names the JIT
//! code V8 frames do not cover).
//!
//! V8 keeps a frame pointer in every JavaScript frame, and each such frame holds its `JSFunction`
//! at a fixed offset below the frame pointer (`v8dbg_off_fp_function`). Those slots are in the
//! copy of the user stack the sampler takes, so nothing new happens in the kernel:
//!
//! 1. **Recognise** ([`detect`], on the `kiln-node` thread): a process that maps an executable
//!    named `node*` (or `libnode.so*`) whose symbol table has V8's postmortem constants
//!    (`v8dbg_*`) is Node. The layout comes from those constants ([`layout`]), i.e. from the
//!    running binary itself, whatever its version; the range of V8's embedded builtins (the
//!    `Builtins_*` symbols, where interpreted frames run) from the same table.
//! 2. **Find the frames** ([`Node::resolve`]): the unwinder gives each user frame its rbp
//!    ([`crate::unwind::Walker::walk_jit`], stepping V8's own frames by frame pointer: [`V8Code`]).
//!    A frame whose code is V8's (JIT code
//!    in anonymous memory, or a builtin) and whose frame holds a heap object (not a Smi frame-type
//!    marker) in the context slot is a JavaScript frame; its function is the word at
//!    `fp + off_fp_function` in the stack copy. Several native frames with the same frame pointer
//!    (a bytecode handler running in its function's interpreter frame) are one JavaScript frame.
//! 3. **Name** ([`name_function`]): `JSFunction → SharedFunctionInfo → name` (a String, or the
//!    function-name slot of its ScopeInfo) and `→ Script → name`, read from `/proc/PID/mem`, each
//!    object's type checked through its map: a word that is not what it should be never yields a
//!    name. Names are cached by (process, function address, code address: the return address,
//!    which belongs to one code object) and re-checked against memory once per window, so an
//!    address reused by another function is noticed within a window.
//! 4. **Place** ([`lines`]): the frame's line and, in optimized code, the functions inlined at
//!    that point (innermost first), from V8's source position tables; cached per (process,
//!    function, pc, bytecode slots) and recomputed once per window. A frame whose position cannot
//!    be read keeps line 0 and the reason is counted ([`Node::unmapped_positions`]).
//!
//! A `node` the agent cannot read (no `v8dbg_*` constants, pointer compression) keeps its native
//! frames and gets one frame saying why, e.g. `[node: no v8dbg_off_fp_function symbol]`.

mod elf;
pub mod layout;
pub mod lines;
pub mod position;

use std::collections::HashMap;
use std::sync::Arc;

use crate::buildid::{FileId, MappedFile};
use crate::detector::Detector;
use crate::procmaps::{MappingKind, Process};
use layout::Layout;

/// Most functions whose names are cached (all processes); beyond it the cache is emptied. An
/// entry is ~100 bytes plus its names.
pub const MAX_CACHED_FUNCTIONS: usize = 32_768;
/// Longest name read, in characters; longer ones are cut.
const MAX_NAME_CHARS: u64 = 512;
/// Deepest chain of cons strings followed for one name.
const MAX_CONS_DEPTH: u32 = 4;
/// Slots of a ScopeInfo searched for the function name after its context locals.
const SCOPE_INFO_SEARCH_SLOTS: u64 = 4;
/// Most context locals a ScopeInfo is believed to have (V8 limits them far lower).
const MAX_CONTEXT_LOCALS: i64 = 1 << 16;
/// Largest `node` object file parsed for its symbols.
const MAX_NODE_BYTES: u64 = 1 << 30;
/// Most node binaries whose constants the detection thread keeps.
const MAX_BINARIES: usize = 16;

/// A `node` the agent can read.
#[derive(Debug)]
pub struct Target {
    pub layout: Layout,
    /// Address range of V8's embedded builtins in the process (interpreter, stubs).
    pub builtins: (u64, u64),
}

/// What a process is, as far as Node goes.
#[derive(Clone, Debug)]
pub enum Detection {
    NotNode,
    Readable(Arc<Target>),
    /// Node that cannot be read; the reason becomes a frame `[node: <reason>]`.
    Unreadable(String),
}

impl Detection {
    pub fn is_readable(&self) -> bool {
        matches!(self, Detection::Readable(_))
    }
}

/// What a node binary says about itself: its layout (or why not) and its builtins' range, as
/// addresses in the file.
#[derive(Clone, Debug)]
struct Binary {
    layout: Result<Layout, String>,
    builtins: Option<(u64, u64)>,
}

/// `node`, `nodejs`, `node20`, `libnode.so.115`: files that may be Node (the `v8dbg_*` constants
/// decide).
fn is_node_file(name: &str) -> bool {
    let versioned = name
        .strip_prefix("node")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    name == "node" || name == "nodejs" || versioned || name.starts_with("libnode.so")
}

/// Recognises Node in a process (see the module docs); `binaries` keeps parsed binaries by file.
fn detect_with(p: &Process, binaries: &mut HashMap<FileId, Binary>) -> Detection {
    for m in &p.mappings {
        let MappingKind::File { path, .. } = &m.kind else {
            continue;
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !is_node_file(name) {
            continue;
        }
        let mapped = MappedFile {
            pid: p.pid,
            start: m.start,
            end: m.end,
            path,
            inode: m.file.inode,
        };
        let file = match crate::buildid::open_mapped_file(&mapped) {
            Ok(f) if f.len() <= MAX_NODE_BYTES => f,
            Ok(_) => return Detection::Unreadable("node binary too large".into()),
            Err(e) => {
                tracing::debug!(pid = p.pid, error = %e, "cannot open the node binary");
                continue;
            }
        };
        let elf = match elf::Elf::parse(file.file()) {
            Ok(elf) => elf,
            Err(why) => {
                tracing::debug!(pid = p.pid, reason = %why, "node binary not read");
                continue;
            }
        };
        if binaries.len() >= MAX_BINARIES && !binaries.contains_key(&m.file) {
            binaries.clear();
        }
        let binary = binaries
            .entry(m.file)
            .or_insert_with(|| read_binary(&elf))
            .clone();
        let layout = match binary.layout {
            Ok(l) => l,
            Err(why) => return Detection::Unreadable(why),
        };
        let Some((start, end)) = binary.builtins else {
            return Detection::Unreadable("no Builtins_* symbols".into());
        };
        // Where the file's addresses are in the process.
        let Some(bias) = elf.bias(m.start, m.offset) else {
            return Detection::Unreadable("no segment maps the node binary's code".into());
        };
        return Detection::Readable(Arc::new(Target {
            layout,
            builtins: (start.wrapping_add(bias), end.wrapping_add(bias)),
        }));
    }
    Detection::NotNode
}

/// Recognises Node in a process (see the module docs).
pub fn detect(p: &Process) -> Detection {
    detect_with(p, &mut HashMap::new())
}

/// Reads a node binary's `v8dbg_*` constants and its builtins' range.
fn read_binary(elf: &elf::Elf<'_>) -> Binary {
    let mut constants: HashMap<String, i64> = HashMap::new();
    let mut builtins: Option<(u64, u64)> = None;
    // An `int` constant at the symbol's address (in `.bss` when it is zero).
    let value = |s: &elf::Symbol<'_>| Some(i64::from(elf.int_at(s.section?, s.address)?));
    let scanned = elf.for_each_symbol(|sym| {
        let Ok(name) = std::str::from_utf8(sym.name) else {
            return;
        };
        if let Some(c) = name.strip_prefix("v8dbg_") {
            if constants.contains_key(c) {
                return;
            }
            if let Some(v) = value(&sym) {
                constants.insert(c.to_owned(), v);
            }
        } else if let Some(key) = match name {
            // v8::internal::Version::{major_,minor_,build_}: ints in .data.
            "_ZN2v88internal7Version6major_E" => Some(layout::VERSION_MAJOR),
            "_ZN2v88internal7Version6minor_E" => Some(layout::VERSION_MINOR),
            "_ZN2v88internal7Version6build_E" => Some(layout::VERSION_BUILD),
            _ => None,
        } {
            if let Some(v) = value(&sym) {
                constants.insert(key.to_owned(), v);
            }
        } else if name.starts_with("Builtins_") && sym.address != 0 {
            let (s, e) = (sym.address, sym.address + sym.size.max(1));
            builtins = Some(builtins.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
        }
    });
    if let Err(why) = scanned {
        return Binary {
            layout: Err(why),
            builtins,
        };
    }
    Binary {
        layout: Layout::from_constants(|n| constants.get(n).copied()).map_err(|e| e.to_string()),
        builtins,
    }
}

/// Reads a profiled process's memory.
pub trait Memory {
    /// Fills `buf` from `addr`; false when it cannot.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    fn word(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// `/proc/PID/mem`, through the agent's one door to process memory (no reads of FUSE- or
/// network-backed mappings: see process_memory.rs).
impl Memory for crate::process_memory::ProcessMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        crate::process_memory::ProcessMemory::read(self, addr, buf).is_ok()
    }
}

/// A JavaScript frame's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFrame {
    /// The function's name, `(anonymous)` when it has none.
    pub name: Arc<str>,
    /// The script's name (a path, `node:internal/…`), empty when unknown.
    pub script: Arc<str>,
    /// The `SharedFunctionInfo`'s address: the frame's location key.
    pub id: u64,
}

/// One function of a JavaScript frame, with its line (0 when V8 gives none: see [`lines`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsLine {
    pub frame: Arc<JsFrame>,
    pub line: u32,
}

/// Why a word is not a function the agent can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Memory could not be read.
    Unreadable,
    /// The word is not a JSFunction (its `shared` field is not a SharedFunctionInfo).
    NotAFunction,
}

/// The words a function's name depends on: re-checked once per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    shared: u64,
    name_or_scope_info: u64,
    script: u64,
}

fn instance_type(l: &Layout, mem: &mut impl Memory, obj: u64) -> Option<u16> {
    let map = l.heap_object(mem.word(obj + l.object_map)?)?;
    let mut b = [0u8; 2];
    mem.read(map + l.map_instance_type, &mut b)
        .then(|| u16::from_le_bytes(b))
}

/// A JavaScript string's text (sequential, thin and cons strings; `None` for others or a word
/// that is not a string).
fn read_string(l: &Layout, mem: &mut impl Memory, tagged: u64, depth: u32) -> Option<String> {
    let obj = l.heap_object(tagged)?;
    let ty = instance_type(l, mem, obj)?;
    if ty >= l.first_nonstring_type {
        return None;
    }
    let mut b = [0u8; 4];
    if !mem.read(obj + l.string_length, &mut b) {
        return None;
    }
    let len = u64::try_from(i32::from_le_bytes(b))
        .ok()?
        .min(MAX_NAME_CHARS);
    let rep = ty & l.string_representation_mask;
    let one_byte = ty & l.string_encoding_mask == l.one_byte_string_tag;
    if rep == l.seq_string_tag {
        if one_byte {
            let mut bytes = vec![0u8; len as usize];
            mem.read(obj + l.seq_one_byte_chars, &mut bytes)
                .then(|| bytes.iter().map(|&c| char::from(c)).collect())
        } else {
            let mut bytes = vec![0u8; 2 * len as usize];
            if !mem.read(obj + l.seq_two_byte_chars, &mut bytes) {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            Some(
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or('\u{fffd}'))
                    .collect(),
            )
        }
    } else if depth >= MAX_CONS_DEPTH {
        None
    } else if rep == l.thin_string_tag {
        let actual = mem.word(obj + l.thin_actual)?;
        read_string(l, mem, actual, depth + 1)
    } else if rep == l.cons_string_tag {
        let (first, second) = (
            mem.word(obj + l.cons_first)?,
            mem.word(obj + l.cons_second)?,
        );
        let first = read_string(l, mem, first, depth + 1)?;
        let second = read_string(l, mem, second, depth + 1)?;
        Some(
            (first + &second)
                .chars()
                .take(MAX_NAME_CHARS as usize)
                .collect(),
        )
    } else {
        None
    }
}

/// The function name held by a ScopeInfo (V8 keeps a compiled function's name there): the first
/// string in the few slots after its context locals' names and infos (the slots before the name
/// are Smis; a function without a name of its own has its inferred name there instead). The
/// slots' exact order depends on flags whose bits move between V8 versions, so the search
/// accepts only a string and stops at any other heap object — llnode reads it the same way.
fn scope_info_name(l: &Layout, mem: &mut impl Memory, info: u64) -> Option<String> {
    let slot = |i: u64| info + l.scope_info_slots + 8 * i;
    let locals = l.smi(mem.word(slot(l.scope_info_context_locals))?)?;
    if !(0..=MAX_CONTEXT_LOCALS).contains(&locals) {
        return None;
    }
    // Names then infos, or (many locals) one hash table then infos: either way the infos end at
    // or after `first_vars + locals`, and everything from there to the name is a Smi.
    let start = l.scope_info_first_vars + locals as u64;
    for i in start..start + SCOPE_INFO_SEARCH_SLOTS + locals as u64 {
        let w = mem.word(slot(i))?;
        if l.smi(w).is_some() {
            continue;
        }
        return read_string(l, mem, w, 0);
    }
    None
}

/// Reads the words a function's name comes from, checking each object's type.
fn identity(l: &Layout, mem: &mut impl Memory, function: u64) -> Result<Identity, NameError> {
    let shared_word = mem
        .word(function + l.function_shared)
        .ok_or(NameError::Unreadable)?;
    let shared = l.heap_object(shared_word).ok_or(NameError::NotAFunction)?;
    identity_of_shared(l, mem, shared)
}

/// Reads the words a SharedFunctionInfo's (untagged) name comes from.
fn identity_of_shared(
    l: &Layout,
    mem: &mut impl Memory,
    shared: u64,
) -> Result<Identity, NameError> {
    if instance_type(l, mem, shared) != Some(l.type_shared) {
        return Err(NameError::NotAFunction);
    }
    let name_or_scope_info = mem
        .word(shared + l.shared_name_or_scope_info)
        .ok_or(NameError::Unreadable)?;
    let script = mem
        .word(shared + l.shared_script)
        .ok_or(NameError::Unreadable)?;
    Ok(Identity {
        shared,
        name_or_scope_info,
        script,
    })
}

/// Names the JSFunction at `function` (untagged address) from the process's memory.
pub fn name_function(
    l: &Layout,
    mem: &mut impl Memory,
    function: u64,
) -> Result<JsFrame, NameError> {
    let id = identity(l, &mut *mem, function)?;
    Ok(name_identity(l, mem, id))
}

fn name_identity(l: &Layout, mem: &mut impl Memory, id: Identity) -> JsFrame {
    let name = match l.heap_object(id.name_or_scope_info) {
        Some(obj) => match instance_type(l, mem, obj) {
            Some(t) if t < l.first_nonstring_type => read_string(l, mem, id.name_or_scope_info, 0),
            Some(t) if t == l.type_scope_info => scope_info_name(l, mem, obj),
            _ => None,
        },
        None => None,
    }
    .filter(|n| !n.is_empty())
    .unwrap_or_else(|| "(anonymous)".to_owned());
    let script = l
        .heap_object(id.script)
        .filter(|&s| instance_type(l, mem, s) == Some(l.type_script))
        .and_then(|s| mem.word(s + l.script_name))
        .and_then(|n| read_string(l, mem, n, 0))
        .unwrap_or_default();
    JsFrame {
        name: name.into(),
        script: script.into(),
        id: id.shared,
    }
}

/// What one user frame of a Node sample is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A native frame (or V8 code that is not a JavaScript frame: stubs, entry and exit frames).
    Native,
    /// A JavaScript frame: its function and, when optimized code inlined others into it at this
    /// point, those too, innermost first (the frame's own function last).
    Js(Arc<[JsLine]>),
    /// More code of the JavaScript frame just before (same frame pointer): left out.
    Same,
}

/// The Node part of one sample.
#[derive(Clone, Debug)]
pub enum NodeStack {
    /// One slot per user frame (fewer when the stack went on past what was unwound with frame
    /// pointers: the rest are native).
    Frames(Vec<Slot>),
    /// A Node process that cannot be read: its native frames, plus this frame at the root.
    Unreadable(Arc<str>),
}

impl NodeStack {
    /// The slot of user frame `i`.
    pub fn slot(&self, i: usize) -> &Slot {
        match self {
            NodeStack::Frames(s) => s.get(i).unwrap_or(&Slot::Native),
            NodeStack::Unreadable(_) => &Slot::Native,
        }
    }
}

/// The word at `addr` in the stack copy taken at `sp`.
fn copy_word(copy: &[u8], sp: u64, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(sp)?).ok()?;
    let b = copy.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Where each frame's function is: `Some(function)` for a JavaScript frame (see the module docs).
/// `frames` are the unwound addresses, `fps` each frame's rbp, `copy` the stack copy at `sp`;
/// `is_v8_code` says whether an address is V8's code.
pub fn js_functions(
    l: &Layout,
    frames: &[u64],
    fps: &[u64],
    sp: u64,
    copy: &[u8],
    is_v8_code: impl Fn(u64) -> bool,
) -> Vec<Option<u64>> {
    frames
        .iter()
        .zip(fps)
        .map(|(&pc, &fp)| {
            if !is_v8_code(pc) {
                return None;
            }
            let context = copy_word(copy, sp, fp.wrapping_add_signed(l.fp_context))?;
            // Typed frames (entry, exit, stubs) keep a Smi frame-type marker there.
            l.heap_object(context)?;
            l.heap_object(copy_word(copy, sp, fp.wrapping_add_signed(l.fp_function))?)
        })
        .collect()
}

/// The rbp of each of `n` frames of a pure frame-pointer walk (the kernel's) from `bp`: each
/// frame's saved rbp is the next one's, read from the stack copy (0 once outside it).
pub fn frame_pointer_chain(bp: u64, sp: u64, copy: &[u8], n: usize, out: &mut Vec<u64>) {
    out.clear();
    let mut fp = bp;
    for _ in 0..n {
        out.push(fp);
        fp = copy_word(copy, sp, fp).unwrap_or(0);
    }
}

/// V8's code, for the unwinder: every frame V8 builds, in JIT code and in its embedded builtins,
/// keeps the frame-pointer chain (V8 does not omit frame pointers), and neither is described by
/// DWARF CFI. framehop would come to the same frame-pointer step after looking each address up in
/// its rule cache and, for a builtin (inside the `node` binary), in `.eh_frame`, which has no entry
/// for it: at 30–40 frames a sample, those lookups were a third of the walk.
pub struct V8Code<'p> {
    builtins: (u64, u64),
    process: &'p Process,
}

impl<'p> V8Code<'p> {
    /// V8's code in `process`, whose embedded builtins are at `builtins` ([`Target::builtins`]).
    pub fn new(builtins: (u64, u64), process: &'p Process) -> V8Code<'p> {
        V8Code { builtins, process }
    }
}

impl crate::unwind::JitFrames for V8Code<'_> {
    fn step(
        &mut self,
        _index: usize,
        regs: kiln_sampler_bpf::UserRegs,
        read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> Option<Result<kiln_sampler_bpf::UserRegs, u64>> {
        let (b0, b1) = self.builtins;
        if !((b0..b1).contains(&regs.ip) || self.process.in_anonymous_exec(regs.ip)) {
            return None;
        }
        // framehop's frame-pointer rule, step for step; whatever it would end or report (a zero
        // rbp, a chain going backwards, a null return address) is left to it.
        let caller_sp = regs.bp.checked_add(16)?;
        if regs.bp == 0 || caller_sp <= regs.sp {
            return None;
        }
        let caller_bp = match read(regs.bp) {
            Ok(w) => w,
            Err(()) => return Some(Err(regs.bp)),
        };
        let ip = match read(regs.bp + 8) {
            Ok(w) => w,
            Err(()) => return Some(Err(regs.bp + 8)),
        };
        (ip != 0).then_some(Ok(kiln_sampler_bpf::UserRegs {
            ip,
            sp: caller_sp,
            bp: caller_bp,
        }))
    }
}

/// Cache key of a frame's functions and lines: the function, the pc and, for an interpreted
/// frame, its BytecodeArray and offset slots (the pc is the interpreter's then).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PosKey {
    pid: u32,
    start_time: u64,
    function: u64,
    at: lines::At,
}

/// Cache key of a script's line ends: (pid, start time, Script address).
type ScriptKey = (u32, u64, u64);
/// A script's line ends (`None`: it has none the agent can read) and the window they were read in.
type ScriptEntry = (Option<Arc<[u32]>>, u64);

/// Most scripts whose line ends are cached (all processes).
const MAX_CACHED_SCRIPTS: usize = 1024;
/// Most line ends cached, all scripts together (4 bytes each: 8 MiB). A bundled application's
/// script can have a million lines; the count limit alone would let the cache grow to gigabytes.
const MAX_CACHED_LINE_ENDS: usize = 2 << 20;

/// Cache key of a function's names (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FnKey {
    pid: u32,
    start_time: u64,
    function: u64,
    code: u64,
}

struct FnEntry {
    frame: Arc<JsFrame>,
    identity: Identity,
    checked_window: u64,
}

struct ProcState {
    start_time: u64,
    mappings: usize,
    detection: Detection,
}

/// Per-agent Node state: which processes are Node, and the function name cache.
pub struct Node {
    procs: HashMap<u32, ProcState>,
    functions: foldhash::HashMap<FnKey, FnEntry>,
    positions: foldhash::HashMap<PosKey, (Arc<[JsLine]>, u64)>,
    scripts: foldhash::HashMap<ScriptKey, ScriptEntry>,
    /// Line ends held by `scripts`, all entries together (bounded by [`MAX_CACHED_LINE_ENDS`]).
    script_line_ends: usize,
    unmapped: HashMap<lines::Unmapped, u64>,
    window: u64,
    mem: crate::process_memory::Readers,
    detector: Option<Detector<Detection>>,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    /// Detection inline (tests); the agent adds [`Node::with_detector`].
    pub fn new() -> Node {
        Node {
            procs: HashMap::new(),
            functions: Default::default(),
            positions: Default::default(),
            scripts: Default::default(),
            script_line_ends: 0,
            unmapped: HashMap::new(),
            window: 0,
            mem: Default::default(),
            detector: None,
        }
    }

    /// Reads node binaries on a worker thread (`kiln-node`): parsing a 100 MB binary's symbol
    /// table never happens on the sampling thread. A process is named once the worker has
    /// recognised it (its first samples carry native frames only).
    pub fn with_detector(mut self) -> Node {
        // The worker keeps what it learnt of each `node` binary: every Node process of a
        // container image maps the same one.
        let mut binaries = HashMap::new();
        self.detector = Detector::spawn("kiln-node", move |p| detect_with(p, &mut binaries));
        self
    }

    /// Learns whether `p` is Node (once per process, again when its mappings change while it is
    /// not recognised). With a detector the answer may come later.
    pub fn observe(&mut self, p: &Arc<Process>) -> &Detection {
        self.collect_detections();
        let fresh = match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => {
                !matches!(s.detection, Detection::NotNode) || s.mappings == p.mappings.len()
            }
            _ => false,
        };
        if !fresh {
            match &mut self.detector {
                None => {
                    let d = detect(p);
                    self.record(p.pid, p.start_time, p.mappings.len(), d);
                }
                Some(d) => d.ask(p),
            }
        }
        match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => &s.detection,
            _ => &Detection::NotNode,
        }
    }

    fn collect_detections(&mut self) {
        let Some(d) = &mut self.detector else {
            return;
        };
        for a in d.answers() {
            self.record(a.pid, a.start_time, a.mappings, a.detection);
        }
    }

    fn record(&mut self, pid: u32, start_time: u64, mappings: usize, detection: Detection) {
        match &detection {
            Detection::Readable(t) => match &t.layout.positions {
                Ok(_) => tracing::info!(pid, "Node.js recognised: JavaScript frames and lines on"),
                Err(why) => tracing::info!(
                    pid,
                    reason = %why,
                    "Node.js recognised: JavaScript frames on, lines and inlined functions off"
                ),
            },
            Detection::Unreadable(why) => {
                tracing::info!(pid, reason = %why, "Node.js that cannot be read")
            }
            Detection::NotNode => {}
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

    /// The Node part of a sample of `p`: `frames` (unwound, not adjusted) with their rbp values
    /// `fps`, the stack copy `copy` taken at `sp`. `None` when `p` is not Node.
    pub fn resolve(
        &mut self,
        p: &Process,
        frames: &[u64],
        fps: &[u64],
        sp: u64,
        copy: &[u8],
    ) -> Option<NodeStack> {
        let state = self.procs.get(&p.pid)?;
        if state.start_time != p.start_time {
            return None;
        }
        let target = match &state.detection {
            Detection::NotNode => return None,
            Detection::Unreadable(why) => {
                return Some(NodeStack::Unreadable(format!("[node: {why}]").into()));
            }
            Detection::Readable(t) => t.clone(),
        };
        let (b0, b1) = target.builtins;
        // Wider than `V8Code`'s test (anonymous executable memory as of the snapshot): JIT code
        // allocated since the process was last read is in no mapping yet, and the frame's
        // function slot is checked below anyway.
        let is_v8_code = |a: u64| (b0..b1).contains(&a) || p.find(a).is_none();
        let functions = js_functions(&target.layout, frames, fps, sp, copy, is_v8_code);
        let mut slots = Vec::with_capacity(frames.len());
        let mut last_fp = None;
        let mut budget = lines::MAX_READS_PER_SAMPLE;
        for (i, f) in functions.into_iter().enumerate() {
            let Some(function) = f else {
                slots.push(Slot::Native);
                last_fp = None;
                continue;
            };
            let fp = fps.get(i).copied();
            if last_fp.is_some() && last_fp == fp {
                slots.push(Slot::Same);
                continue;
            }
            let pc = frames[i];
            let at = match (&target.layout.positions, fp) {
                (Ok(pos), Some(fp)) if (b0..b1).contains(&pc) => lines::At::Bytecode {
                    array: copy_word(copy, sp, fp.wrapping_add_signed(pos.fp_bytecode_array))
                        .unwrap_or(0),
                    offset: copy_word(copy, sp, fp.wrapping_add_signed(pos.fp_bytecode_offset))
                        .unwrap_or(0),
                },
                _ => lines::At::Code {
                    pc,
                    return_address: i > 0,
                },
            };
            match self.frame(p, &target.layout, function, pc, at, &mut budget) {
                Ok(chain) => {
                    slots.push(Slot::Js(chain));
                    last_fp = fp;
                }
                Err(_) => {
                    slots.push(Slot::Native);
                    last_fp = None;
                }
            }
        }
        Some(NodeStack::Frames(slots))
    }

    /// The functions and lines of one JavaScript frame (cached per window, see [`PosKey`]);
    /// `budget` is what is left of the sample's reads.
    fn frame(
        &mut self,
        p: &Process,
        l: &Layout,
        function: u64,
        pc: u64,
        at: lines::At,
        budget: &mut u32,
    ) -> Result<Arc<[JsLine]>, NameError> {
        let key = PosKey {
            pid: p.pid,
            start_time: p.start_time,
            function,
            at,
        };
        let window = self.window;
        if let Some((chain, w)) = self.positions.get(&key)
            && *w == window
        {
            return Ok(chain.clone());
        }
        let outer = self.function(p, l, function, pc)?;
        let mem = self
            .mem
            .get(p.pid, p.start_time)
            .map_err(|_| NameError::Unreadable)?;
        let mut mem = lines::Budget::new(mem, *budget);
        let chain = match lines::chain(l, &mut mem, function, outer.id, at) {
            Ok(c) => c,
            Err(why) => {
                *self.unmapped.entry(why).or_default() += 1;
                vec![(outer.id, None)]
            }
        };
        let mut out = Vec::with_capacity(chain.len());
        for (shared, offset) in chain {
            let (frame, script) = if shared == outer.id {
                let script = identity(l, &mut mem, function).map(|id| id.script).ok();
                (outer.clone(), script)
            } else {
                match identity_of_shared(l, &mut mem, shared) {
                    Ok(id) => (Arc::new(name_identity(l, &mut mem, id)), Some(id.script)),
                    Err(_) => continue,
                }
            };
            let line = match (offset, script.and_then(|s| l.heap_object(s))) {
                (Some(offset), Some(script)) => {
                    let skey = (p.pid, p.start_time, script);
                    let ends = match self.scripts.get(&skey) {
                        Some((ends, w)) if *w == window => ends.clone(),
                        _ => {
                            let ends = lines::script_line_ends(l, &mut mem, script);
                            let held = ends.as_ref().map_or(0, |e| e.len());
                            if self.scripts.len() >= MAX_CACHED_SCRIPTS
                                || self.script_line_ends + held > MAX_CACHED_LINE_ENDS
                            {
                                self.scripts.clear();
                                self.script_line_ends = 0;
                            }
                            if held <= MAX_CACHED_LINE_ENDS {
                                self.script_line_ends += held;
                                if let Some((Some(old), _)) =
                                    self.scripts.insert(skey, (ends.clone(), window))
                                {
                                    self.script_line_ends -= old.len();
                                }
                            }
                            ends
                        }
                    };
                    ends.map_or(0, |e| position::line_of(&e, offset))
                }
                _ => 0,
            };
            out.push(JsLine { frame, line });
        }
        let exhausted = mem.exhausted();
        *budget = mem.left();
        let chain: Arc<[JsLine]> = out.into();
        if exhausted {
            // Not cached: the next sample, with reads to spare, gets the line.
            *self.unmapped.entry(lines::Unmapped::Budget).or_default() += 1;
            return Ok(chain);
        }
        if self.positions.len() >= MAX_CACHED_FUNCTIONS {
            self.positions.clear();
        }
        self.positions.insert(key, (chain.clone(), window));
        Ok(chain)
    }

    /// How many frames had no line since the agent started, per reason.
    pub fn unmapped_positions(&self) -> Vec<(&'static str, u64)> {
        self.unmapped
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }

    /// The cached names of the function at `function` (untagged) running `code`.
    fn function(
        &mut self,
        p: &Process,
        l: &Layout,
        function: u64,
        code: u64,
    ) -> Result<Arc<JsFrame>, NameError> {
        let key = FnKey {
            pid: p.pid,
            start_time: p.start_time,
            function,
            code,
        };
        let window = self.window;
        if let Some(e) = self.functions.get(&key)
            && e.checked_window == window
        {
            return Ok(e.frame.clone());
        }
        let mem = self
            .mem
            .get(p.pid, p.start_time)
            .map_err(|_| NameError::Unreadable)?;
        let id = identity(l, &mut *mem, function)?;
        if let Some(e) = self.functions.get_mut(&key)
            && e.identity == id
        {
            e.checked_window = window;
            return Ok(e.frame.clone());
        }
        let frame = Arc::new(name_identity(l, &mut *mem, id));
        if self.functions.len() >= MAX_CACHED_FUNCTIONS {
            tracing::debug!("JavaScript function cache full: emptied");
            self.functions.clear();
        }
        self.functions.insert(
            key,
            FnEntry {
                frame: frame.clone(),
                identity: id,
                checked_window: window,
            },
        );
        Ok(frame)
    }

    /// Ends a window: cached names are re-checked when next used, processes that are gone are
    /// forgotten.
    pub fn end_window(&mut self, mut alive: impl FnMut(u32, u64) -> bool) {
        self.window += 1;
        self.procs.retain(|pid, s| alive(*pid, s.start_time));
        let procs = &self.procs;
        let live = |pid: &u32, start: u64| procs.get(pid).is_some_and(|s| s.start_time == start);
        self.functions.retain(|k, _| live(&k.pid, k.start_time));
        self.positions.retain(|k, _| live(&k.pid, k.start_time));
        self.scripts.retain(|k, _| live(&k.0, k.1));
        self.script_line_ends = self
            .scripts
            .values()
            .map(|(ends, _)| ends.as_ref().map_or(0, |e| e.len()))
            .sum();
        if !self.unmapped.is_empty() {
            tracing::debug!(unmapped = ?self.unmapped, "JavaScript frames without a line, by reason");
        }
        self.mem.clear();
    }
}

#[cfg(test)]
mod tests;
