//! The storage engine against its baselines, on a realistic input: one hour of 10 s agent windows
//! of one process (19 Hz on 4 busy CPUs), stacks drawn with a skewed distribution from a fixed
//! pool, as a real process repeats its hot paths.
//!
//! - **Bytes per sample on disk** after flush + compaction, against the gzipped pprof input (what
//!   the agent sends). Printed, not timed: `storage/bytes_per_sample ...`. Target ≤ 2 B/sample.
//! - **Merged flame graph** over all windows: through `Store::read` from compacted blocks and from
//!   the WAL head, and through `Store::read_merged` from blocks (rows summed by stack id, no pprof
//!   per profile), against decoding the same gzipped pprofs and merging them.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::pprof::Profile;
use kiln_proto::{ProfileBuilder, decode_profile, encode_profile_gzip};
use kiln_storage_server::StoreConfig;
use kiln_storage_server::query::merge::Tree;
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::symbolize::Resolver;
use kiln_storage_server::query::time::TimeRange;
use kiln_storage_server::store::{Labels, LocalStore, NewProfile, ReadRequest, Store};
use prost::Message;

const PERIOD: i64 = 52_631_578;
const WINDOWS: usize = 360;
const SAMPLES_PER_WINDOW: usize = 19 * 10 * 4;
const POOL: usize = 400;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stack as (user addresses outermost first, kernel leaf functions).
struct Stack {
    user: Vec<u64>,
    kernel: Vec<&'static str>,
}

/// Stacks that share prefixes, like a real call tree: each extends a random earlier one.
fn stack_pool(rng: &mut Rng) -> Vec<Stack> {
    const KERNEL: [&str; 6] = [
        "entry_SYSCALL_64",
        "do_syscall_64",
        "__x64_sys_read",
        "vfs_read",
        "copy_user_generic",
        "asm_sysvec_apic_timer_interrupt",
    ];
    let mut pool: Vec<Stack> = vec![Stack {
        user: vec![0x40_1000, 0x40_2000, 0x40_3000],
        kernel: Vec::new(),
    }];
    while pool.len() < POOL {
        let parent = &pool[(rng.next() % pool.len() as u64) as usize];
        let mut user = parent.user.clone();
        user.truncate(user.len().saturating_sub((rng.next() % 3) as usize).max(1));
        for _ in 0..1 + rng.next() % 6 {
            user.push(0x40_0000 + (rng.next() % 8192) * 16);
        }
        user.truncate(48);
        let kernel = if rng.next().is_multiple_of(5) {
            KERNEL[..2 + (rng.next() % 4) as usize].to_vec()
        } else {
            Vec::new()
        };
        pool.push(Stack { user, kernel });
    }
    pool
}

/// One agent window: what `agent/src/profile.rs` builds for one process.
fn window(pool: &[Stack], rng: &mut Rng, time: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", PERIOD);
    b.time(time, 10_000_000_000);
    let m = b.mapping(
        0x40_0000,
        0x80_0000,
        0,
        "/usr/bin/app",
        "0123456789abcdef0123456789abcdef01234567",
    );
    let k = b.mapping(0xffff_ffff_8000_0000, u64::MAX, 0, "[kernel.kallsyms]", "");
    b.mark_symbolized(k);
    for _ in 0..SAMPLES_PER_WINDOW {
        // Skewed: a few hot stacks take most samples.
        let s = &pool[((rng.unit().powi(3)) * pool.len() as f64) as usize];
        let mut locs = Vec::new();
        for (i, name) in s.kernel.iter().enumerate().rev() {
            let f = b.function(name, "");
            locs.push(b.symbolized_location(k, 0xffff_ffff_8100_0000 + i as u64 * 64, &[(f, 0)]));
        }
        for &a in s.user.iter().rev() {
            locs.push(b.raw_location(m, a));
        }
        b.add_sample(&locs, &[1, PERIOD], &[]);
    }
    b.finish()
}

fn input() -> Vec<(i64, Profile)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pool = stack_pool(&mut rng);
    // A fixed, whole hour (one partition).
    let start = 1_767_225_600_000_000_000i64;
    (0..WINDOWS)
        .map(|w| {
            let t = start + w as i64 * 10_000_000_000;
            (t, window(&pool, &mut rng, t))
        })
        .collect()
}

fn labels() -> Labels {
    Labels::new(vec![
        ("__name__".into(), "process_cpu".into()),
        ("service_name".into(), "app".into()),
        ("node".into(), "node-1".into()),
        ("pid".into(), "4242".into()),
    ])
}

fn append_all(store: &LocalStore, profiles: &[(i64, Profile)]) {
    for (t, p) in profiles {
        store
            .append(vec![NewProfile {
                labels: labels(),
                time_nanos: *t,
                profile_types: vec!["samples:count".into(), "cpu:nanoseconds".into()],
                pprof: p.encode_to_vec(),
            }])
            .expect("append");
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        // The bench drives flushes itself; keep retention out of the way of a fixed 2026 hour.
        maintenance_interval_secs: 3600,
        retention_age_secs: 0,
        ..StoreConfig::default()
    }
}

