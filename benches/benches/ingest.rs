//! Ingest throughput through the real HTTP handler (in-process, no socket: request decode, gunzip,
//! pprof scan + validation — the full prost decode only for profiles that are invalid or split by
//! sample labels, which these are not —, WAL append, fsync) against the decode-only baseline
//! (gunzip + prost decode, the same flate2/zlib-rs inflate) of the same gzipped pprof, in the same
//! run. The ratio `ingest / decode` is the figure to track (issue 4 targets >= 50 %, and
//! >= 1 M samples/s per core).
//!
//! Inputs: the synthetic agent profile of `kiln_benches::synthetic_profile` — every sample a
//! distinct stack of 24 frames with a count of 1, the worst case per sample (a real agent window
//! has fewer, heavier rows) — at three request shapes:
//! - `10k`: one 10 k-sample profile per push (one fsync per 10 k samples);
//! - `100k`: one 100 k-sample profile per push;
//! - `10x10k`: ten 10 k-sample profiles (ten series) per push, as an agent batching processes.
//!
//! `push_handler` leaves flushing the WAL into blocks to the background (as the server does; the
//! bench keeps the background thread idle so it does not steal the second core mid-measurement);
//! `push_and_flush` also flushes every push into a block at once, the all-in cost of a sample.

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_proto::{decode_profile, encode_profile_gzip};
use kiln_storage_server::{AppState, ServerConfig, StoreConfig};
use prost::Message;
use tower::ServiceExt;

fn series(service: &str, gz: Vec<u8>) -> RawProfileSeries {
    RawProfileSeries {
        labels: vec![
            LabelPair {
                name: "__name__".into(),
                value: "process_cpu".into(),
            },
            LabelPair {
                name: "service_name".into(),
                value: service.into(),
            },
        ],
        samples: vec![RawSample {
            raw_profile: gz,
            id: String::new(),
        }],
    }
}

fn server() -> (tempfile::TempDir, AppState, axum::Router) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.store = StoreConfig {
        maintenance_interval_secs: 3600,
        ..StoreConfig::default()
    };
    let state = AppState::open(config).expect("server state");
    let app = kiln_storage_server::router(state.clone());
    (dir, state, app)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let small = encode_profile_gzip(&kiln_benches::synthetic_profile(10_000, 24));
    let large = encode_profile_gzip(&kiln_benches::synthetic_profile(100_000, 24));
    // (name, the gzipped profiles in the request, the request body)
    type Shape = (&'static str, Vec<Vec<u8>>, Vec<u8>);
    let shapes: Vec<Shape> = vec![
        (
            "10k",
            vec![small.clone()],
            PushRequest {
                series: vec![series("bench", small.clone())],
            }
            .encode_to_vec(),
        ),
        (
            "100k",
            vec![large.clone()],
            PushRequest {
                series: vec![series("bench", large)],
            }
            .encode_to_vec(),
        ),
        (
            "10x10k",
            vec![small.clone(); 10],
            PushRequest {
                series: (0..10)
                    .map(|i| series(&format!("bench-{i}"), small.clone()))
                    .collect(),
            }
            .encode_to_vec(),
        ),
    ];

    for (name, profiles, push) in shapes {
        let samples: usize = profiles
            .iter()
            .map(|p| decode_profile(p, 1 << 30).expect("decodes").sample.len())
            .sum();
        let (_dir, state, app) = server();
        let send = || {
            let req = Request::post(kiln_proto::push::PUSH_PATH)
                .header(header::CONTENT_TYPE, "application/proto")
                .body(Body::from(push.clone()))
                .expect("request");
            let resp = rt.block_on(app.clone().oneshot(req)).expect("response");
            assert!(resp.status().is_success(), "push failed: {}", resp.status());
        };
        let mut g = c.benchmark_group(format!("ingest_{name}"));
        g.throughput(Throughput::Elements(samples as u64));
        if name == "100k" {
            g.sample_size(20);
        }
        g.bench_function("baseline_decode_only", |b| {
            b.iter(|| {
                for p in &profiles {
                    decode_profile(p, 64 << 20).expect("decodes");
                }
            })
        });
        g.bench_function("push_handler", |b| b.iter(send));
        if name == "10k" {
            g.bench_function("push_and_flush", |b| {
                b.iter(|| {
                    send();
                    state.store.flush().expect("flush");
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
