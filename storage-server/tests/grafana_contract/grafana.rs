//! Grafana's Pyroscope data source. Its backend (grafana/grafana
//! pkg/tsdb/grafana-pyroscope-datasource/pyroscopeClient.go) is a connect-go
//! `querierv1connect.QuerierServiceClient`: binary proto, `POST <url>/querier.v1.QuerierService/
//! <Method>`, connect-go's headers ([`CONNECT_GO`]), and in newer builds `Accept: */*;
//! allow-utf8-labelnames=true`. In order, as a user meets them:
//! 1. `ProfileTypes{start, end}`: the health check and the editor's type picker.
//! 2. `LabelNames{matchers: ["{__profile_type__=\"<id>\", <editor selector>}"], start, end}` on
//!    every query change (range rounded to 10 s); names starting `__` are dropped
//!    (`isPrivateLabel`).
//! 3. `LabelValues{name, matchers, start, end}` while a value is edited.
//! 4. The panel: `SelectSeries{profileTypeID, labelSelector, start, end, step, groupBy, limit}`
//!    and `SelectMergeStacktraces{profileTypeID, labelSelector, start, end, maxNodes}` in
//!    parallel (`GetSeries`, `GetProfile`); a missing flame graph is "no data", not an error.
//! 5. `SelectMergeSpanProfile{…, spanSelector}` when the query has a span selector
//!    (`GetSpanProfile`, trace-to-profiles); `SelectHeatmap` behind a feature toggle.

use kiln_proto::querier::*;
use kiln_storage_server::query::flamebearer::{Decoded, decode};
use reqwest::StatusCode;

use crate::client::{CONNECT_GO, post, proto};
use crate::fixture::{self, CPU, SAMPLES, SPAN_APP, pushed_total};

const Q: &str = "/querier.v1.QuerierService/";

fn path(method: &str) -> String {
    format!("{Q}{method}")
}

/// connect-go's headers plus the UTF-8 label-name capability of newer Grafana builds.
fn headers(utf8: bool) -> Vec<(&'static str, &'static str)> {
    let mut h = CONNECT_GO.to_vec();
    if utf8 {
        h.push(("Accept", "*/*; allow-utf8-labelnames=true"));
    }
    h
}

pub fn names_of(d: &Decoded, out: &mut Vec<String>) {
    out.push(d.name.clone());
    for c in &d.children {
        names_of(c, out);
    }
}

/// `isPrivateLabel`: what the editor shows.
fn public(names: Vec<String>) -> Vec<String> {
    names.into_iter().filter(|n| !n.starts_with("__")).collect()
}

async fn label_names(url: &str, matcher: &str, start: i64, end: i64, utf8: bool) -> Vec<String> {
    let resp: LabelNamesResponse = proto(
        url,
        &path("LabelNames"),
        &LabelNamesRequest {
            matchers: vec![matcher.to_owned()],
            start,
            end,
        },
        &headers(utf8),
    )
    .await;
    public(resp.names)
}

async fn flame_graph(
    url: &str,
    type_id: &str,
    selector: &str,
    start: i64,
    end: i64,
) -> Option<FlameGraph> {
    let resp: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            profile_type_id: type_id.into(),
            label_selector: selector.into(),
            start,
            end,
            max_nodes: Some(16384),
            ..Default::default()
        },
        &headers(true),
    )
    .await;
    resp.flamegraph
}

