//! End-to-end tests of the HTTP API, driven in-process through `router` (and once over TCP).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use kiln_proto::ProfileBuilder;
use kiln_proto::codec::{decode_profile, gzip, maybe_gunzip};
use kiln_proto::pprof::Profile;
use kiln_proto::push::{LabelPair, PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::{AppState, ServerConfig, router};
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pprof")
        .join(name)
}

/// A server without age retention: the fixtures under testdata/ carry the time they were captured,
/// and with no retention the accepted time window has no lower bound, so they stay admissible as
/// they age (tests of the window itself configure retention).
fn open(dir: &Path) -> Router {
    let mut config = ServerConfig::with_data_dir(dir);
    config.store.retention_age_secs = 0;
    router(AppState::open(config).unwrap())
}

fn open_with(config: ServerConfig) -> Router {
    router(AppState::open(config).unwrap())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, body) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{uri}: {status}: not JSON ({e}): {body:?}"));
    (status, v)
}

async fn push_raw(
    app: &Router,
    body: Vec<u8>,
    content_type: &str,
    encoding: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::post(PUSH_PATH).header(header::CONTENT_TYPE, content_type);
    if let Some(e) = encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    let (status, body) = send(app, req.body(Body::from(body)).unwrap()).await;
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::String(format!("{body:?}")))
    };
    (status, v)
}

fn push_request(labels: &[(&str, &str)], profiles: &[Vec<u8>]) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: profiles
                .iter()
                .map(|p| RawSample {
                    raw_profile: p.clone(),
                    id: String::new(),
                })
                .collect(),
        }],
    }
}

async fn push(app: &Router, labels: &[(&str, &str)], profile: &Profile) -> (StatusCode, Value) {
    let req = push_request(labels, &[profile.encode_to_vec()]);
    push_raw(app, req.encode_to_vec(), "application/proto", None).await
}

/// A small symbolized profile: main -> work -> leaf_<tag>, `value` ns of cpu.
fn simple_profile(tag: &str, value: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let work = b.function("work", "main.c");
    let leaf = b.function(&format!("leaf_{tag}"), "main.c");
    let l1 = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l2 = b.symbolized_location(0, 0x20, &[(work, 2)]);
    let l3 = b.symbolized_location(0, 0x30, &[(leaf, 3)]);
    b.add_sample(&[l3, l2, l1], &[1, value], &[]);
    b.time(
        kiln_storage_server::query::time::now_nanos(),
        10_000_000_000,
    );
    b.finish()
}

