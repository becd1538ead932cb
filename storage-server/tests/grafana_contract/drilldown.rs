//! Grafana's Profiles Drilldown app (grafana/explore-profiles). It calls the data source through
//! Grafana's proxy (`/api/datasources/proxy/uid/<uid>/…`, which forwards path, query and body):
//! JSON bodies with `content-type: application/json` and `X-Grafana-Org-Id`
//! (`ApiClient.ts`, `DataSourceProxyClient.ts`). In the order the app opens:
//! 1. `GetProfileStats {}` — the onboarding check (`statsApiClient.ts`).
//! 2. `settings.v1.SettingsService/Get {}` and `RecordingRulesService/ListRecordingRules`
//!    (`settingsApiClient.ts`, `recordingRulesApiClient.ts`).
//! 3. `Series {start, end, labelNames: [service_name, __profile_type__], matchers: []}` — the
//!    service and profile-type lists (`SeriesApiClient.ts`).
//! 4. `LabelNames` / `LabelValues` with `queryToMatchers(query)`:
//!    `<id>{sel}` → `{__profile_type__="<id>", sel}` (`LabelsApiClient.ts`).
//! 5. `/pyroscope/render?query&from&until&format=json|dot&max-nodes` (`ProfileApiClient.ts`),
//!    `/pyroscope/render-diff` (`DiffProfileApiClient.ts`).
//! 6. `SelectMergeProfile` as JSON with `profile_typeID`, `label_selector`,
//!    `stackTraceSelector.call_site` (function details) and as binary proto (`PprofApiClient.ts`).
//! 7. `AnalyzeQuery {start, end, query}` (`queryAnalysisApiClient.ts`); `vcs.v1` only when a
//!    GitHub integration is set up (`VcsClient.ts`).

use reqwest::StatusCode;
use serde_json::{Value, json};

use kiln_proto::querier::{AnalyzeQueryResponse, QueryScope};
use kiln_storage_server::query::time::now_nanos;

use crate::client::{enc, get, json, post, strings};
use crate::fixture::{self, CPU, pushed_total};
use crate::support::{NS, agent_profile, push_http, spawn_server};

const HEADERS: [(&str, &str); 1] = [("X-Grafana-Org-Id", "1")];

