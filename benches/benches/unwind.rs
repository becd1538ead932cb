//! User-stack unwinding throughput: the agent's DWARF unwinder (framehop over cached `.eh_frame`
//! tables) against a frame-pointer walk over the very same stack copies, in the same run; and the
//! agent's memo of recent stacks (`unwind::memo`), which answers a stack seen before by checking
//! the words its walk read.
//!
//! The corpus is generated here rather than recorded: this process captures its own registers and
//! the top 8 KiB of its stack (exactly what the BPF sampler copies) at the bottom of call chains of
//! varied depth. The bench profile keeps Rust's default (no frame pointers), so the FP walk is the
//! cost floor of touching the copy, not an equally good stack; frames per stack are printed for
//! both.

use std::arch::asm;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_agent::buildid::BuildIdCache;
use kiln_agent::procmaps::Process;
use kiln_agent::unwind::{Unwinder, Unwound};
use kiln_sampler_bpf::UserRegs;

const COPY: usize = 8192;

/// Registers and a copy of the stack above sp, taken in this very frame.
#[inline(never)]
fn capture() -> (UserRegs, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers, no memory access, no stack change.
    unsafe {
        asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
             ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp,
             options(nomem, nostack, preserves_flags));
    }
    // SAFETY: the callers recursed from a frame with more than COPY bytes of live stack above
    // (see `corpus`), so [sp, sp + COPY) is mapped, initialised stack of this thread.
    let copy = unsafe { std::slice::from_raw_parts(sp as *const u8, COPY) }.to_vec();
    (UserRegs { ip, sp, bp }, copy)
}

#[inline(never)]
fn chain(n: u32, out: &mut Vec<(UserRegs, Vec<u8>)>) -> u64 {
    let pad = black_box([n as u8; 96]);
    if n == 0 {
        out.push(capture());
    } else {
        chain(n - 1, out);
    }
    u64::from(black_box(pad)[3])
}

/// Stacks of depth 2..40, captured below a 16 KiB cushion so that every copy stays inside the stack.
#[inline(never)]
fn corpus() -> Vec<(UserRegs, Vec<u8>)> {
    let cushion = black_box([0u8; 16384]);
    let mut out = Vec::new();
    for depth in (2..40).step_by(2) {
        for _ in 0..5 {
            chain(depth, &mut out);
        }
    }
    black_box(cushion);
    out
}

/// The frame-pointer walk the kernel does, over the copy instead of live memory.
fn fp_walk(regs: UserRegs, stack: &[u8]) -> usize {
    let read = |a: u64| -> Option<u64> {
        let off = usize::try_from(a.checked_sub(regs.sp)?).ok()?;
        let b = stack.get(off..off + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    let (mut bp, mut n) = (regs.bp, 1);
    while n < 127 {
        let (Some(next), Some(ret)) = (read(bp), read(bp.wrapping_add(8))) else {
            break;
        };
        if ret == 0 || next <= bp {
            break;
        }
        n += 1;
        bp = next;
    }
    n
}

fn bench(c: &mut Criterion) {
    let stacks = corpus();
    let process = Arc::new(
        Process::load(std::process::id(), &mut BuildIdCache::new(64), 4096)
            .expect("this process's /proc entry"),
    );
    // Without the memo: every iteration repeats the corpus, which the memo would answer whole.
    let mut unwinder = Unwinder::default().without_memo();
    unwinder.prepare(&process);
    let dwarf: Vec<Unwound> = stacks
        .iter()
        .map(|(r, s)| unwinder.unwind(&process, *r, s))
        .collect();
    let dwarf_frames: usize = dwarf.iter().map(|u| u.frames.len()).sum();
    let fp_frames: usize = stacks.iter().map(|(r, s)| fp_walk(*r, s)).sum();
    println!(
        "unwind corpus: {} stacks; frames/stack: DWARF {:.1}, FP walk {:.1}",
        stacks.len(),
        dwarf_frames as f64 / stacks.len() as f64,
        fp_frames as f64 / stacks.len() as f64
    );

    let mut g = c.benchmark_group("unwind");
    g.throughput(Throughput::Elements(stacks.len() as u64));
    g.bench_function("dwarf_framehop_warm", |b| {
        b.iter(|| {
            for (r, s) in &stacks {
                black_box(unwinder.unwind(&process, *r, s));
            }
        })
    });
    let mut memoized = Unwinder::default();
    for (r, s) in &stacks {
        assert_eq!(
            memoized.unwind(&process, *r, s),
            unwinder.unwind(&process, *r, s)
        );
    }
    g.bench_function("dwarf_memo_hits", |b| {
        // Every stack was walked once above: each is now a memo hit (the words read, checked).
        b.iter(|| {
            for (r, s) in &stacks {
                black_box(memoized.unwind(&process, *r, s));
            }
        })
    });
    let (hits, lookups) = memoized.memo_stats();
    println!(
        "memo: {:.1} % of {lookups} lookups hit",
        100.0 * hits as f64 / lookups.max(1) as f64
    );
    g.bench_function("fp_walk_same_copies", |b| {
        b.iter(|| {
            for (r, s) in &stacks {
                black_box(fp_walk(*r, s));
            }
        })
    });
    g.sample_size(10);
    g.bench_function("dwarf_cold_tables", |b| {
        // A fresh unwinder: reads every mapped object's tables first (once per binary in the agent).
        b.iter(|| {
            let mut u = Unwinder::default().without_memo();
            for (r, s) in &stacks {
                black_box(u.unwind(&process, *r, s));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
