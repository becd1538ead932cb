//! CPython: Python functions by name, file and line in every sample of an unmodified CPython
//! 3.8–3.13 process, interleaved with its native frames.
//!
//! The work is split at the one point where it must be: CPython's frames change with every
//! bytecode, so they are read in the kernel when the sample is taken, and everything else is done
//! here, later.
//!
//! 1. **Recognise** ([`detect`]): a process that maps `python*` or `libpython*` with a
//!    `_PyRuntime` symbol is CPython. Its version comes from `Py_Version` (3.11+) or the file
//!    name; its layout from [`layouts`] (offsets from CPython's own headers). The agent writes the
//!    address of `_PyRuntime` and the layout into the sampler's `kiln_py_procs` map.
//! 2. **Sample** (sampler-bpf): for a registered process the eBPF program finds the thread's
//!    `PyThreadState` (the one whose `thread_id` is the thread's fs base, i.e. `pthread_self()`),
//!    walks its frame chain (at most `MAX_PY_FRAMES`, else marked truncated) and records, per
//!    frame, the code object's address, the instruction position, `co_firstlineno`, and whether
//!    the frame was the first one its native eval call ran.
//! 3. **Name** ([`Python::resolve`]): code objects are read from `/proc/PID/mem` (type checked
//!    against `PyCode_Type`: a layout that does not fit gives a named error frame, never a wrong
//!    name) and cached by (process, address, `co_firstlineno` seen at sample time); a cached entry
//!    is re-checked against the process's memory once per window, so an address reused by another
//!    code object is noticed within a window even with the same first line. Lines come from
//!    the code object's line table ([`lines`]).
//! 4. **Splice** ([`PyStack::splice`]): each native `_PyEval_EvalFrameDefault` frame is replaced by
//!    the Python frames that call ran (in 3.11+ one native call runs several Python frames). Native
//!    frames of the interpreter's own object between two eval frames (call machinery such as
//!    `_PyFunction_Vectorcall`) are left out; native frames of other objects (a C extension that
//!    calls back into Python) stay where they are, and everything the leaf Python frame called
//!    (a builtin, a C extension) stays under it.
//!
//! A process that is CPython but cannot be read (unsupported version, no symbols) keeps its native
//! frames and gets one frame saying why, e.g. `[python: unsupported version 3.14]`.

pub mod layouts;
pub mod lines;

use std::collections::HashMap;
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData};
use kiln_sampler_bpf::{PyFrame, PyProc, PyStatus};
use object::read::ReadCache;
use object::{Object, ObjectSegment, ObjectSymbol};

use crate::buildid::{FileId, MappedFile};
use crate::detector::Detector;
use crate::procmaps::{MappingKind, Process};
use layouts::Layout;

/// Most code objects whose names are cached (all processes); beyond it the cache is emptied.
/// A code object entry is ~200 bytes plus its line table (at most [`MAX_LINE_TABLE`]).
pub const MAX_CACHED_CODES: usize = 32_768;
/// Longest name or file name read, in characters; longer ones are cut.
const MAX_STRING_CHARS: u64 = 1024;
/// Largest line table read; a larger one gives frames without lines.
const MAX_LINE_TABLE: u64 = 64 << 10;
/// Largest interpreter object file parsed for its symbols.
const MAX_INTERPRETER_BYTES: u64 = 1 << 30;

/// An interpreter the agent can read.
#[derive(Debug)]
pub struct Target {
    pub layout: &'static Layout,
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Address of `PyCode_Type`: every code object's `ob_type`.
    pub code_type: u64,
    /// Address ranges of the eval loop (`_PyEval_EvalFrameDefault`, and its `.cold` part when the
    /// symbol table has it).
    pub eval: Vec<(u64, u64)>,
    /// The interpreter's object file (the executable, or libpython).
    pub object: FileId,
}

impl Target {
    fn is_eval(&self, addr: u64) -> bool {
        self.eval.iter().any(|&(s, e)| (s..e).contains(&addr))
    }
}

