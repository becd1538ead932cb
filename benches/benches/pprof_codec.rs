//! pprof encode/decode throughput: the baseline every later ingest and query benchmark compares
//! against. Inputs: the real Go CPU profile from testdata/ and a synthetic agent-style profile with
//! 10 k distinct stacks (depth 24) over 2 k functions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::{ProfileBuilder, decode_profile, encode_profile_gzip};
use prost::Message;

fn synthetic(stacks: usize, depth: usize) -> kiln_proto::pprof::Profile {
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
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..stacks {
        let stack: Vec<u64> = (0..depth)
            .map(|_| b.raw_location(mapping, 0x40_0000 + (next() % 2048) * 64))
            .collect();
        b.add_sample(&stack, &[1, 52_631_578], &[]);
    }
    b.finish()
}

fn bench(c: &mut Criterion) {
    let go = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/pprof/go-runtime-pprof-cpu.pb.gz"
    ))
    .expect("testdata fixture");
    let mut g = c.benchmark_group("pprof");
    g.throughput(Throughput::Bytes(go.len() as u64));
    g.bench_function("decode_go_fixture_gz", |b| {
        b.iter(|| decode_profile(&go, 64 << 20).expect("decodes"))
    });

    let p = synthetic(10_000, 24);
    let raw = p.encode_to_vec();
    let gz = encode_profile_gzip(&p);
    g.throughput(Throughput::Elements(p.sample.len() as u64));
    g.bench_function("encode_10k_stacks_raw", |b| b.iter(|| p.encode_to_vec()));
    g.bench_function("encode_10k_stacks_gz", |b| {
        b.iter(|| encode_profile_gzip(&p))
    });
    g.bench_function("decode_10k_stacks_raw", |b| {
        b.iter(|| decode_profile(&raw, 64 << 20).expect("decodes"))
    });
    g.bench_function("decode_10k_stacks_gz", |b| {
        b.iter(|| decode_profile(&gz, 64 << 20).expect("decodes"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
