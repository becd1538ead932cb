//! Workload for Kiln's stack-copy measurement: a Rust release binary (no frame pointers, rustc's
//! default) with main -> recurse^DEPTH -> hot, each frame holding 256 bytes of locals.
//! Usage: rust_chain SECONDS DEPTH
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
fn recurse(n: u32, x: u64) -> u64 {
    let pad = black_box([x as u8; 256]);
    let r = if n == 0 { hot(x) } else { recurse(n - 1, x + 1) };
    r.wrapping_add(u64::from(black_box(pad)[7]))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let depth: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut x = 1u64;
    while Instant::now() < end {
        x = x.wrapping_add(recurse(depth, x));
    }
    std::process::exit((x & 1) as i32);
}