/// What a process is, as far as Python goes.
#[derive(Clone, Debug)]
pub enum Detection {
    NotPython,
    Readable(Arc<Target>),
    /// CPython that cannot be read; the reason becomes a frame `[python: <reason>]`.
    Unreadable(String),
}

impl Detection {
    /// A CPython whose frames the agent reads.
    pub fn is_readable(&self) -> bool {
        matches!(self, Detection::Readable(_))
    }
}

/// Recognises CPython in a process from its mappings (see the module docs).
pub fn detect(p: &Process) -> Detection {
    for m in &p.mappings {
        let MappingKind::File { path, .. } = &m.kind else {
            continue;
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_lib = name.starts_with("libpython");
        if !is_lib && !name.starts_with("python") {
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
            Ok(f) if f.len() <= MAX_INTERPRETER_BYTES => f,
            Ok(_) => return Detection::Unreadable("interpreter file too large".into()),
            Err(e) => {
                tracing::debug!(pid = p.pid, error = %e, "cannot open the interpreter");
                continue;
            }
        };
        let cache = ReadCache::new(file.file());
        let Ok(obj) = object::File::parse(&cache) else {
            continue;
        };
        let syms = Symbols::of(&obj);
        let Some(runtime) = syms.runtime else {
            if is_lib {
                return Detection::Unreadable("no _PyRuntime symbol (stripped?)".into());
            }
            // A `python` executable that links libpython: the library has the symbols.
            continue;
        };
        let Some((major, minor)) = syms.version.or_else(|| version_from_name(name)) else {
            return Detection::Unreadable("unknown version".into());
        };
        let Some(layout) = layouts::layout(major, minor) else {
            return Detection::Unreadable(format!("unsupported version {major}.{minor}"));
        };
        let (Some(code_type), Some(_)) = (syms.code_type, syms.eval.first()) else {
            return Detection::Unreadable(
                "no PyCode_Type or _PyEval_EvalFrameDefault symbol".into(),
            );
        };
        // Where the file's addresses are in the process: the segment that holds this mapping's
        // file offset (ELF: one bias for the whole file).
        let Some(bias) = obj.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            (off..off + size).contains(&m.offset).then(|| {
                m.start
                    .wrapping_sub(m.offset)
                    .wrapping_add(off)
                    .wrapping_sub(seg.address())
            })
        }) else {
            return Detection::Unreadable("no segment maps the interpreter's code".into());
        };
        let at = |a: u64| a.wrapping_add(bias);
        return Detection::Readable(Arc::new(Target {
            layout,
            runtime: at(runtime),
            code_type: at(code_type),
            eval: syms
                .eval
                .iter()
                .map(|&(s, len)| (at(s), at(s) + len.max(1)))
                .collect(),
            object: m.file,
        }));
    }
    Detection::NotPython
}

/// `python3.11`, `libpython3.11.so.1.0`, `python3.11d` → (3, 11).
fn version_from_name(name: &str) -> Option<(u8, u8)> {
    let rest = name
        .strip_prefix("lib")
        .unwrap_or(name)
        .strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The symbols detection needs, from `.dynsym` and (when present) `.symtab`.
#[derive(Default)]
struct Symbols {
    runtime: Option<u64>,
    code_type: Option<u64>,
    eval: Vec<(u64, u64)>,
    version: Option<(u8, u8)>,
}

impl Symbols {
    fn of<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Symbols {
        let mut s = Symbols::default();
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            let Ok(name) = sym.name() else { continue };
            match name {
                "_PyRuntime" => s.runtime = Some(sym.address()),
                "PyCode_Type" => s.code_type = Some(sym.address()),
                "_PyEval_EvalFrameDefault" | "_PyEval_EvalFrameDefault.cold" => {
                    let r = (sym.address(), sym.size());
                    if !s.eval.contains(&r) {
                        s.eval.push(r);
                    }
                }
                // PY_VERSION_HEX as data (3.11+): the version of the running interpreter,
                // whatever the file is called.
                "Py_Version" if s.version.is_none() => {
                    s.version = sym
                        .section_index()
                        .and_then(|i| obj.section_by_index(i).ok())
                        .and_then(|sec| {
                            use object::ObjectSection;
                            sec.data_range(sym.address(), 4).ok().flatten()
                        })
                        .map(|b| {
                            let hex = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                            ((hex >> 24) as u8, (hex >> 16) as u8)
                        });
                }
                _ => {}
            }
        }
        s
    }
}

