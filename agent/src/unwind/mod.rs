//! The unwinding stage: user stacks rebuilt from the sampled registers and the copy of the top of
//! the user stack, with the objects' DWARF CFI (`.eh_frame`, or `.debug_frame`), through framehop.
//!
//! framehop (rather than gimli + object by hand) because it already does what a sampling unwinder
//! needs: lazy `.eh_frame_hdr` lookups, a rule cache, frame-pointer fallback where an object has no
//! CFI (JIT code, the vDSO), and a stack-reading callback that lets us stop exactly at the end of
//! the copy. Tables are read once per object ([`tables::TableCache`], keyed by build ID, bounded by
//! bytes); each process gets a framehop unwinder made of its mappings' modules, rebuilt when its
//! mappings change.
//!
//! Every stack ends in a [`StackEnd`]: complete (a root was reached: `_start`/`clone`, whose CFI
//! marks the return address undefined, or a zero frame pointer) or truncated with a reason that the
//! aggregator turns into a named pseudo-frame — never a guessed frame.

pub mod memo;
pub mod tables;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{Error as FramehopError, FrameAddress, Unwinder as _};
use kiln_sampler_bpf::UserRegs;

use crate::procmaps::{MappingKind, Process};
use memo::{MemoKey, Read, StackMemo};
use tables::{SectionBytes, TableCache};

/// Most frames kept per stack (as many as the kernel's frame-pointer walk gives).
pub const MAX_FRAMES: usize = kiln_sampler_bpf::MAX_STACK_DEPTH;
/// Default budget of the unwind-table cache. glibc's tables are ~180 KiB, gcc's cc1 2.7 MiB,
/// a Rust service's ~1 MiB; one `rustc` maps librustc_driver (7 MiB of tables) and libLLVM
/// (8.7 MiB). 24 MiB holds a Rust toolchain's plus a few dozen ordinary binaries: at 16 MiB the
/// cache thrashed on a machine running `cargo build` (310 reads of tables a minute; 55 at 24 MiB).
/// Unwinders may hold evicted tables up to half the budget more ([`Unwinder::prepare`]), so
/// tables stay within 36 MiB, inside the agent's 64 MiB memory target with its ~30 MiB of rest
/// (`--unwind-table-budget` / `AgentConfig::unwind_table_budget_bytes`).
pub const DEFAULT_TABLE_BUDGET_BYTES: usize = 24 << 20;
/// Windows a process's unwinder is kept without samples. Not one: a process sampled now and then (a
/// server between bursts of requests, the agent itself) had its unwinder rebuilt at nearly every
/// sample, and a rebuilt unwinder draws a new framehop generation, so all its cached rules and
/// memoized stacks miss again: at 19 Hz on the agent_overhead workload the rebuilds alone were
/// 0.14 µs per sample, beside 0.63 µs of walks.
pub const UNWINDER_IDLE_WINDOWS: u32 = 3;
/// Reads further than this above the sampled sp are not "the copy was too short" but a wrong
/// unwind (8 MiB is the usual main-thread stack limit).
const PLAUSIBLE_STACK_BYTES: u64 = 8 << 20;

/// Why a stack stopped before a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Truncation {
    /// The next frame lies above the bytes the sampler copied.
    CopyExhausted,
    /// More than [`MAX_FRAMES`] frames.
    TooDeep,
    /// The walk stopped short while some of the process's objects' unwind tables were still being
    /// read (off the sampling thread, see [`tables`]): a later sample gets them.
    TablesLoading,
    /// The unwinder could not go on.
    Failed(UnwindFailure),
}

/// Unwind errors, by kind (a closed set, so they intern as a handful of pseudo-frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnwindFailure {
    /// A read below the sampled sp or implausibly far above it.
    BadStackRead,
    /// Frame pointers led downwards.
    FramePointerBackwards,
    /// Neither pc nor sp changed.
    NoProgress,
    /// Arithmetic overflowed (garbage registers).
    Overflow,
    /// A return address of zero where no root was expected.
    NullReturnAddress,
}

impl Truncation {
    /// The name of the pseudo-frame that ends such a stack.
    pub fn frame_name(self) -> &'static str {
        match self {
            Truncation::CopyExhausted => "[truncated: stack copy exhausted]",
            Truncation::TooDeep => "[truncated: too many frames]",
            Truncation::TablesLoading => "[truncated: unwind tables still loading]",
            Truncation::Failed(f) => match f {
                UnwindFailure::BadStackRead => "[unwind failed: read outside the stack]",
                UnwindFailure::FramePointerBackwards => {
                    "[unwind failed: frame pointer moved backwards]"
                }
                UnwindFailure::NoProgress => "[unwind failed: no progress]",
                UnwindFailure::Overflow => "[unwind failed: address overflow]",
                UnwindFailure::NullReturnAddress => "[unwind failed: null return address]",
            },
        }
    }
}

/// How a stack ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackEnd {
    Complete,
    Truncated(Truncation),
}

