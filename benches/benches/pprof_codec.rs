//! pprof encode/decode throughput: the baseline every later ingest and query benchmark compares
//! against. Inputs: the real Go CPU profile from testdata/ and a synthetic agent-style profile with
//! 10 k distinct stacks (depth 24) over 2 k functions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::{decode_profile, encode_profile_gzip};
use prost::Message;

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

    let p = kiln_benches::synthetic_profile(10_000, 24);
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
