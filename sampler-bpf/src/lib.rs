//! Kiln's eBPF sampler: the object file and the record it emits.
//!
//! The kernel side is `src/sampler.bpf.c`; the contract is `include/kiln_sample.h`. Each ring-buffer
//! record is a [`SampleHeader`] followed by `stack_copy_len` bytes of user stack, parsed by
//! [`RawSample::parse`].

/// The compiled eBPF object (built from `src/sampler.bpf.c` by build.rs, or the checked-in copy).
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sampler.bpf.o"));

pub const MAX_STACK_DEPTH: usize = 127;
pub const MAX_STACK_COPY: usize = 32768;
pub const COMM_LEN: usize = 16;
/// `KILN_MAX_PY_FRAMES`: most interpreted frames recorded per sample.
pub const MAX_PY_FRAMES: usize = 64;

/// `user_ip/sp/bp` are valid.
pub const FLAG_USER_REGS: u32 = 1;
/// The CPU was in kernel mode when sampled.
pub const FLAG_IN_KERNEL: u32 = 2;

/// Mirror of `struct kiln_sample_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleHeader {
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    pub user_ip: u64,
    pub user_sp: u64,
    pub user_bp: u64,
    pub kernel_stack_bytes: i32,
    pub user_stack_bytes: i32,
    pub stack_copy_len: u32,
    pub reserved: u32,
    pub kernel_stack: [u64; MAX_STACK_DEPTH],
    pub user_stack: [u64; MAX_STACK_DEPTH],
    pub py_status: u32,
    pub py_frames: u32,
    pub py: [PyFrameRaw; MAX_PY_FRAMES],
}

/// Mirror of `struct kiln_py_frame`: one interpreted frame as read at sample time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRaw {
    /// Code object address; bit 0 marks the outermost frame of one native eval call.
    pub code: u64,
    /// The version's instruction position (see the agent's python module).
    pub instr: u32,
    /// `co_firstlineno` as read at sample time.
    pub firstlineno: i32,
}

/// One interpreted frame of a sample, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u32,
    pub firstlineno: i32,
    /// The outermost frame run by one native call of the eval loop: the Python frames of that
    /// native frame end here.
    pub entry: bool,
}

/// What the sampler's Python walk found (`py_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PyStatus {
    /// The process is not a registered CPython (or the sample has no user context).
    None,
    /// The whole frame chain was read.
    Complete,
    /// More than [`MAX_PY_FRAMES`] frames: the outermost are missing.
    Truncated,
    /// The thread has no Python thread state (it is not running Python).
    NoThread,
    /// A pointer of the chain could not be read.
    ReadFailed,
}

impl PyStatus {
    fn from_raw(v: u32) -> PyStatus {
        match v {
            1 => PyStatus::Complete,
            2 => PyStatus::Truncated,
            3 => PyStatus::NoThread,
            4 => PyStatus::ReadFailed,
            _ => PyStatus::None,
        }
    }
}

/// Mirror of `struct kiln_py_proc`: the per-process layout the agent writes into
/// [`names::PY_PROCS`] (offsets in bytes, [`PY_NO_OFFSET`] where the version has no such field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    pub runtime: u64,
    pub runtime_interpreters_head: u32,
    pub interp_next: u32,
    pub interp_threads_head: u32,
    pub tstate_next: u32,
    pub tstate_thread_id: u32,
    pub tstate_frame: u32,
    pub cframe_current_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    pub frame_owner: u32,
    pub code_firstlineno: u32,
    pub entry_kind: u32,
    pub instr_kind: u32,
}

// SAFETY: plain integers, no padding (64 bytes, asserted), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PyProc {}

/// `KILN_PY_PROC_SIZE`.
const _: () = assert!(core::mem::size_of::<PyProc>() == 64);
const _: () = assert!(core::mem::size_of::<PyFrameRaw>() == 16);
pub const PY_NO_OFFSET: u32 = u32::MAX;
/// `entry_kind` values.
pub const PY_ENTRY_EVERY: u32 = 0;
pub const PY_ENTRY_FLAG: u32 = 1;
pub const PY_ENTRY_CSTACK: u32 = 2;
/// `instr_kind` values.
pub const PY_INSTR_LASTI: u32 = 0;
pub const PY_INSTR_PTR: u32 = 1;