/// A Python frame with its names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFrame {
    pub code: u64,
    /// Qualified name (3.11+) or name; or an error frame's `[python: …]`.
    pub name: Arc<str>,
    pub file: Arc<str>,
    pub line: i64,
    /// The first frame its native eval call ran (see the sampler's record).
    pub entry: bool,
}

/// The Python part of one sample, ready to splice into its native stack.
#[derive(Clone, Debug)]
pub enum PyStack {
    /// Frames read at sample time and named.
    Frames {
        target: Arc<Target>,
        frames: Vec<NamedFrame>,
        /// Why the chain stops early, if it does: a frame name for the root end of the frames.
        cut: Option<&'static str>,
    },
    /// A CPython process that cannot be read: its native frames, plus this frame at the root.
    Unreadable(Arc<str>),
    /// The sampler found no thread state for the sampled thread. A thread that does not run
    /// Python (a native helper thread) keeps its native stack as it is; one whose native stack
    /// runs the eval loop gets [`THREAD_STATE_NOT_FOUND`] at its root rather than a silent
    /// native-only stack.
    NoThreadState(Arc<Target>),
}

/// The frame of a sample of a thread running Python whose thread state the sampler did not find:
/// it searches the first interpreter's threads only, and at most `KILN_PY_MAX_THREADS` (64) of
/// them, newest first (sampler-bpf/src/sampler.bpf.c).
pub const THREAD_STATE_NOT_FOUND: &str =
    "[python: thread state not found: a subinterpreter, or beyond the first 64 threads]";

/// One element of a spliced user stack, leaf first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackItem<'a> {
    Native(u64),
    Python(&'a NamedFrame),
    /// A named pseudo-frame (`[python: …]`, `[truncated: …]`).
    Marker(&'a str),
}

impl PyStack {
    /// The user stack (native addresses, leaf first, already moved back into the call) with the
    /// Python frames spliced in (see the module docs). `mapping_file` says which object an
    /// address is in.
    pub fn splice<'a>(
        &'a self,
        user: &[u64],
        mapping_file: impl Fn(u64) -> Option<FileId>,
    ) -> Vec<StackItem<'a>> {
        let (target, frames, cut) = match self {
            PyStack::Unreadable(why) => {
                let mut out: Vec<StackItem<'a>> =
                    user.iter().map(|&a| StackItem::Native(a)).collect();
                out.push(StackItem::Marker(why));
                return out;
            }
            PyStack::NoThreadState(target) => {
                let mut out: Vec<StackItem<'a>> =
                    user.iter().map(|&a| StackItem::Native(a)).collect();
                if user.iter().any(|&a| target.is_eval(a)) {
                    out.push(StackItem::Marker(THREAD_STATE_NOT_FOUND));
                }
                return out;
            }
            PyStack::Frames {
                target,
                frames,
                cut,
            } => (target, frames, cut),
        };
        // Python frames grouped by the native eval call that ran them, leaf first.
        let mut groups: Vec<&[NamedFrame]> = Vec::new();
        let mut start = 0;
        for (i, f) in frames.iter().enumerate() {
            if f.entry {
                groups.push(&frames[start..=i]);
                start = i + 1;
            }
        }
        if start < frames.len() {
            groups.push(&frames[start..]);
        }
        let evals: Vec<usize> = (0..user.len())
            .filter(|&i| target.is_eval(user[i]))
            .collect();
        let (first, last) = (evals.first().copied(), evals.last().copied());
        let mut out = Vec::with_capacity(user.len() + frames.len() + 1);
        let mut next = groups.iter();
        // A cut chain is marked where its frames are missing: right after the outermost Python
        // frame read, under the native frames of the calls whose frames were not read.
        let mut cut = *cut;
        for (i, &addr) in user.iter().enumerate() {
            if target.is_eval(addr) {
                match next.next() {
                    Some(g) => out.extend(g.iter().map(StackItem::Python)),
                    // More native eval calls than Python frames read: the chain was cut (these
                    // calls ran the frames not read), or a call is just starting or ending; the
                    // native frame stays.
                    None => {
                        if let Some(cut) = cut.take() {
                            out.push(StackItem::Marker(cut));
                        }
                        out.push(StackItem::Native(addr));
                    }
                }
                continue;
            }
            let between = first.is_some_and(|f| i > f) && last.is_some_and(|l| i < l);
            if between && mapping_file(addr) == Some(target.object) {
                continue;
            }
            out.push(StackItem::Native(addr));
        }
        // Python frames left over: the native stack ended first (truncated); they are the
        // outermost callers, so they go at the root end.
        for g in next {
            out.extend(g.iter().map(StackItem::Python));
        }
        if let Some(cut) = cut {
            out.push(StackItem::Marker(cut));
        }
        out
    }
}

