//! What the query-side test suites share (tests/query_api.rs and tests/grafana_contract/): the
//! agent-like profile they store, the push request that carries it, and a real server on a
//! loopback port. Included with `mod support;` (or `#[path]`), so it is compiled into each
//! suite rather than being a test binary of its own.
#![allow(dead_code)]

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_proto::push::{PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::{AppState, Server, ServerConfig};
use prost::Message;

pub const NS: i64 = 1_000_000_000;

/// An agent-like cpu profile: `cpu` ns in `main;work;leaf_<tag>`, a tenth of it in `main;helper`;
/// `counts` are the `samples/count` values of those two stacks.
pub fn agent_profile(tag: &str, cpu: i64, counts: [i64; 2], time_nanos: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let work = b.function("work", "main.c");
    let helper = b.function("helper", "main.c");
    let leaf = b.function(&format!("leaf_{tag}"), "main.c");
    let l1 = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l2 = b.symbolized_location(0, 0x20, &[(work, 2)]);
    let l3 = b.symbolized_location(0, 0x30, &[(leaf, 3)]);
    let l4 = b.symbolized_location(0, 0x40, &[(helper, 4)]);
    b.add_sample(&[l3, l2, l1], &[counts[0], cpu], &[]);
    b.add_sample(&[l4, l1], &[counts[1], cpu / 10], &[]);
    b.period("cpu", "nanoseconds", 10_000_000);
    b.time(time_nanos, 10 * NS);
    b.finish()
}

/// A Push API request holding `p` as one series with `labels`.
pub fn push_request(labels: &[(&str, &str)], p: &Profile) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels
                .iter()
                .map(|(n, v)| kiln_proto::push::LabelPair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: vec![RawSample {
                raw_profile: p.encode_to_vec(),
                id: String::new(),
            }],
        }],
    }
}

/// Pushes `p` over HTTP to the server at `url` (`POST /push.v1.PusherService/Push`, binary
/// proto, as Pyroscope's SDKs send it) and checks it was stored.
pub async fn push_http(url: &str, labels: &[(&str, &str)], p: &Profile) {
    let resp = reqwest::Client::new()
        .post(format!("{url}{PUSH_PATH}"))
        .header("content-type", "application/proto")
        .body(push_request(labels, p).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "push: {:?}", resp.text().await);
}

/// A real server serving on a loopback port from a temporary directory, until the test process
/// exits.
pub struct Running {
    pub url: String,
    /// The server's state: its store, to flush the head into blocks.
    pub state: AppState,
}

/// Starts a server on a runtime thread of its own (so that callers inside a test runtime can
/// use it, and it outlives any one test).
pub fn spawn_server() -> Running {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut config = ServerConfig::with_data_dir(dir.path());
            config.listen = "127.0.0.1:0".parse().unwrap();
            let server = Server::bind(config).await.unwrap();
            let url = format!("http://{}", server.local_addr().unwrap());
            tx.send(Running {
                url,
                state: server.state().clone(),
            })
            .unwrap();
            // Serves until the test process exits; the directory lives as long.
            server.run(std::future::pending()).await.unwrap();
            drop(dir);
        });
    });
    rx.recv().unwrap()
}
