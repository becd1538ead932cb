//! Pyroscope's legacy `/ingest` API, tenants (`X-Scope-OrgID`), optional bearer-token auth, and
//! hostile ingest input — driven in-process through `router`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use kiln_proto::ProfileBuilder;
use kiln_proto::codec::{decode_profile, gzip, maybe_gunzip};
use kiln_proto::pprof::Profile;
use kiln_proto::push::{LabelPair, PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::{AppState, ServerConfig, router};
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

const ALL_TIME: &str = "from=0&until=now";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pprof")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).unwrap()
}

fn fixture_profile(name: &str) -> Profile {
    decode_profile(&fixture(name), 1 << 26).unwrap()
}

fn open_with(config: ServerConfig) -> Router {
    router(AppState::open(config).unwrap())
}

/// A server without age retention: the fixtures under testdata/ carry the time they were captured,
/// and with no retention the accepted time window has no lower bound, so they stay admissible as
/// they age (tests of the window itself configure retention).
fn open(dir: &Path) -> Router {
    let mut config = ServerConfig::with_data_dir(dir);
    config.store.retention_age_secs = 0;
    open_with(config)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

fn json(body: &Bytes) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(format!("{body:?}")))
}

/// GET as `tenant` (None: no header) and parse JSON.
async fn get_as(app: &Router, tenant: Option<&str>, uri: &str) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let (status, body) = send(app, req.body(Body::empty()).unwrap()).await;
    (status, json(&body))
}