/// The flame-graph total of the profile an exemplar names (what its link in Grafana opens).
async fn exemplar_total(url: &str, selector: &str, start: i64, end: i64, id: &str) -> i64 {
    let resp: SelectMergeStacktracesResponse = proto(
        url,
        &path("SelectMergeStacktraces"),
        &SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: selector.into(),
            start,
            end,
            profile_id_selector: vec![id.to_owned()],
            ..Default::default()
        },
        &headers(true),
    )
    .await;
    resp.flamegraph.unwrap().total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_datasource_contract() {
    let fx = fixture::get();
    let url = fx.url.as_str();
    let (start, end) = fx.range_ms();
    // The editor rounds the label range to 10 s.
    let (start10, end10) = (start / 10_000 * 10_000, (end / 10_000 + 1) * 10_000);

    // 1. ProfileTypes: the editor defaults to a cpu type that is not `samples`.
    let types: ProfileTypesResponse = proto(
        url,
        &path("ProfileTypes"),
        &ProfileTypesRequest { start, end },
        &headers(true),
    )
    .await;
    let ids: Vec<&str> = types.profile_types.iter().map(|t| t.id.as_str()).collect();
    assert!(ids.contains(&CPU) && ids.contains(&SAMPLES), "{ids:?}");
    let cpu = types.profile_types.iter().find(|t| t.id == CPU).unwrap();
    assert_eq!(
        (
            cpu.name.as_str(),
            cpu.sample_type.as_str(),
            cpu.period_type.as_str()
        ),
        ("process_cpu", "cpu", "cpu")
    );

    // 2. LabelNames with the profile type in the matcher, each operator: autocomplete lists the
    // labels of the series that have that profile type.
    let sel = |rest: &str| format!("{{__profile_type__{rest}}}");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            sel(&format!("=\"{CPU}\", service_name=\"checkout\"")),
            vec!["comm", "k8s.namespace.name", "pid", "service_name"],
        ),
        (
            sel("=~\"process_cpu:cpu:.*\", service_name=\"db\""),
            vec!["comm", "pid", "service_name"],
        ),
        // db has a samples:count type besides cpu.
        (
            sel(&format!("!=\"{CPU}\", service_name=\"db\"")),
            vec!["comm", "pid", "service_name"],
        ),
        (sel("!~\"process_cpu:.*\""), vec![]),
        (sel("=\"memory:alloc_space:bytes:space:bytes\""), vec![]),
    ];
    for (matcher, want) in cases {
        let got = label_names(url, &matcher, start10, end10, true).await;
        assert_eq!(got, want, "{matcher}");
    }
    // All of them: the service picker's label.
    let all = label_names(url, &sel(&format!("=\"{CPU}\"")), start10, end10, true).await;
    for want in ["comm", "pid", "service_name"] {
        assert!(all.contains(&want.to_owned()), "{all:?}");
    }
    // Older Grafana builds (no capability) are not shown names they could not quote.
    let old = label_names(
        url,
        &sel(&format!("=\"{CPU}\", service_name=\"checkout\"")),
        start10,
        end10,
        false,
    )
    .await;
    assert_eq!(old, ["comm", "pid", "service_name"]);
    // A quoted UTF-8 name selects like any other.
    let quoted = label_names(
        url,
        &sel(&format!("=\"{CPU}\", \"k8s.namespace.name\"=\"shop\"")),
        start10,
        end10,
        true,
    )
    .await;
    assert_eq!(
        quoted,
        ["comm", "k8s.namespace.name", "pid", "service_name"]
    );

    // 3. LabelValues while a value is edited.
    let values = |name: &str, matcher: String| {
        let name = name.to_owned();
        async move {
            let resp: LabelValuesResponse = proto(
                url,
                &path("LabelValues"),
                &LabelValuesRequest {
                    name,
                    matchers: vec![matcher],
                    start: start10,
                    end: end10,
                },
                &headers(true),
            )
            .await;
            resp.names
        }
    };
    assert_eq!(
        values(
            "pid",
            sel(&format!("=\"{CPU}\", service_name=\"checkout\""))
        )
        .await,
        ["1", "2"]
    );
    let services = values("service_name", sel(&format!("=\"{CPU}\""))).await;
    assert!(
        services.contains(&"checkout".to_owned()) && services.contains(&"db".to_owned()),
        "{services:?}"
    );
    assert_eq!(
        values("__profile_type__", "{service_name=\"db\"}".into()).await,
        [CPU, SAMPLES]
    );

    // 4. The panel: series and flame graph in parallel; the series sum is the flame graph total.
    let selector = "{service_name=\"checkout\"}";
    let series_req = SelectSeriesRequest {
        profile_type_id: CPU.into(),
        label_selector: selector.into(),
        start,
        end,
        step: 15.0,
        ..Default::default()
    };
    let (series_path, h) = (path("SelectSeries"), headers(true));
    let (series, fg) = tokio::join!(
        proto::<_, SelectSeriesResponse>(url, &series_path, &series_req, &h),
        flame_graph(url, CPU, selector, start, end),
    );
    let fg = fg.expect("a flame graph");
    let want = pushed_total(|p| p.service == "checkout");
    assert_eq!(fg.total, want);
    assert_eq!(series.series.len(), 1);
    let points = &series.series[0].points;
    assert_eq!(points.iter().map(|p| p.value).sum::<f64>() as i64, fg.total);
    assert!(
        points.iter().all(|p| p.timestamp % 15_000 == 0),
        "{points:?}"
    );
    let tree = decode(&fg).unwrap();
    let mut names = Vec::new();
    names_of(&tree, &mut names);
    for f in ["main", "work", "leaf_a", "helper"] {
        assert!(names.contains(&f.to_owned()), "{f} not in {names:?}");
    }
    // leaf_a holds every checkout leaf.
    let leaves: i64 = crate::fixture::PUSHED
        .iter()
        .filter(|p| p.service == "checkout")
        .map(|p| p.cpu)
        .sum();
    assert_eq!(fg.max_self, leaves);

    // groupBy and limit: the largest pid only.
    let top: SelectSeriesResponse = proto(
        url,
        &path("SelectSeries"),
        &SelectSeriesRequest {
            group_by: vec!["pid".into()],
            limit: Some(1),
            ..series_req.clone()
        },
        &headers(true),
    )
    .await;
    assert_eq!(top.series.len(), 1);
    assert_eq!(top.series[0].labels[0].value, "2");

    // Exemplars (`exemplarType: EXEMPLAR_TYPE_INDIVIDUAL`): each point names its largest profile,
    // with its own time and total and its labels but the grouped one; Kiln keeps no profile ID.
    let ex: SelectSeriesResponse = proto(
        url,
        &path("SelectSeries"),
        &SelectSeriesRequest {
            group_by: vec!["pid".into()],
            exemplar_type: ExemplarType::Individual as i32,
            ..series_req.clone()
        },
        &headers(true),
    )
    .await;
    let mut named = Vec::new();
    for s in &ex.series {
        for p in &s.points {
            let [e] = &p.exemplars[..] else {
                panic!("one exemplar per point: {p:?}")
            };
            // One checkout profile per 15 s step here: the exemplar is the point.
            assert_eq!(e.value as f64, p.value, "{p:?}");
            assert!(
                (p.timestamp..p.timestamp + 15_000).contains(&e.timestamp),
                "{p:?}"
            );
            assert_eq!(e.profile_id.len(), 36, "a UUID: {e:?}");
            let label = |n: &str| e.labels.iter().find(|l| l.name == n).map(|l| &l.value[..]);
            assert_eq!(label("service_name"), Some("checkout"), "{e:?}");
            assert_eq!(label("pid"), None, "grouped: on the series, {e:?}");
            named.push((s.labels[0].value.clone(), e.timestamp));
        }
    }
    named.sort();
    let mut pushed: Vec<(String, i64)> = crate::fixture::PUSHED
        .iter()
        .filter(|p| p.service == "checkout")
        .map(|p| (p.pid.to_owned(), fx.base_ns / 1_000_000 + p.at * 1000))
        .collect();
    pushed.sort();
    assert_eq!(named, pushed);
    // Its profile ID selects that profile's flame graph (Grafana's exemplar link).
    let e = &ex.series[0].points[0].exemplars[0];
    assert_eq!(
        exemplar_total(url, selector, start, end, &e.profile_id).await,
        e.value
    );
    // The editor's aggregation AVERAGE: the mean profile total of each step (the four checkout
    // profiles share one minute).
    let avg: SelectSeriesResponse = proto(
        url,
        &path("SelectSeries"),
        &SelectSeriesRequest {
            step: 60.0,
            aggregation: Some(TimeSeriesAggregationType::Average as i32),
            ..series_req.clone()
        },
        &headers(true),
    )
    .await;
    let points = &avg.series[0].points;
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].value, want as f64 / 4.0);
    // Span exemplars on series: Pyroscope's own answer.
    let span_ex = post(
        url,
        &path("SelectSeries"),
        "application/proto",
        prost::Message::encode_to_vec(&SelectSeriesRequest {
            exemplar_type: ExemplarType::Span as i32,
            ..series_req.clone()
        }),
        &headers(true),
    )
    .await;
    assert_eq!(span_ex.status, StatusCode::NOT_FOUND);
    assert_eq!(span_ex.json()["code"], "unimplemented");

    // Profile-type labels inside the label selector narrow the read type like the ID does.
    let typed = flame_graph(
        url,
        CPU,
        "{service_name=\"checkout\", __type__=\"cpu\"}",
        start,
        end,
    )
    .await
    .unwrap();
    assert_eq!(typed.total, want);
    let none = flame_graph(
        url,
        CPU,
        "{service_name=\"checkout\", __type__!=\"cpu\"}",
        start,
        end,
    )
    .await
    .unwrap();
    assert_eq!(none.total, 0, "an empty flame graph, not an error");

    // A bad selector: the JSON error connect-go reads its code from.
    let bad = post(
        url,
        &path("SelectMergeStacktraces"),
        "application/proto",
        prost::Message::encode_to_vec(&SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: "{service_name=}".into(),
            ..Default::default()
        }),
        &headers(true),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["code"], "invalid_argument");

    // 5. Heatmap (feature toggle): one point per profile, the largest as exemplar.
    let heat: SelectHeatmapResponse = proto(
        url,
        &path("SelectHeatmap"),
        &SelectHeatmapRequest {
            profile_type_id: CPU.into(),
            label_selector: selector.into(),
            start,
            end,
            step: 15.0,
            query_type: HeatmapQueryType::Individual as i32,
            exemplar_type: ExemplarType::Individual as i32,
            ..Default::default()
        },
        &headers(true),
    )
    .await;
    assert_eq!(heat.series.len(), 1);
    let slots = &heat.series[0].slots;
    let count: i32 = slots.iter().flat_map(|s| &s.counts).sum();
    assert_eq!(
        count as usize,
        crate::fixture::PUSHED
            .iter()
            .filter(|p| p.service == "checkout")
            .count()
    );
    let best = slots
        .iter()
        .flat_map(|s| &s.exemplars)
        .max_by_key(|e| e.value)
        .unwrap();
    // The largest profile (pid 2 at 31 s): its time and labels.
    assert_eq!(best.value, 7_700_000_000);
    assert_eq!(best.timestamp, fx.base_ns / 1_000_000 + 31_000);
    assert!(
        best.labels
            .iter()
            .any(|l| l.name == "pid" && l.value == "2"),
        "{best:?}"
    );
    // Its profile ID selects that profile.
    assert_eq!(
        exemplar_total(url, selector, start, end, &best.profile_id).await,
        best.value
    );
    // Span exemplars of profile points: refused, as Pyroscope does.
    let mixed = post(
        url,
        &path("SelectHeatmap"),
        "application/proto",
        prost::Message::encode_to_vec(&SelectHeatmapRequest {
            profile_type_id: CPU.into(),
            label_selector: selector.into(),
            query_type: HeatmapQueryType::Individual as i32,
            exemplar_type: ExemplarType::Span as i32,
            ..Default::default()
        }),
        &headers(true),
    )
    .await;
    assert_eq!(mixed.status, StatusCode::BAD_REQUEST, "{}", mixed.text());

    // Span profiles (trace to profiles): only the selected span's samples.
    let Some(spans) = &fx.spans else {
        eprintln!("span profile checks skipped (no SDK venv)");
        return;
    };
    let app_sel = format!("{{service_name=\"{SPAN_APP}\"}}");
    let span_profile = |ids: Vec<String>| {
        let app_sel = app_sel.clone();
        async move {
            let resp: SelectMergeStacktracesResponse = proto(
                url,
                &path("SelectMergeSpanProfile"),
                &SelectMergeSpanProfileRequest {
                    profile_type_id: CPU.into(),
                    label_selector: app_sel,
                    span_selector: ids,
                    start,
                    end,
                    max_nodes: Some(16384),
                    format: 0,
                },
                &headers(true),
            )
            .await;
            let fg = resp.flamegraph.expect("a span flame graph");
            let mut names = Vec::new();
            names_of(&decode(&fg).unwrap(), &mut names);
            (fg.total, names)
        }
    };
    let (alpha, alpha_names) = span_profile(vec![spans.alpha.clone()]).await;
    let (beta, beta_names) = span_profile(vec![spans.beta.clone()]).await;
    assert!(alpha > 0 && beta > 0, "alpha {alpha}, beta {beta}");
    let has = |names: &[String], f: &str| names.iter().any(|n| n.contains(f));
    assert!(has(&alpha_names, "kiln_span_alpha"), "{alpha_names:?}");
    assert!(!has(&alpha_names, "kiln_span_beta"), "{alpha_names:?}");
    assert!(has(&beta_names, "kiln_span_beta") && !has(&beta_names, "kiln_span_alpha"));
    let (both, _) = span_profile(vec![spans.alpha.clone(), spans.beta.clone()]).await;
    assert_eq!(both, alpha + beta);
    let whole = flame_graph(url, CPU, &app_sel, start, end).await.unwrap();
    assert!(whole.total >= both, "{} < {both}", whole.total);
}