fn sum_values(p: &Profile, ty: &str) -> i64 {
    let i = p
        .sample_type
        .iter()
        .position(|st| format!("{}:{}", p.str(st.r#type), p.str(st.unit)) == ty)
        .unwrap();
    p.sample.iter().map(|s| s.value[i]).sum()
}

fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|c| find(c, name))
}

/// The path of names from the root's child down to a node named `leaf`.
fn path_to(node: &Value, leaf: &str) -> Option<Vec<String>> {
    let name = node["name"].as_str()?.to_owned();
    if name == leaf {
        return Some(vec![name]);
    }
    for c in node["children"].as_array()? {
        if let Some(mut p) = path_to(c, leaf) {
            p.insert(0, name);
            return Some(p);
        }
    }
    None
}

/// (what, body, content type, content encoding, expected status, expected message part)
type Case = (
    &'static str,
    Vec<u8>,
    &'static str,
    Option<&'static str>,
    StatusCode,
    &'static str,
);

const ALL_TIME: &str = "from=0&until=now";

#[tokio::test]
async fn pyroscope_io_push_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let body = std::fs::read(testdata("pyroscope-io-1.4.0-push-request.bin.gz")).unwrap();

    // What the fixture holds, decoded independently of the server.
    let req = PushRequest::decode(maybe_gunzip(&body, 1 << 26).unwrap().as_ref()).unwrap();
    let service = req.series[0]
        .labels
        .iter()
        .find(|l| l.name == "service_name")
        .unwrap()
        .value
        .clone();
    let want_total: i64 = req
        .series
        .iter()
        .flat_map(|s| &s.samples)
        .map(|s| {
            sum_values(
                &decode_profile(&s.raw_profile, 1 << 26).unwrap(),
                "cpu:nanoseconds",
            )
        })
        .sum();
    assert!(want_total > 0);

    let (status, resp) = push_raw(&app, body, "application/proto", Some("gzip")).await;
    assert_eq!(status, StatusCode::OK, "{resp}");

    let (status, v) = get(
        &app,
        &format!("/api/v1/labels/service_name/values?{ALL_TIME}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["values"], serde_json::json!([service]));

    let (_, v) = get(&app, &format!("/api/v1/labels?{ALL_TIME}")).await;
    let names = v["names"].as_array().unwrap();
    assert!(names.contains(&Value::from("__name__")));
    assert!(names.contains(&Value::from("service_name")));

    let (_, v) = get(&app, &format!("/api/v1/profile_types?{ALL_TIME}")).await;
    assert!(
        v["profile_types"]
            .as_array()
            .unwrap()
            .contains(&Value::from("cpu:nanoseconds")),
        "{v}"
    );

    let q = format!("{{service_name=\"{service}\"}}");
    let uri = format!(
        "/api/v1/flamegraph?{ALL_TIME}&query={}",
        q.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
    );
    let (status, fg) = get(&app, &uri).await;
    assert_eq!(status, StatusCode::OK, "{fg}");
    assert_eq!(fg["total"], want_total);
    assert_eq!(fg["root"]["total"], want_total);
    assert_eq!(fg["unit"], "nanoseconds");
    assert_eq!(fg["profile_type"], "cpu:nanoseconds");
    assert!(fg["profiles"].as_u64().unwrap() >= 1);
    assert!(!fg["root"]["children"].as_array().unwrap().is_empty());

    // The default range (last hour) does not reach back to when the fixture was captured, unless
    // its timestamp is 0; either way a non-matching selector is empty.
    let (_, fg) = get(
        &app,
        &format!("/api/v1/flamegraph?{ALL_TIME}&query=%7Bservice_name%3D%22nope%22%7D"),
    )
    .await;
    assert_eq!(fg["total"], 0);
    assert_eq!(fg["profiles"], 0);

    let (status, top) = get(&app, &format!("/api/v1/top?{ALL_TIME}&limit=5")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(top["total"], want_total);
    let funcs = top["functions"].as_array().unwrap();
    assert!(!funcs.is_empty() && funcs.len() <= 5);
    let selfs: Vec<i64> = funcs.iter().map(|f| f["self"].as_i64().unwrap()).collect();
    assert!(selfs.windows(2).all(|w| w[0] >= w[1]));
}

#[tokio::test]
async fn go_and_nodejs_fixtures_keep_their_sample_types() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    for (file, service) in [
        ("go-runtime-pprof-cpu.pb.gz", "go-app"),
        ("pyroscope-nodejs-0.6.4-wall.pprof.gz", "node-app"),
    ] {
        // Raw profiles stay gzipped, as SDKs send them.
        let raw = std::fs::read(testdata(file)).unwrap();
        let req = push_request(
            &[("__name__", "process_cpu"), ("service_name", service)],
            &[raw],
        );
        let (status, v) = push_raw(&app, req.encode_to_vec(), "application/proto", None).await;
        assert_eq!(status, StatusCode::OK, "{file}: {v}");
    }
    let (_, v) = get(&app, &format!("/api/v1/profile_types?{ALL_TIME}")).await;
    let types: Vec<&str> = v["profile_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in ["cpu:nanoseconds", "samples:count", "wall:nanoseconds"] {
        assert!(types.contains(&t), "{types:?}");
    }
    let go = decode_profile(
        &std::fs::read(testdata("go-runtime-pprof-cpu.pb.gz")).unwrap(),
        1 << 26,
    )
    .unwrap();
    let node = decode_profile(
        &std::fs::read(testdata("pyroscope-nodejs-0.6.4-wall.pprof.gz")).unwrap(),
        1 << 26,
    )
    .unwrap();
    let (_, fg) = get(
        &app,
        &format!("/api/v1/flamegraph?{ALL_TIME}&query=%7Bservice_name%3D%22go-app%22%7D"),
    )
    .await;
    assert_eq!(fg["total"], sum_values(&go, "cpu:nanoseconds"));
    let (_, fg) = get(
        &app,
        &format!("/api/v1/flamegraph?{ALL_TIME}&profile_type=wall:nanoseconds"),
    )
    .await;
    assert_eq!(fg["total"], sum_values(&node, "wall:nanoseconds"));
    // The Node profile's dynamic tag (sample label `phase`) splits it into two series, as in
    // Pyroscope: samples with `phase=loop` and samples without.
    assert_eq!(fg["profiles"], 2);
    let (_, fg) = get(
        &app,
        &format!("/api/v1/flamegraph?{ALL_TIME}&profile_type=samples:count"),
    )
    .await;
    assert_eq!(
        fg["total"],
        sum_values(&go, "samples:count") + sum_values(&node, "samples:count")
    );
    assert_eq!(fg["profiles"], 3);
}

#[tokio::test]
async fn json_push() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let p = simple_profile("json", 700);
    let b64 = base64::engine::general_purpose::STANDARD.encode(gzip(&p.encode_to_vec()));
    let body = serde_json::json!({
        "series": [{
            "labels": [{"name": "__name__", "value": "process_cpu"}, {"name": "service_name", "value": "js"}],
            "samples": [{"rawProfile": b64, "ID": "1"}]
        }]
    });
    let (status, v) = push_raw(
        &app,
        body.to_string().into_bytes(),
        "application/json",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, serde_json::json!({}));
    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 700);
    assert_eq!(
        path_to(&fg["root"], "leaf_json").unwrap(),
        ["total", "main", "work", "leaf_json"]
    );

    let (status, v) = push_raw(
        &app,
        br#"{"series":[{"labels":[{"name":"__name__","value":"x"}],"samples":[{"rawProfile":"!!!"}]}]}"#.to_vec(),
        "application/json",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("base64"), "{v}");
}