async fn get(app: &Router, uri: &str) -> Value {
    let (status, v) = get_as(app, None, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {v}");
    v
}

/// POST to `/ingest?{query}`.
async fn ingest(
    app: &Router,
    query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::post(format!("/ingest?{query}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, body) = send(app, req.body(Body::from(body)).unwrap()).await;
    (status, json(&body))
}

async fn ingest_ok(app: &Router, query: &str, headers: &[(&str, &str)], body: Vec<u8>) {
    let (status, v) = ingest(app, query, headers, body).await;
    assert_eq!(status, StatusCode::OK, "{query}: {v}");
}

fn push_body(labels: &[(&str, &str)], profile: &Profile) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: vec![RawSample {
                raw_profile: profile.encode_to_vec(),
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}

async fn push_as(
    app: &Router,
    tenant: Option<&str>,
    labels: &[(&str, &str)],
    profile: &Profile,
) -> (StatusCode, Value) {
    let mut req = Request::post(PUSH_PATH).header(header::CONTENT_TYPE, "application/proto");
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let (status, body) = send(
        app,
        req.body(Body::from(push_body(labels, profile))).unwrap(),
    )
    .await;
    (status, json(&body))
}

/// main -> leaf_<tag>, `value` ns of cpu, timestamped now.
fn profile(tag: &str, value: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let leaf = b.function(&format!("leaf_{tag}"), "main.c");
    let l1 = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l2 = b.symbolized_location(0, 0x20, &[(leaf, 2)]);
    b.add_sample(&[l2, l1], &[value], &[]);
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
        .unwrap_or_else(|| panic!("no {ty}"));
    p.sample.iter().map(|s| s.value[i]).sum()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every function name in a flame-graph JSON tree.
fn names(node: &Value, out: &mut Vec<String>) {
    out.push(node["name"].as_str().unwrap_or("").to_owned());
    for c in node["children"].as_array().into_iter().flatten() {
        names(c, out);
    }
}

async fn flamegraph(app: &Router, tenant: Option<&str>, query: &str, ptype: &str) -> Value {
    let uri = format!(
        "/api/v1/flamegraph?{ALL_TIME}&query={}&profile_type={ptype}",
        enc(query)
    );
    let (status, v) = get_as(app, tenant, &uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {v}");
    v
}

#[tokio::test]
async fn ingest_pprof_raw_gzip_and_gzip_by_magic() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    // Go's pprof, sent raw (decompressed), like pyroscope-go's `format=pprof`.
    let go_raw = maybe_gunzip(&fixture("go-runtime-pprof-cpu.pb.gz"), 1 << 26)
        .unwrap()
        .into_owned();
    ingest_ok(
        &app,
        "name=go-app%7Benv%3Dprod%2Cregion%3Deu%7D&format=pprof&spyName=gospy&from=1764302220&until=1764302230",
        &[("Content-Type", "binary/octet-stream")],
        go_raw,
    )
    .await;
    // @pyroscope/nodejs: gzipped body without Content-Encoding.
    ingest_ok(
        &app,
        "name=node-app%7Bteam%3Dweb%7D&format=pprof&spyName=nodespy&sampleRate=17",
        &[("Content-Type", "application/octet-stream")],
        fixture("pyroscope-nodejs-0.6.4-wall.pprof.gz"),
    )
    .await;
    // pyroscope-io 0.8: gzip with Content-Encoding, at /pyroscope/ingest.
    let req = Request::post("/pyroscope/ingest?name=py-app&format=pprof&spyName=pyspy")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gzip(&profile("py", 70).encode_to_vec())))
        .unwrap();
    let (status, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    let v = get(
        &app,
        &format!("/api/v1/labels/service_name/values?{ALL_TIME}"),
    )
    .await;
    assert_eq!(strings(&v["values"]), ["go-app", "node-app", "py-app"]);
    let v = get(&app, &format!("/api/v1/labels/__name__/values?{ALL_TIME}")).await;
    assert_eq!(strings(&v["values"]), ["process_cpu", "wall"]);
    let v = get(
        &app,
        &format!("/api/v1/labels/pyroscope_spy/values?{ALL_TIME}"),
    )
    .await;
    assert_eq!(strings(&v["values"]), ["gospy", "nodespy", "pyspy"]);
    let v = get(&app, &format!("/api/v1/labels?{ALL_TIME}")).await;
    let names_ = strings(&v["names"]);
    for n in ["env", "region", "team", "phase", "service_name", "__name__"] {
        assert!(names_.contains(&n.to_owned()), "{names_:?}");
    }

    // Each sample type of a multi-type pprof is queryable on its own.
    let go = fixture_profile("go-runtime-pprof-cpu.pb.gz");
    let node = fixture_profile("pyroscope-nodejs-0.6.4-wall.pprof.gz");
    let fg = flamegraph(
        &app,
        None,
        r#"{service_name="go-app",env="prod"}"#,
        "cpu:nanoseconds",
    )
    .await;
    assert_eq!(fg["total"], sum_values(&go, "cpu:nanoseconds"));
    for ty in ["wall:nanoseconds", "cpu:nanoseconds", "samples:count"] {
        let fg = flamegraph(&app, None, r#"{service_name="node-app"}"#, ty).await;
        assert_eq!(fg["total"], sum_values(&node, ty), "{ty}");
    }
    // The Node dynamic tag `phase` became a series label.
    let fg = flamegraph(&app, None, r#"{phase="loop"}"#, "samples:count").await;
    let looped: i64 = node
        .sample
        .iter()
        .filter(|s| !s.label.is_empty())
        .map(|s| s.value[0])
        .sum();
    assert_eq!(fg["total"], looped);
    let fg = flamegraph(&app, None, r#"{service_name="py-app"}"#, "cpu:nanoseconds").await;
    assert_eq!(fg["total"], 70);
    let mut n = Vec::new();
    names(&fg["root"], &mut n);
    assert!(n.contains(&"leaf_py".to_owned()), "{n:?}");
}

#[tokio::test]
async fn ingest_folded_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    // Folded text, cpu at the default 100 Hz: each count is 10 ms.
    ingest_ok(
        &app,
        "name=txt.cpu%7Benv%3Ddev%7D&spyName=ebpfspy",
        &[],
        b"main;work;hot 30\nmain;idle 5\n".to_vec(),
    )
    .await;
    // `lines`, wall at 50 Hz: one sample per line, 20 ms each.
    ingest_ok(
        &app,
        "name=txt.wall&format=lines&sampleRate=50",
        &[],
        b"main;wait\nmain;wait\nmain;poll\n".to_vec(),
    )
    .await;
    // Memory: not scaled.
    ingest_ok(
        &app,
        "name=txt.alloc_space&units=bytes&aggregationType=sum",
        &[],
        b"main;alloc 4096\n".to_vec(),
    )
    .await;

    let fg = flamegraph(
        &app,
        None,
        r#"{service_name="txt",env="dev"}"#,
        "cpu:nanoseconds",
    )
    .await;
    assert_eq!(fg["total"], 35 * 10_000_000);
    let top = get(
        &app,
        &format!(
            "/api/v1/top?{ALL_TIME}&query={}",
            enc(r#"{__name__="process_cpu"}"#)
        ),
    )
    .await;
    assert_eq!(top["functions"][0]["name"], "hot");
    assert_eq!(top["functions"][0]["self"], 30 * 10_000_000);
    let fg = flamegraph(&app, None, r#"{__name__="wall"}"#, "wall:nanoseconds").await;
    assert_eq!(fg["total"], 3 * 20_000_000);
    let fg = flamegraph(&app, None, r#"{__name__="memory"}"#, "alloc_space:bytes").await;
    assert_eq!(fg["total"], 4096);
    let v = get(
        &app,
        &format!("/api/v1/labels/pyroscope_spy/values?{ALL_TIME}"),
    )
    .await;
    assert_eq!(strings(&v["values"]), ["ebpfspy", "unknown"]);
}

fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, data) in parts {
        b.extend_from_slice(b"--b0undary\r\nContent-Disposition: form-data; name=\"");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\"; filename=\"");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b".pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"--b0undary--\r\n");
    b
}

const FORM: (&str, &str) = ("Content-Type", "multipart/form-data; boundary=b0undary");

#[tokio::test]
async fn ingest_multipart_pprof() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let config = br#"{"cpu":{"units":"nanoseconds","display-name":"cpu","aggregation":"sum","cumulative":false,"sampled":true}}"#;
    let body = form(&[
        ("profile", &gzip(&profile("form", 42).encode_to_vec())),
        ("sample_type_config", config),
        ("prev_profile", b""),
    ]);
    ingest_ok(
        &app,
        "name=go-form.cpu&format=pprof&spyName=gospy",
        &[FORM],
        body,
    )
    .await;
    let fg = flamegraph(
        &app,
        None,
        r#"{service_name="go-form.cpu"}"#,
        "cpu:nanoseconds",
    )
    .await;
    assert_eq!(fg["total"], 42);
    let v = get(&app, &format!("/api/v1/labels/__name__/values?{ALL_TIME}")).await;
    assert_eq!(strings(&v["values"]), ["process_cpu"]);

    // Old cumulative clients send the previous profile too: refused, as Pyroscope does.
    let body = form(&[
        ("profile", &profile("form", 1).encode_to_vec()),
        ("prev_profile", &profile("form", 1).encode_to_vec()),
    ]);
    let (status, v) = ingest(&app, "name=go-form&format=pprof", &[FORM], body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("prev_profile"), "{v}");
    let (status, v) = ingest(
        &app,
        "name=go-form",
        &[FORM],
        form(&[("sample_type_config", b"{}")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no `profile`"), "{v}");
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let cpu = [("__name__", "process_cpu")];
    for (tenant, tag, value) in [
        (Some("team-a"), "a", 100),
        (Some("team-b"), "b", 200),
        (None, "anon", 300),
    ] {
        let labels = [cpu[0], ("service_name", tag), ("only", tag)];
        let (status, v) = push_as(&app, tenant, &labels, &profile(tag, value)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // The legacy API honours the header too.
    ingest_ok(
        &app,
        "name=legacy-a",
        &[("X-Scope-OrgID", "team-a")],
        b"main;leaf_legacy 1\n".to_vec(),
    )
    .await;

    for (tenant, tag, services, total) in [
        (Some("team-a"), "a", vec!["a", "legacy-a"], 100 + 10_000_000),
        (Some("team-b"), "b", vec!["b"], 200),
        (None, "anon", vec!["anon"], 300),
        (Some("anonymous"), "anon", vec!["anon"], 300),
    ] {
        let (_, v) = get_as(&app, tenant, &format!("/api/v1/labels?{ALL_TIME}")).await;
        let label_names = strings(&v["names"]);
        assert!(
            !label_names.contains(&"__tenant__".to_owned()),
            "{label_names:?}"
        );
        assert!(label_names.contains(&"only".to_owned()), "{label_names:?}");
        let (_, v) = get_as(
            &app,
            tenant,
            &format!("/api/v1/labels/service_name/values?{ALL_TIME}"),
        )
        .await;
        assert_eq!(strings(&v["values"]), services, "{tenant:?}");
        let (_, v) = get_as(
            &app,
            tenant,
            &format!("/api/v1/labels/only/values?{ALL_TIME}"),
        )
        .await;
        assert_eq!(strings(&v["values"]), [tag], "{tenant:?}");
        let (_, v) = get_as(
            &app,
            tenant,
            &format!("/api/v1/labels/__tenant__/values?{ALL_TIME}"),
        )
        .await;
        assert_eq!(strings(&v["values"]), Vec::<String>::new());

        // Even asking for another tenant's series by label finds nothing.
        let fg = flamegraph(&app, tenant, "{}", "cpu:nanoseconds").await;
        assert_eq!(fg["total"], total, "{tenant:?}");
        let fg = flamegraph(&app, tenant, r#"{__tenant__="team-b"}"#, "cpu:nanoseconds").await;
        let want = if tenant == Some("team-b") { 200 } else { 0 };
        assert_eq!(fg["total"], want, "{tenant:?}");
        let mut n = Vec::new();
        names(
            &flamegraph(&app, tenant, "{}", "cpu:nanoseconds").await["root"],
            &mut n,
        );
        for other in ["a", "b", "anon"].iter().filter(|t| **t != tag) {
            assert!(!n.contains(&format!("leaf_{other}")), "{tenant:?}: {n:?}");
        }

        let (_, top) = get_as(&app, tenant, &format!("/api/v1/top?{ALL_TIME}")).await;
        assert_eq!(top["total"], total, "{tenant:?}");

        let mut req = Request::get(format!("/api/v1/pprof?{ALL_TIME}"));
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        let (status, body) = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let p = decode_profile(&body, 1 << 26).unwrap();
        assert_eq!(sum_values(&p, "cpu:nanoseconds"), total, "{tenant:?}");

        let (_, v) = get_as(&app, tenant, &format!("/api/v1/profile_types?{ALL_TIME}")).await;
        assert_eq!(strings(&v["profile_types"]), ["cpu:nanoseconds"]);
    }
    let (_, v) = get_as(&app, Some("nobody"), &format!("/api/v1/labels?{ALL_TIME}")).await;
    assert_eq!(strings(&v["names"]), Vec::<String>::new());

    // Clients cannot pick a tenant by label, and a bad header is named.
    let labels = [cpu[0], ("__tenant__", "team-b")];
    let (status, v) = push_as(&app, Some("team-a"), &labels, &profile("x", 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("reserved"), "{v}");
    for bad in ["a/b", "..", &"x".repeat(151)] {
        let (status, v) = push_as(&app, Some(bad), &cpu, &profile("x", 1)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            v["error"].as_str().unwrap().contains("X-Scope-OrgID"),
            "{v}"
        );
        let (status, _) = get_as(&app, Some(bad), &format!("/api/v1/labels?{ALL_TIME}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = ingest(
        &app,
        "name=app",
        &[("X-Scope-OrgID", "a b")],
        b"main 1\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("kiln_server_ingest_rejected_total{reason=\"bad_tenant\"} 4"),
        "{metrics:?}"
    );
    // `__tenant__` in the legacy name is dropped like any `__` label.
    ingest_ok(
        &app,
        &format!("name={}", enc("sneaky{__tenant__=team-b}")),
        &[],
        b"main 1\n".to_vec(),
    )
    .await;
    let (_, v) = get_as(
        &app,
        Some("team-b"),
        &format!("/api/v1/labels/service_name/values?{ALL_TIME}"),
    )
    .await;
    assert_eq!(strings(&v["values"]), ["b"]);
}

#[tokio::test]
async fn auth_token_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.auth_token = Some("s3cret".into());
    let app = open_with(config);
    let labels = [("__name__", "process_cpu")];

    let request = |method: &str, uri: &str, auth: Option<&str>, body: Vec<u8>| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(Body::from(body)).unwrap()
    };
    let protected = [
        (
            "POST",
            PUSH_PATH.to_owned(),
            push_body(&labels, &profile("x", 5)),
        ),
        ("POST", "/ingest?name=app".to_owned(), b"main 1\n".to_vec()),
        (
            "POST",
            "/pyroscope/ingest?name=app".to_owned(),
            b"main 1\n".to_vec(),
        ),
        ("GET", format!("/api/v1/labels?{ALL_TIME}"), vec![]),
        ("GET", format!("/api/v1/flamegraph?{ALL_TIME}"), vec![]),
        ("GET", format!("/api/v1/pprof?{ALL_TIME}"), vec![]),
        ("GET", "/debuginfo/v1/abcd".to_owned(), vec![]),
    ];
    for (method, uri, body) in &protected {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic czNjcmV0"),
            Some("Bearer s3cre"),
        ] {
            let (status, resp) = send(&app, request(method, uri, auth, body.clone())).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {auth:?}");
            let v = json(&resp);
            assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
        }
    }
    let (status, resp) = send(&app, request("GET", "/api/v1/labels", None, vec![])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        json(&resp)["error"]
            .as_str()
            .unwrap()
            .contains("Authorization")
    );
    for (method, uri, body) in &protected {
        let (status, resp) = send(
            &app,
            request(method, uri, Some("Bearer s3cret"), body.clone()),
        )
        .await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri}: {resp:?}");
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "{uri}: {status}"
        );
    }
    for open in ["/healthz", "/metrics", "/", "/assets/app.js"] {
        let (status, _) = send(&app, request("GET", open, None, vec![])).await;
        assert_eq!(status, StatusCode::OK, "{open}");
    }
    // Refused ingest requests count as rejected pushes (3 ingest paths x 4 bad headers); refused
    // queries do not.
    let (_, metrics) = send(&app, request("GET", "/metrics", None, vec![])).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("kiln_server_ingest_rejected_total{reason=\"unauthorized\"} 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_server_ingest_requests_total{outcome=\"rejected\"} 12"),
        "{metrics}"
    );
}

/// What, query string, headers, body, expected status, a word the error message must contain.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn bad_ingest_input_is_rejected_and_nothing_stored_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.limits.max_body_bytes = 256 << 10;
    config.limits.max_decompressed_bytes = 1 << 20;
    config.limits.max_samples_per_profile = 1000;
    config.limits.max_stack_depth = 64;
    let app = open_with(config.clone());
    ingest_ok(&app, "name=keep", &[], b"main;kept 7\n".to_vec()).await;
    let (status, v) = push_as(
        &app,
        None,
        &[("__name__", "process_cpu"), ("service_name", "keep-push")],
        &profile("push", 9),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let pprof = profile("bad", 1).encode_to_vec();
    let gz = gzip(&pprof);
    let bomb = gzip(&vec![0u8; 64 << 20]); // 64 MiB of zeros in ~64 KiB
    assert!(bomb.len() < 256 << 10);
    let deep = format!("{} 1\n", vec!["f"; 65].join(";")).into_bytes();
    let many: Vec<u8> = (0..1001)
        .flat_map(|i| format!("main;f{i} 1\n").into_bytes())
        .collect();
    let mut wide = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let mut tall = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let mut stack = Vec::new();
    for i in 0..1001 {
        let f = wide.function(&format!("f{i}"), "");
        let l = wide.symbolized_location(0, 0, &[(f, 0)]);
        wide.add_sample(&[l], &[1], &[]);
        let f = tall.function(&format!("f{i}"), "");
        stack.push(tall.symbolized_location(0, 0, &[(f, 0)]));
    }
    tall.add_sample(&stack[..65], &[1], &[]);
    let (wide, tall) = (wide.finish().encode_to_vec(), tall.finish().encode_to_vec());
    let mut bad_ref = profile("bad", 1);
    bad_ref.sample[0].location_id.push(99);
    let octet = ("Content-Type", "application/octet-stream");
    let cases: Vec<Case> = vec![
        // metadata: 400
        (
            "no name",
            "format=pprof",
            vec![],
            pprof.clone(),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            "bad name",
            "name=a%7Bb",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "missing closing",
        ),
        (
            "bad from",
            "name=a&from=yesterday",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "from",
        ),
        (
            "reversed",
            "name=a&from=1700000010&until=1700000000",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "after",
        ),
        (
            "bad rate",
            "name=a&sampleRate=-3",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "sampleRate",
        ),
        (
            "trie",
            "name=a&format=trie",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "trie",
        ),
        (
            "unknown type",
            "name=a.bogus",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "bogus",
        ),
        (
            "bad label",
            "name=a%7B1x%3Dy%7D",
            vec![],
            b"a 1".to_vec(),
            StatusCode::BAD_REQUEST,
            "1x",
        ),
        // too large: 413
        (
            "body",
            "name=a&format=pprof",
            vec![octet],
            vec![0u8; 300 << 10],
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
        (
            "gzip bomb by header",
            "name=a&format=pprof",
            vec![("Content-Encoding", "gzip")],
            bomb.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed",
        ),
        (
            "gzip bomb by magic",
            "name=a&format=pprof",
            vec![octet],
            bomb.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed",
        ),
        (
            "form bomb",
            "name=a",
            vec![FORM],
            form(&[("profile", &bomb)]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed",
        ),
        (
            "folded bomb",
            "name=a",
            vec![],
            bomb,
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed",
        ),
        (
            "pprof samples",
            "name=a&format=pprof",
            vec![octet],
            wide,
            StatusCode::PAYLOAD_TOO_LARGE,
            "1001 samples",
        ),
        (
            "pprof stack",
            "name=a&format=pprof",
            vec![octet],
            tall,
            StatusCode::PAYLOAD_TOO_LARGE,
            "65 frames",
        ),
        (
            "deep stack",
            "name=a",
            vec![],
            deep,
            StatusCode::PAYLOAD_TOO_LARGE,
            "frames",
        ),
        (
            "many stacks",
            "name=a",
            vec![],
            many,
            StatusCode::PAYLOAD_TOO_LARGE,
            "stacks",
        ),
        // undecodable body: 400 (the same answer as a push)
        (
            "truncated pprof",
            "name=a&format=pprof",
            vec![octet],
            pprof[..pprof.len() - 3].to_vec(),
            StatusCode::BAD_REQUEST,
            "pprof",
        ),
        (
            "garbage pprof",
            "name=a&format=pprof",
            vec![octet],
            b"\xff\xff\xff\xff not a profile".to_vec(),
            StatusCode::BAD_REQUEST,
            "pprof",
        ),
        (
            "truncated gzip",
            "name=a&format=pprof",
            vec![octet],
            gz[..gz.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "gzip",
        ),
        (
            "corrupt gzip header",
            "name=a&format=pprof",
            vec![("Content-Encoding", "gzip")],
            b"not gzip".to_vec(),
            StatusCode::BAD_REQUEST,
            "gzip",
        ),
        (
            "dangling location",
            "name=a&format=pprof",
            vec![octet],
            bad_ref.encode_to_vec(),
            StatusCode::BAD_REQUEST,
            "location",
        ),
        (
            "no count",
            "name=a",
            vec![],
            b"main;f\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "line 1",
        ),
        (
            "bad count",
            "name=a",
            vec![],
            b"main;f 1\nmain;g x\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "line 2",
        ),
        (
            "not utf-8",
            "name=a",
            vec![],
            b"main;\xff 1\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            "truncated form",
            "name=a&format=pprof",
            vec![FORM],
            form(&[("profile", &pprof)])[..40].to_vec(),
            StatusCode::BAD_REQUEST,
            "multipart",
        ),
        (
            "form without boundary",
            "name=a",
            vec![("Content-Type", "multipart/form-data")],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "boundary",
        ),
        (
            "bad sample_type_config",
            "name=a",
            vec![FORM],
            form(&[("profile", &pprof), ("sample_type_config", b"{nope")]),
            StatusCode::BAD_REQUEST,
            "sample_type_config",
        ),
        // 415
        (
            "brotli",
            "name=a",
            vec![("Content-Encoding", "br")],
            b"a 1".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding",
        ),
    ];
    for (what, query, headers, body, want, needle) in cases {
        let (status, v) = ingest(&app, query, &headers, body).await;
        assert_eq!(status, want, "{what}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }

    let check = |app: Router| async move {
        let v = get(
            &app,
            &format!("/api/v1/labels/service_name/values?{ALL_TIME}"),
        )
        .await;
        assert_eq!(strings(&v["values"]), ["keep", "keep-push"]);
        let fg = flamegraph(&app, None, "{}", "cpu:nanoseconds").await;
        assert_eq!(fg["total"], 7 * 10_000_000 + 9);
    };
    check(app.clone()).await;
    drop(app);
    // And after a restart.
    check(open_with(config)).await;
}

#[tokio::test]
async fn captured_sdk_push_lands_in_its_tenant_with_sample_labels_as_series() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    // The body pyroscope-io 1.4.0 sent, replayed as tenant `py`.
    let req = Request::post(PUSH_PATH)
        .header(header::CONTENT_TYPE, "application/proto")
        .header(header::CONTENT_ENCODING, "gzip")
        .header("X-Scope-OrgID", "py")
        .body(Body::from(fixture(
            "pyroscope-io-1.4.0-push-request.bin.gz",
        )))
        .unwrap();
    let (status, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (_, v) = get_as(&app, Some("py"), &format!("/api/v1/labels?{ALL_TIME}")).await;
    let label_names = strings(&v["names"]);
    for n in ["__name__", "service_name", "process.runtime.name"] {
        assert!(label_names.contains(&n.to_owned()), "{label_names:?}");
    }
    let (_, v) = get_as(&app, None, &format!("/api/v1/labels?{ALL_TIME}")).await;
    assert_eq!(strings(&v["names"]), Vec::<String>::new());

    // Push API: sample labels (dynamic tags) become series labels too.
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let f = b.function("handler", "app.py");
    let l = b.symbolized_location(0, 0, &[(f, 1)]);
    b.add_sample(&[l], &[5], &[("endpoint", "/a")]);
    b.add_sample(&[l], &[7], &[("endpoint", "/b"), ("span_id", "42")]);
    b.add_sample(&[l], &[11], &[]);
    b.time(kiln_storage_server::query::time::now_nanos(), 1);
    let labels = [("__name__", "process_cpu"), ("service_name", "tagged")];
    let (status, v) = push_as(&app, None, &labels, &b.finish()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let v = get(&app, &format!("/api/v1/labels/endpoint/values?{ALL_TIME}")).await;
    assert_eq!(strings(&v["values"]), ["/a", "/b"]);
    for (query, total) in [
        (r#"{endpoint="/b"}"#, 7),
        (r#"{endpoint=""}"#, 11),
        (r#"{service_name="tagged"}"#, 23),
    ] {
        let fg = flamegraph(&app, None, query, "cpu:nanoseconds").await;
        assert_eq!(fg["total"], total, "{query}");
    }
    // Per-request IDs stay on samples rather than making a series each.
    let v = get(&app, &format!("/api/v1/labels?{ALL_TIME}")).await;
    assert!(!strings(&v["names"]).contains(&"span_id".to_owned()));
}