/// An unwound user stack: the sampled ip then return addresses (not yet moved back into the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwound {
    pub frames: Vec<u64>,
    pub end: StackEnd,
}

/// Where a stack came from, after [`choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Dwarf,
    FramePointers,
}

/// framehop's rule cache, eight times over: the way is picked by a hash of the address, and the
/// slot within it by the address modulo 509 (framehop's own choice).
///
/// Why: one framehop cache is direct-mapped, so two hot addresses equal modulo 509 evict each other
/// on every sample. Measured on the agent_overhead workload (a 15-frame stack through libc): the
/// return addresses into `alpha` and into `main` shared a slot, so every stack missed twice (~10 % of
/// all frames), each miss an `.eh_frame_hdr` search and a CFI parse. With eight ways two such
/// addresses also share a way only one time in eight. ~100 KiB, shared by all processes.
pub struct RuleCache {
    ways: Box<[CacheX86_64; RULE_CACHE_WAYS]>,
    /// framehop modules generations used up since the ways were last emptied.
    generations: u32,
    /// (hits, lookups) of ways emptied before.
    carried: (u64, u64),
}

const RULE_CACHE_WAYS: usize = 8;
const _: () = assert!(RULE_CACHE_WAYS.is_power_of_two());

/// framehop tags each cached rule with its unwinder's "modules generation": a process-wide `u16`
/// that advances once per new unwinder and once per added module, and wraps after 65,536. On a
/// build machine (a compiler process tree several times a second, ~10 modules a process) that is
/// minutes. A rule cached a whole cycle earlier would then match an unrelated unwinder that drew
/// the same generation, at the same address: a wrong rule. So the ways are emptied each time the
/// agent has used this many generations, and no cached rule outlives a cycle.
const GENERATIONS_PER_RESET: u32 = 60_000;

impl Default for RuleCache {
    fn default() -> Self {
        RuleCache {
            ways: Box::new(std::array::from_fn(|_| CacheX86_64::new())),
            generations: 0,
            carried: (0, 0),
        }
    }
}

