//! The admission pipeline seen from clients: every hostile input of issue 10 sent on BOTH ingest
//! paths (the push API and `/ingest`, raw and as a multipart form) gets the same documented answer,
//! and nothing of a refused request is stored. Driven in-process through `router`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use kiln_proto::ProfileBuilder;
use kiln_proto::codec::gzip;
use kiln_proto::pprof::{Label, Profile, ValueType};
use kiln_proto::push::{LabelPair, PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::query::time::now_nanos;
use kiln_storage_server::{AppState, ServerConfig, router};
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

const NS: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * NS;
const BOUNDARY: &str = "kilnAdmissionBoundary";

fn open_with(config: ServerConfig) -> Router {
    router(AppState::open(config).unwrap())
}

/// One hour of age retention, the default 10 min of skew.
fn config(dir: &std::path::Path) -> ServerConfig {
    let mut c = ServerConfig::with_data_dir(dir);
    c.store.retention_age_secs = 3600;
    c
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: Bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, v)
}

/// How a profile reaches the server.
#[derive(Clone, Copy, Debug)]
enum Path {
    Push,
    Ingest,
    Multipart,
}
const PATHS: [Path; 3] = [Path::Push, Path::Ingest, Path::Multipart];

fn push_request(service: &str, profile: Vec<u8>) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
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
                raw_profile: profile,
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}

fn form(profile: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"profile\"; \
         filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(profile);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// Sends the (encoded, possibly gzipped) pprof `profile` for `service` on `path`, as `tenant`.
async fn send_profile(
    app: &Router,
    path: Path,
    tenant: &str,
    service: &str,
    profile: Vec<u8>,
) -> (StatusCode, HeaderMap, Value) {
    let req = match path {
        Path::Push => Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(push_request(service, profile))),
        Path::Ingest => Request::post(format!("/ingest?name={service}&format=pprof"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(profile)),
        Path::Multipart => Request::post(format!("/ingest?name={service}"))
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(form(&profile))),
    };
    let req = req.unwrap();
    let (mut parts, body) = req.into_parts();
    parts
        .headers
        .insert("X-Scope-OrgID", tenant.parse().unwrap());
    send(app, Request::from_parts(parts, body)).await
}

/// Services stored for `tenant` (any time).
async fn services(app: &Router, tenant: &str) -> Vec<String> {
    let req = Request::get("/api/v1/labels/service_name/values?from=0&until=now")
        .header("X-Scope-OrgID", tenant)
        .body(Body::empty())
        .unwrap();
    let (status, _, v) = send(app, req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// main -> work, two sample types, timestamped now, with a sample label that stays on samples.
fn good_profile() -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", 10_000_000);
    b.time(now_nanos(), 10 * NS);
    let main = b.function("main", "main.c");
    let work = b.function("work", "work.c");
    let l1 = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l2 = b.symbolized_location(0, 0x20, &[(work, 2)]);
    b.add_sample(&[l2, l1], &[1, 10_000_000], &[("span_id", "7")]);
    b.add_sample(&[l1], &[2, 20_000_000], &[]);
    b.finish()
}

/// Sends `profile` on every path (as tenant `t`, service `svc-<path>`) and asserts each answer has
/// `status` and an error naming `needle`; a refused profile must leave nothing stored.
async fn same_answer_everywhere(
    app: &Router,
    what: &str,
    profile: &Profile,
    status: StatusCode,
    needle: &str,
) {
    for gz in [false, true] {
        let bytes = profile.encode_to_vec();
        let bytes = if gz { gzip(&bytes) } else { bytes };
        for path in PATHS {
            let (got, _, v) = send_profile(app, path, "t", "svc", bytes.clone()).await;
            assert_eq!(got, status, "{what} via {path:?} (gzip {gz}): {v}");
            if !status.is_success() {
                let msg = v["error"].as_str().unwrap_or_default();
                assert!(
                    msg.contains(needle),
                    "{what} via {path:?}: {msg:?} does not name {needle:?}"
                );
            }
        }
    }
    if !status.is_success() {
        assert!(
            services(app, "t").await.is_empty(),
            "{what}: something was stored"
        );
    }
}

/// A change that makes a good profile bad.
type Mutation = Box<dyn Fn(&mut Profile)>;

#[tokio::test]
async fn extreme_values_refused_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "i64::MIN",
            Box::new(|p| p.sample[0].value[1] = i64::MIN),
            "negative cpu:nanoseconds value",
        ),
        ("-1", Box::new(|p| p.sample[1].value[0] = -1), "negative"),
        (
            "i64::MAX",
            Box::new(|p| p.sample[0].value[1] = i64::MAX),
            "add up to more than",
        ),
        (
            "overflowing sum",
            Box::new(|p| {
                p.sample[0].value[1] = i64::MAX / 2 + 1;
                p.sample[1].value[1] = i64::MAX / 2 + 1;
            }),
            "add up to more than",
        ),
        (
            "sum just over 2^53",
            Box::new(|p| {
                p.sample[0].value[0] = 1 << 52;
                p.sample[1].value[0] = (1 << 52) + 1;
            }),
            "samples:count values add up",
        ),
    ];
    for (what, mutate, needle) in cases {
        let mut p = good_profile();
        mutate(&mut p);
        same_answer_everywhere(&app, what, &p, StatusCode::BAD_REQUEST, needle).await;
    }
    // Exactly 2^53 in all is fine, on every path.
    let mut p = good_profile();
    p.sample[0].value[0] = 1 << 52;
    p.sample[1].value[0] = 1 << 52;
    same_answer_everywhere(&app, "2^53", &p, StatusCode::OK, "").await;
}

