//! Hostile and careless clients against the real router served by the real listener over TCP
//! (issue 10, point 4): abandoned queries stop, overload answers 503 while ingest goes on, idle and
//! slow connections cannot lock others out, and every size limit answers 413.
//!
//! Heavy queries are made deterministic with [`GatedStore`]: a store whose reads wait at a gate the
//! test opens, so "a query is running" is a condition to wait for, never a guess about time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_proto::push::{PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::time::{TimeRange, now_nanos};
use kiln_storage_server::store::{
    LocalStore, MergedProfile, NewProfile, ReadRequest, Store, StoreError, StoreStats,
    StoredProfile,
};
use kiln_storage_server::{AppState, ServerConfig, listener, router};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

const NS: i64 = 1_000_000_000;
/// How long a condition may take before the test fails (generous: CI machines are shared).
const DEADLINE: Duration = Duration::from_secs(30);

/// Reads wait here until the test opens the gate; counts what they entered and visited.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: AtomicUsize,
    visited: AtomicUsize,
}

impl Gate {
    fn wait(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// A [`LocalStore`] whose profile reads wait at a [`Gate`] (label and type listings do not).
struct GatedStore {
    inner: LocalStore,
    gate: Arc<Gate>,
}

impl Store for GatedStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        self.inner.append(profiles)
    }
    fn label_names(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.inner.label_names(selector, range)
    }
    fn label_values(&self, name: &str, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.inner.label_values(name, selector, range)
    }
    fn profile_types(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.inner.profile_types(selector, range)
    }
    fn for_each_series(
        &self,
        selector: &Selector,
        range: TimeRange,
        visit: &mut dyn FnMut(&kiln_storage_server::store::Labels, &[String]),
    ) {
        self.inner.for_each_series(selector, range, visit)
    }
    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        self.gate.wait();
        self.inner.read(req, &mut |p| {
            self.gate.visited.fetch_add(1, Ordering::SeqCst);
            visit(p)
        })
    }
    fn read_merged(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(MergedProfile),
    ) -> Result<usize, StoreError> {
        self.gate.wait();
        self.inner.read_merged(req, &mut |p| {
            self.gate.visited.fetch_add(1, Ordering::SeqCst);
            visit(p)
        })
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

struct Server {
    addr: SocketAddr,
    app: Router,
    gate: Arc<Gate>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The real router over a gated store, served by the real listener on a loopback port.
    async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::with_data_dir(dir.path());
        configure(&mut config);
        let inner = LocalStore::open(
            config.segments_dir(),
            config.store.clone(),
            config.limits.max_decompressed_bytes,
        )
        .unwrap();
        let gate = Arc::new(Gate::default());
        let store = Arc::new(GatedStore {
            inner,
            gate: gate.clone(),
        });
        let limits = config.http.clone();
        let state = AppState::with_store(config, store);
        let app = router(state.clone());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener::serve(
            tcp,
            app.clone(),
            limits,
            state.connections.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            app,
            gate,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One metric's value from /metrics (0 when absent), read in-process (no connection used).
    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = send(
            &self.app,
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    async fn wait_metric(&self, name: &str, want: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v == want {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "{name} stayed {v}, want {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_entered(&self, n: usize) {
        let start = Instant::now();
        while self.gate.entered.load(Ordering::SeqCst) < n {
            assert!(start.elapsed() < DEADLINE, "no query reached the store");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(mut self) {
        self.gate.open();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("graceful shutdown finished")
            .unwrap()
            .unwrap();
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

fn profile(leaf: &str, time_nanos: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let f = b.function(leaf, "main.c");
    let l1 = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l2 = b.symbolized_location(0, 0x20, &[(f, 2)]);
    b.add_sample(&[l2, l1], &[100], &[]);
    b.time(time_nanos, 10 * NS);
    b.finish()
}

fn push_body(profiles: &[Profile]) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                kiln_proto::push::LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                kiln_proto::push::LabelPair {
                    name: "service_name".into(),
                    value: "app".into(),
                },
            ],
            samples: profiles
                .iter()
                .map(|p| RawSample {
                    raw_profile: p.encode_to_vec(),
                    id: String::new(),
                })
                .collect(),
        }],
    }
    .encode_to_vec()
}

/// Pushes `n` small profiles (in-process).
async fn ingest(app: &Router, n: usize) {
    let now = now_nanos();
    let profiles: Vec<Profile> = (0..n)
        .map(|i| profile(&format!("leaf_{i}"), now - (i as i64 + 1) * NS))
        .collect();
    let (status, body) = send(
        app,
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(push_body(&profiles)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

const FLAMEGRAPH: &str = "/api/v1/flamegraph?from=now-1h";

/// A raw HTTP/1.1 GET on a new connection (the connection is returned so the test can drop it).
async fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_query_stops_consuming() {
    let server = Server::start(|_| {}).await;
    ingest(&server.app, 200).await;
    let conn = raw_get(server.addr, FLAMEGRAPH).await;
    server.wait_entered(1).await;
    server
        .wait_metric("kiln_server_queries_in_flight", 1.0)
        .await;
    // The client goes away mid-query.
    drop(conn);
    server
        .wait_metric("kiln_server_queries_cancelled_total", 1.0)
        .await;
    // Only now may the store go on: it must see the stop flag and read nothing.
    server.gate.open();
    server
        .wait_metric("kiln_server_queries_in_flight", 0.0)
        .await;
    assert_eq!(
        server.gate.visited.load(Ordering::SeqCst),
        0,
        "the abandoned query went on reading profiles"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_503_with_retry_after_while_ingest_goes_on() {
    let server = Server::start(|c| {
        c.queries.max_concurrent = 1;
        c.queries.max_queued = 0;
        c.queries.queue_timeout_secs = 7;
    })
    .await;
    ingest(&server.app, 5).await;
    let client = reqwest::Client::new();
    let busy = tokio::spawn(client.get(server.url(FLAMEGRAPH)).send());
    server.wait_entered(1).await;

    let resp = client.get(server.url(FLAMEGRAPH)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too many queries"),
        "{body}"
    );
    assert_eq!(
        server
            .metric("kiln_server_queries_rejected_total{reason=\"queue_full\"}")
            .await,
        1.0
    );

    // Ingest is not behind the query slots: a push over TCP is served while the query holds one.
    let started = Instant::now();
    let resp = client
        .post(server.url(PUSH_PATH))
        .header(header::CONTENT_TYPE, "application/proto")
        .body(push_body(&[profile("during", now_nanos() - NS)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() < DEADLINE);

    server.gate.open();
    let resp = busy.await.unwrap().unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the admitted query completes"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_over_its_read_budget_answers_413() {
    let server = Server::start(|c| c.queries.max_profiles = 5).await;
    server.gate.open();
    // Five pushes of two: ten stored profiles, read one by one from the head.
    for _ in 0..5 {
        ingest(&server.app, 2).await;
    }
    let (status, body) = send(
        &server.app,
        Request::get(FLAMEGRAPH).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("at most 5 profiles"), "{text}");
    assert!(
        server.gate.visited.load(Ordering::SeqCst) <= 6,
        "the read stopped at the budget"
    );
    let (status, _) = send(
        &server.app,
        Request::get("/api/v1/pprof?from=now-1h")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "pprof has the budget too"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_nodes_is_clamped_not_trusted() {
    let server = Server::start(|_| {}).await;
    server.gate.open();
    // One profile whose tree has 70,000 leaves: more than the clamp.
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let l_main = b.symbolized_location(0, 0x10, &[(main, 1)]);
    for i in 0..70_000u64 {
        let f = b.function(&format!("f{i}"), "main.c");
        let l = b.symbolized_location(0, 0x1000 + i, &[(f, 1)]);
        b.add_sample(&[l, l_main], &[1], &[]);
    }
    b.time(now_nanos() - NS, 10 * NS);
    let (status, body) = send(
        &server.app,
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(push_body(&[b.finish()])))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (status, body) = send(
        &server.app,
        Request::get(format!("{FLAMEGRAPH}&max_nodes=100000000"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let shown = v["root"]["children"][0]["children"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        shown < kiln_storage_server::config::MAX_FLAMEGRAPH_NODES,
        "{shown} nodes"
    );
    assert!(
        v["truncated_nodes"].as_u64().unwrap() > 4000,
        "{}",
        v["truncated_nodes"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn querier_gzip_bomb_is_413() {
    let server = Server::start(|c| c.limits.max_decompressed_bytes = 1 << 20).await;
    // 4 MiB of zeros gzip to a few KiB, well under the body limit.
    let bomb = kiln_proto::codec::gzip(&vec![0u8; 4 << 20]);
    let (status, body) = send(
        &server.app,
        Request::post("/querier.v1.QuerierService/SelectMergeStacktraces")
            .header(header::CONTENT_TYPE, "application/proto")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(bomb))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("exceeds the limit"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_limit_do_not_lock_out_a_new_client() {
    let server = Server::start(|c| {
        c.http.max_connections = 8;
        c.http.header_read_timeout_secs = 1;
    })
    .await;
    server.gate.open();
    // More idle connections than the server will hold open.
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    server
        .wait_metric("kiln_server_http_connections", 8.0)
        .await;
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .get(server.url("/healthz"))
        .timeout(DEADLINE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Idle connections are closed one header timeout (1 s) after they were accepted; the new
    // client, queued behind them, is served after about three such rounds (24 idle / 8 slots),
    // not never.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "served after {took:?}");
    drop(idle);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_by_the_header_timeout() {
    let server = Server::start(|c| c.http.header_read_timeout_secs = 1).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    // One more header byte every 100 ms: never a complete head.
    let trickle = tokio::spawn(async move {
        for _ in 0..600 {
            if wr.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (after an optional 408): the read ends.
    let read = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after {DEADLINE:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    trickle.abort();
    server.shutdown().await;
}
