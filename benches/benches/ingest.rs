//! Ingest throughput through the real HTTP handler (in-process: decode, validate, compress, append,
//! fsync) against the decode-only baseline of the same gzipped pprof, in the same run. The ratio
//! `ingest / decode` is the figure to track (issue 4 targets >= 50 %).

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_proto::{ProfileBuilder, decode_profile, encode_profile_gzip};
use prost::Message;
use tower::ServiceExt;

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

fn bench(c: &mut Criterion) {
    let profile = synthetic(10_000, 24);
    let gz = encode_profile_gzip(&profile);
    let push = PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                LabelPair {
                    name: "service_name".into(),
                    value: "bench".into(),
                },
            ],
            samples: vec![RawSample {
                raw_profile: gz.clone(),
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec();

    let dir = tempfile::tempdir().expect("tempdir");
    let state = kiln_storage_server::AppState::open(
        kiln_storage_server::ServerConfig::with_data_dir(dir.path()),
    )
    .expect("server state");
    let app = kiln_storage_server::router(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut g = c.benchmark_group("ingest_10k_samples");
    g.throughput(Throughput::Elements(profile.sample.len() as u64));
    g.bench_function("baseline_decode_only", |b| {
        b.iter(|| decode_profile(&gz, 64 << 20).expect("decodes"))
    });
    g.bench_function("push_handler", |b| {
        b.iter(|| {
            let req = Request::post(kiln_proto::push::PUSH_PATH)
                .header(header::CONTENT_TYPE, "application/proto")
                .body(Body::from(push.clone()))
                .expect("request");
            let resp = rt.block_on(app.clone().oneshot(req)).expect("response");
            assert!(resp.status().is_success(), "push failed: {}", resp.status());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
