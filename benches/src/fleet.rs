//! A synthetic fleet's CPU profiles: every node runs the same service, so their stacks come from
//! one call tree (branching 4, depth [`DEPTH`]) of symbolized functions (neither Kiln nor
//! `go tool pprof` symbolizes), each 10 s window drawing its ticks with a skew (a few hot stacks
//! take most). Deterministic: the same (node, window) gives the same profile.

use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_proto::{ProfileBuilder, encode_profile_gzip};
use prost::Message;

/// 19 Hz.
pub const PERIOD: i64 = 52_631_578;
/// Frames per stack.
pub const DEPTH: u32 = 12;

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One 10 s window of `node` at `time` (Unix ns): `ticks` samples over `stacks` distinct stacks
/// (at most 4^[`DEPTH`]), gzipped pprof; and its cpu total (ns).
pub fn window(node: usize, seq: u64, time: i64, ticks: usize, stacks: usize) -> (Vec<u8>, i64) {
    let mut rng = Rng((seq + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ node as u64 | 1);
    let mut counts = std::collections::BTreeMap::<u64, i64>::new();
    for _ in 0..ticks {
        let k = (rng.unit().powi(3) * stacks as f64) as u64;
        *counts.entry(k.min(stacks as u64 - 1)).or_default() += 1;
    }
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", PERIOD);
    b.time(time, 10_000_000_000);
    let m = b.mapping(
        0x40_0000,
        0x4000_0000,
        0,
        "/usr/bin/service",
        "0123456789abcdef0123456789abcdef01234567",
    );
    b.mark_symbolized(m);
    let mut locs = std::collections::HashMap::<(u32, u64), u64>::new();
    let mut total = 0;
    for (k, n) in counts {
        // Leaf first; the frame at depth d is the stack's ancestor at that level of the tree.
        let stack: Vec<u64> = (0..DEPTH)
            .rev()
            .map(|d| {
                let node_id = k >> (2 * (DEPTH - 1 - d));
                *locs.entry((d, node_id)).or_insert_with(|| {
                    let f = b.function(
                        &format!("github.com/acme/service/pkg{d}.Handler.Method{node_id}"),
                        "service/handler.go",
                    );
                    let addr = 0x40_0000 + ((u64::from(d) << 24) | node_id) * 16;
                    b.symbolized_location(m, addr, &[(f, 10)])
                })
            })
            .collect();
        b.add_sample(&stack, &[n, n * PERIOD], &[]);
        total += n * PERIOD;
    }
    (encode_profile_gzip(&b.finish()), total)
}

/// A Pyroscope push of one gzipped profile for `node`.
pub fn push_body(node: usize, gz: Vec<u8>) -> Vec<u8> {
    let label = |name: &str, value: &str| LabelPair {
        name: name.into(),
        value: value.into(),
    };
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                label("__name__", "process_cpu"),
                label("service_name", "service"),
                label("node", &format!("node-{node}")),
            ],
            samples: vec![RawSample {
                raw_profile: gz,
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}