/// What a code object says about itself.
#[derive(Debug)]
struct CodeInfo {
    name: Arc<str>,
    file: Arc<str>,
    line_table: Box<[u8]>,
    /// The code object's name and file pointers when read: re-checked once per window.
    identity: [u64; 2],
    checked_window: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct CodeKey {
    pid: u32,
    start_time: u64,
    code: u64,
    firstlineno: i32,
}

/// Why a code object could not be named (each becomes a `[python: …]` frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CodeError {
    Unreadable,
    NotCode,
    Changed,
}

impl CodeError {
    fn frame_name(self) -> &'static str {
        match self {
            CodeError::Unreadable => "[python: code object unreadable]",
            CodeError::NotCode => "[python: layout check failed: not a code object]",
            CodeError::Changed => "[python: code object changed since the sample]",
        }
    }
}

struct ProcState {
    start_time: u64,
    mappings: usize,
    detection: Detection,
    /// Registered in the sampler's map.
    registered: bool,
}

/// Per-agent Python state: which processes are CPython, the sampler's map of them, and the code
/// object cache.
pub struct Python {
    procs: HashMap<u32, ProcState>,
    bpf: Option<BpfHashMap<MapData, u32, PyProc>>,
    codes: foldhash::HashMap<CodeKey, CodeInfo>,
    window: u64,
    /// Memory readers of the processes read in this window: each holds the process's mappings, so that reads stay off FUSE and network files.
    mem: crate::process_memory::Readers,
    /// The detection thread, when there is one (see [`Python::with_detector`]).
    detector: Option<Detector<Detection>>,
}

impl Python {
    /// `bpf` is the sampler's `kiln_py_procs` map (`None`: detection and naming only, e.g. tests).
    pub fn new(bpf: Option<BpfHashMap<MapData, u32, PyProc>>) -> Python {
        Python {
            procs: HashMap::new(),
            bpf,
            codes: Default::default(),
            window: 0,
            mem: Default::default(),
            detector: None,
        }
    }

    /// Reads interpreters on a worker thread (`kiln-python`) from now on, so that opening and
    /// parsing a container's `python`/`libpython` file never happens on the sampling thread: a
    /// process is named once the worker has recognised it (its first samples carry native frames
    /// only, as before registration). Without it, [`Python::observe`] detects inline (tests).
    pub fn with_detector(mut self) -> Python {
        self.detector = Detector::spawn("kiln-python", detect);
        self
    }