fn merge_store(store: &LocalStore) -> i64 {
    let all = Selector::all();
    let mut tree = Tree::new();
    let mut resolver = Resolver::new(None);
    store
        .read(
            ReadRequest {
                selector: &all,
                range: TimeRange::ALL,
                profile_type: Some("cpu:nanoseconds"),
                stop: None,
            },
            &mut |p| {
                tree.merge_profile(&p.profile, "cpu:nanoseconds", &mut resolver);
            },
        )
        .expect("read");
    tree.total()
}

/// The same merge through `Store::read_merged`: blocks are summed by stack id before the tree sees
/// them, so each distinct stack is resolved once per block instead of once per profile.
fn merge_store_merged(store: &LocalStore) -> i64 {
    let all = Selector::all();
    let mut tree = Tree::new();
    let mut resolver = Resolver::new(None);
    store
        .read_merged(
            ReadRequest {
                selector: &all,
                range: TimeRange::ALL,
                profile_type: Some("cpu:nanoseconds"),
                stop: None,
            },
            &mut |m| {
                tree.merge_profile(&m.to_profile(), "cpu:nanoseconds", &mut resolver);
            },
        )
        .expect("read");
    tree.total()
}

fn bench(c: &mut Criterion) {
    let profiles = input();
    let samples: i64 = profiles
        .iter()
        .flat_map(|(_, p)| p.sample.iter().map(|s| s.value[0]))
        .sum();
    let rows: usize = profiles.iter().map(|(_, p)| p.sample.len()).sum();
    let gz: Vec<Vec<u8>> = profiles
        .iter()
        .map(|(_, p)| encode_profile_gzip(p))
        .collect();
    let gz_bytes: usize = gz.iter().map(Vec::len).sum();

    // Bytes per sample: blocks after flush + compaction (flushed in 6 chunks, so compaction has
    // blocks to merge, as the background thread would leave them).
    let blocks_dir = tempfile::tempdir().expect("tempdir");
    let blocks = LocalStore::open(blocks_dir.path(), config(), 64 << 20).expect("open");
    for chunk in profiles.chunks(WINDOWS / 6) {
        append_all(&blocks, chunk);
        blocks.flush().expect("flush");
    }
    let before = blocks.stats();
    blocks.maintain(i64::MAX / 2).expect("compact");
    let after = blocks.stats();
    let wal_bytes = blocks.stats().bytes - block_bytes(blocks_dir.path());
    let on_disk = block_bytes(blocks_dir.path());
    let head_dir = tempfile::tempdir().expect("tempdir");
    let head = LocalStore::open(head_dir.path(), config(), 64 << 20).expect("open");
    append_all(&head, &profiles);
    let wal = head.stats().bytes;
    println!(
        "storage/bytes_per_sample: {samples} samples ({rows} sample rows) in {WINDOWS} windows; \
         gzipped pprof input {gz_bytes} B = {:.2} B/sample; WAL (zstd pprof) {wal} B = {:.2} \
         B/sample; blocks {} -> {} after compaction, {on_disk} B = {:.3} B/sample \
         ({:.1}x smaller than gzipped pprof; empty WAL {wal_bytes} B not counted)",
        gz_bytes as f64 / samples as f64,
        wal as f64 / samples as f64,
        before.blocks,
        after.blocks,
        on_disk as f64 / samples as f64,
        gz_bytes as f64 / on_disk as f64,
    );

    let want: i64 = samples * PERIOD;
    assert_eq!(merge_store(&blocks), want, "blocks lose nothing");
    assert_eq!(merge_store(&head), want, "head loses nothing");
    assert_eq!(
        merge_store_merged(&blocks),
        want,
        "merged read loses nothing"
    );

    let mut g = c.benchmark_group("storage_flamegraph_1h");
    g.sample_size(10);
    g.throughput(Throughput::Elements(samples as u64));
    g.bench_function("baseline_decode_gzipped_pprofs", |b| {
        b.iter(|| {
            let mut tree = Tree::new();
            let mut resolver = Resolver::new(None);
            for z in &gz {
                let p = decode_profile(z, 64 << 20).expect("decode");
                tree.merge_profile(&p, "cpu:nanoseconds", &mut resolver);
            }
            black_box(tree.total())
        })
    });
    g.bench_function("store_read_from_blocks", |b| {
        b.iter(|| black_box(merge_store(&blocks)))
    });
    g.bench_function("store_read_merged_from_blocks", |b| {
        b.iter(|| black_box(merge_store_merged(&blocks)))
    });
    g.bench_function("store_read_from_wal_head", |b| {
        b.iter(|| black_box(merge_store(&head)))
    });
    g.finish();
}

/// Bytes of block files under the store directory.
fn block_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("blocks")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "blk"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

criterion_group!(benches, bench);
criterion_main!(benches);
