//! `profilecli` (grafana/pyroscope cmd/profilecli): a connect-go client (binary proto, optional
//! `X-Scope-OrgID`, Basic or Bearer auth). The calls, as its commands make them:
//! - `query series`: `Series{matchers: [--query], labelNames: --label-names, start, end}`.
//! - `query profile`: `SelectMergeStacktraces{…, format: PROFILE_FORMAT_PPROF}`, falling back to
//!   `SelectMergeProfile` when the answer has no pprof (`queryPprofWithFallback`).
//! - `query tree` / span profiles: `SelectMergeStacktraces{…, format: PROFILE_FORMAT_TREE,
//!   stackTraceSelector}` /
//!   `SelectMergeSpanProfile{…, format: PROFILE_FORMAT_TREE}`, read with
//!   `model.UnmarshalTree` (`querySpanProfile`).
//! - `query top`: `SelectSeries{groupBy, limit}`; `query exemplars`: `SelectSeries{step,
//!   exemplarType: INDIVIDUAL}` then `query profile --profile-id`, or with spans `SelectHeatmap`.
//! - `query label-names` / `label-values`: `LabelNames` / `LabelValues`.

use kiln_proto::querier::*;
use kiln_storage_server::query::flamebearer::{decode, decode_tree};
use prost::Message;
use reqwest::StatusCode;

use crate::client::{CONNECT_GO, post, proto};
use crate::fixture::{self, CPU, SPAN_APP, pushed_total};
use crate::grafana::names_of;

