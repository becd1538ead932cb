/* The contract between Kiln's eBPF sampler (kernel side) and the agent (user side).
 *
 * One record per sample goes through the BPF ring buffer: a fixed `struct kiln_sample_header`,
 * followed by `stack_copy_len` bytes copied from the user stack starting at `user_sp`.
 * The Rust mirror lives in sampler-bpf/src/lib.rs; both sides assert the same size. */
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

#endif