#[tokio::test]
async fn bad_inputs_are_rejected_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.limits.max_body_bytes = 1 << 20;
    config.limits.max_decompressed_bytes = 4 << 20;
    let app = open_with(config);
    let labels = [("__name__", "process_cpu"), ("service_name", "good")];
    let (status, _) = push(&app, &labels, &simple_profile("good", 100)).await;
    assert_eq!(status, StatusCode::OK);

    let good = simple_profile("x", 1).encode_to_vec();
    let valid_req =
        |labels: &[(&str, &str)]| push_request(labels, std::slice::from_ref(&good)).encode_to_vec();
    let bomb = gzip(&vec![0u8; 32 << 20]);
    assert!(bomb.len() < 1 << 20);
    let truncated = {
        let g = gzip(&valid_req(&[("__name__", "a"), ("service_name", "trunc")]));
        g[..g.len() - 10].to_vec()
    };
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("l{i}"), "v".into())).collect();
    let mut many_labels: Vec<(&str, &str)> =
        many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    many_labels.push(("__name__", "a"));

    let cases: Vec<Case> = vec![
        (
            "garbage proto",
            vec![0xff; 64],
            "application/proto",
            None,
            StatusCode::BAD_REQUEST,
            "not a valid PushRequest",
        ),
        (
            "truncated gzip",
            truncated,
            "application/proto",
            Some("gzip"),
            StatusCode::BAD_REQUEST,
            "gzip",
        ),
        (
            "gzip bomb",
            bomb,
            "application/proto",
            Some("gzip"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds the limit",
        ),
        (
            "missing __name__",
            valid_req(&[("service_name", "noname")]),
            "application/proto",
            None,
            StatusCode::BAD_REQUEST,
            "__name__",
        ),
        (
            "too many labels",
            valid_req(&many_labels),
            "application/proto",
            None,
            StatusCode::BAD_REQUEST,
            "more than the limit of 32",
        ),
        (
            "bad label name",
            valid_req(&[("__name__", "a"), ("bad-name", "x")]),
            "application/proto",
            None,
            StatusCode::BAD_REQUEST,
            "invalid label name",
        ),
        (
            "oversized body",
            vec![0u8; 2 << 20],
            "application/proto",
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit of 1048576 bytes",
        ),
        (
            "content type",
            valid_req(&[("__name__", "a")]),
            "text/plain",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "content encoding",
            valid_req(&[("__name__", "a")]),
            "application/proto",
            Some("br"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding",
        ),
        (
            "bad json",
            b"{".to_vec(),
            "application/json",
            None,
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
    ];
    for (what, body, ct, enc, want_status, want_msg) in cases {
        let (status, v) = push_raw(&app, body, ct, enc).await;
        assert_eq!(status, want_status, "{what}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {v}"));
        assert!(msg.contains(want_msg), "{what}: {msg:?} lacks {want_msg:?}");
    }

    // One bad profile among good ones rejects the whole request.
    let mut bad_profile = simple_profile("bad", 5);
    bad_profile.sample[0].location_id.push(999);
    let req = push_request(
        &[("__name__", "process_cpu"), ("service_name", "mixed")],
        &[
            simple_profile("ok", 5).encode_to_vec(),
            bad_profile.encode_to_vec(),
            b"garbage".to_vec(),
        ],
    );
    let (status, v) = push_raw(&app, req.encode_to_vec(), "application/proto", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("sample 1"), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown location id 999"),
        "{v}"
    );

    // A raw profile that inflates past the limit.
    let req = push_request(
        &[("__name__", "a"), ("service_name", "bomb2")],
        &[gzip(&vec![0u8; 8 << 20])],
    );
    let (status, v) = push_raw(&app, req.encode_to_vec(), "application/proto", None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    let (_, v) = get(&app, "/api/v1/labels/service_name/values").await;
    assert_eq!(v["values"], serde_json::json!(["good"]));
    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 100);

    let (_, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("kiln_server_ingest_rejected_total{reason=\"bad_labels\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_server_ingest_requests_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_server_store_series 1"), "{metrics}");
}

#[tokio::test]
async fn query_parameter_errors() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    for (uri, want) in [
        (
            "/api/v1/flamegraph?query=%7Ba%3Db%7D",
            "expected a quoted value",
        ),
        (
            "/api/v1/flamegraph?from=yesterday",
            "bad time \"yesterday\"",
        ),
        (
            "/api/v1/flamegraph?from=now&until=now-1h",
            "empty time range",
        ),
        (
            "/api/v1/flamegraph?max_nodes=abc",
            "max_nodes must be a positive integer",
        ),
        ("/api/v1/top?limit=0", "limit must be a positive integer"),
        (
            "/api/v1/flamegraph?profile_type=cpu",
            "must be <type>:<unit>",
        ),
        ("/api/v1/labels?query=%7B", "unclosed"),
    ] {
        let (status, v) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{uri}: {v}");
    }
    let (status, v) = get(&app, "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn max_nodes_truncates_honestly() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let labels = [("__name__", "process_cpu"), ("service_name", "t")];
    for (i, tag) in ["a", "b", "c", "d"].iter().enumerate() {
        let (status, _) = push(&app, &labels, &simple_profile(tag, 100 * (i as i64 + 1))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, full) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(full["total"], 1000);
    assert!(full.get("truncated_nodes").is_none());
    let (_, fg) = get(&app, "/api/v1/flamegraph?max_nodes=5").await;
    assert_eq!(fg["total"], 1000);
    // total, main, work, leaf_d, leaf_c shown would need an (other): so leaf_d and (other).
    assert_eq!(fg["truncated_nodes"], 3);
    let work = find(&fg["root"], "work").unwrap();
    let kids: Vec<(&str, i64)> = work["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["total"].as_i64().unwrap()))
        .collect();
    assert_eq!(kids, [("(other)", 600), ("leaf_d", 400)]);
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

async fn services(app: &Router) -> Value {
    get(app, "/api/v1/labels/service_name/values").await.1["values"].clone()
}

#[tokio::test]
async fn data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = open(dir.path());
        for s in ["one", "two"] {
            let (status, _) = push(
                &app,
                &[("__name__", "process_cpu"), ("service_name", s)],
                &simple_profile(s, 50),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let app = open(dir.path());
    assert_eq!(services(&app).await, serde_json::json!(["one", "two"]));
    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 100);
    assert!(find(&fg["root"], "leaf_two").is_some());
}

#[tokio::test]
async fn torn_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = open(dir.path());
        for s in ["first", "second"] {
            let (status, _) = push(
                &app,
                &[("__name__", "process_cpu"), ("service_name", s)],
                &simple_profile(s, 10),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let intact_len = std::fs::metadata(&seg).unwrap().len();

    // Garbage after the last record (a torn write of a new frame header): both records survive.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x01]).unwrap();
    }
    {
        let app = open(dir.path());
        assert_eq!(services(&app).await, serde_json::json!(["first", "second"]));
    }
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        intact_len,
        "garbage tail was cut"
    );

    // Cut into the last record: it is dropped, the first survives, and appends work after it.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(intact_len - 7).unwrap();
    drop(f);
    {
        let app = open(dir.path());
        assert_eq!(services(&app).await, serde_json::json!(["first"]));
        let (status, _) = push(
            &app,
            &[("__name__", "process_cpu"), ("service_name", "third")],
            &simple_profile("third", 10),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(services(&app).await, serde_json::json!(["first", "third"]));
    }
    // A flipped bit in the last record fails its CRC: same treatment.
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let app = open(dir.path());
    assert_eq!(services(&app).await, serde_json::json!(["first"]));
    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 10);
}

#[tokio::test]
async fn segments_rotate_by_size_and_age() {
    for by_age in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::with_data_dir(dir.path());
        if by_age {
            config.store.max_segment_age_secs = 0;
        } else {
            config.store.max_segment_bytes = 1;
        }
        {
            let app = open_with(config.clone());
            for i in 0..3 {
                let s = format!("s{i}");
                let labels = [("__name__", "process_cpu"), ("service_name", s.as_str())];
                let (status, _) = push(&app, &labels, &simple_profile(&s, 1)).await;
                assert_eq!(status, StatusCode::OK);
            }
        }
        assert_eq!(segment_files(dir.path()).len(), 3, "by_age={by_age}");
        let app = open_with(config);
        assert_eq!(services(&app).await, serde_json::json!(["s0", "s1", "s2"]));
        let (_, fg) = get(&app, "/api/v1/flamegraph").await;
        assert_eq!(fg["total"], 3);
    }
}

#[tokio::test]
async fn web_ui_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    for (uri, ct) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/metrics", "application/openmetrics-text"),
    ] {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        let got = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(got.starts_with(ct), "{uri}: {got}");
    }
    let (status, body) = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"ok".as_ref()));
}