fn path(m: &str) -> String {
    format!("/querier.v1.QuerierService/{m}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profilecli_contract() {
    let fx = fixture::get();
    let url = fx.url.as_str();
    let (start, end) = fx.range_ms();
    let h = CONNECT_GO.to_vec();

    // query series --query '{service_name="db"}': label sets with the profile-type labels.
    let series: SeriesResponse = proto(
        url,
        &path("Series"),
        &SeriesRequest {
            matchers: vec!["{service_name=\"db\"}".into()],
            label_names: vec![],
            start,
            end,
        },
        &h,
    )
    .await;
    assert_eq!(series.labels_set.len(), 2, "one set per profile type");
    for set in &series.labels_set {
        let get = |n: &str| {
            set.labels
                .iter()
                .find(|l| l.name == n)
                .map(|l| l.value.as_str())
        };
        assert_eq!(get("service_name"), Some("db"));
        assert_eq!(get("__name__"), Some("process_cpu"));
        let id = get("__profile_type__").unwrap();
        assert_eq!(get("__type__"), id.split(':').nth(1));
        assert_eq!(get("__period_type__"), Some("cpu"));
    }

    // query tree: the binary tree decodes as UnmarshalTree reads it, totals as the flame graph.
    let req = SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        max_nodes: Some(1024),
        format: ProfileFormat::Tree as i32,
        ..Default::default()
    };
    let tree: SelectMergeStacktracesResponse =
        proto(url, &path("SelectMergeStacktraces"), &req, &h).await;
    assert!(
        tree.flamegraph.is_none(),
        "PROFILE_FORMAT_TREE answers the tree alone"
    );
    let t = decode_tree(&tree.tree).unwrap();
    let fg: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            format: ProfileFormat::Flamegraph as i32,
            ..req.clone()
        },
        &h,
    )
    .await;
    let fg = decode(&fg.flamegraph.unwrap()).unwrap();
    assert_eq!(t.total, fg.total);
    assert!(t.total >= pushed_total(|_| true));
    let mut names = Vec::new();
    names_of(&t, &mut names);
    assert!(names.contains(&"leaf_b".to_owned()), "{names:?}");
    // query tree --stacktrace-selector main --stacktrace-selector work (queryProfileTree): only
    // the stacks through main;work, whole.
    let through_work: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            stack_trace_selector: Some(StackTraceSelector {
                call_site: ["main", "work"]
                    .map(|name| Location { name: name.into() })
                    .to_vec(),
            }),
            ..req.clone()
        },
        &h,
    )
    .await;
    let w = decode_tree(&through_work.tree).unwrap();
    assert_eq!(w.total, fixture::PUSHED.iter().map(|p| p.cpu).sum::<i64>());
    let mut names = Vec::new();
    names_of(&w, &mut names);
    assert!(
        names.contains(&"leaf_b".to_owned()) && !names.contains(&"helper".to_owned()),
        "{names:?}"
    );

    // query profile: PROFILE_FORMAT_PPROF carries the merged pprof, gzip request body too
    // (connect-go's WithSendGzip).
    let pprof_req = SelectMergeStacktracesRequest {
        label_selector: "{service_name=\"checkout\"}".into(),
        format: ProfileFormat::Pprof as i32,
        ..req.clone()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &pprof_req.encode_to_vec()).unwrap();
    let mut gz_headers = h.clone();
    gz_headers.push(("Content-Encoding", "gzip"));
    let r = post(
        url,
        &path("SelectMergeStacktraces"),
        "application/proto",
        gz.finish().unwrap(),
        &gz_headers,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let resp = SelectMergeStacktracesResponse::decode(r.body.as_slice()).unwrap();
    let p = resp.pprof.and_then(|p| p.profile).expect("a pprof");
    assert_eq!(
        p.sample.iter().map(|s| s.value[0]).sum::<i64>(),
        pushed_total(|p| p.service == "checkout")
    );
    // profilecli writes it to a file for `go tool pprof`; the real one reads it.
    go_tool_pprof_reads(&p);

    // query top: the top service by total.
    let top: SelectSeriesResponse = proto(
        url,
        &path("SelectSeries"),
        &SelectSeriesRequest {
            profile_type_id: CPU.into(),
            label_selector: "{}".into(),
            start,
            end,
            step: 3600.0,
            group_by: vec!["service_name".into()],
            aggregation: Some(TimeSeriesAggregationType::Sum as i32),
            limit: Some(1),
            exemplar_type: 0,
        },
        &h,
    )
    .await;
    assert_eq!(top.series.len(), 1);
    assert_eq!(top.series[0].labels[0].value, "checkout");

    // query label-names --query '{service_name="db"}' (query.go: one matcher, the query).
    let n: LabelNamesResponse = proto(
        url,
        &path("LabelNames"),
        &LabelNamesRequest {
            matchers: vec!["{service_name=\"db\"}".into()],
            start,
            end,
        },
        &h,
    )
    .await;
    for want in [
        "__name__",
        "__profile_type__",
        "comm",
        "pid",
        "service_name",
    ] {
        assert!(
            n.names.iter().any(|x| x == want),
            "{want} not in {:?}",
            n.names
        );
    }
    assert!(
        !n.names.iter().any(|x| x == "k8s.namespace.name"),
        "checkout's only"
    );

    // query label-values.
    let v: LabelValuesResponse = proto(
        url,
        &path("LabelValues"),
        &LabelValuesRequest {
            name: "comm".into(),
            matchers: vec!["{__type__=\"samples\"}".into()],
            start,
            end,
        },
        &h,
    )
    .await;
    assert_eq!(v.names, ["checkout", "postgres"]);

    // query exemplars (query-exemplars.go: SelectSeries with individual exemplars and a step of
    // the range over --top-n, 10), then query profile --profile-id <the top exemplar's ID>: the ID
    // selects that one profile again, as a pprof, through the SelectMergeProfile fallback and as a
    // tree.
    let ex: SelectSeriesResponse = proto(
        url,
        &path("SelectSeries"),
        &SelectSeriesRequest {
            profile_type_id: CPU.into(),
            label_selector: "{service_name=\"checkout\"}".into(),
            start,
            end,
            step: (end - start) as f64 / 1000.0 / 10.0,
            exemplar_type: ExemplarType::Individual as i32,
            ..Default::default()
        },
        &h,
    )
    .await;
    let best = ex
        .series
        .iter()
        .flat_map(|s| &s.points)
        .flat_map(|p| &p.exemplars)
        .max_by_key(|e| e.value)
        .unwrap()
        .clone();
    // The largest checkout profile: pid 2's 7 s of cpu (plus its helper's tenth).
    assert_eq!(best.value, 7_700_000_000);
    assert_eq!(best.profile_id.len(), 36, "a UUID: {best:?}");
    let by_id = SelectMergeStacktracesRequest {
        profile_id_selector: vec![best.profile_id.clone()],
        format: ProfileFormat::Pprof as i32,
        ..req.clone()
    };
    let one: SelectMergeStacktracesResponse =
        proto(url, &path("SelectMergeStacktraces"), &by_id, &h).await;
    let cpu_total =
        |p: &kiln_proto::pprof::Profile| p.sample.iter().map(|s| s.value[0]).sum::<i64>();
    assert_eq!(cpu_total(&one.pprof.unwrap().profile.unwrap()), best.value);
    let legacy: kiln_proto::pprof::Profile = proto(
        url,
        &path("SelectMergeProfile"),
        &SelectMergeProfileRequest {
            profile_type_id: CPU.into(),
            label_selector: "{}".into(),
            start,
            end,
            profile_id_selector: vec![best.profile_id.clone()],
            ..Default::default()
        },
        &h,
    )
    .await;
    assert_eq!(cpu_total(&legacy), best.value);
    let tree: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            format: ProfileFormat::Tree as i32,
            ..by_id.clone()
        },
        &h,
    )
    .await;
    assert_eq!(decode_tree(&tree.tree).unwrap().total, best.value);
    // An ID no profile has selects nothing; with a span selector it is refused, as profilecli does.
    let none: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            profile_id_selector: vec!["00000000-0000-8000-8000-000000000000".into()],
            ..by_id.clone()
        },
        &h,
    )
    .await;
    assert_eq!(cpu_total(&none.pprof.unwrap().profile.unwrap()), 0);
    let both = post(
        url,
        &path("SelectMergeStacktraces"),
        "application/proto",
        SelectMergeStacktracesRequest {
            span_selector: vec!["00f067aa0ba902b7".into()],
            ..by_id.clone()
        }
        .encode_to_vec(),
        &h,
    )
    .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST, "{}", both.text());

    // Span profile through the legacy call and the tree format, as querySpanProfile does.
    let Some(spans) = &fx.spans else {
        eprintln!("span profile checks skipped (no SDK venv)");
        return;
    };
    let span_req = SelectMergeStacktracesRequest {
        label_selector: format!("{{service_name=\"{SPAN_APP}\"}}"),
        span_selector: vec![spans.alpha.clone()],
        format: ProfileFormat::Pprof as i32,
        ..req.clone()
    };
    let first: SelectMergeStacktracesResponse =
        proto(url, &path("SelectMergeStacktraces"), &span_req, &h).await;
    assert!(
        first.pprof.is_none(),
        "falls back to SelectMergeSpanProfile"
    );
    let legacy: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeSpanProfile"),
        &SelectMergeSpanProfileRequest {
            profile_type_id: CPU.into(),
            label_selector: span_req.label_selector.clone(),
            span_selector: span_req.span_selector.clone(),
            start,
            end,
            max_nodes: None,
            format: ProfileFormat::Tree as i32,
        },
        &h,
    )
    .await;
    let t = decode_tree(&legacy.tree).unwrap();
    let mut names = Vec::new();
    names_of(&t, &mut names);
    assert!(t.total > 0);
    assert!(
        names.iter().any(|n| n.contains("kiln_span_alpha")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("kiln_span_beta")),
        "{names:?}"
    );

    // query exemplars: the span heatmap's exemplars are the two spans.
    let heat: SelectHeatmapResponse = proto(
        url,
        &path("SelectHeatmap"),
        &SelectHeatmapRequest {
            profile_type_id: CPU.into(),
            label_selector: span_req.label_selector.clone(),
            start,
            end,
            step: 60.0,
            query_type: HeatmapQueryType::Span as i32,
            exemplar_type: ExemplarType::Span as i32,
            ..Default::default()
        },
        &h,
    )
    .await;
    let ids: std::collections::BTreeSet<String> = heat
        .series
        .iter()
        .flat_map(|s| &s.slots)
        .flat_map(|s| &s.exemplars)
        .map(|e| e.span_id.clone())
        .collect();
    assert!(
        ids.contains(&spans.alpha) || ids.contains(&spans.beta),
        "{ids:?}"
    );
    assert!(
        ids.iter().all(|i| *i == spans.alpha || *i == spans.beta),
        "{ids:?}"
    );
}

/// `go tool pprof -top` on the profile, when Go is installed (CI installs golang-go).
fn go_tool_pprof_reads(p: &kiln_proto::pprof::Profile) {
    let go = std::process::Command::new("go").arg("version").output();
    if !go.is_ok_and(|o| o.status.success()) {
        eprintln!("go tool pprof check skipped: go is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.pb");
    std::fs::write(&file, p.encode_to_vec()).unwrap();
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("leaf_a") && text.contains("helper"), "{text}");
}