impl RuleCache {
    fn way(&mut self, lookup_address: u64) -> &mut CacheX86_64 {
        // Fibonacci hashing: the top bits of the product depend on all bits of the address, not on
        // its residue modulo 509.
        let bits = RULE_CACHE_WAYS.trailing_zeros();
        let i = (lookup_address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
        &mut self.ways[i]
    }

    /// Counts `n` framehop modules generations used (unwinders created, modules added); empties
    /// the cache when a cycle is near (see [`GENERATIONS_PER_RESET`]).
    fn generations_used(&mut self, n: u32) {
        self.generations = self.generations.saturating_add(n);
        if self.generations >= GENERATIONS_PER_RESET {
            self.carried = self.stats();
            for w in self.ways.iter_mut() {
                *w = CacheX86_64::new();
            }
            self.generations = 0;
        }
    }

    /// (hits, lookups) since creation.
    pub fn stats(&self) -> (u64, u64) {
        self.ways.iter().fold(self.carried, |(h, t), w| {
            let s = w.stats();
            (h + s.hit_count, t + s.total())
        })
    }
}

/// Frames of JIT code that DWARF tables do not describe but the runtime that made it does (a JVM's
/// code cache: see [`crate::java`]; V8's code and builtins: [`crate::node::V8Code`]). Asked before
/// framehop at every frame of a walk that has one.
pub trait JitFrames {
    /// Steps over the frame at `ip` (frame number `index`, leaf 0) when it is this runtime's code:
    /// `Some(Ok(caller))` with the caller's registers (`ip` the return address), `Some(Err(addr))`
    /// when the stack word at `addr` could not be read, `None` when `ip` is not JIT code (framehop
    /// goes on). `read` reads the stack copy.
    fn step(
        &mut self,
        index: usize,
        regs: UserRegs,
        read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> Option<Result<UserRegs, u64>>;
}

/// Unwinds one stack with a ready framehop unwinder. Public for the tests and the benchmark.
pub fn unwind_with(
    unwinder: &UnwinderX86_64<SectionBytes>,
    rules: &mut RuleCache,
    regs: UserRegs,
    stack: &[u8],
) -> Unwound {
    let mut frames = Vec::with_capacity(32);
    let end = unwind_logged(
        unwinder,
        rules,
        regs,
        stack,
        &mut Vec::new(),
        &mut frames,
        None,
        None,
    );
    Unwound { frames, end }
}

/// [`unwind_with`] into `frames`, recording every stack word read (offset from sp, value) in
/// `reads`, for the [`StackMemo`] (both cleared first), and with `frame_pointers` the value of rbp
/// in each frame (same index as `frames`: what the frame's code sees, restored by CFI or the
/// frame-pointer rule), which runtimes such as V8 use to find their frames' data.
// The two optional outputs (a runtime's JIT hook, per-frame rbp values) are independent: one
// argument each reads better at the call sites than a struct of options.
#[allow(clippy::too_many_arguments)]
fn unwind_logged(
    unwinder: &UnwinderX86_64<SectionBytes>,
    rules: &mut RuleCache,
    regs: UserRegs,
    stack: &[u8],
    reads: &mut Vec<Read>,
    frames: &mut Vec<u64>,
    mut jit: Option<&mut dyn JitFrames>,
    mut frame_pointers: Option<&mut Vec<u64>>,
) -> StackEnd {
    reads.clear();
    if let Some(fps) = frame_pointers.as_deref_mut() {
        fps.clear();
        fps.push(regs.bp);
    }
    let sp = regs.sp;
    let copy_end = sp.saturating_add(stack.len() as u64);
    let mut read = |addr: u64| -> Result<u64, ()> {
        let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
        let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let value = u64::from_le_bytes(word);
        // The copy is at most MAX_STACK_COPY (32 KiB) long, so the offset fits.
        reads.push((off as u32, value));
        Ok(value)
    };
    frames.clear();
    frames.push(regs.ip);
    let mut unwind_regs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
    let mut address = FrameAddress::from_instruction_pointer(regs.ip);
    // framehop's `iter_frames`, frame by frame, so that each frame uses its own cache way.
    loop {
        if let Some(jit) = jit.as_deref_mut() {
            let at = UserRegs {
                ip: address.address(),
                sp: unwind_regs.sp(),
                bp: unwind_regs.bp(),
            };
            let mut read_word = |a: u64| read(a);
            match jit.step(frames.len() - 1, at, &mut read_word) {
                None => {}
                Some(Ok(caller)) => {
                    let Some(next) = FrameAddress::from_return_address(caller.ip) else {
                        return StackEnd::Truncated(Truncation::Failed(
                            UnwindFailure::NullReturnAddress,
                        ));
                    };
                    if caller.sp <= at.sp {
                        return StackEnd::Truncated(Truncation::Failed(UnwindFailure::NoProgress));
                    }
                    if frames.len() == MAX_FRAMES {
                        break StackEnd::Truncated(Truncation::TooDeep);
                    }
                    frames.push(caller.ip);
                    if let Some(fps) = frame_pointers.as_deref_mut() {
                        fps.push(caller.bp);
                    }
                    unwind_regs = UnwindRegsX86_64::new(caller.ip, caller.sp, caller.bp);
                    address = next;
                    continue;
                }
                Some(Err(a)) => {
                    break StackEnd::Truncated(
                        if a >= sp
                            && a.saturating_add(8) > copy_end
                            && a - sp < PLAUSIBLE_STACK_BYTES
                        {
                            Truncation::CopyExhausted
                        } else {
                            Truncation::Failed(UnwindFailure::BadStackRead)
                        },
                    );
                }
            }
        }
        let cache = rules.way(address.address_for_lookup());
        match unwinder.unwind_frame(address, &mut unwind_regs, cache, &mut read) {
            Ok(Some(return_address)) => {
                let Some(next) = FrameAddress::from_return_address(return_address) else {
                    return StackEnd::Truncated(Truncation::Failed(
                        UnwindFailure::NullReturnAddress,
                    ));
                };
                if frames.len() == MAX_FRAMES {
                    break StackEnd::Truncated(Truncation::TooDeep);
                }
                frames.push(return_address);
                if let Some(fps) = frame_pointers.as_deref_mut() {
                    fps.push(unwind_regs.bp());
                }
                address = next;
            }
            Ok(None) => break StackEnd::Complete,
            Err(e) => {
                break StackEnd::Truncated(match e {
                    // A word that does not fit wholly in the copy, at a plausible distance above sp.
                    FramehopError::CouldNotReadStack(a)
                        if a >= sp
                            && a.saturating_add(8) > copy_end
                            && a - sp < PLAUSIBLE_STACK_BYTES =>
                    {
                        Truncation::CopyExhausted
                    }
                    FramehopError::CouldNotReadStack(_) => {
                        Truncation::Failed(UnwindFailure::BadStackRead)
                    }
                    FramehopError::FramepointerUnwindingMovedBackwards => {
                        Truncation::Failed(UnwindFailure::FramePointerBackwards)
                    }
                    FramehopError::DidNotAdvance => Truncation::Failed(UnwindFailure::NoProgress),
                    FramehopError::IntegerOverflow => Truncation::Failed(UnwindFailure::Overflow),
                    FramehopError::ReturnAddressIsNull => {
                        Truncation::Failed(UnwindFailure::NullReturnAddress)
                    }
                });
            }
        }
    }
}

/// Picks between the DWARF stack and the kernel's frame-pointer walk (`fp`, same shape).
///
/// A complete DWARF stack wins. A truncated one is replaced by the FP walk only when the FP walk is
/// longer *and* agrees with every frame DWARF found: then the FP chain is provably the same stack
/// (code built with frame pointers, whose chain goes on beyond the copy), and it is what the
/// kernel read from the full stack. An FP walk through code without frame pointers skips or
/// invents callers, so it disagrees with DWARF early and is never taken over it.
pub fn choose<'a>(dwarf: &'a [u64], end: StackEnd, fp: &'a [u64]) -> (&'a [u64], StackEnd, Source) {
    let extends = fp.len() > dwarf.len() && fp.starts_with(dwarf);
    match end {
        StackEnd::Truncated(_) if extends => (
            fp,
            // The kernel's walk ends at a zero frame pointer (a root) or at its depth limit.
            if fp.len() >= MAX_FRAMES {
                StackEnd::Truncated(Truncation::TooDeep)
            } else {
                StackEnd::Complete
            },
            Source::FramePointers,
        ),
        _ => (dwarf, end, Source::Dwarf),
    }
}

/// A process's unwinder, valid for one snapshot of its mappings.
struct ProcessUnwinder {
    /// Unique among all unwinders this [`Unwinder`] built (keys the [`StackMemo`]).
    id: u64,
    process: Arc<Process>,
    unwinder: UnwinderX86_64<SectionBytes>,
    /// The tables its modules were made of. Held here (not only as the modules' section bytes)
    /// so that the table cache sees them in use after evicting them and hands out these same
    /// tables instead of reading a second copy (see [`TableCache::evicted_in_use_bytes`]).
    _tables: Vec<Arc<tables::ObjectTables>>,
    /// [`Unwinder::prepared`] when last prepared (the least recent are dropped first when
    /// evicted tables held by unwinders outgrow the budget).
    last_prepared: u64,
    /// Windows ended since this process was last sampled.
    idle_windows: u32,
    /// Built while some of its objects' tables were still loading: rebuilt once more are read.
    incomplete: bool,
    /// The table cache's [`TableCache::completed`] when built.
    built_at: u64,
}

/// Walks the stacks of one process whose unwinder is ready ([`Unwinder::prepare`]): the per-sample
/// part of unwinding, apart so that it can be timed on its own.
pub struct Walker<'a> {
    /// The process unwinder's [`ProcessUnwinder::id`].
    id: u64,
    unwinder: &'a UnwinderX86_64<SectionBytes>,
    rules: &'a mut RuleCache,
    memo: Option<&'a mut StackMemo>,
    reads: &'a mut Vec<Read>,
    /// Some tables were still loading when the unwinder was built.
    incomplete: bool,
}