#[tokio::test]
async fn out_of_range_indices_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    let far = 1_000_000;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "sample[0].label[0].key",
            Box::new(move |p| p.sample[0].label[0].key = far),
        ),
        (
            "sample[0].label[0].str",
            Box::new(move |p| p.sample[0].label[0].str = far),
        ),
        (
            "sample[1].label[0].num_unit",
            Box::new(move |p| {
                p.sample[1].label.push(Label {
                    key: 1,
                    num: 5,
                    num_unit: far,
                    ..Label::default()
                })
            }),
        ),
        (
            "period_type.type",
            Box::new(move |p| {
                p.period_type = Some(ValueType {
                    r#type: far,
                    unit: 0,
                })
            }),
        ),
        (
            "period_type.unit",
            Box::new(move |p| p.period_type.as_mut().unwrap().unit = -1),
        ),
        ("comment[1]", Box::new(move |p| p.comment = vec![1, far])),
        (
            "default_sample_type",
            Box::new(move |p| p.default_sample_type = far),
        ),
        ("drop_frames", Box::new(move |p| p.drop_frames = far)),
        ("keep_frames", Box::new(move |p| p.keep_frames = -5)),
        (
            "sample_type[1].unit",
            Box::new(move |p| p.sample_type[1].unit = far),
        ),
        (
            "function (id 1).filename",
            Box::new(move |p| p.function[0].filename = far),
        ),
    ];
    for (field, mutate) in cases {
        let mut p = good_profile();
        mutate(&mut p);
        same_answer_everywhere(&app, field, &p, StatusCode::BAD_REQUEST, field).await;
    }
}

#[tokio::test]
async fn time_window_enforced_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    let now = now_nanos();
    let at = |t: i64| {
        let mut p = good_profile();
        p.time_nanos = t;
        p
    };
    // Outside: older than the hour of retention, or beyond 10 min of skew.
    for (what, t, needle) in [
        ("too old", now - HOUR - 60 * NS, "older than the retention"),
        ("far past", 1_000_000_000 * NS, "older than the retention"),
        ("future", now + 11 * 60 * NS, "in the future"),
        ("i64::MAX", i64::MAX, "in the future"),
    ] {
        same_answer_everywhere(&app, what, &at(t), StatusCode::BAD_REQUEST, needle).await;
    }
    // Inside, near both edges (a minute of margin for the test's own run time).
    same_answer_everywhere(
        &app,
        "old edge",
        &at(now - HOUR + 60 * NS),
        StatusCode::OK,
        "",
    )
    .await;
    same_answer_everywhere(&app, "new edge", &at(now + 9 * 60 * NS), StatusCode::OK, "").await;
    // No time (or a nonsense one) means "now" on every path.
    same_answer_everywhere(&app, "no time", &at(0), StatusCode::OK, "").await;

    // Text uploads are timed by `from`: the same window.
    let old = (now - 2 * HOUR) / NS;
    let req = Request::post(format!("/ingest?name=text.cpu&from={old}"))
        .body(Body::from("main;f 1\n"))
        .unwrap();
    let (status, _, v) = send(&app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("older than the retention")
    );
}