/// Kiln's own HTTP API takes the same selectors: profile-type labels and quoted names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_api_understands_pyroscope_selectors() {
    let fx = fixture::get();
    let url = fx.url.as_str();
    let (start, end) = fx.range_ms();
    let range = format!("from={start}&until={end}");
    let q = |s: &str| crate::client::enc(s);
    let names = crate::client::get(
        url,
        &format!(
            "/api/v1/labels?{range}&query={}",
            q(&format!(
                "{{__profile_type__=\"{CPU}\", service_name=\"db\"}}"
            ))
        ),
        &[],
    )
    .await;
    assert_eq!(names.status, StatusCode::OK, "{}", names.text());
    assert_eq!(
        crate::client::strings(&names.json()["names"]),
        ["__name__", "comm", "pid", "service_name"]
    );
    let values = crate::client::get(
        url,
        &format!(
            "/api/v1/labels/__type__/values?{range}&query={}",
            q("{service_name=\"db\"}")
        ),
        &[],
    )
    .await;
    assert_eq!(
        crate::client::strings(&values.json()["values"]),
        ["cpu", "samples"]
    );
    for (selector, want) in [
        (
            "{\"k8s.namespace.name\"=\"shop\", __type__=\"cpu\"}",
            pushed_total(|p| p.service == "checkout"),
        ),
        ("{\"k8s.namespace.name\"=\"shop\", __type__=~\"samp.*\"}", 0),
    ] {
        let fg = crate::client::get(
            url,
            &format!(
                "/api/v1/flamegraph?{range}&profile_type=cpu:nanoseconds&query={}",
                q(selector)
            ),
            &[],
        )
        .await;
        assert_eq!(fg.status, StatusCode::OK, "{}", fg.text());
        assert_eq!(fg.json()["total"], want, "{selector}");
    }
}