// The layout contract, generated from the header's `KILN_SAMPLE_FIELD` list by build.rs: the size
// (`SAMPLE_HEADER_SIZE`) and every field's offset and size, asserted at compile time here as the C
// compiler asserts them there.
include!(concat!(env!("OUT_DIR"), "/layout.rs"));

/// The size of the field `get` borrows (for the generated layout assertions; never called at run time).
const fn field_size<T, F>(_get: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

/// Registers of the user-space context at the moment of the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One sample, decoded from a ring-buffer record. The stack copy is borrowed from the record
/// (up to 32 KiB a sample, copied only by [`RawSample::into_owned`]).
#[derive(Clone, Debug)]
pub struct RawSample<'a> {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub in_kernel: bool,
    /// Kernel return addresses, leaf first (empty for samples taken in user mode).
    pub kernel_stack: Vec<u64>,
    /// User return addresses by frame pointers, leaf first (the first is the sampled ip).
    pub user_stack: Vec<u64>,
    /// `None` for kernel threads, which have no user context.
    pub user_regs: Option<UserRegs>,
    /// Bytes of user stack starting at `user_regs.sp`.
    pub stack_copy: std::borrow::Cow<'a, [u8]>,
    pub py_status: PyStatus,
    /// Interpreted frames, leaf first (empty unless the process is a registered CPython).
    pub py_frames: Vec<PyFrame>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("record of {0} bytes is shorter than the {SAMPLE_HEADER_SIZE}-byte sample header")]
    Short(usize),
    #[error("record says {claimed} stack bytes follow but {present} do")]
    StackCopy { claimed: usize, present: usize },
}

impl<'a> RawSample<'a> {
    /// Decodes one ring-buffer record.
    pub fn parse(record: &'a [u8]) -> Result<RawSample<'a>, ParseError> {
        if record.len() < SAMPLE_HEADER_SIZE {
            return Err(ParseError::Short(record.len()));
        }
        // SAFETY: the slice holds at least size_of::<SampleHeader>() bytes, every bit pattern is a valid
        // SampleHeader (plain integers and arrays), and read_unaligned tolerates any alignment.
        let h: SampleHeader =
            unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<SampleHeader>()) };
        let copy = &record[SAMPLE_HEADER_SIZE..];
        let claimed = h.stack_copy_len as usize;
        if claimed > copy.len() {
            return Err(ParseError::StackCopy {
                claimed,
                present: copy.len(),
            });
        }
        let frames = |bytes: i32, stack: &[u64; MAX_STACK_DEPTH]| -> Vec<u64> {
            let n = (bytes.max(0) as usize / 8).min(MAX_STACK_DEPTH);
            stack[..n].iter().copied().filter(|&a| a != 0).collect()
        };
        let comm_len = h.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        Ok(RawSample {
            time_ns: h.time_ns,
            tgid: h.tgid,
            tid: h.tid,
            cpu: h.cpu,
            comm: String::from_utf8_lossy(&h.comm[..comm_len]).into_owned(),
            cgroup_id: h.cgroup_id,
            in_kernel: h.flags & FLAG_IN_KERNEL != 0,
            kernel_stack: frames(h.kernel_stack_bytes, &h.kernel_stack),
            user_stack: frames(h.user_stack_bytes, &h.user_stack),
            user_regs: (h.flags & FLAG_USER_REGS != 0).then_some(UserRegs {
                ip: h.user_ip,
                sp: h.user_sp,
                bp: h.user_bp,
            }),
            stack_copy: std::borrow::Cow::Borrowed(&copy[..claimed]),
            py_status: PyStatus::from_raw(h.py_status),
            py_frames: py_frames(&h.py[..(h.py_frames as usize).min(MAX_PY_FRAMES)]),
        })
    }

    /// The sample with its own copy of the stack bytes (to keep it past its record).
    pub fn into_owned(self) -> RawSample<'static> {
        RawSample {
            stack_copy: std::borrow::Cow::Owned(self.stack_copy.into_owned()),
            comm: self.comm,
            kernel_stack: self.kernel_stack,
            user_stack: self.user_stack,
            py_frames: self.py_frames,
            ..self
        }
    }
}