#[tokio::test]
async fn dates_parsed_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    for (query, field) in [
        ("from=20231340", "from"),
        ("until=20230229", "until"),
        ("from=99999999", "from"),
    ] {
        let req = Request::post(format!("/ingest?name=text.cpu&{query}"))
            .body(Body::from("main;f 1\n"))
            .unwrap();
        let (status, _, v) = send(&app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("{field}: ")) && msg.contains("not a valid date"),
            "{query}: {msg}"
        );
    }
    assert!(services(&app, "anonymous").await.is_empty());
}

/// A profile like the hostile run's: big tables (long strings) and samples split by `labels`
/// distinct values of a sample label.
fn split_bomb(labels: usize) -> Profile {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    b.time(now_nanos(), 10 * NS);
    let mut locs = Vec::new();
    for i in 0..2000 {
        let f = b.function(&format!("{i:0>120}"), "bomb.c");
        locs.push(b.symbolized_location(0, 0x10 + i, &[(f, 1)]));
    }
    for i in 0..labels {
        let v = format!("v{i}");
        b.add_sample(&[locs[i % locs.len()]], &[1], &[("req", &v)]);
    }
    b.finish()
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn split_bomb_refused_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    // Too many series: more distinct label sets than a request may make.
    let many = split_bomb(5000);
    // Few enough series, but each carries ~250 KB of tables: over the 64 MiB split budget.
    let heavy = split_bomb(600);
    let tables = {
        let mut t = heavy.clone();
        t.sample.clear();
        t.encoded_len()
    };
    assert!(tables * 600 > 64 << 20, "tables of {tables} bytes");
    let before = rss_bytes();
    for (what, p, needle) in [
        ("many", &many, "distinct sample label sets"),
        ("heavy", &heavy, "budget"),
    ] {
        let gz = gzip(&p.encode_to_vec());
        assert!(gz.len() < 400 << 10, "{what}: {} bytes sent", gz.len());
        for path in PATHS {
            // Four at once, as in the run that got the server OOM-killed.
            let sends = (0..4).map(|_| send_profile(&app, path, "t", "bomb", gz.clone()));
            for (status, _, v) in futures::future::join_all(sends).await {
                assert_eq!(
                    status,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{what} {path:?}: {v}"
                );
                let msg = v["error"].as_str().unwrap();
                assert!(msg.contains(needle), "{what} {path:?}: {msg}");
            }
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} KiB over 24 split bombs", grown >> 10);
    // Before parts were counted first, four concurrent pushes of `many` grew this process by
    // 656 MiB (never returned) and took 9 s; after, 12 MiB and 0.6 s (debug build, 2026-12).
    assert!(grown < 128 << 20, "RSS grew by {grown} bytes");
    assert!(services(&app, "t").await.is_empty());

    // A legitimate split (a few tags) still works on every path.
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    b.time(now_nanos(), 10 * NS);
    let f = b.function("f", "f.c");
    let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
    b.add_sample(&[l], &[1], &[("env", "a")]);
    b.add_sample(&[l], &[2], &[("env", "b")]);
    let p = b.finish();
    for path in PATHS {
        let (status, _, v) = send_profile(&app, path, "ok", "split", p.encode_to_vec()).await;
        assert_eq!(status, StatusCode::OK, "{path:?}: {v}");
    }
    let req = Request::get("/api/v1/labels/env/values?from=0&until=now")
        .header("X-Scope-OrgID", "ok")
        .body(Body::empty())
        .unwrap();
    let (_, _, v) = send(&app, req).await;
    assert_eq!(v["values"], serde_json::json!(["a", "b"]));
}

#[tokio::test]
async fn decompressed_too_large_is_413_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_decompressed_bytes = 1 << 20;
    let app = open_with(c);
    let zeros = gzip(&vec![0u8; 2 << 20]);
    let text_bomb = gzip(&b"main;f 1\n".repeat(300_000));
    let mut requests = vec![
        // Push: a gzipped body, and a gzipped raw profile.
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(zeros.clone()))
            .unwrap(),
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(push_request("svc", zeros.clone())))
            .unwrap(),
        // /ingest: a gzipped body (by header and by magic), a form, and folded text.
        Request::post("/ingest?name=svc&format=pprof")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(zeros.clone()))
            .unwrap(),
        Request::post("/ingest?name=svc&format=pprof")
            .body(Body::from(zeros.clone()))
            .unwrap(),
        Request::post("/ingest?name=svc")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(form(&zeros)))
            .unwrap(),
        Request::post("/ingest?name=svc.cpu")
            .body(Body::from(text_bomb.clone()))
            .unwrap(),
        Request::post("/ingest?name=svc.cpu")
            .header(header::CONTENT_ENCODING, "x-gzip")
            .body(Body::from(text_bomb))
            .unwrap(),
    ];
    // Many small profiles that are fine alone but not together: the budget is per request.
    let mut big = good_profile();
    big.string_table.push("x".repeat(300 << 10));
    let one = gzip(&big.encode_to_vec());
    // Each alone is admitted.
    let (status, _, v) = send_profile(&app, Path::Push, "t", "svc", one.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut req = PushRequest::decode(push_request("svc", one.clone()).as_slice()).unwrap();
    for _ in 0..3 {
        req.series[0].samples.push(RawSample {
            raw_profile: one.clone(),
            id: String::new(),
        });
    }
    requests.push(
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(req.encode_to_vec()))
            .unwrap(),
    );
    for (i, r) in requests.into_iter().enumerate() {
        let uri = r.uri().to_string();
        let (status, _, v) = send(&app, r).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request {i} {uri}: {v}"
        );
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("exceeds the limit of 1048576"),
            "request {i}: {v}"
        );
    }
}

