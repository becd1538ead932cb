//! Issue 10, point 4: merging stays linear whatever the frame names. A hostile run found the merge
//! quadratic when many frames share one name under different parents (200 k such stacks: 9 s
//! instead of 1 s): the child map's hasher let the bucket depend on the name only.
//!
//! Two inputs of the same shape, merged into a fresh [`Tree`] (the child lookups the flame graph,
//! top table and diff all run):
//! - `distinct_names`: stack `i` is `a_i; b_i; c_i` — every frame its own name (the baseline);
//! - `same_names`: stack `i` is `a_i; work; leaf` — `work` and `leaf` each under 200 k parents.
//!
//! Both make 3 × N + 1 nodes from 3 × N lookups. The figure to track is the ratio
//! `same_names / distinct_names`, printed at the end of the run: ~1 when the merge is linear (it
//! was ~9 with the old hasher at N = 200 k, and grows with N). `KILN_MERGE_STACKS` sets N (default
//! 200,000); `cargo test --benches` runs it once at a small N as a smoke test.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use kiln_storage_server::query::merge::Tree;

/// N: `KILN_MERGE_STACKS` (default 200,000) under `cargo bench`; 2,000 as a smoke test.
fn stacks() -> usize {
    if !std::env::args().any(|a| a == "--bench") {
        return 2_000;
    }
    std::env::var("KILN_MERGE_STACKS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(200_000)
}

/// An input as paths of name ids, interned beforehand (so the timed part is the merge alone, not
/// string interning).
struct Input {
    paths: Vec<[u32; 3]>,
}

fn input(n: usize, shared: bool) -> Input {
    let mut names = Tree::new();
    let work = names.intern("work");
    let leaf = names.intern("leaf");
    let paths = (0..n)
        .map(|i| {
            let a = names.intern(&format!("a_{i}"));
            if shared {
                [a, work, leaf]
            } else {
                [
                    a,
                    names.intern(&format!("b_{i}")),
                    names.intern(&format!("c_{i}")),
                ]
            }
        })
        .collect();
    Input { paths }
}

fn merge(input: &Input) -> Tree {
    // The merge only looks up children by (parent, name id): the names themselves are not needed.
    let mut tree = Tree::new();
    for p in &input.paths {
        tree.add(p.iter().copied(), 1);
    }
    tree
}

fn bench(c: &mut Criterion) {
    let n = stacks();
    let distinct = input(n, false);
    let same = input(n, true);
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("distinct_names", |b| {
        b.iter(|| merge(&distinct).nodes.len())
    });
    g.bench_function("same_names", |b| b.iter(|| merge(&same).nodes.len()));
    g.finish();
}

/// Best of `runs` wall times of merging `input`.
fn best(input: &Input, runs: usize) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let tree = merge(input);
            let took = t.elapsed();
            assert_eq!(tree.nodes.len(), 3 * input.paths.len() + 1);
            took
        })
        .min()
        .unwrap_or_default()
}

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    // The ratio, measured side by side in this run (criterion reports each time on its own).
    let n = stacks();
    let (distinct, same) = (input(n, false), input(n, true));
    let runs = 5;
    let (d, s) = (best(&distinct, runs), best(&same, runs));
    println!(
        "merge of {n} stacks: distinct names {d:?}, same names {s:?}, ratio same/distinct {:.2}",
        s.as_secs_f64() / d.as_secs_f64().max(1e-9)
    );
}
