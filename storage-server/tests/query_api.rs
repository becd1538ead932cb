//! The query API beyond flame graphs: series, diff, Pyroscope's Connect `querier.v1` service (proto
//! and JSON), the legacy `/pyroscope/render` endpoints, and `go tool pprof` against a bare host.
//!
//! Every test runs on each storage backend (`on_every_backend!` at the end): `local::NAME` on one
//! server's local disk, and `s3_bucket::NAME` on two servers sharing a bucket of a real object
//! store (a Ceph RGW at KILN_TEST_S3_ENDPOINT; ignored without one, run by scripts/test.sh). The
//! assertions are the same: object storage must not change a single answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod s3;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use kiln_proto::pprof::Profile;
use kiln_proto::push::PUSH_PATH;
use kiln_proto::querier::*;
use kiln_storage_server::query::flamebearer::{Decoded, decode};
use kiln_storage_server::query::time::now_nanos;
use kiln_storage_server::store::BucketStore;
use kiln_storage_server::{AppState, BucketConfig, ServerConfig, router};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

mod support;
use support::NS;
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

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

/// main -> work -> leaf_<tag>, plus main -> helper; `cpu` ns in the leaf, a tenth in helper.
fn profile(tag: &str, cpu: i64, time_nanos: i64) -> Profile {
    support::agent_profile(tag, cpu, [1, 1], time_nanos)
}