    /// Learns whether `p` is CPython (once per process, again when its mappings change while it
    /// is not recognised) and registers it with the sampler. With a detector the answer may come
    /// later: until then the process counts as not Python.
    pub fn observe(&mut self, p: &Arc<Process>) -> &Detection {
        self.collect_detections();
        let fresh = match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => {
                !matches!(s.detection, Detection::NotPython) || s.mappings == p.mappings.len()
            }
            _ => false,
        };
        if !fresh {
            match &mut self.detector {
                None => {
                    let detection = detect(p);
                    self.record(p.pid, p.start_time, p.mappings.len(), detection);
                }
                Some(d) => d.ask(p),
            }
        }
        match self.procs.get(&p.pid) {
            Some(s) if s.start_time == p.start_time => &s.detection,
            _ => &Detection::NotPython,
        }
    }

    /// Takes in what the detection thread has answered.
    fn collect_detections(&mut self) {
        let Some(d) = &mut self.detector else {
            return;
        };
        for a in d.answers() {
            self.record(a.pid, a.start_time, a.mappings, a.detection);
        }
    }

    /// Logs a detection and registers a readable interpreter with the sampler.
    fn record(&mut self, pid: u32, start_time: u64, mappings: usize, detection: Detection) {
        match &detection {
            Detection::Readable(t) => tracing::info!(
                pid,
                version = format!("{}.{}", t.layout.major, t.layout.minor),
                "CPython recognised: Python frames on"
            ),
            Detection::Unreadable(why) => {
                tracing::info!(pid, reason = %why, "CPython that cannot be read")
            }
            Detection::NotPython => {}
        }
        let registered = match (&detection, self.bpf.as_mut()) {
            (Detection::Readable(t), Some(map)) => {
                match map.insert(pid, t.layout.bpf_config(t.runtime), 0) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "cannot register a Python process with the sampler (map full?)");
                        false
                    }
                }
            }
            _ => false,
        };
        let detection = match (detection, registered || self.bpf.is_none()) {
            (Detection::Readable(_), false) => {
                Detection::Unreadable("too many Python processes".into())
            }
            (d, _) => d,
        };
        self.procs.insert(
            pid,
            ProcState {
                start_time,
                mappings,
                detection,
                registered,
            },
        );
    }

    /// The Python part of a sample of process `p` (observed before), or `None` when it has none.
    pub fn resolve(&mut self, p: &Process, status: PyStatus, raw: &[PyFrame]) -> Option<PyStack> {
        let target = match &self.procs.get(&p.pid)?.detection {
            Detection::NotPython => return None,
            Detection::Unreadable(why) => {
                return Some(PyStack::Unreadable(format!("[python: {why}]").into()));
            }
            Detection::Readable(t) => t.clone(),
        };
        let cut = match status {
            // A sample before registration: native only.
            PyStatus::None => return None,
            // A thread that does not run Python, or one the sampler's search missed (see
            // `PyStack::NoThreadState`: the native stack tells them apart).
            PyStatus::NoThread => return Some(PyStack::NoThreadState(target)),
            PyStatus::Complete => None,
            PyStatus::Truncated => Some("[truncated: too many Python frames]"),
            PyStatus::ReadFailed => Some("[truncated: Python frame unreadable]"),
        };
        let mut frames = Vec::with_capacity(raw.len());
        for f in raw {
            let named = match self.code(p, &target, f) {
                Ok(info) => {
                    let line = target
                        .layout
                        .instr_byte_offset(f.instr)
                        .and_then(|off| {
                            lines::line_for(
                                target.layout.line_table,
                                &info.line_table,
                                f.firstlineno,
                                off,
                            )
                        })
                        .unwrap_or(f.firstlineno);
                    NamedFrame {
                        code: f.code,
                        name: info.name.clone(),
                        file: info.file.clone(),
                        line: i64::from(line),
                        entry: f.entry,
                    }
                }
                Err(e) => NamedFrame {
                    code: f.code,
                    name: e.frame_name().into(),
                    file: "".into(),
                    line: 0,
                    entry: f.entry,
                },
            };
            frames.push(named);
        }
        Some(PyStack::Frames {
            target,
            frames,
            cut,
        })
    }

    /// The cached description of a frame's code object, read (or re-checked) when needed.
    fn code(&mut self, p: &Process, t: &Target, f: &PyFrame) -> Result<&CodeInfo, CodeError> {
        let key = CodeKey {
            pid: p.pid,
            start_time: p.start_time,
            code: f.code,
            firstlineno: f.firstlineno,
        };
        let window = self.window;
        let recheck = match self.codes.get(&key) {
            Some(c) if c.checked_window == window => false,
            Some(_) => true,
            None => {
                if self.codes.len() >= MAX_CACHED_CODES {
                    tracing::debug!("Python code object cache full: emptied");
                    self.codes.clear();
                }
                let info = self.read_code(p, t, f)?;
                self.codes.insert(key, info);
                false
            }
        };
        if recheck {
            let header = self.read_code_header(p, t, f);
            let same = match (&header, self.codes.get(&key)) {
                (Ok(h), Some(c)) => h.identity == c.identity,
                _ => false,
            };
            if same {
                if let Some(c) = self.codes.get_mut(&key) {
                    c.checked_window = window;
                }
            } else {
                self.codes.remove(&key);
                let info = self.read_code(p, t, f)?;
                self.codes.insert(key, info);
            }
        }
        self.codes.get(&key).ok_or(CodeError::Unreadable)
    }

    fn read_code_header(
        &mut self,
        p: &Process,
        t: &Target,
        f: &PyFrame,
    ) -> Result<CodeHeader, CodeError> {
        let l = t.layout;
        let end = [
            l.code_firstlineno + 4,
            l.code_filename + 8,
            l.code_name + 8,
            l.code_linetable + 8,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let mut buf = vec![0u8; end as usize];
        self.read(p, f.code, &mut buf)?;
        let u64_at = |o: u32| {
            let o = o as usize;
            buf.get(o..o + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
        };
        if u64_at(layouts::OBJECT_TYPE as u32) != t.code_type {
            return Err(CodeError::NotCode);
        }
        let o = l.code_firstlineno as usize;
        let first = buf
            .get(o..o + 4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            .unwrap_or(0);
        if first != f.firstlineno {
            return Err(CodeError::Changed);
        }
        Ok(CodeHeader {
            identity: [u64_at(l.code_name), u64_at(l.code_filename)],
            line_table: u64_at(l.code_linetable),
        })
    }

    fn read_code(&mut self, p: &Process, t: &Target, f: &PyFrame) -> Result<CodeInfo, CodeError> {
        let h = self.read_code_header(p, t, f)?;
        let [name, file] = h.identity;
        let name = self.read_str(p, t, name)?;
        let file = self.read_str(p, t, file)?;
        let line_table = self.read_bytes(p, h.line_table).unwrap_or_default();
        Ok(CodeInfo {
            name: name.into(),
            file: file.into(),
            line_table,
            identity: h.identity,
            checked_window: self.window,
        })
    }

    /// A `str` object's text (compact strings, which names and file names always are).
    fn read_str(&mut self, p: &Process, t: &Target, addr: u64) -> Result<String, CodeError> {
        let mut head = [0u8; 40];
        self.read(p, addr, &mut head)?;
        let len = u64::from_le_bytes(head[16..24].try_into().unwrap_or([0; 8]));
        let state = u32::from_le_bytes(head[32..36].try_into().unwrap_or([0; 4]));
        let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 == 1, state >> 6 & 1 == 1);
        if !compact || !matches!(kind, 1 | 2 | 4) {
            return Err(CodeError::Unreadable);
        }
        let chars = len.min(MAX_STRING_CHARS);
        let data = if ascii {
            t.layout.unicode_ascii_data
        } else {
            t.layout.unicode_compact_data
        };
        let mut bytes = vec![0u8; (chars * u64::from(kind)) as usize];
        self.read(p, addr + u64::from(data), &mut bytes)?;
        Ok(match kind {
            1 => bytes.iter().map(|&b| char::from(b)).collect(),
            2 => bytes
                .chunks_exact(2)
                .map(|c| {
                    char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]])))
                        .unwrap_or('\u{fffd}')
                })
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or('\u{fffd}')
                })
                .collect(),
        })
    }

    /// A `bytes` object's contents (at most [`MAX_LINE_TABLE`]).
    fn read_bytes(&mut self, p: &Process, addr: u64) -> Result<Box<[u8]>, CodeError> {
        let mut size = [0u8; 8];
        self.read(p, addr + layouts::BYTES_SIZE, &mut size)?;
        let len = u64::from_le_bytes(size);
        if len > MAX_LINE_TABLE {
            return Err(CodeError::Unreadable);
        }
        let mut data = vec![0u8; len as usize];
        self.read(p, addr + layouts::BYTES_DATA, &mut data)?;
        Ok(data.into_boxed_slice())
    }

    /// Reads the process's memory through its [`crate::process_memory::ProcessMemory`] (opened once per window).
    fn read(&mut self, p: &Process, addr: u64, buf: &mut [u8]) -> Result<(), CodeError> {
        let m = self.mem.get(p.pid, p.start_time).map_err(|e| {
            tracing::debug!(pid = p.pid, error = %e, "cannot read a Python process's memory");
            CodeError::Unreadable
        })?;
        m.read(addr, buf).map_err(|e| {
            tracing::trace!(pid = p.pid, error = %e, "Python object unreadable");
            CodeError::Unreadable
        })
    }

    /// Ends a window: cached code objects are re-checked when next used, processes that are gone
    /// are forgotten (and unregistered from the sampler).
    pub fn end_window(&mut self, mut alive: impl FnMut(u32, u64) -> bool) {
        self.window += 1;
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, s)| !alive(**pid, s.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(s) = self.procs.remove(&pid)
                && s.registered
                && let Some(map) = self.bpf.as_mut()
            {
                let _ = map.remove(&pid);
            }
            self.codes.retain(|k, _| k.pid != pid);
        }
        self.mem.clear();
    }
}