/// Decodes the recorded interpreted frames: a shim frame (code 0, 3.12+) marks the frame before
/// it as the first of its eval call and is dropped.
fn py_frames(raw: &[PyFrameRaw]) -> Vec<PyFrame> {
    let mut out: Vec<PyFrame> = Vec::with_capacity(raw.len());
    for f in raw {
        if f.code == 0 {
            if let Some(prev) = out.last_mut() {
                prev.entry = true;
            }
            continue;
        }
        out.push(PyFrame {
            code: f.code & !1,
            instr: f.instr,
            firstlineno: f.firstlineno,
            entry: f.code & 1 != 0,
        });
    }
    out
}

/// Global variables the agent sets before loading (names as in `sampler.bpf.c`).
pub mod globals {
    /// `u32`: bytes of user stack to copy per sample (≤ [`super::MAX_STACK_COPY`]).
    pub const STACK_COPY_BYTES: &str = "kiln_stack_copy_bytes";
}

/// Map and program names (as in `sampler.bpf.c`).
pub mod names {
    pub const PROGRAM: &str = "kiln_sample";
    pub const RING_BUFFER: &str = "kiln_samples";
    /// Per-CPU `u64` array, index 0: samples lost because the ring buffer was full.
    pub const DROPS: &str = "kiln_drops";
    /// Array with one scratch slot per possible CPU (its max_entries is set at load time).
    pub const SCRATCH: &str = "kiln_scratch_map";
    /// Hash of tgid -> [`super::PyProc`]: the CPython processes to walk.
    pub const PY_PROCS: &str = "kiln_py_procs";
    /// Most entries of [`PY_PROCS`].
    pub const PY_PROCS_MAX: usize = 4096;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(copy: &[u8], claimed: u32) -> Vec<u8> {
        let mut h: SampleHeader = unsafe { std::mem::zeroed() };
        h.tgid = 42;
        h.tid = 43;
        h.comm[..4].copy_from_slice(b"test");
        h.flags = FLAG_USER_REGS;
        h.user_ip = 0x1000;
        h.user_stack[0] = 0x1000;
        h.user_stack[1] = 0x2000;
        h.user_stack_bytes = 16;
        h.kernel_stack_bytes = -14;
        h.stack_copy_len = claimed;
        h.py_status = 1;
        h.py_frames = 3;
        h.py[0] = PyFrameRaw {
            code: 0x7000,
            instr: 10,
            firstlineno: 3,
        };
        // A 3.12 shim: the frame before it is the first its eval call ran.
        h.py[1] = PyFrameRaw::default();
        h.py[2] = PyFrameRaw {
            code: 0x8000 | 1,
            instr: 4,
            firstlineno: 1,
        };
        let mut v = vec![0u8; SAMPLE_HEADER_SIZE];
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<SampleHeader>(), h) };
        v.extend_from_slice(copy);
        v
    }

    #[test]
    fn parses_a_record() {
        let rec = record(&[1, 2, 3], 3);
        let s = RawSample::parse(&rec).unwrap();
        assert_eq!((s.tgid, s.tid, s.comm.as_str()), (42, 43, "test"));
        assert_eq!(s.user_stack, vec![0x1000, 0x2000]);
        assert!(
            s.kernel_stack.is_empty(),
            "a negative errno means no frames"
        );
        assert_eq!(s.user_regs.unwrap().ip, 0x1000);
        assert_eq!(&*s.stack_copy, &[1u8, 2, 3][..]);
        assert_eq!(s.py_status, PyStatus::Complete);
        assert_eq!(
            s.py_frames,
            vec![
                PyFrame {
                    code: 0x7000,
                    instr: 10,
                    firstlineno: 3,
                    entry: true
                },
                PyFrame {
                    code: 0x8000,
                    instr: 4,
                    firstlineno: 1,
                    entry: true
                }
            ]
        );
    }

    #[test]
    fn rejects_short_and_lying_records() {
        assert_eq!(
            RawSample::parse(&[0; 10]).unwrap_err(),
            ParseError::Short(10)
        );
        assert!(matches!(
            RawSample::parse(&record(&[1], 5)),
            Err(ParseError::StackCopy {
                claimed: 5,
                present: 1
            })
        ));
    }
}