async fn push(app: &Router, labels: &[(&str, &str)], p: &Profile) {
    let req = support::push_request(labels, p);
    let (status, body) = send(
        app,
        Request::post(PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(req.encode_to_vec()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

/// Which storage a test runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// One server on local disk: everything is ingested and queried there.
    Local,
    /// Two servers on one bucket: the fixture's profiles are ingested by a first server and
    /// uploaded (blocks in the bucket), the test queries a second one, which downloads them and
    /// holds the fixture's last profile (and whatever the test pushes) in its own head.
    Bucket,
}

/// A server's state in `dir` on `backend` (for the bucket: blocks under a prefix named after
/// `prefix_dir`, so several servers share one).
fn open_state(backend: Backend, dir: &Path, prefix_dir: &Path) -> AppState {
    let mut config = ServerConfig::with_data_dir(dir);
    match backend {
        Backend::Local => AppState::open(config).unwrap(),
        Backend::Bucket => {
            let bucket = BucketConfig {
                url: format!(
                    "s3://{}/{}",
                    s3::bucket_name(),
                    s3::prefix_for_dir(prefix_dir)
                ),
                ..BucketConfig::default()
            };
            let store = BucketStore::open(
                config.segments_dir(),
                s3::bucket(&s3::prefix_for_dir(prefix_dir)),
                bucket.clone(),
                config.store.clone(),
                config.limits.max_decompressed_bytes,
            )
            .unwrap();
            config.bucket = Some(bucket);
            AppState::with_store(config, Arc::new(store))
        }
    }
}

/// A store with services `a` (pid 1 and 2) and `b` (pid 3), profiles at known times: returns the
/// app to query and the minute-aligned base time (ns), a few minutes ago.
async fn fixture(backend: Backend, dir: &Path) -> (Router, i64) {
    let query = open_state(backend, &dir.join("query"), dir);
    let ingest = match backend {
        Backend::Local => query.clone(),
        Backend::Bucket => open_state(backend, &dir.join("ingest"), dir),
    };
    let (app, first) = (router(query.clone()), router(ingest.clone()));
    let base = (now_nanos() / NS - 600) / 60 * 60 * NS;
    let lbl = |svc: &'static str, pid: &'static str, comm: &'static str| {
        [
            ("__name__", "process_cpu"),
            ("service_name", svc),
            ("pid", pid),
            ("comm", comm),
        ]
    };
    push(&first, &lbl("a", "1", "app"), &profile("a", 100, base + NS)).await;
    push(
        &first,
        &lbl("a", "1", "app"),
        &profile("a", 50, base + 5 * NS),
    )
    .await;
    push(
        &first,
        &lbl("a", "1", "app"),
        &profile("a", 30, base + 12 * NS),
    )
    .await;
    push(
        &first,
        &lbl("a", "2", "app"),
        &profile("a", 7_000, base + 3 * NS),
    )
    .await;
    if let Backend::Bucket = backend {
        // Upload from the first server (then stop it: its blocks outlive it), and let the
        // second one read the bucket's block list, as its sync thread does every few seconds.
        tokio::task::spawn_blocking(move || {
            ingest.store.flush().unwrap();
            drop(ingest);
            query.store.flush().unwrap();
        })
        .await
        .unwrap();
    }
    push(
        &app,
        &lbl("b", "3", "db"),
        &profile("b", 200, base + 25 * NS),
    )
    .await;
    (app, base)
}

fn range(base: i64) -> String {
    format!("from={}&until={}", base / NS - 60, base / NS + 120)
}

fn ms(base: i64) -> (i64, i64) {
    ((base / NS - 60) * 1000, (base / NS + 120) * 1000)
}

/// Totals with helper = cpu / 10 (integer division).
fn total(cpu: i64) -> i64 {
    cpu + cpu / 10
}

async fn series_buckets_by_step_with_group_by(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = fixture(backend, dir.path()).await;
    let b = base / 1_000_000;
    let (status, v) = get(
        &app,
        &format!(
            "/api/v1/series?{}&query=%7Bservice_name%3D%22a%22%7D&group_by=pid,comm&step=10",
            range(base)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["profile_type"], "cpu:nanoseconds");
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v}");
    assert_eq!(
        series[0]["labels"],
        serde_json::json!({"pid": "1", "comm": "app"})
    );
    assert_eq!(
        series[0]["points"],
        serde_json::json!([[b, total(100) + total(50)], [b + 10_000, total(30)]])
    );
    assert_eq!(series[1]["labels"]["pid"], "2");
    assert_eq!(series[1]["points"], serde_json::json!([[b, total(7_000)]]));

    // Averages per bucket, a wider step, no grouping: one series for everything selected.
    let (_, v) = get(
        &app,
        &format!("/api/v1/series?{}&step=30&aggregation=avg", range(base)),
    )
    .await;
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{v}");
    assert_eq!(series[0]["labels"], serde_json::json!({}));
    let all = [100, 50, 30, 7_000, 200].map(total);
    assert_eq!(
        series[0]["points"],
        serde_json::json!([[b, all.iter().sum::<i64>() as f64 / 5.0]])
    );

    // Another sample type, limit, and bad parameters named.
    let (_, v) = get(
        &app,
        &format!(
            "/api/v1/series?{}&profile_type=samples:count&group_by=service_name&step=60&limit=1",
            range(base)
        ),
    )
    .await;
    assert_eq!(v["series"].as_array().unwrap().len(), 1);
    assert_eq!(v["series"][0]["labels"]["service_name"], "a");
    assert_eq!(v["series"][0]["points"][0][1], 8);
    for bad in ["step=0", "step=abc", "aggregation=max", "limit=0"] {
        let (status, v) = get(&app, &format!("/api/v1/series?{}&{bad}", range(base))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        let param = bad.split('=').next().unwrap();
        assert!(v["error"].as_str().unwrap().contains(param), "{bad}: {v}");
    }
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

async fn diff_carries_left_and_right_totals(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = fixture(backend, dir.path()).await;
    let (status, v) = get(
        &app,
        &format!(
            "/api/v1/diff?{}&left_query=%7Bservice_name%3D%22a%22%7D&right_query=%7Bservice_name%3D%22b%22%7D",
            range(base)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let left = [100, 50, 30, 7_000].map(total).iter().sum::<i64>();
    assert_eq!(v["left"]["total"], left);
    assert_eq!(v["left"]["profiles"], 4);
    assert_eq!(v["right"]["total"], total(200));
    assert_eq!(v["root"]["left_total"], left);
    let leaf_a = find(&v["root"], "leaf_a").unwrap();
    assert_eq!(leaf_a["left_self"], 100 + 50 + 30 + 7_000);
    assert_eq!(leaf_a["right_total"], 0);
    let leaf_b = find(&v["root"], "leaf_b").unwrap();
    assert_eq!(
        (leaf_b["left_total"].as_i64(), leaf_b["right_self"].as_i64()),
        (Some(0), Some(200))
    );
    let main = find(&v["root"], "main").unwrap();
    assert_eq!(main["right_total"], total(200));

    // Each side may have its own time range: the right side here sees nothing.
    let (_, v) = get(
        &app,
        &format!(
            "/api/v1/diff?{}&right_from={}&right_until={}",
            range(base),
            base / NS + 1000,
            base / NS + 2000
        ),
    )
    .await;
    assert_eq!(v["right"]["total"], 0);
    assert_eq!(v["right"]["profiles"], 0);
    // Truncation is reported.
    let (_, v) = get(&app, &format!("/api/v1/diff?{}&max_nodes=3", range(base))).await;
    assert!(v["truncated_nodes"].as_u64().unwrap() > 0, "{v}");
}

// ---------------------------------------------------------------------------------------------
// Connect

#[derive(Clone, Copy, Debug)]
enum Codec {
    Proto,
    Json,
}

async fn connect_raw(
    app: &Router,
    method: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Bytes) {
    let mut req = Request::post(format!("/querier.v1.QuerierService/{method}"))
        .header(header::CONTENT_TYPE, content_type)
        .header("Connect-Protocol-Version", "1");
    if let Some(e) = encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, ct, body)
}

/// Calls `method` with `req` in `codec`, checks the reply's codec, decodes it.
async fn connect<Req, Resp>(app: &Router, codec: Codec, method: &str, req: &Req) -> Resp
where
    Req: Message + Serialize,
    Resp: Message + Default + DeserializeOwned,
{
    let (ct, body) = match codec {
        Codec::Proto => ("application/proto", req.encode_to_vec()),
        Codec::Json => ("application/json", serde_json::to_vec(req).unwrap()),
    };
    let (status, resp_ct, body) = connect_raw(app, method, ct, None, body).await;
    assert_eq!(status, StatusCode::OK, "{method} {codec:?}: {body:?}");
    assert_eq!(resp_ct.as_deref(), Some(ct), "{method}");
    match codec {
        Codec::Proto => Resp::decode(body).unwrap(),
        Codec::Json => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            // proto3 JSON: 64-bit integers are strings.
            if let Some(t) = v.pointer("/flamegraph/total") {
                assert!(t.is_string(), "{v}");
            }
            serde_json::from_value(v).unwrap()
        }
    }
}

/// Kiln's flame-graph JSON as the same tree type the level decoder yields.
fn json_tree(v: &Value) -> Decoded {
    Decoded {
        name: v["name"].as_str().unwrap().to_owned(),
        self_value: v["self"].as_i64().unwrap(),
        total: v["total"].as_i64().unwrap(),
        children: v["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(json_tree)
            .collect(),
    }
}

fn max_self(d: &Decoded) -> i64 {
    d.children.iter().map(max_self).fold(d.self_value, i64::max)
}

async fn connect_querier_proto_and_json(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = fixture(backend, dir.path()).await;
    let (start, end) = ms(base);
    for codec in [Codec::Proto, Codec::Json] {
        // ProfileTypes.
        let resp: ProfileTypesResponse = connect(
            &app,
            codec,
            "ProfileTypes",
            &ProfileTypesRequest { start, end },
        )
        .await;
        let ids: Vec<&str> = resp.profile_types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [CPU, "process_cpu:samples:count:cpu:nanoseconds"],
            "{codec:?}"
        );
        assert_eq!(resp.profile_types[0].name, "process_cpu");
        assert_eq!(resp.profile_types[0].sample_unit, "nanoseconds");

        // LabelNames / LabelValues, with alternative matchers.
        let resp: LabelNamesResponse = connect(
            &app,
            codec,
            "LabelNames",
            &LabelNamesRequest {
                matchers: vec!["{service_name=\"b\"}".into()],
                start,
                end,
            },
        )
        .await;
        // Pyroscope's profile-type labels are label names too, as Pyroscope lists them.
        assert_eq!(
            resp.names,
            [
                "__name__",
                "__period_type__",
                "__period_unit__",
                "__profile_type__",
                "__type__",
                "__unit__",
                "comm",
                "pid",
                "service_name"
            ],
            "{codec:?}"
        );
        let resp: LabelValuesResponse = connect(
            &app,
            codec,
            "LabelValues",
            &LabelValuesRequest {
                name: "pid".into(),
                matchers: vec!["{service_name=\"b\"}".into(), "{pid=\"2\"}".into()],
                start,
                end,
            },
        )
        .await;
        assert_eq!(resp.names, ["2", "3"], "{codec:?}");

        // Series: label sets with Pyroscope's synthetic profile-type labels, projected.
        let resp: SeriesResponse = connect(
            &app,
            codec,
            "Series",
            &SeriesRequest {
                matchers: vec!["{service_name=\"b\"}".into()],
                label_names: vec!["service_name".into(), "__profile_type__".into()],
                start,
                end,
            },
        )
        .await;
        let sets: Vec<Vec<(String, String)>> = resp
            .labels_set
            .iter()
            .map(|l| {
                l.labels
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect()
            })
            .collect();
        let set = |t: &str| {
            vec![
                ("__profile_type__".to_owned(), t.to_owned()),
                ("service_name".to_owned(), "b".to_owned()),
            ]
        };
        assert_eq!(
            sets,
            [set(CPU), set("process_cpu:samples:count:cpu:nanoseconds")],
            "{codec:?}"
        );

        // SelectMergeStacktraces: the levels decode into exactly Kiln's own flame graph, whole
        // and truncated.
        for max_nodes in [None, Some(4)] {
            let resp: SelectMergeStacktracesResponse = connect(
                &app,
                codec,
                "SelectMergeStacktraces",
                &SelectMergeStacktracesRequest {
                    profile_type_id: CPU.into(),
                    label_selector: "{service_name=\"a\"}".into(),
                    start,
                    end,
                    max_nodes,
                    format: ProfileFormat::Flamegraph as i32,
                    ..Default::default()
                },
            )
            .await;
            let fg = resp.flamegraph.unwrap();
            let decoded = decode(&fg).unwrap();
            let mut uri = format!(
                "/api/v1/flamegraph?from={}&until={}&query=%7Bservice_name%3D%22a%22%7D",
                start * 1_000_000,
                end * 1_000_000
            );
            if let Some(n) = max_nodes {
                uri += &format!("&max_nodes={n}");
            }
            let (_, v) = get(&app, &uri).await;
            assert_eq!(decoded, json_tree(&v["root"]), "{codec:?} {max_nodes:?}");
            assert_eq!(fg.total, v["total"].as_i64().unwrap());
            assert_eq!(fg.max_self, max_self(&decoded));
            if max_nodes.is_none() {
                assert_eq!(fg.max_self, 100 + 50 + 30 + 7_000);
            }
            if max_nodes.is_some() {
                assert!(v["truncated_nodes"].as_u64().unwrap() > 0);
            }
        }

        // SelectSeries, grouped, averaged.
        let resp: SelectSeriesResponse = connect(
            &app,
            codec,
            "SelectSeries",
            &SelectSeriesRequest {
                profile_type_id: CPU.into(),
                label_selector: "{}".into(),
                start,
                end,
                group_by: vec!["service_name".into()],
                step: 60.0,
                aggregation: Some(TimeSeriesAggregationType::Sum as i32),
                limit: None,
                exemplar_type: 0,
            },
        )
        .await;
        assert_eq!(resp.series.len(), 2, "{codec:?}");
        assert_eq!(
            resp.series[0].labels,
            [LabelPair {
                name: "service_name".into(),
                value: "a".into()
            }]
        );
        let sum_a: f64 = resp.series[0].points.iter().map(|p| p.value).sum();
        assert_eq!(
            sum_a,
            [100, 50, 30, 7_000].map(total).iter().sum::<i64>() as f64
        );
        assert_eq!(resp.series[1].points[0].value, total(200) as f64);
        assert_eq!(resp.series[1].points[0].timestamp % 60_000, 0);

        // Diff.
        let side = |sel: &str| SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: sel.into(),
            start,
            end,
            max_nodes: None,
            format: 0,
            ..Default::default()
        };
        let resp: DiffResponse = connect(
            &app,
            codec,
            "Diff",
            &DiffRequest {
                left: Some(side("{service_name=\"a\"}")),
                right: Some(side("{service_name=\"b\"}")),
            },
        )
        .await;
        let fg = resp.flamegraph.unwrap();
        assert_eq!(
            fg.left_ticks,
            [100, 50, 30, 7_000].map(total).iter().sum::<i64>()
        );
        assert_eq!(fg.right_ticks, total(200));
        assert_eq!(fg.total, fg.left_ticks + fg.right_ticks);
        assert!(fg.levels.iter().all(|l| l.values.len() % 7 == 0));
        assert_eq!(
            &fg.levels[0].values[..6],
            &[0, fg.left_ticks, 0, 0, fg.right_ticks, 0]
        );
        // A side narrowed by a call site: only its stacks through main;helper.
        let resp: DiffResponse = connect(
            &app,
            codec,
            "Diff",
            &DiffRequest {
                left: Some(side("{service_name=\"a\"}")),
                right: Some(SelectMergeStacktracesRequest {
                    stack_trace_selector: Some(StackTraceSelector {
                        call_site: vec![
                            Location {
                                name: "main".into(),
                            },
                            Location {
                                name: "helper".into(),
                            },
                        ],
                    }),
                    ..side("{service_name=\"b\"}")
                }),
            },
        )
        .await;
        assert_eq!(resp.flamegraph.unwrap().right_ticks, 200 / 10);
    }

    // SelectMergeProfile: a pprof of just that sample type.
    let req = SelectMergeProfileRequest {
        profile_type_id: CPU.into(),
        label_selector: "{service_name=\"b\"}".into(),
        start,
        end,
        max_nodes: None,
        stack_trace_selector: None,
        profile_id_selector: vec![],
    };
    let (status, _, body) = connect_raw(
        &app,
        "SelectMergeProfile",
        "application/proto",
        None,
        req.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = Profile::decode(body).unwrap();
    assert_eq!(p.sample_type.len(), 1);
    assert_eq!(p.str(p.sample_type[0].r#type), "cpu");
    assert_eq!(p.sample.iter().map(|s| s.value[0]).sum::<i64>(), total(200));
    assert!(p.string_table.iter().any(|s| s == "leaf_b"));
    let (status, _, body) = connect_raw(
        &app,
        "SelectMergeProfile",
        "application/json",
        None,
        serde_json::to_vec(&req).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["sampleType"].as_array().unwrap().len(), 1);
    let sum: i64 = v["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][0].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, total(200));

    // A gzipped request body.
    let (status, _, body) = connect_raw(
        &app,
        "ProfileTypes",
        "application/proto",
        Some("gzip"),
        kiln_proto::codec::gzip(&ProfileTypesRequest { start, end }.encode_to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ProfileTypesResponse::decode(body)
            .unwrap()
            .profile_types
            .len(),
        2
    );
}

async fn connect_errors_use_connect_codes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = fixture(backend, dir.path()).await;
    let bad_type = SelectMergeStacktracesRequest {
        profile_type_id: "cpu:nanoseconds".into(),
        ..Default::default()
    };
    for (method, ct, body, status, code) in [
        (
            "SelectMergeStacktraces",
            "application/proto",
            bad_type.encode_to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "SelectSeries",
            "application/json",
            br#"{"profileTypeID": "a:b:c:d:e", "labelSelector": "{oops"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "ProfileTypes",
            "application/json",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "ProfileTypes",
            "text/plain",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "ProfileTypes",
            "application/json",
            br#"{"start": "2000", "end": "1000"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            // Not a method of the service: connect-go's status for `unimplemented`.
            "SelectEverything",
            "application/proto",
            Vec::new(),
            StatusCode::NOT_FOUND,
            "unimplemented",
        ),
        (
            "SelectMergeSpanProfile",
            "application/json",
            br#"{"profileTypeID": "a:b:c:d:e", "spanSelector": ["not-hex"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
    ] {
        let (got, ct_out, body) = connect_raw(&app, method, ct, None, body).await;
        assert_eq!(got, status, "{method}: {body:?}");
        assert_eq!(ct_out.as_deref(), Some("application/json"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], code, "{method}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }

    // Another tenant sees none of the default tenant's data.
    let resp = app
        .clone()
        .oneshot(
            Request::post("/querier.v1.QuerierService/LabelValues")
                .header(header::CONTENT_TYPE, "application/json")
                .header("X-Scope-OrgID", "someone-else")
                .body(Body::from(r#"{"name": "service_name"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["names"], serde_json::json!([]), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Legacy render

fn levels(v: &Value) -> Vec<Level> {
    v["flamebearer"]["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| Level {
            values: l
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect(),
        })
        .collect()
}

async fn render_with_group_by_and_render_diff(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = fixture(backend, dir.path()).await;
    let (status, v) = get(
        &app,
        &format!(
            "/pyroscope/render?query={CPU}%7B%7D&{}&groupBy=service_name&maxNodes=0",
            range(base)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let all = [100, 50, 30, 7_000, 200].map(total).iter().sum::<i64>();
    assert_eq!(v["flamebearer"]["numTicks"], all);
    assert_eq!(v["metadata"]["format"], "single");
    assert_eq!(v["metadata"]["units"], "samples");
    assert_eq!(v["metadata"]["sampleRate"], 1_000_000_000);
    assert_eq!(v["metadata"]["name"], "cpu");
    // The levels decode into the same tree as /api/v1/flamegraph.
    let fg = FlameGraph {
        names: serde_json::from_value(v["flamebearer"]["names"].clone()).unwrap(),
        levels: levels(&v),
        total: all,
        max_self: v["flamebearer"]["maxSelf"].as_i64().unwrap(),
    };
    let (_, own) = get(&app, &format!("/api/v1/flamegraph?{}", range(base))).await;
    assert_eq!(decode(&fg).unwrap(), json_tree(&own["root"]));
    // Timeline: everything, in step-wide samples from an aligned start.
    let tl = &v["timeline"];
    let step = tl["durationDelta"].as_i64().unwrap();
    assert_eq!(step, 10);
    assert_eq!(tl["startTime"].as_i64().unwrap() % step, 0);
    let samples: Vec<i64> = tl["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    assert_eq!(samples.iter().sum::<i64>(), all);
    assert_eq!(samples.len(), 19);
    // Groups: one timeline per service.
    let groups = v["groups"].as_object().unwrap();
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["a", "b"]);
    let sum = |g: &Value| -> i64 {
        g["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_i64().unwrap())
            .sum()
    };
    assert_eq!(sum(&groups["b"]), total(200));
    assert_eq!(sum(&groups["a"]), all - total(200));

    // The profile type may sit inside the braces; a selector narrows it.
    let (_, v) = get(
        &app,
        &format!(
            "/pyroscope/render?query=%7B__name__%3D%22{CPU}%22%2Cpid%3D%222%22%7D&{}",
            range(base)
        ),
    )
    .await;
    assert_eq!(v["flamebearer"]["numTicks"], total(7_000));
    assert!(v["groups"].is_null());
    let (status, v) = get(
        &app,
        &format!("/pyroscope/render?query=%7B%7D&{}", range(base)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // render-diff: 7 integers per node, both sides' ticks.
    let (status, v) = get(
        &app,
        &format!(
            "/pyroscope/render-diff?leftQuery={CPU}%7Bservice_name%3D%22a%22%7D&rightQuery={CPU}%7Bservice_name%3D%22b%22%7D&leftFrom={f}&leftUntil={u}&rightFrom={f}&rightUntil={u}",
            f = base / NS - 60,
            u = base / NS + 120
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["format"], "double");
    assert_eq!(v["leftTicks"], all - total(200));
    assert_eq!(v["rightTicks"], total(200));
    assert_eq!(v["flamebearer"]["numTicks"], all);
    let lv = levels(&v);
    assert!(lv.iter().all(|l| l.values.len() % 7 == 0));
    // leaf_b: only on the right.
    let names: Vec<String> = serde_json::from_value(v["flamebearer"]["names"].clone()).unwrap();
    let leaf_b = names.iter().position(|n| n == "leaf_b").unwrap() as i64;
    let node = lv
        .iter()
        .flat_map(|l| l.values.chunks(7))
        .find(|c| c[6] == leaf_b)
        .unwrap();
    assert_eq!((node[1], node[2], node[4], node[5]), (0, 0, 200, 200));
    let (status, _) = get(
        &app,
        &format!(
            "/pyroscope/render-diff?leftQuery={CPU}%7B%7D&rightQuery=process_cpu:samples:count:cpu:nanoseconds%7B%7D&{}",
            range(base)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// go tool pprof against a bare host

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn go_tool_pprof_bare_host(backend: Backend) {
    if !go_available() {
        eprintln!("SKIPPED: `go` is not installed (Debian golang-go provides `go tool pprof`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = kiln_storage_server::Server::bind_listener("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (data, prefix) = (dir.path().join("data"), dir.path().to_owned());
    let state = tokio::task::spawn_blocking(move || open_state(backend, &data, &prefix))
        .await
        .unwrap();
    let server = kiln_storage_server::Server::with_state(state, listener);
    let addr = server.local_addr().unwrap();
    let app = router(server.state().clone());
    let now = now_nanos();
    push(
        &app,
        &[("__name__", "process_cpu"), ("service_name", "new")],
        &profile("recent", 9 * NS, now - 5 * NS),
    )
    .await;
    // Outside the default 30 s: not served by the bare host.
    push(
        &app,
        &[("__name__", "process_cpu"), ("service_name", "old")],
        &profile("stale", 9 * NS, now - 600 * NS),
    )
    .await;

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let run = |args: Vec<String>| {
        let home = tempfile::tempdir().unwrap();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("go")
                .args(["tool", "pprof", "-top"])
                .args(&args)
                .env("HOME", home.path())
                .env("PPROF_TMPDIR", home.path())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{args:?}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
    };
    let out = run(vec![format!("http://{addr}")]).await.unwrap();
    assert!(out.contains("leaf_recent"), "{out}");
    assert!(!out.contains("leaf_stale"), "{out}");
    assert!(out.contains("Type: cpu"), "{out}");
    // `-seconds 900` widens the window to the older profile, on the bare host and on the API path.
    let out = run(vec![
        "-seconds".into(),
        "900".into(),
        format!("http://{addr}"),
    ])
    .await
    .unwrap();
    assert!(out.contains("leaf_stale"), "{out}");
    let out = run(vec![
        "-seconds".into(),
        "900".into(),
        format!("http://{addr}/api/v1/pprof?query=%7Bservice_name%3D%22old%22%7D"),
    ])
    .await
    .unwrap();
    assert!(
        out.contains("leaf_stale") && !out.contains("leaf_recent"),
        "{out}"
    );
    tx.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// Runs each named test (an `async fn(Backend)`) on local disk (`local::NAME`) and on a bucket
/// (`s3_bucket::NAME`, ignored without an object store: scripts/test.sh runs `--ignored s3_`).
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Local).await
                }
            )*
        }
        mod s3_bucket {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
                async fn $test() {
                    super::$test(super::Backend::Bucket).await
                }
            )*
        }
    };
}

on_every_backend!(
    series_buckets_by_step_with_group_by,
    diff_carries_left_and_right_totals,
    connect_querier_proto_and_json,
    connect_errors_use_connect_codes,
    render_with_group_by_and_render_diff,
    go_tool_pprof_bare_host,
    flamegraph_columnar_format_over_http,
);

fn count_json_nodes(v: &Value) -> usize {
    1 + v["children"]
        .as_array()
        .map_or(0, |c| c.iter().map(count_json_nodes).sum())
}

/// `format=columnar` (what the web page asks for) answers the same graph and table as the JSON
/// format, as octet-stream in the documented layout; an unknown format is a 400 that says so.
async fn flamegraph_columnar_format_over_http(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = fixture(backend, dir.path()).await;
    let q = format!("/api/v1/flamegraph?{}&top=10", range(base));
    let (status, json) = get(&app, &q).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let resp = app
        .clone()
        .oneshot(
            Request::get(format!("{q}&format=columnar"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..4], b"KFG1");
    let h = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&body[8..8 + h]).unwrap();
    let n = header["nodes"].as_u64().unwrap() as usize;
    assert_eq!(n, count_json_nodes(&json["root"]));
    assert_eq!(body.len(), (8 + h).div_ceil(8) * 8 + 24 * n);
    assert_eq!(header["total"], json["total"]);
    assert_eq!(header["top"], json["top"]);
    assert!(header["names"].as_array().unwrap().len() > 3, "{header}");

    let (status, err) = get(&app, &format!("{q}&format=xml")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("format"), "{err}");
}
