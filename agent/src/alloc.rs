//! The agent's use of glibc's malloc, tuned for a long-running process whose heap should stay small
//! and flat.
//!
//! Measured on the agent (benches `agent_overhead`): with glibc's defaults one thread arena grew
//! to 36 MiB and stayed there. glibc gives every thread that allocates its own arena (up to 8 per
//! CPU), never returns an arena's memory while anything near its top is live, and after a large
//! block (a file read, a compression buffer) is freed it raises its mmap threshold to that size,
//! so later large buffers land in the arenas too. Two arenas, a fixed mmap threshold (large
//! buffers are mmapped and unmapped when freed), a lower trim threshold, and a `malloc_trim` after
//! each window (returns free pages inside the arenas) keep the resident heap near what is live.
//! Not a different allocator: this needs no new dependency and the cost is a few syscalls a window.

/// Applies the tuning. Call first thing in the agent's process, before threads are started
/// (arenas are created per thread on first use). Process-wide: `kiln agent` calls it, `kiln up`
/// (server and agent in one process) does not.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc malloc parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns free heap pages to the kernel (glibc's `malloc_trim`); a no-op elsewhere. Called once
/// per window.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
