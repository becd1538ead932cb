/* The contract between Kiln's eBPF sampler (kernel side) and the agent (user side).
 *
 * One record per sample goes through the BPF ring buffer: a fixed `struct kiln_sample_header`,
 * followed by `stack_copy_len` bytes copied from the user stack starting at `user_sp`.
 * The Rust mirror lives in sampler-bpf/src/lib.rs. The layout is pinned field by field below
 * (KILN_SAMPLE_FIELD lines: name, offset, size); sampler-bpf/build.rs reads those same lines and
 * makes the Rust side assert them too, so one list of numbers is checked by both compilers. */
#ifndef KILN_SAMPLE_H
#define KILN_SAMPLE_H

#define KILN_MAX_STACK_DEPTH 127
/* Upper bound for the user stack copy; the configured size (a load-time global) may be smaller.
 * A power of two so that the verifier can bound lengths with a mask. */
#define KILN_MAX_STACK_COPY 32768
#define KILN_COMM_LEN 16

/* Most interpreted (Python) frames recorded per sample; deeper stacks are marked truncated. */
#define KILN_MAX_PY_FRAMES 64

/* flags */
#define KILN_SAMPLE_USER_REGS 1u   /* user_ip/sp/bp are valid (not a kernel thread) */
#define KILN_SAMPLE_IN_KERNEL 2u   /* the CPU was in kernel mode when sampled */

/* py_status: what the Python walk found (0: the process is not a registered CPython) */
#define KILN_PY_NONE 0u
#define KILN_PY_OK 1u            /* the whole frame chain was read */
#define KILN_PY_TRUNCATED 2u     /* more than KILN_MAX_PY_FRAMES frames: the outermost are missing */
#define KILN_PY_NO_THREAD 3u     /* no thread state of this thread (a thread not running Python) */
#define KILN_PY_READ_FAILED 4u   /* a pointer of the chain could not be read (paged out, or torn) */

/* One interpreted frame as read at sample time. `code` is the code object's address; bit 0 set
 * marks the outermost frame run by one native call of the eval loop (the boundary where the
 * agent splices frames into the native stack; code objects are 8-byte aligned); 0 is a 3.12+
 * eval-loop shim frame, which marks the frame recorded before it as that boundary. `instr` is the
 * version's instruction position (see agent/src/python/), `firstlineno` the code object's
 * co_firstlineno, which the agent checks when it reads the object (a reused address). */
struct kiln_py_frame {
	__u64 code;
	__u32 instr;
	__s32 firstlineno;
};

/* Per-process layout of one CPython version, written by the agent into `kiln_py_procs` (offsets
 * in bytes; KILN_PY_NO_OFFSET where the version has no such field). */
#define KILN_PY_NO_OFFSET 0xffffffffu
/* entry_kind: how the eval loop marks the frames one native call runs */
#define KILN_PY_ENTRY_EVERY 0u   /* <= 3.10: one native eval call per frame */
#define KILN_PY_ENTRY_FLAG 1u    /* 3.11: a bool `is_entry` at frame_owner */
#define KILN_PY_ENTRY_CSTACK 2u  /* 3.12+: a shim frame whose `owner` byte is FRAME_OWNED_BY_CSTACK (3) */
/* instr_kind */
#define KILN_PY_INSTR_LASTI 0u   /* <= 3.10: an int f_lasti at frame_instr */
#define KILN_PY_INSTR_PTR 1u     /* 3.11+: a pointer into the code object at frame_instr */
struct kiln_py_proc {
	__u64 runtime;              /* address of _PyRuntime */
	__u32 runtime_interpreters_head;
	__u32 interp_next;
	__u32 interp_threads_head;
	__u32 tstate_next;
	__u32 tstate_thread_id;
	__u32 tstate_frame;
	__u32 cframe_current_frame; /* KILN_PY_NO_OFFSET: tstate_frame points at the frame itself */
	__u32 frame_code;
	__u32 frame_previous;
	__u32 frame_instr;
	__u32 frame_owner;
	__u32 code_firstlineno;
	__u32 entry_kind;
	__u32 instr_kind;
};
#define KILN_PY_PROC_SIZE 64
_Static_assert(sizeof(struct kiln_py_proc) == KILN_PY_PROC_SIZE, "py proc size is part of the contract");

struct kiln_sample_header {
	__u64 time_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id;     /* cgroup v2 id of the task */
	__u32 tgid;          /* process id */
	__u32 tid;           /* thread id */
	__u32 cpu;
	__u32 flags;
	__u8 comm[KILN_COMM_LEN];
	__u64 user_ip;
	__u64 user_sp;
	__u64 user_bp;
	__s32 kernel_stack_bytes; /* bpf_get_stack() result: bytes, or a negative errno */
	__s32 user_stack_bytes;   /* same, for the frame-pointer user stack */
	__u32 stack_copy_len;     /* bytes of user stack copy that follow this header */
	__u32 reserved;
	__u64 kernel_stack[KILN_MAX_STACK_DEPTH];
	__u64 user_stack[KILN_MAX_STACK_DEPTH];
	__u32 py_status;          /* KILN_PY_* */
	__u32 py_frames;          /* entries of py[] filled, leaf first */
	struct kiln_py_frame py[KILN_MAX_PY_FRAMES];
};

#define KILN_SAMPLE_HEADER_SIZE 3152
_Static_assert(sizeof(struct kiln_sample_header) == KILN_SAMPLE_HEADER_SIZE, "header size is part of the contract");

/* Every field's offset and size is part of the contract too (one line per field, in order; the
 * format of these lines is parsed by sampler-bpf/build.rs: keep one KILN_SAMPLE_FIELD per line). */
#define KILN_SAMPLE_FIELD(field, off, size)                                                              \
	_Static_assert(__builtin_offsetof(struct kiln_sample_header, field) == (off), #field " offset"); \
	_Static_assert(sizeof(((struct kiln_sample_header *)0)->field) == (size), #field " size")

KILN_SAMPLE_FIELD(time_ns, 0, 8);
KILN_SAMPLE_FIELD(cgroup_id, 8, 8);
KILN_SAMPLE_FIELD(tgid, 16, 4);
KILN_SAMPLE_FIELD(tid, 20, 4);
KILN_SAMPLE_FIELD(cpu, 24, 4);
KILN_SAMPLE_FIELD(flags, 28, 4);
KILN_SAMPLE_FIELD(comm, 32, 16);
KILN_SAMPLE_FIELD(user_ip, 48, 8);
KILN_SAMPLE_FIELD(user_sp, 56, 8);
KILN_SAMPLE_FIELD(user_bp, 64, 8);
KILN_SAMPLE_FIELD(kernel_stack_bytes, 72, 4);
KILN_SAMPLE_FIELD(user_stack_bytes, 76, 4);
KILN_SAMPLE_FIELD(stack_copy_len, 80, 4);
KILN_SAMPLE_FIELD(reserved, 84, 4);
KILN_SAMPLE_FIELD(kernel_stack, 88, 1016);
KILN_SAMPLE_FIELD(user_stack, 1104, 1016);
KILN_SAMPLE_FIELD(py_status, 2120, 4);
KILN_SAMPLE_FIELD(py_frames, 2124, 4);
KILN_SAMPLE_FIELD(py, 2128, 1024);

#endif
