// SPDX-License-Identifier: GPL-2.0
/* Kiln's sampler: runs on every cpu-clock tick of every CPU and emits one record per sample.
 *
 * A record (include/kiln_sample.h) carries who was running (tgid, tid, comm, cgroup), both stacks
 * as the kernel unwinds them (kernel stack; user stack by frame pointers), and — for code built
 * without frame pointers — the user registers plus a copy of the top of the user stack, which the
 * agent unwinds with .eh_frame.
 *
 * Records go out with BPF_RB_NO_WAKEUP: the agent drains the ring on a timer instead of being woken
 * for every sample, so its own wake-ups do not line up with the sampling timer and inflate its share. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "kiln_sample.h"

#define PF_KTHREAD 0x00200000
#define PAGE_SIZE 4096

/* Only the kernel fields read here are declared; CO-RE relocates them against this kernel's BTF. */
struct mm_struct;
struct thread_struct {
	unsigned long fsbase;
} __attribute__((preserve_access_index));
struct task_struct {
	unsigned int flags;
	struct mm_struct *mm;
	struct thread_struct thread;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long bp;
	unsigned long ip;
	unsigned long sp;
} __attribute__((preserve_access_index));

/* The perf-event context is `bpf_user_pt_regs_t`, the uapi x86-64 register layout: every field is
 * 8 bytes there (unlike the kernel's pt_regs, whose `cs` is 16-bit and fails the context check). */
struct kiln_uapi_regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

/* Set by the agent before loading. */
const volatile __u32 kiln_stack_copy_bytes = 8192;

/* A sample is assembled here (it is too large for the 512-byte BPF stack), then copied into the
 * ring with its exact length. One slot per CPU, indexed by CPU number: a plain array because per-CPU
 * map values are limited to 32 KiB. Perf-event programs do not migrate or nest on a CPU, so a slot
 * has one writer at a time. The agent sets max_entries to the number of possible CPUs. */
struct kiln_scratch {
	struct kiln_sample_header h;
	__u8 stack[KILN_MAX_STACK_COPY];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kiln_scratch);
} kiln_scratch_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} kiln_samples SEC(".maps");

/* Index 0: samples lost because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} kiln_drops SEC(".maps");

/* CPython processes the agent has recognised, by tgid: where their runtime state is and the
 * layout of their version (agent/src/python/). Bounded: the agent stops registering when full. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct kiln_py_proc);
} kiln_py_procs SEC(".maps");

/* Thread state of each Python thread seen, by tid: found once by walking the interpreter's thread
 * list, then only re-checked (its thread_id must still be this thread's). LRU: bounded. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} kiln_py_threads SEC(".maps");

/* Bound of the thread search below (the verifier needs every loop bounded). */
#define KILN_PY_MAX_THREADS 64
#define KILN_PY_OWNED_BY_CSTACK 3

static __always_inline int read_u64(__u64 *dst, __u64 addr)
{
	return bpf_probe_read_user(dst, sizeof(*dst), (const void *)addr);
}

/* The PyThreadState of the current thread: CPython stores pthread_self() in thread_id, and on
 * x86-64 pthread_self() is the thread pointer, the task's fs base. Threads of the first
 * interpreter on the runtime's list are searched (subinterpreters' threads are not), at most
 * KILN_PY_MAX_THREADS of them; a hit is remembered in kiln_py_threads. */
static __always_inline __u64 py_thread_state(const struct kiln_py_proc *cfg, __u32 tid, __u64 fsbase)
{
	__u64 tstate = 0, id = 0;
	__u64 *cached = bpf_map_lookup_elem(&kiln_py_threads, &tid);
	if (cached) {
		tstate = *cached;
		if (read_u64(&id, tstate + cfg->tstate_thread_id) == 0 && id == fsbase)
			return tstate;
	}
	__u64 interp = 0;
	if (read_u64(&interp, cfg->runtime + cfg->runtime_interpreters_head) != 0 || interp == 0)
		return 0;
	if (read_u64(&tstate, interp + cfg->interp_threads_head) != 0)
		return 0;
	for (int i = 0; i < KILN_PY_MAX_THREADS; i++) {
		if (tstate == 0)
			return 0;
		if (read_u64(&id, tstate + cfg->tstate_thread_id) != 0)
			return 0;
		if (id == fsbase) {
			bpf_map_update_elem(&kiln_py_threads, &tid, &tstate, BPF_ANY);
			return tstate;
		}
		if (read_u64(&tstate, tstate + cfg->tstate_next) != 0)
			return 0;
	}
	return 0;
}