#[tokio::test]
async fn same_encodings_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_with(config(dir.path()));
    let p = good_profile().encode_to_vec();
    for enc in ["gzip", "x-gzip", "identity"] {
        let body = |b: Vec<u8>| if enc == "identity" { b } else { gzip(&b) };
        let push = Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .header(header::CONTENT_ENCODING, enc)
            .body(Body::from(body(push_request("push", p.clone()))))
            .unwrap();
        let ingest = Request::post("/ingest?name=ingest&format=pprof")
            .header(header::CONTENT_ENCODING, enc)
            .body(Body::from(body(p.clone())))
            .unwrap();
        for r in [push, ingest] {
            let (status, _, v) = send(&app, r).await;
            assert_eq!(status, StatusCode::OK, "{enc}: {v}");
        }
    }
    for r in [
        Request::post(PUSH_PATH)
            .header(header::CONTENT_ENCODING, "br")
            .body(Body::from(push_request("push", p.clone())))
            .unwrap(),
        Request::post("/ingest?name=ingest&format=pprof")
            .header(header::CONTENT_ENCODING, "br")
            .body(Body::from(p.clone()))
            .unwrap(),
    ] {
        let (status, _, v) = send(&app, r).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // 2 profiles/s per tenant: a burst of 4.
    c.limits.ingest_rate_profiles = 2;
    let app = open_with(c);
    let p = good_profile().encode_to_vec();
    let mut accepted = 0;
    let mut limited = None;
    // Both paths draw on the tenant's one bucket.
    for path in [Path::Push, Path::Ingest].into_iter().cycle().take(12) {
        let (status, headers, v) = send_profile(&app, path, "busy", "svc", p.clone()).await;
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let msg = v["error"].as_str().unwrap();
                assert!(
                    msg.contains("busy") && msg.contains("2 profiles per second"),
                    "{msg}"
                );
                let retry: u64 = headers[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                limited = Some(retry);
                break;
            }
            other => panic!("{path:?}: {other} {v}"),
        }
    }
    // The burst (and no more than a little refill) went through, then 429.
    assert!((4..=6).contains(&accepted), "{accepted} accepted");
    let retry = limited.expect("never limited");
    // Another tenant is not affected.
    let (status, _, v) = send_profile(&app, Path::Push, "calm", "svc", p.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The limited tenant recovers once Retry-After has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    loop {
        let (status, _, v) = send_profile(&app, Path::Ingest, "busy", "svc", p.clone()).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert!(Instant::now() < deadline, "never recovered: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn byte_rate_limit_admits_a_big_body_once_then_429() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.ingest_rate_bytes = 1000;
    let app = open_with(c);
    // Bigger than the 2000-byte burst: admitted on a full bucket, leaving it in debt.
    let mut p = good_profile();
    p.string_table.push("x".repeat(5000));
    let (status, _, v) = send_profile(&app, Path::Push, "t", "svc", p.encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, headers, v) = send_profile(
        &app,
        Path::Ingest,
        "t",
        "svc",
        good_profile().encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 3, "Retry-After {retry} after ~5 KB at 1000 B/s");
}
