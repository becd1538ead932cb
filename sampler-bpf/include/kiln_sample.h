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

/* flags */
#define KILN_SAMPLE_USER_REGS 1u   /* user_ip/sp/bp are valid (not a kernel thread) */
#define KILN_SAMPLE_IN_KERNEL 2u   /* the CPU was in kernel mode when sampled */

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
};

#define KILN_SAMPLE_HEADER_SIZE 2120
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

#endif
