//! Guards the on-disk cost of the block format: a realistic hour-like input (10 s agent windows of
//! one process, skewed draws from a fixed stack pool) must stay at or under 2 bytes per sample
//! once flushed and compacted. `benches/benches/storage.rs` prints the full figure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_storage_server::StoreConfig;
use kiln_storage_server::query::time::now_nanos;
use kiln_storage_server::store::{Labels, LocalStore, NewProfile, Store};
use prost::Message;

const PERIOD: i64 = 52_631_578;

fn window(pool: &[Vec<u64>], rng: &mut u64, time: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", PERIOD);
    b.time(time, 10_000_000_000);
    let m = b.mapping(0x40_0000, 0x80_0000, 0, "/usr/bin/app", "0123456789abcdef");
    for _ in 0..19 * 10 * 4 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let u = (*rng >> 11) as f64 / (1u64 << 53) as f64;
        let stack = &pool[(u.powi(3) * pool.len() as f64) as usize];
        let locs: Vec<u64> = stack.iter().map(|&a| b.raw_location(m, a)).collect();
        b.add_sample(&locs, &[1, PERIOD], &[]);
    }
    b.finish()
}

#[test]
fn blocks_cost_at_most_two_bytes_per_sample() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let pool: Vec<Vec<u64>> = (0..300u64)
        .map(|i| {
            (0..8 + i % 24)
                .map(|d| 0x40_0000 + ((i * 7 + d * 131) % 4096) * 16)
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        maintenance_interval_secs: 3600,
        ..StoreConfig::default()
    };
    let store = LocalStore::open(dir.path(), config, 64 << 20).unwrap();
    let start =
        (now_nanos() - 3 * 3_600_000_000_000).div_euclid(3_600_000_000_000) * 3_600_000_000_000;
    let mut samples = 0;
    for w in 0..120 {
        let t = start + w * 10_000_000_000;
        let p = window(&pool, &mut rng, t);
        samples += p.sample.iter().map(|s| s.value[0]).sum::<i64>();
        store
            .append(vec![NewProfile {
                labels: Labels::new(vec![("service_name".into(), "app".into())]),
                time_nanos: t,
                profile_types: vec!["samples:count".into(), "cpu:nanoseconds".into()],
                pprof: p.encode_to_vec(),
            }])
            .unwrap();
        if w % 40 == 39 {
            store.flush().unwrap();
        }
    }
    store.maintain(now_nanos()).unwrap();
    let stats = store.stats();
    assert_eq!(stats.blocks, 1);
    let per_sample = stats.bytes as f64 / samples as f64;
    eprintln!(
        "{samples} samples: {} B on disk = {per_sample:.3} B/sample",
        stats.bytes
    );
    assert!(per_sample <= 2.0, "{per_sample} B/sample");
}