struct CodeHeader {
    identity: [u64; 2],
    line_table: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The agent detects interpreters on its `kiln-python` thread: the first observation of a
    /// real CPython answers "not Python (yet)" at once, and the thread's answer arrives later.
    /// Inline detection would recognise it at the first call.
    #[test]
    fn interpreters_are_read_off_the_sampling_thread() {
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import sys; sys.stdin.read()"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (Debian's python3.11) is installed");
        let pid = child.id();
        let mut py = Python::new(None).with_detector();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // The interpreter maps its libraries after exec: wait until the mappings are there.
        let p = loop {
            let p = Arc::new(
                Process::load(pid, &mut crate::buildid::BuildIdCache::new(64), 4096).unwrap(),
            );
            if p.exe.as_deref().is_some_and(|e| {
                e.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python"))
            }) && detect(&p).is_readable()
            {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "python3 never became readable"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            matches!(py.observe(&p), Detection::NotPython),
            "the first answer does not wait for the file to be read"
        );
        while !py.observe(&p).is_readable() {
            assert!(
                std::time::Instant::now() < deadline,
                "the detection thread never answered"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(child.stdin.take());
        let _ = child.wait();
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("python3.11"), Some((3, 11)));
        assert_eq!(version_from_name("libpython3.9.so.1.0"), Some((3, 9)));
        assert_eq!(version_from_name("python3.12d"), Some((3, 12)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("pythonista"), None);
    }

    fn frame(name: &str, entry: bool) -> NamedFrame {
        NamedFrame {
            code: name.len() as u64 * 8,
            name: name.into(),
            file: "x.py".into(),
            line: 1,
            entry,
        }
    }

    fn target() -> Arc<Target> {
        Arc::new(Target {
            layout: layouts::layout(3, 11).unwrap(),
            runtime: 0,
            code_type: 0,
            eval: vec![(0x1000, 0x2000)],
            object: FileId {
                major: 1,
                minor: 1,
                inode: 7,
            },
        })
    }

    fn names<'a>(items: &'a [StackItem<'a>]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                StackItem::Native(a) => format!("{a:#x}"),
                StackItem::Python(f) => f.name.to_string(),
                StackItem::Marker(m) => m.to_string(),
            })
            .collect()
    }