/// Unsymbolized user frames without debuginfo are named `<mapping basename>+0x<file offset>`,
/// followed by the reason they have no name.
#[tokio::test]
async fn unsymbolized_frames_are_named_by_mapping_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let m = b.mapping(
        0x5555_0000_0000,
        0x5555_0001_0000,
        0x1000,
        "/opt/app/bin/server",
        "00112233445566778899aabbccddeeff00112233",
    );
    let kern = b.mapping(0xffff_ffff_8000_0000, u64::MAX, 0, "[kernel.kallsyms]", "");
    b.mark_symbolized(kern);
    let kf = b.function("entry_SYSCALL_64", "");
    let k = b.symbolized_location(kern, 0xffff_ffff_8100_0000, &[(kf, 0)]);
    let outer = b.raw_location(m, 0x5555_0000_0100);
    let inner = b.raw_location(m, 0x5555_0000_0200);
    let nomap = b.raw_location(0, 0x4242);
    b.add_sample(&[k, inner, outer], &[30], &[]);
    b.add_sample(&[nomap], &[5], &[]);
    let (status, v) = push(
        &app,
        &[("__name__", "process_cpu"), ("service_name", "raw")],
        &b.finish(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 35);
    assert_eq!(
        path_to(&fg["root"], "entry_SYSCALL_64 [k]").unwrap(),
        [
            "total",
            "server+0x1100 (no symbols: debuginfo not uploaded)",
            "server+0x1200 (no symbols: debuginfo not uploaded)",
            "entry_SYSCALL_64 [k]"
        ]
    );
    assert!(
        find(
            &fg["root"],
            "0x4242 (no symbols: address in no known mapping (process exited?))"
        )
        .is_some(),
        "{fg}"
    );
}

