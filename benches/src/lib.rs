//! Shared inputs for Kiln's benchmarks (the benchmarks themselves live in benches/benches/).

pub mod bucket_server;
pub mod fleet;

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;

/// An agent-style profile: `stacks` distinct unsymbolized stacks of `depth` frames drawn from
/// 2,048 addresses in one mapping, each sampled once at 19 Hz. Deterministic (xorshift).
pub fn synthetic_profile(stacks: usize, depth: usize) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", 52_631_578);
    let mapping = b.mapping(
        0x40_0000,
        0x80_0000,
        0,
        "/usr/bin/app",
        "0123456789abcdef0123456789abcdef01234567",
    );
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..stacks {
        let stack: Vec<u64> = (0..depth)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                b.raw_location(mapping, 0x40_0000 + (rng % 2048) * 64)
            })
            .collect();
        b.add_sample(&stack, &[1, 52_631_578], &[]);
    }
    b.finish()
}