/* Reads the current thread's Python frames into h->py (leaf first) and sets py_status. The loop
 * has one counter and few branches so that the verifier's cost stays linear in
 * KILN_MAX_PY_FRAMES: a 3.12+ shim frame (owned by the C stack) is recorded as code 0 and the
 * agent folds it into the entry mark of the frame before it (sampler-bpf/src/lib.rs). */
static __always_inline void py_walk(struct kiln_sample_header *h, const struct kiln_py_proc *cfg, __u64 fsbase)
{
	__u64 tstate = py_thread_state(cfg, h->tid, fsbase);
	if (tstate == 0) {
		h->py_status = KILN_PY_NO_THREAD;
		return;
	}
	__u64 frame = 0;
	int i = 0;
	if (read_u64(&frame, tstate + cfg->tstate_frame) != 0)
		goto failed;
	if (cfg->cframe_current_frame != KILN_PY_NO_OFFSET && frame != 0 &&
	    read_u64(&frame, frame + cfg->cframe_current_frame) != 0)
		goto failed;
	for (i = 0; i < KILN_MAX_PY_FRAMES; i++) {
		if (frame == 0) {
			h->py_frames = i;
			h->py_status = KILN_PY_OK;
			return;
		}
		__u8 owner = 0;
		if (cfg->entry_kind != KILN_PY_ENTRY_EVERY &&
		    bpf_probe_read_user(&owner, 1, (const void *)(frame + cfg->frame_owner)) != 0)
			goto failed;
		__u64 code = 0, ip = 0;
		__s32 first = 0;
		if (read_u64(&code, frame + cfg->frame_code) != 0)
			goto failed;
		if (cfg->instr_kind == KILN_PY_INSTR_PTR) {
			if (read_u64(&ip, frame + cfg->frame_instr) != 0)
				goto failed;
			ip = ip - code;
		} else {
			__s32 lasti = 0;
			if (bpf_probe_read_user(&lasti, sizeof(lasti), (const void *)(frame + cfg->frame_instr)) != 0)
				goto failed;
			ip = lasti < 0 ? 0 : (__u64)lasti;
		}
		/* A failed read leaves 0: the agent then finds the code object changed. */
		bpf_probe_read_user(&first, sizeof(first), (const void *)(code + cfg->code_firstlineno));
		__u64 entry = cfg->entry_kind == KILN_PY_ENTRY_EVERY || (cfg->entry_kind == KILN_PY_ENTRY_FLAG && owner != 0);
		int shim = cfg->entry_kind == KILN_PY_ENTRY_CSTACK && owner == KILN_PY_OWNED_BY_CSTACK;
		struct kiln_py_frame *f = &h->py[i];
		f->code = shim ? 0 : ((code & ~1ULL) | entry);
		f->instr = ip > 0xffffffffULL ? 0xffffffffu : (__u32)ip;
		f->firstlineno = first;
		if (read_u64(&frame, frame + cfg->frame_previous) != 0) {
			i++;
			goto failed;
		}
	}
	h->py_frames = KILN_MAX_PY_FRAMES;
	h->py_status = frame == 0 ? KILN_PY_OK : KILN_PY_TRUNCATED;
	return;
failed:
	h->py_frames = i < 0 ? 0 : (i > KILN_MAX_PY_FRAMES ? KILN_MAX_PY_FRAMES : i);
	h->py_status = KILN_PY_READ_FAILED;
}

/* Copies up to `want` bytes of user stack from `sp`. A copy that would run past the top of the
 * stack mapping faults as a whole; then the longest copy that ends on a page boundary below `want`
 * is found by binary search over the number of whole pages after sp's page (reads up to the top of
 * the mapping succeed, reads past it fail), so stacks near the top (main, thread starts) are copied
 * up to the mapping's end instead of being cut at the end of sp's page. Every size is clamped to a
 * constant bound for the verifier. */