    /// Two native eval calls (3.11: each runs several frames), interpreter machinery between them
    /// left out, a C extension's frame (another object) kept, the leaf native frames kept.
    #[test]
    fn python_frames_replace_the_eval_frames_that_ran_them() {
        let stack = PyStack::Frames {
            target: target(),
            frames: vec![
                frame("hot", false),
                frame("beta", true),
                frame("alpha", false),
                frame("main", false),
                frame("<module>", true),
            ],
            cut: None,
        };
        // leaf: 0x500 (builtin in libpython, under the leaf eval), eval, 0x3000 (vectorcall in
        // libpython), 0x9000 (a C extension), 0x3100 (libpython), eval, 0x3200 (Py_RunMain), 0x10 main
        let user = [0x500, 0x1100, 0x3000, 0x9000, 0x3100, 0x1200, 0x3200, 0x10];
        let file = |a: u64| {
            Some(FileId {
                major: 1,
                minor: 1,
                inode: if a == 0x9000 { 8 } else { 7 },
            })
        };
        assert_eq!(
            names(&stack.splice(&user, file)),
            [
                "0x500", "hot", "beta", "0x9000", "alpha", "main", "<module>", "0x3200", "0x10"
            ]
        );
        // Fewer native eval frames than groups (a cut native stack): the rest at the root end,
        // with the cut marked.
        let stack = PyStack::Frames {
            target: target(),
            frames: vec![frame("hot", true), frame("main", true)],
            cut: Some("[truncated: too many Python frames]"),
        };
        assert_eq!(
            names(&stack.splice(&[0x1100], file)),
            ["hot", "main", "[truncated: too many Python frames]"]
        );
        let unreadable = PyStack::Unreadable("[python: unsupported version 3.14]".into());
        assert_eq!(
            names(&unreadable.splice(&[0x1100, 0x10], file)),
            ["0x1100", "0x10", "[python: unsupported version 3.14]"]
        );
    }

