//! Accuracy-matrix workload (tests/accuracy.rs), Rust, built with `--crate-name rust_chain`:
//! main -> rust_chain::main -> rust_chain::alpha -> rust_chain::beta -> rust_chain::hot, where hot
//! burns nearly all of the CPU. `#[inline(never)]` keeps the functions apart and each caller works on
//! the callee's result through `black_box`, so no call becomes a tail call. Usage: acc_chain SECONDS
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn hot(x: u64) -> u64 {
    let mut s = x;
    for i in 0..2_000_000u64 {
        s = black_box(s.wrapping_add(i.wrapping_mul(x)));
    }
    s
}

#[inline(never)]
fn beta(x: u64) -> u64 {
    let pad = black_box([x as u8; 48]);
    let r = hot(black_box(x + 1));
    r.wrapping_add(u64::from(black_box(pad)[7]))
}

#[inline(never)]
fn alpha(x: u64) -> u64 {
    let r = beta(black_box(x.wrapping_mul(3)));
    black_box(r ^ x)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut x = 1u64;
    while Instant::now() < end {
        x = x.wrapping_add(alpha(x));
    }
    std::process::exit((x & 1) as i32);
}