impl Walker<'_> {
    /// Unwinds one sample into `frames` (cleared first): the stack from the [`StackMemo`] when it
    /// provably walks the same way as one walked before, else walked frame by frame.
    pub fn walk(&mut self, regs: UserRegs, stack: &[u8], frames: &mut Vec<u64>) -> StackEnd {
        if self.incomplete {
            // Not memoized: the unwinder is rebuilt (under a new id) once the tables are read.
            let end = unwind_logged(
                self.unwinder,
                self.rules,
                regs,
                stack,
                self.reads,
                frames,
                None,
                None,
            );
            return match end {
                StackEnd::Complete => end,
                StackEnd::Truncated(_) => StackEnd::Truncated(Truncation::TablesLoading),
            };
        }
        let Some(memo) = self.memo.as_deref_mut() else {
            return unwind_logged(
                self.unwinder,
                self.rules,
                regs,
                stack,
                self.reads,
                frames,
                None,
                None,
            );
        };
        let key = MemoKey::new(self.id, regs, stack.len());
        if let Some(end) = memo.lookup(&key, stack, frames) {
            return end;
        }
        let end = unwind_logged(
            self.unwinder,
            self.rules,
            regs,
            stack,
            self.reads,
            frames,
            None,
            None,
        );
        memo.store(key, self.reads, frames, end);
        end
    }

    /// [`Walker::walk`] with JIT frames stepped over by `jit`, and with `frame_pointers` each
    /// frame's rbp (see [`unwind_logged`]; V8 finds its frames' data through them). Never
    /// memoized: where a JIT's code is, and how large its frames are, changes without any stack
    /// word changing (and the memo keeps return addresses only).
    pub fn walk_jit(
        &mut self,
        regs: UserRegs,
        stack: &[u8],
        frames: &mut Vec<u64>,
        jit: &mut dyn JitFrames,
        frame_pointers: Option<&mut Vec<u64>>,
    ) -> StackEnd {
        let end = unwind_logged(
            self.unwinder,
            self.rules,
            regs,
            stack,
            self.reads,
            frames,
            Some(jit),
            frame_pointers,
        );
        match end {
            StackEnd::Truncated(_) if self.incomplete => {
                StackEnd::Truncated(Truncation::TablesLoading)
            }
            _ => end,
        }
    }
}

/// Unwinds samples of many processes, sharing one table cache, one rule cache and one memo of
/// recent stacks.
pub struct Unwinder {
    tables: TableCache,
    rules: RuleCache,
    /// `None` when turned off ([`Unwinder::without_memo`]).
    memo: Option<StackMemo>,
    /// The words the current walk read (kept for its capacity).
    reads: Vec<Read>,
    processes: HashMap<u32, ProcessUnwinder>,
    next_id: u64,
    /// Calls to [`Unwinder::prepare`] so far (orders unwinders by last use).
    prepared: u64,
    /// CPU time spent building per-process unwinders (table loads included) not yet taken by
    /// [`Unwinder::take_build_time`].
    build_time: std::time::Duration,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_BUDGET_BYTES)
    }
}

