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

use crate::client::{enc, get, json, post, strings};
use crate::fixture::{self, CPU, pushed_total};

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
    assert_eq!(analysis["queryScopes"][0]["seriesCount"], "2", "{analysis}");
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