static __always_inline __u32 copy_user_stack(__u8 *dst, __u64 sp, __u32 want)
{
	if (want > KILN_MAX_STACK_COPY)
		want = KILN_MAX_STACK_COPY;
	if (want == 0 || sp == 0)
		return 0;
	if (bpf_probe_read_user(dst, want, (const void *)sp) == 0)
		return want;
	__u32 first = PAGE_SIZE - (sp & (PAGE_SIZE - 1));
	if (first >= want)
		return 0;
	/* Invariant: `first + lo * PAGE_SIZE` bytes are readable (assumed for lo = 0: sp's own page),
	 * `first + hi * PAGE_SIZE` are not (hi's length is >= want, which just failed). */
	__u32 lo = 0, hi = (want - first + PAGE_SIZE - 1) / PAGE_SIZE;
#pragma unroll
	for (int i = 0; i < 4; i++) { /* 2^4 pages > KILN_MAX_STACK_COPY / PAGE_SIZE */
		if (hi - lo > 1) {
			__u32 mid = (lo + hi) / 2;
			__u32 len = first + mid * PAGE_SIZE;
			if (len > KILN_MAX_STACK_COPY)
				len = KILN_MAX_STACK_COPY;
			if (bpf_probe_read_user(dst, len, (const void *)sp) == 0)
				lo = mid;
			else
				hi = mid;
		}
	}
	__u32 len = first + lo * PAGE_SIZE;
	if (len > KILN_MAX_STACK_COPY)
		len = KILN_MAX_STACK_COPY;
	if (len == 0)
		return 0;
	/* A failed probe read zeroes the buffer: read the winner again. */
	if (bpf_probe_read_user(dst, len, (const void *)sp) == 0)
		return len;
	return 0;
}

SEC("perf_event")
int kiln_sample(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	/* The idle task: the CPU had nothing to run. */
	if (tgid == 0)
		return 0;

	__u32 zero = 0;
	__u32 cpu = bpf_get_smp_processor_id();
	struct kiln_scratch *s = bpf_map_lookup_elem(&kiln_scratch_map, &cpu);
	if (!s)
		return 0;
	struct kiln_sample_header *h = &s->h;

	h->time_ns = bpf_ktime_get_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->tgid = tgid;
	h->tid = (__u32)pid_tgid;
	h->cpu = cpu;
	h->flags = 0;
	h->reserved = 0;
	h->user_ip = h->user_sp = h->user_bp = 0;
	h->py_status = KILN_PY_NONE;
	h->py_frames = 0;
	bpf_get_current_comm(h->comm, sizeof(h->comm));

	const struct kiln_uapi_regs *regs = ctx;
	int user_mode = (regs->cs & 3) == 3;
	if (!user_mode)
		h->flags |= KILN_SAMPLE_IN_KERNEL;

	h->kernel_stack_bytes = user_mode ? 0 : bpf_get_stack(ctx, h->kernel_stack, sizeof(h->kernel_stack), 0);
	h->user_stack_bytes = bpf_get_stack(ctx, h->user_stack, sizeof(h->user_stack), BPF_F_USER_STACK);

	__u32 copied = 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if (!(task->flags & PF_KTHREAD) && task->mm) {
		if (user_mode) {
			h->user_ip = regs->ip;
			h->user_sp = regs->sp;
			h->user_bp = regs->bp;
		} else {
			/* In the kernel on behalf of a process: its user registers were saved on entry. */
			struct pt_regs *uregs = (struct pt_regs *)bpf_task_pt_regs(task);
			h->user_ip = BPF_CORE_READ(uregs, ip);
			h->user_sp = BPF_CORE_READ(uregs, sp);
			h->user_bp = BPF_CORE_READ(uregs, bp);
		}
		h->flags |= KILN_SAMPLE_USER_REGS;
		copied = copy_user_stack(s->stack, h->user_sp, kiln_stack_copy_bytes);
		/* Interpreted frames change with every bytecode: they are read now or never. */
		const struct kiln_py_proc *py = bpf_map_lookup_elem(&kiln_py_procs, &tgid);
		if (py)
			py_walk(h, py, BPF_CORE_READ(task, thread.fsbase));
	}
	h->stack_copy_len = copied;

	if (copied > KILN_MAX_STACK_COPY)
		copied = KILN_MAX_STACK_COPY;
	if (bpf_ringbuf_output(&kiln_samples, s, sizeof(*h) + copied, BPF_RB_NO_WAKEUP) != 0) {
		__u64 *drops = bpf_map_lookup_elem(&kiln_drops, &zero);
		if (drops)
			*drops += 1;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