    /// More than `MAX_PY_FRAMES` Python frames: the sampler read the innermost ones. The cut is
    /// marked like a cut native stack (a `[truncated: …]` frame), where the frames are missing:
    /// above the native eval calls whose frames were not read, below the native root.
    #[test]
    fn a_cut_python_chain_is_marked_where_its_frames_are_missing() {
        let stack = PyStack::Frames {
            target: target(),
            frames: vec![frame("hot", false), frame("recurse", true)],
            cut: Some("[truncated: too many Python frames]"),
        };
        // leaf eval, libpython machinery, two outer evals (their frames not read), main.
        let user = [0x1100, 0x3000, 0x1200, 0x3100, 0x1300, 0x10];
        let file = |a: u64| {
            Some(FileId {
                major: 1,
                minor: 1,
                inode: if a == 0x10 { 9 } else { 7 },
            })
        };
        assert_eq!(
            names(&stack.splice(&user, file)),
            [
                "hot",
                "recurse",
                "[truncated: too many Python frames]",
                "0x1200",
                "0x1300",
                "0x10"
            ]
        );
    }

    /// A thread the sampler found no thread state for: a native thread of a Python process keeps
    /// its stack unmarked; a thread that is running the eval loop (a subinterpreter's, or one
    /// beyond the sampler's search) says so instead of passing for a native-only stack.
    #[test]
    fn a_python_thread_without_thread_state_is_marked() {
        let stack = PyStack::NoThreadState(target());
        let file = |_| None;
        assert_eq!(
            names(&stack.splice(&[0x9000, 0x10], file)),
            ["0x9000", "0x10"]
        );
        assert_eq!(
            names(&stack.splice(&[0x500, 0x1100, 0x3000, 0x10], file)),
            ["0x500", "0x1100", "0x3000", "0x10", THREAD_STATE_NOT_FOUND]
        );
    }
}