/// `LabelsApiClient.queryToMatchers`, as written there.
fn query_to_matchers(query: &str) -> Vec<String> {
    match query.find('{') {
        Some(i) if i > 0 => vec![format!(
            "{{__profile_type__=\"{}\", {}",
            &query[..i],
            &query[i + 1..]
        )],
        Some(_) => vec![query.to_owned()],
        None => vec![format!("{{__profile_type__=\"{query}\"}}")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_app_contract() {
    let fx = fixture::get();
    let url = fx.url.as_str();
    let (start, end) = fx.range_ms();
    let q = |m: &str| format!("/querier.v1.QuerierService/{m}");

    // 1. Onboarding: data is there, with its time span in ms.
    let stats = json(url, &q("GetProfileStats"), json!({}), &HEADERS).await;
    assert_eq!(stats["dataIngested"], true, "{stats}");
    let oldest: i64 = stats["oldestProfileTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let newest: i64 = stats["newestProfileTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(oldest, fx.base_ns / 1_000_000 + 1_000, "{stats}");
    assert!(oldest <= newest && newest <= end, "{stats}");
    // Another tenant (a data source with its own X-Scope-OrgID) has nothing yet.
    let other = json(
        url,
        &q("GetProfileStats"),
        json!({}),
        &[("X-Scope-OrgID", "another-team")],
    )
    .await;
    assert_eq!(other["dataIngested"], false, "{other}");

    // 2. Settings and recording rules: empty, not a 404.
    let settings = json(url, "/settings.v1.SettingsService/Get", json!({}), &HEADERS).await;
    assert_eq!(settings, json!({"settings": []}));
    let rules = json(
        url,
        "/settings.v1.RecordingRulesService/ListRecordingRules",
        json!({}),
        &HEADERS,
    )
    .await;
    assert_eq!(rules, json!({"rules": []}));

    // 3. Services and their profile types.
    let series = json(
        url,
        &q("Series"),
        json!({"start": start, "end": end, "labelNames": ["service_name", "__profile_type__"], "matchers": []}),
        &HEADERS,
    )
    .await;
    let pairs: Vec<(String, String)> = series["labelsSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|set| {
            let get = |n: &str| {
                set["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["name"] == n)
                    .map(|l| l["value"].as_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            (get("service_name"), get("__profile_type__"))
        })
        .collect();
    for want in [
        ("checkout", CPU),
        ("db", CPU),
        ("checkout", fixture::SAMPLES),
    ] {
        assert!(
            pairs.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not in {pairs:?}"
        );
    }

    // 4. Label names and values for the filters, through queryToMatchers — including the
    // `{__profile_type__="…", }` an empty selector turns into.
    for (query, want) in [
        (
            format!("{CPU}{{service_name=\"db\"}}"),
            vec!["__name__", "comm", "pid", "service_name"],
        ),
        (
            format!("{CPU}{{}}"),
            vec!["__name__", "comm", "pid", "service_name"],
        ),
    ] {
        let names = json(
            url,
            &q("LabelNames"),
            json!({"matchers": query_to_matchers(&query), "start": start, "end": end}),
            &HEADERS,
        )
        .await;
        let names = strings(&names["names"]);
        for w in want {
            assert!(
                names.contains(&w.to_owned()),
                "{query}: {w} not in {names:?}"
            );
        }
    }
    let pids = json(
        url,
        &q("LabelValues"),
        json!({"name": "pid", "matchers": query_to_matchers(&format!("{CPU}{{service_name=\"checkout\"}}")), "start": start, "end": end}),
        &HEADERS,
    )
    .await;
    assert_eq!(strings(&pids["names"]), ["1", "2"]);

    // 5. The flame graph page: /pyroscope/render (json), then the graph (dot).
    let query = format!("{CPU}{{service_name=\"checkout\"}}");
    let render = get(
        url,
        &format!(
            "/pyroscope/render?query={}&from={start}&until={end}&format=json&max-nodes=16384",
            enc(&query)
        ),
        &HEADERS,
    )
    .await;
    assert_eq!(render.status, StatusCode::OK, "{}", render.text());
    let v = render.json();
    let want = pushed_total(|p| p.service == "checkout");
    assert_eq!(v["flamebearer"]["numTicks"], want, "{v}");
    let timeline: i64 = v["timeline"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .sum();
    assert_eq!(timeline, want, "the timeline adds up to the flame graph");
    assert_eq!(v["metadata"]["format"], "single");
    let dot = get(
        url,
        &format!(
            "/pyroscope/render?query={}&from={start}&until={end}&format=dot&max-nodes=100",
            enc(&query)
        ),
        &HEADERS,
    )
    .await;
    assert_eq!(dot.status, StatusCode::OK);
    let text = dot.text();
    assert!(text.starts_with("digraph"), "{text}");
    assert!(text.contains("leaf_a") && text.contains("->"), "{text}");

    // Diff: checkout against db.
    let diff = get(
        url,
        &format!(
            "/pyroscope/render-diff?leftQuery={}&leftFrom={start}&leftUntil={end}&rightQuery={}&rightFrom={start}&rightUntil={end}",
            enc(&query),
            enc(&format!("{CPU}{{service_name=\"db\"}}"))
        ),
        &HEADERS,
    )
    .await;
    assert_eq!(diff.status, StatusCode::OK, "{}", diff.text());
    let d = diff.json();
    assert_eq!(d["leftTicks"], want);
    assert_eq!(d["rightTicks"], pushed_total(|p| p.service == "db"));

    // 6. Function details: SelectMergeProfile (JSON, proto field names) for stacks through
    // main → work only: the leaves without the helper.
    let pprof = json(
        url,
        &q("SelectMergeProfile"),
        json!({
            "profile_typeID": CPU,
            "label_selector": "{service_name=\"checkout\"}",
            "start": start,
            "end": end,
            "stackTraceSelector": {"call_site": [{"name": "main"}, {"name": "work"}]},
            "maxNodes": 16384,
        }),
        &HEADERS,
    )
    .await;
    let sum: i64 = pprof["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][0].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    let leaves: i64 = fixture::PUSHED
        .iter()
        .filter(|p| p.service == "checkout")
        .map(|p| p.cpu)
        .sum();
    assert_eq!(sum, leaves, "only stacks through main;work");
    // The binary request (PprofRequest) answers a pprof.
    let req = kiln_proto::querier::SelectMergeProfileRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        max_nodes: Some(16384),
        stack_trace_selector: None,
        profile_id_selector: vec![],
    };
    let bin = post(
        url,
        &q("SelectMergeProfile"),
        "application/proto",
        prost::Message::encode_to_vec(&req),
        &HEADERS,
    )
    .await;
    assert_eq!(bin.status, StatusCode::OK);
    let p = <kiln_proto::pprof::Profile as prost::Message>::decode(bin.body.as_slice()).unwrap();
    assert!(p.string_table.iter().any(|s| s == "leaf_b"));

    // 7. Query analysis: the series the query reads.
    let analysis = json(
        url,
        &q("AnalyzeQuery"),
        json!({"start": start, "end": end, "query": query}),
        &HEADERS,
    )
    .await;
    // Everything is in the head (short term storage) here: its two checkout series, four profiles.
    assert_eq!(
        analysis["queryScopes"][0]["componentType"],
        "Short term storage"
    );
    assert_eq!(analysis["queryScopes"][0]["seriesCount"], "2", "{analysis}");
    assert_eq!(
        analysis["queryScopes"][0]["profileCount"], "4",
        "{analysis}"
    );
    assert_eq!(analysis["queryImpact"]["totalQueriedSeries"], "2");
    // No GitHub integration: a Connect error the app shows, not a 404.
    let vcs = post(
        url,
        "/vcs.v1.VCSService/GithubApp",
        "application/json",
        b"{}".to_vec(),
        &HEADERS,
    )
    .await;
    assert_eq!(vcs.status, StatusCode::PRECONDITION_FAILED);
    let e: Value = vcs.json();
    assert_eq!(e["code"], "failed_precondition");
}

/// The query-analysis figures (`AnalyzeQuery`, `queryAnalysisApiClient.ts`) are what the store
/// holds: profiles pushed are counted in short term storage (the head), and after a flush in long
/// term storage (blocks), with their samples, series and bytes; another tenant's query reads
/// nothing. Its own server, since it flushes the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_query_analysis_counts_the_store() {
    let server = spawn_server();
    let url = server.url.as_str();
    let base = (now_nanos() / NS - 600) / 60 * 60 * NS;
    let (start, end) = (base / 1_000_000 - 60_000, now_nanos() / 1_000_000 + 60_000);
    let labels = |svc: &'static str, pid: &'static str| {
        [
            ("__name__", "process_cpu"),
            ("service_name", svc),
            ("pid", pid),
        ]
    };
    let push = |svc, pid, at: i64| {
        let l = labels(svc, pid);
        async move {
            // Two samples per profile: leaf and helper.
            let p = agent_profile("a", 100_000_000, [10, 1], base + at * NS);
            push_http(url, &l, &p).await;
        }
    };
    // Three checkout profiles in two series, one db profile.
    push("checkout", "1", 1).await;
    push("checkout", "1", 11).await;
    push("checkout", "2", 21).await;
    push("db", "3", 31).await;
    let analyze = |query: String, headers: &'static [(&'static str, &'static str)]| async move {
        let v = json(
            url,
            "/querier.v1.QuerierService/AnalyzeQuery",
            json!({"start": start, "end": end, "query": query}),
            headers,
        )
        .await;
        serde_json::from_value::<AnalyzeQueryResponse>(v.clone())
            .unwrap_or_else(|e| panic!("{e}: {v}"))
    };
    let checkout = format!("{CPU}{{service_name=\"checkout\"}}");
    let bytes = |s: &QueryScope| s.index_bytes + s.profile_bytes + s.symbol_bytes;

    let a = analyze(checkout.clone(), &HEADERS).await;
    let [head, blocks] = &a.query_scopes[..] else {
        panic!("two scopes: {a:?}")
    };
    assert_eq!(head.component_type, "Short term storage");
    assert_eq!(blocks.component_type, "Long term storage");
    assert_eq!(
        (
            head.block_count,
            head.series_count,
            head.profile_count,
            head.sample_count
        ),
        (1, 2, 3, 6),
        "one WAL segment: {a:?}"
    );
    assert!(head.profile_bytes > 0, "{a:?}");
    assert_eq!(
        (blocks.block_count, blocks.profile_count, bytes(blocks)),
        (0, 0, 0)
    );
    let impact = a.query_impact.clone().unwrap();
    assert_eq!(impact.total_queried_series, 2);
    assert_eq!(impact.total_bytes_in_time_range, bytes(head));

    // Flushed into blocks, then one more profile into the head.
    let state = server.state.clone();
    tokio::task::spawn_blocking(move || state.store.flush())
        .await
        .unwrap()
        .unwrap();
    push("checkout", "2", 41).await;
    let a = analyze(checkout.clone(), &HEADERS).await;
    let [head, blocks] = &a.query_scopes[..] else {
        panic!("two scopes: {a:?}")
    };
    assert_eq!(
        (head.series_count, head.profile_count, head.sample_count),
        (1, 1, 2),
        "{a:?}"
    );
    assert!(blocks.block_count >= 1, "{a:?}");
    assert_eq!(
        (
            blocks.series_count,
            blocks.profile_count,
            blocks.sample_count
        ),
        (2, 3, 6),
        "{a:?}"
    );
    assert!(
        blocks.index_bytes > 0 && blocks.profile_bytes > 0 && blocks.symbol_bytes > 0,
        "{a:?}"
    );
    let impact = a.query_impact.clone().unwrap();
    assert_eq!(impact.total_queried_series, 2);
    assert_eq!(
        impact.total_bytes_in_time_range,
        bytes(head) + bytes(blocks)
    );

    // A selector without a profile type reads both sample types: the same profiles, and a
    // (series, type) pair per type as Pyroscope counts its Series answer.
    let untyped = analyze("{service_name=\"checkout\"}".into(), &HEADERS).await;
    assert_eq!(
        untyped.query_scopes[1].profile_count + untyped.query_scopes[0].profile_count,
        4
    );
    assert_eq!(untyped.query_impact.unwrap().total_queried_series, 4);
    // The db service alone; another tenant reads nothing.
    let db = analyze(format!("{CPU}{{service_name=\"db\"}}"), &HEADERS).await;
    assert_eq!(db.query_scopes[1].profile_count, 1, "{db:?}");
    assert_eq!(db.query_scopes[0].profile_count, 0, "{db:?}");
    let other = analyze(checkout, &[("X-Scope-OrgID", "another-team")]).await;
    assert!(
        other
            .query_scopes
            .iter()
            .all(|s| s.profile_count == 0 && bytes(s) == 0),
        "{other:?}"
    );
    assert_eq!(other.query_impact.unwrap().total_queried_series, 0);
}