impl Unwinder {
    pub fn new(table_budget_bytes: usize) -> Self {
        Unwinder {
            tables: TableCache::new(table_budget_bytes),
            rules: RuleCache::default(),
            memo: Some(StackMemo::default()),
            reads: Vec::with_capacity(2 * MAX_FRAMES),
            processes: HashMap::new(),
            next_id: 0,
            prepared: 0,
            build_time: std::time::Duration::ZERO,
        }
    }

    /// Builds `process`'s unwinder now (reading its objects' tables through `/proc/PID`, so it
    /// must still be alive) unless it is up to date, and returns a [`Walker`] for its samples;
    /// [`Unwinder::unwind`] does both.
    pub fn prepare(&mut self, process: &Arc<Process>) -> Walker<'_> {
        self.tables.poll();
        let completed = self.tables.completed();
        let current = |p: &ProcessUnwinder| {
            Arc::ptr_eq(&p.process, process) && !(p.incomplete && p.built_at != completed)
        };
        if !self.processes.get(&process.pid).is_some_and(current) {
            self.processes.remove(&process.pid);
            self.release_evicted_tables();
        }
        let p = match self.processes.entry(process.pid) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                // CPU time: a build may read files and be preempted (see cputime.rs). Builds are
                // per process and per object, so the system call this clock costs does not matter.
                let started = crate::cputime::thread_cpu_time();
                let (unwinder, held, incomplete) =
                    build(&mut self.tables, &mut self.rules, process);
                self.build_time += crate::cputime::thread_cpu_time().saturating_sub(started);
                self.next_id += 1;
                v.insert(ProcessUnwinder {
                    id: self.next_id,
                    process: process.clone(),
                    unwinder,
                    _tables: held,
                    last_prepared: 0,
                    idle_windows: 0,
                    incomplete,
                    built_at: completed,
                })
            }
        };
        self.prepared += 1;
        p.last_prepared = self.prepared;
        p.idle_windows = 0;
        Walker {
            id: p.id,
            unwinder: &p.unwinder,
            rules: &mut self.rules,
            memo: self.memo.as_mut(),
            reads: &mut self.reads,
            incomplete: p.incomplete,
        }
    }

    /// Drops the least recently used unwinders while the tables they hold that the cache has
    /// evicted outgrow half the cache's budget, so that tables in memory stay within 1.5 times the
    /// budget.
    /// Under churn (a build machine: hundreds of short-lived compilers, each mapping its own
    /// plugins and libraries) every exited process's unwinder kept its objects' tables for
    /// [`UNWINDER_IDLE_WINDOWS`] windows: 400 MB of heap during a `cargo build` beside a cache at
    /// its 16 MiB. A dropped unwinder is rebuilt if its process is sampled again.
    fn release_evicted_tables(&mut self) {
        let budget = self.tables.budget_bytes() / 2;
        let mut held = self.tables.evicted_in_use_bytes();
        if held <= budget {
            return;
        }
        let mut order: Vec<(u64, u32)> = self
            .processes
            .iter()
            .map(|(&pid, p)| (p.last_prepared, pid))
            .collect();
        order.sort_unstable();
        // In batches (each recount walks the tables in use): an eighth of the unwinders at a time.
        let batch = order.len().div_ceil(8).max(1);
        for chunk in order.chunks(batch) {
            for (_, pid) in chunk {
                self.processes.remove(pid);
            }
            held = self.tables.evicted_in_use_bytes();
            if held <= budget {
                break;
            }
        }
    }

    /// Reads object files for unwind tables on a worker thread (what the agent does): the
    /// sampling thread never waits for a file a container controls (see [`tables`]).
    pub fn with_background_loads(mut self) -> Self {
        self.tables =
            std::mem::replace(&mut self.tables, TableCache::new(0)).with_background_loads();
        self
    }

    /// Reads tables with `load` (tests: a read that stalls); call before
    /// [`Unwinder::with_background_loads`].
    pub fn with_table_loader(mut self, load: tables::LoadFn) -> Self {
        self.tables = std::mem::replace(&mut self.tables, TableCache::new(0)).with_loader(load);
        self
    }

    /// Unwinds one sample of `process`, building its unwinder first if needed.
    pub fn unwind(&mut self, process: &Arc<Process>, regs: UserRegs, stack: &[u8]) -> Unwound {
        let mut frames = Vec::with_capacity(32);
        let end = self.prepare(process).walk(regs, stack, &mut frames);
        Unwound { frames, end }
    }

    /// This unwinder without the [`StackMemo`]: every stack is walked (for the benchmarks, which
    /// measure the walk itself).
    pub fn without_memo(mut self) -> Self {
        self.memo = None;
        self
    }

    /// CPU time spent building per-process unwinders (reading tables included) since the last call:
    /// the part of unwinding that is paid per process and per object, not per sample.
    pub fn take_build_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.build_time)
    }

    /// Drops the unwinders of processes not sampled in the last [`UNWINDER_IDLE_WINDOWS`] windows
    /// (called once per window), so that evicted tables and exited processes do not stay alive
    /// through them for long.
    pub fn end_window(&mut self) {
        self.processes.retain(|_, p| {
            p.idle_windows += 1;
            p.idle_windows <= UNWINDER_IDLE_WINDOWS
        });
    }

    /// Bytes held by the table cache (approximate).
    pub fn table_bytes(&self) -> usize {
        self.tables.used_bytes()
    }

    /// The table cache's size and running totals.
    pub fn table_stats(&self) -> tables::CacheStats {
        self.tables.stats()
    }

    /// The rule cache's (hits, lookups) since start.
    pub fn rule_cache_stats(&self) -> (u64, u64) {
        self.rules.stats()
    }

    /// The stack memo's (hits, lookups) since start.
    pub fn memo_stats(&self) -> (u64, u64) {
        self.memo.as_ref().map_or((0, 0), StackMemo::stats)
    }
}

