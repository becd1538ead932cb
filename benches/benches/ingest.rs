//! Ingest throughput through the real HTTP handler (in-process: decode, validate, compress, append,
//! fsync) against the decode-only baseline of the same gzipped pprof, in the same run. The ratio
//! `ingest / decode` is the figure to track (issue 4 targets >= 50 %).

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_proto::{decode_profile, encode_profile_gzip};
use prost::Message;
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let profile = kiln_benches::synthetic_profile(10_000, 24);
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