/// Compiles a small C program; returns its path.
fn compile_test_program(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("app.c");
    std::fs::write(
        &src,
        r#"
__attribute__((noinline)) int hot(int n) { volatile int s = 0; for (int i = 0; i < n; i++) s += i; return s; }
__attribute__((noinline)) int alpha(int n) { return hot(n) + 1; }
int main(int argc, char **argv) { (void)argv; return alpha(argc * 1000) & 1; }
"#,
    )
    .unwrap();
    let out = dir.join("app");
    let status = Command::new("gcc")
        .args(["-g", "-O0", "-fno-inline", "-Wl,--build-id=sha1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    status.success().then_some(out)
}

struct Elf {
    bytes: Vec<u8>,
    build_id: String,
    /// (memory start, memory limit, file offset) of the executable segment, "loaded" somewhere.
    mapping: (u64, u64, u64),
    /// Runtime address inside each function.
    addrs: std::collections::HashMap<String, u64>,
}

fn inspect_elf(path: &Path) -> Elf {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let bytes = std::fs::read(path).unwrap();
    let file = object::File::parse(bytes.as_slice()).unwrap();
    let build_id: String = file
        .build_id()
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = 0x5555_5555_0000u64;
    let mut mapping = None;
    let mut addrs = std::collections::HashMap::new();
    for sym in file.symbols() {
        let name = sym.name().unwrap_or("");
        if !["main", "alpha", "hot"].contains(&name) {
            continue;
        }
        let vaddr = sym.address() + 4;
        let seg = file
            .segments()
            .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())
            .unwrap();
        let (seg_off, _) = seg.file_range();
        let page_vaddr = seg.address() & !0xfff;
        let page_off = seg_off & !0xfff;
        let start = base + page_vaddr;
        let m = (start, start + seg.size() + 0x1000, page_off);
        mapping = Some(m);
        // Where the loader would put it: start + (file offset - mapping offset).
        let file_off = vaddr - seg.address() + seg_off;
        addrs.insert(name.to_owned(), start + (file_off - page_off));
    }
    assert_eq!(addrs.len(), 3, "symbols found: {addrs:?}");
    Elf {
        bytes: bytes.clone(),
        build_id,
        mapping: mapping.unwrap(),
        addrs,
    }
}

async fn put_debuginfo(
    app: &Router,
    id: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::put(format!("/debuginfo/v1/{id}"));
    if let Some(e) = encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    let (status, body) = send(app, req.body(Body::from(body)).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The whole server-side symbolization path: upload an ELF, push raw addresses, see names.
/// Needs the symbolizer crate's implementation.
#[tokio::test]
async fn agent_profile_symbolized_with_uploaded_debuginfo() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile_test_program(dir.path()) else {
        eprintln!("SKIPPED: gcc is not available to build the test program");
        return;
    };
    let elf = inspect_elf(&exe);
    let app = open(&dir.path().join("data"));

    let (status, _) = get(&app, &format!("/debuginfo/v1/{}", elf.build_id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = get(&app, "/debuginfo/v1/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // Not an ELF, and an ELF under the wrong build ID: both refused.
    let (status, v) = put_debuginfo(
        &app,
        &elf.build_id,
        zstd::encode_all(&b"hello"[..], 3).unwrap(),
        Some("zstd"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let wrong = "ab".repeat(20);
    let compressed = zstd::encode_all(elf.bytes.as_slice(), 3).unwrap();
    let (status, v) = put_debuginfo(&app, &wrong, compressed.clone(), Some("zstd")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = put_debuginfo(
        &app,
        &elf.build_id,
        b"not zstd at all".to_vec(),
        Some("zstd"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    let (status, v) = put_debuginfo(&app, &elf.build_id, compressed.clone(), Some("zstd")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = put_debuginfo(&app, &elf.build_id, compressed, Some("zstd")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = get(&app, &format!("/debuginfo/v1/{}", elf.build_id)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["size"], elf.bytes.len());
    assert_eq!(v["build_id"], elf.build_id.as_str());

    let (start, limit, offset) = elf.mapping;
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let m = b.mapping(start, limit, offset, exe.to_str().unwrap(), &elf.build_id);
    let l = |b: &mut ProfileBuilder, f: &str| b.raw_location(m, elf.addrs[f]);
    let (lm, la, lh) = (l(&mut b, "main"), l(&mut b, "alpha"), l(&mut b, "hot"));
    b.add_sample(&[lh, la, lm], &[9, 90], &[]);
    b.add_sample(&[la, lm], &[1, 10], &[]);
    let (status, v) = push(
        &app,
        &[("__name__", "process_cpu"), ("service_name", "agent")],
        &b.finish(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let (_, fg) = get(&app, "/api/v1/flamegraph").await;
    assert_eq!(fg["total"], 100);
    assert_eq!(
        path_to(&fg["root"], "hot").unwrap(),
        ["total", "main", "alpha", "hot"],
        "{fg}"
    );
    assert_eq!(find(&fg["root"], "alpha").unwrap()["self"], 10);

    let (_, top) = get(&app, "/api/v1/top").await;
    assert_eq!(
        top["functions"][0],
        serde_json::json!({"name": "hot", "self": 90, "total": 90})
    );

    // The pprof export carries the names too.
    let (status, body) = send(
        &app,
        Request::get("/api/v1/pprof").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = decode_profile(&body, 1 << 26).unwrap();
    let names: Vec<&str> = p.function.iter().map(|f| p.str(f.name)).collect();
    for f in ["main", "alpha", "hot"] {
        assert!(names.contains(&f), "{names:?}");
    }
}

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `go tool pprof -top` opens the export, from a file and straight from the server's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_export_opens_in_go_tool_pprof() {
    if !go_available() {
        eprintln!("SKIPPED: `go` is not installed (Debian golang-go provides `go tool pprof`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = ServerConfig::with_data_dir(&data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store.retention_age_secs = 0; // the fixture keeps its capture time (see `open`)
    let server = kiln_storage_server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let app = router(server.state().clone());
    let body = std::fs::read(testdata("pyroscope-io-1.4.0-push-request.bin.gz")).unwrap();
    assert_eq!(
        push_raw(&app, body, "application/proto", Some("gzip"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = push(
        &app,
        &[("__name__", "process_cpu"), ("service_name", "c")],
        &simple_profile("pprof", 5_000_000_000),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, pprof) = send(
        &app,
        Request::get(format!("/api/v1/pprof?{ALL_TIME}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let file = dir.path().join("kiln.pb.gz");
    std::fs::write(&file, &pprof).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("go")
            .args(["tool", "pprof", "-top"])
            .arg(&file)
            .env("HOME", dir.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("leaf_pprof"), "{stdout}");
    assert!(stdout.contains("Type: cpu"), "{stdout}");

    // Over HTTP, through `serve`'s listener, with graceful shutdown.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}/api/v1/pprof?{ALL_TIME}&query=%7Bservice_name%3D%22c%22%7D");
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("go")
            .args(["tool", "pprof", "-top", &url])
            .env("HOME", home_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("leaf_pprof"), "{stdout}");
    tx.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// A merged flame graph is the same whichever part of the store answers it: the head's merged
/// stacks (just ingested), the blocks' per-series sums decoded on first use, and the same kept
/// between queries. Byte for byte, for JSON with a top table and for the columnar form, whole and
/// truncated.
#[tokio::test]
async fn flame_graphs_are_the_same_from_head_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.store.retention_age_secs = 0;
    let state = AppState::open(config).unwrap();
    let app = router(state.clone());
    let go = std::fs::read(testdata("go-runtime-pprof-cpu.pb.gz")).unwrap();
    let node = std::fs::read(testdata("pyroscope-nodejs-0.6.4-wall.pprof.gz")).unwrap();
    for (raw, pod) in [(&go, "a"), (&go, "b"), (&node, "c")] {
        let req = push_request(
            &[
                ("__name__", "process_cpu"),
                ("service_name", "app"),
                ("pod", pod),
            ],
            std::slice::from_ref(raw),
        );
        let (status, v) = push_raw(&app, req.encode_to_vec(), "application/proto", None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let uris: Vec<String> = ["cpu:nanoseconds", "samples:count", "wall:nanoseconds"]
        .iter()
        .flat_map(|t| {
            [
                format!("/api/v1/flamegraph?{ALL_TIME}&profile_type={t}&top=50"),
                format!("/api/v1/flamegraph?{ALL_TIME}&profile_type={t}&max_nodes=40&top=5"),
                format!("/api/v1/flamegraph?{ALL_TIME}&profile_type={t}&format=columnar"),
                format!(
                    "/api/v1/flamegraph?{ALL_TIME}&profile_type={t}&max_nodes=40&format=columnar"
                ),
            ]
        })
        .collect();
    let answers = |app: Router| {
        let uris = uris.clone();
        async move {
            let mut out = Vec::new();
            for uri in &uris {
                let (status, body) =
                    send(&app, Request::get(uri).body(Body::empty()).unwrap()).await;
                assert_eq!(status, StatusCode::OK, "{uri}");
                out.push(body);
            }
            out
        }
    };
    let head = answers(app.clone()).await;
    let go_p = decode_profile(&go, 1 << 26).unwrap();
    let node_p = decode_profile(&node, 1 << 26).unwrap();
    let fg: Value = serde_json::from_slice(&head[0]).unwrap();
    assert_eq!(
        fg["total"],
        2 * sum_values(&go_p, "cpu:nanoseconds") + sum_values(&node_p, "cpu:nanoseconds")
    );
    assert!(fg["top"].as_array().unwrap().len() > 5, "{fg}");
    let cut: Value = serde_json::from_slice(&head[1]).unwrap();
    assert!(cut["truncated_nodes"].as_u64().unwrap() > 0, "{cut}");
    assert_eq!(state.store.stats().blocks, 0);

    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .unwrap()
        .unwrap();
    assert!(state.store.stats().blocks > 0);
    let cold = answers(app.clone()).await;
    let warm = answers(app.clone()).await;
    for (i, uri) in uris.iter().enumerate() {
        assert!(head[i] == cold[i], "{uri}: head and blocks differ");
        assert!(
            cold[i] == warm[i],
            "{uri}: first and later block reads differ"
        );
    }
}