/// A framehop unwinder made of `process`'s mappings' modules, and whether some of their tables
/// were still loading (those modules are missing).
fn build(
    tables: &mut TableCache,
    rules: &mut RuleCache,
    process: &Process,
) -> (
    UnwinderX86_64<SectionBytes>,
    Vec<Arc<tables::ObjectTables>>,
    bool,
) {
    let mut u = UnwinderX86_64::new();
    let mut held = Vec::new();
    let mut generations = 1;
    let mut incomplete = false;
    for m in &process.mappings {
        let t = match m.kind {
            MappingKind::File { .. } => match tables.get(process.pid, m) {
                tables::Lookup::Ready(t) => t,
                tables::Lookup::Loading => {
                    incomplete = true;
                    None
                }
            },
            // The vDSO's tables come from the agent's own copy of the image (see vdso.rs).
            MappingKind::Vdso => crate::vdso::Vdso::get()
                .filter(|v| v.matches(m))
                .and_then(|v| v.tables().cloned()),
        };
        let Some(t) = t else {
            continue;
        };
        if let Some(module) = t.module(m.start..m.end, m.offset) {
            u.add_module(module);
            generations += 1;
        }
        if !held.iter().any(|h| Arc::ptr_eq(h, &t)) {
            held.push(t);
        }
    }
    rules.generations_used(generations);
    (u, held, incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_dwarf_stack_wins_over_a_longer_fp_walk() {
        let (frames, end, src) = choose(&[1, 2, 3], StackEnd::Complete, &[1, 2, 3, 4]);
        assert_eq!(
            (frames, end, src),
            (&[1, 2, 3][..], StackEnd::Complete, Source::Dwarf)
        );
    }

    #[test]
    fn truncated_dwarf_stack_is_extended_by_an_agreeing_fp_walk() {
        let cut = StackEnd::Truncated(Truncation::CopyExhausted);
        let (frames, end, src) = choose(&[1, 2], cut, &[1, 2, 3, 4]);
        assert_eq!(src, Source::FramePointers);
        assert_eq!(frames, &[1, 2, 3, 4]);
        assert_eq!(end, StackEnd::Complete);
    }

    #[test]
    fn disagreeing_fp_walk_is_not_taken() {
        // No-FP code: the kernel's walk skipped frame 2 and went on with garbage.
        let cut = StackEnd::Truncated(Truncation::CopyExhausted);
        let (frames, end, src) = choose(&[1, 2, 3], cut, &[1, 3, 99, 98, 97]);
        assert_eq!(src, Source::Dwarf);
        assert_eq!(end, cut);
        assert_eq!(frames, &[1, 2, 3]);
    }

    #[test]
    fn addresses_equal_modulo_509_do_not_evict_each_other() {
        // An FP frame whose return address (minus one, the lookup address) is the leaf ip plus
        // 509: framehop's direct-mapped cache puts both in one slot.
        let sp = 0x7fff_0000u64;
        let ip = 0x40_1000u64;
        let ret = ip + 509 + 1;
        let mut stack = vec![0u8; 64];
        stack[16..24].copy_from_slice(&0u64.to_le_bytes()); // saved bp: the root
        stack[24..32].copy_from_slice(&ret.to_le_bytes());
        let u = UnwinderX86_64::<SectionBytes>::new();
        let mut rules = RuleCache::default();
        let way = |r: &mut RuleCache, a: u64| r.way(a) as *const CacheX86_64;
        assert_ne!(
            way(&mut rules, ip),
            way(&mut rules, ret - 1),
            "test addresses must fall in different ways"
        );
        let regs = UserRegs {
            ip,
            sp,
            bp: sp + 16,
        };
        let first = unwind_with(&u, &mut rules, regs, &stack);
        assert_eq!(first.frames, vec![ip, ret]);
        let (hits_before, lookups_before) = rules.stats();
        let again = unwind_with(&u, &mut rules, regs, &stack);
        assert_eq!(again, first);
        let (hits, lookups) = rules.stats();
        assert!(lookups > lookups_before);
        assert_eq!(
            hits - hits_before,
            lookups - lookups_before,
            "a warm second unwind of the same stack looks every rule up in the cache"
        );
    }

    #[test]
    fn rule_cache_is_emptied_before_framehop_generations_wrap() {
        let sp = 0x7fff_0000u64;
        let mut stack = vec![0u8; 64];
        stack[24..32].copy_from_slice(&0x40_1234u64.to_le_bytes());
        let regs = UserRegs {
            ip: 0x40_1000,
            sp,
            bp: sp + 16,
        };
        let u = UnwinderX86_64::<SectionBytes>::new();
        let mut rules = RuleCache::default();
        unwind_with(&u, &mut rules, regs, &stack);
        let (hits, lookups) = rules.stats();
        unwind_with(&u, &mut rules, regs, &stack);
        let (hits2, lookups2) = rules.stats();
        assert_eq!(hits2 - hits, lookups2 - lookups, "warm: every rule cached");
        rules.generations_used(GENERATIONS_PER_RESET - 1);
        unwind_with(&u, &mut rules, regs, &stack);
        assert!(rules.stats().0 > hits2, "not yet emptied");
        let (hits3, lookups3) = rules.stats();
        rules.generations_used(1);
        assert_eq!(rules.stats(), (hits3, lookups3), "totals survive emptying");
        unwind_with(&u, &mut rules, regs, &stack);
        let (hits4, lookups4) = rules.stats();
        assert!(lookups4 > lookups3);
        assert_eq!(hits4, hits3, "emptied: the first lookups miss");
    }

    #[test]
    fn a_new_snapshot_of_a_process_gets_a_new_unwinder() {
        let me = Arc::new(
            Process::load(
                std::process::id(),
                &mut crate::buildid::BuildIdCache::new(64),
                4096,
            )
            .expect("this process's /proc entry"),
        );
        let mut u = Unwinder::default();
        let id = u.prepare(&me).id;
        assert_eq!(u.prepare(&me).id, id, "same snapshot: same unwinder");
        // A new mapping (say a dlopen): the process cache hands out a new snapshot.
        let mut grown = (*me).clone();
        let last = grown.mappings.last().expect("mappings").clone();
        grown.mappings.push(crate::procmaps::Mapping {
            start: last.end + 0x1000,
            end: last.end + 0x2000,
            ..last
        });
        assert_ne!(u.prepare(&Arc::new(grown)).id, id);
    }

    #[test]
    fn unwinders_outlive_a_few_idle_windows_only() {
        let me = Arc::new(
            Process::load(
                std::process::id(),
                &mut crate::buildid::BuildIdCache::new(64),
                4096,
            )
            .expect("this process's /proc entry"),
        );
        let mut u = Unwinder::default();
        let id = u.prepare(&me).id;
        for _ in 0..UNWINDER_IDLE_WINDOWS {
            u.end_window();
        }
        assert_eq!(u.prepare(&me).id, id, "kept while idle for a few windows");
        for _ in 0..=UNWINDER_IDLE_WINDOWS {
            u.end_window();
        }
        assert_ne!(u.prepare(&me).id, id, "dropped after that, rebuilt");
    }

    /// Many processes, each mapping an object of its own (a build machine's compilers and their
    /// plugins): the tables in memory stay within about twice the cache's budget however many
    /// unwinders were built, and an evicted object still held by a live unwinder is shared with
    /// the next process that maps it, not read again.
    #[test]
    fn tables_held_by_unwinders_stay_within_one_and_a_half_budgets() {
        const TABLE: usize = 100_000;
        let one = tables::ObjectTables::synthetic(TABLE).approx_bytes();
        let budget = 4 * one;
        // Every table read, weakly: what is still alive is what is in memory.
        let read: Arc<std::sync::Mutex<Vec<std::sync::Weak<[u8]>>>> = Arc::default();
        let mut u = Unwinder::new(budget).with_table_loader({
            let read = read.clone();
            Arc::new(move |_, _| {
                let t = tables::ObjectTables::synthetic(TABLE);
                read.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(t.eh_frame_weak());
                Ok(t)
            })
        });
        let me = Process::load(
            std::process::id(),
            &mut crate::buildid::BuildIdCache::new(64),
            4096,
        )
        .expect("this process's /proc entry");
        let file = me
            .mappings
            .iter()
            .find(|m| matches!(m.kind, MappingKind::File { .. }))
            .expect("this test binary is a mapped file")
            .clone();
        let process = |pid: u32, object: u64| {
            let mut p = me.clone();
            p.pid = pid;
            let mut m = file.clone();
            m.file.inode = (1 << 40) | object;
            m.build_id = None;
            p.mappings = vec![m];
            Arc::new(p)
        };
        let procs: Vec<Arc<Process>> = (0..40).map(|i| process(1_000_000 + i, i.into())).collect();
        for p in &procs {
            u.prepare(p);
        }
        assert_eq!(u.table_stats().loads, 40);
        let alive = |read: &std::sync::Mutex<Vec<std::sync::Weak<[u8]>>>| {
            read.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|w| w.strong_count() > 0)
                .count()
        };
        // The cache's four, and at most two more held by unwinders (+1: the bound is checked
        // before each build).
        assert!(alive(&read) <= 7, "{} tables in memory", alive(&read));
        // Object 35: evicted from the cache (it holds 36 to 39), still held by process 35's
        // unwinder (among the most recently used).
        let newcomer = process(2_000_000, 35);
        u.prepare(&newcomer);
        assert_eq!(
            u.table_stats().loads,
            40,
            "the held tables were shared, not read again"
        );
    }

    #[inline(never)]
    fn a_function_of_this_binary() -> u64 {
        std::hint::black_box(7)
    }

    /// The unwind tables of mapped files are read off the sampling thread. The proxy for a file
    /// that never answers (a stalled FUSE filesystem): a loader that blocks until the test opens
    /// a gate (at most 20 s). Were tables read on the calling thread again, `unwind` would block
    /// there for the 20 s and the loader would record the test's thread, failing the test; here
    /// it answers at once, with the stack marked as cut short by loading tables, and the real
    /// tables are used once the worker has read them.
    #[test]
    fn a_stalled_table_read_does_not_stall_unwinding() {
        use std::sync::{Condvar, Mutex};
        use std::time::{Duration, Instant};
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let readers = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
        let load: tables::LoadFn = {
            let (gate, readers) = (gate.clone(), readers.clone());
            Arc::new(move |pid, m| {
                let thread = std::thread::current().name().map(str::to_owned);
                readers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(thread);
                let (open, cv) = &*gate;
                let guard = open.lock().unwrap_or_else(|p| p.into_inner());
                drop(cv.wait_timeout_while(guard, Duration::from_secs(20), |o| !*o));
                tables::ObjectTables::load(pid, m)
            })
        };
        let mut u = Unwinder::default()
            .with_table_loader(load)
            .with_background_loads();
        let me = Arc::new(
            Process::load(
                std::process::id(),
                &mut crate::buildid::BuildIdCache::new(64),
                4096,
            )
            .expect("this process's /proc entry"),
        );
        // An ip in this binary; a frame-pointer chain that leaves the copy.
        let ip = a_function_of_this_binary as *const () as usize as u64;
        let sp = 0x7fff_0000u64;
        let mut stack = vec![0u8; 64];
        stack[16..24].copy_from_slice(&(sp + 4096).to_le_bytes());
        stack[24..32].copy_from_slice(&(ip + 16).to_le_bytes());
        let regs = UserRegs {
            ip,
            sp,
            bp: sp + 16,
        };
        let started = Instant::now();
        let first = u.unwind(&me, regs, &stack);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "unwinding waited for the stalled read"
        );
        assert_eq!(
            first.end,
            StackEnd::Truncated(Truncation::TablesLoading),
            "{first:?}"
        );
        assert!(u.table_stats().pending > 0);
        // Open the gate: the worker reads the tables; a later sample uses them.
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = u.unwind(&me, regs, &stack);
            if u.table_stats().pending == 0 {
                assert_ne!(out.end, StackEnd::Truncated(Truncation::TablesLoading));
                break;
            }
            assert!(Instant::now() < deadline, "tables never arrived: {out:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let readers = readers.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!readers.is_empty());
        assert!(
            readers.iter().all(|t| t.as_deref() == Some("kiln-tables")),
            "tables read on {readers:?}"
        );
    }

    #[test]
    fn reads_outside_the_copy_stop_the_unwind() {
        // No modules: framehop walks frame pointers. bp points into the copy, whose saved bp points
        // past its end: the first caller is found, the next read is outside the copy.
        let sp = 0x7fff_0000u64;
        let mut stack = vec![0u8; 64];
        stack[16..24].copy_from_slice(&(sp + 4096).to_le_bytes()); // saved bp, beyond the copy
        stack[24..32].copy_from_slice(&0x40_1234u64.to_le_bytes()); // return address
        let u = UnwinderX86_64::<SectionBytes>::new();
        let mut cache = RuleCache::default();
        let out = unwind_with(
            &u,
            &mut cache,
            UserRegs {
                ip: 0x40_1000,
                sp,
                bp: sp + 16,
            },
            &stack,
        );
        assert_eq!(out.frames, vec![0x40_1000, 0x40_1234]);
        assert_eq!(out.end, StackEnd::Truncated(Truncation::CopyExhausted));
        assert_eq!(
            Truncation::CopyExhausted.frame_name(),
            "[truncated: stack copy exhausted]"
        );
    }
}
