//! Pyroscope's legacy HTTP query endpoints, as pkg/querier/http.go serves them to the old Pyroscope
//! UI and to Grafana's flame-graph panel plugin:
//!
//! * `GET /pyroscope/render?query=<profile type ID>{selector}&from&until&maxNodes&groupBy&aggregation`
//!   → `{version, flamebearer: {names, levels, numTicks, maxSelf}, metadata: {format: "single",
//!   units, spyName, sampleRate, name}, timeline: {startTime, samples, durationDelta}, groups}`.
//! * `GET /pyroscope/render-diff?leftQuery&leftFrom&leftUntil&rightQuery&rightFrom&rightUntil&maxNodes`
//!   → the same with `format: "double"`, 7 integers per node, `leftTicks` and `rightTicks`.
//!
//! The profile type may also be given inside the braces as `__name__="<profile type ID>"`.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::diff::DiffTree;
use super::flamegraph::{DEFAULT_MAX_NODES, max_nodes_param, view};
use super::querier::parse_profile_type_id;
use super::selector::{MatchOp, Matcher, Selector};
use super::series::{self, Aggregation, SeriesQuery};
use super::{Params, Selection, build_tree, dot, flamebearer};
use crate::AppState;
use crate::error::ApiError;
use crate::tenant::Tenant;

const NS_PER_SEC: i64 = 1_000_000_000;
/// Most timeline samples one response carries; a longer range gets a wider step.
const MAX_TIMELINE_SAMPLES: i64 = 11_000;

/// Query-string parameters, with Pyroscope's names.
#[derive(Debug, Default, Deserialize)]
pub struct RenderParams {
    pub query: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    #[serde(rename = "maxNodes")]
    pub max_nodes: Option<String>,
    #[serde(rename = "max-nodes")]
    pub max_nodes_dash: Option<String>,
    #[serde(rename = "groupBy")]
    pub group_by: Option<String>,
    pub aggregation: Option<String>,
    /// `json` (default) or `dot` (the call graph in Graphviz DOT, as text).
    pub format: Option<String>,
    #[serde(rename = "leftQuery")]
    pub left_query: Option<String>,
    #[serde(rename = "leftFrom")]
    pub left_from: Option<String>,
    #[serde(rename = "leftUntil")]
    pub left_until: Option<String>,
    #[serde(rename = "rightQuery")]
    pub right_query: Option<String>,
    #[serde(rename = "rightFrom")]
    pub right_from: Option<String>,
    #[serde(rename = "rightUntil")]
    pub right_until: Option<String>,
}

impl RenderParams {
    fn max_nodes(&self) -> Result<usize, ApiError> {
        let v = self.max_nodes.as_deref().or(self.max_nodes_dash.as_deref());
        // Pyroscope treats 0 as "the default".
        match v.map(str::trim) {
            Some("0") => Ok(DEFAULT_MAX_NODES),
            v => max_nodes_param("maxNodes", v),
        }
    }
}

/// `<profile type ID>{...}` or `{__name__="<profile type ID>", ...}` → (selector text without the
/// profile type, profile type ID).
pub fn split_query(query: &str) -> Result<(String, String), ApiError> {
    let q = query.trim();
    let (head, rest) = match q.find('{') {
        Some(i) => (q[..i].trim(), &q[i..]),
        None => (q, ""),
    };
    if !head.is_empty() {
        return Ok((rest.to_owned(), head.to_owned()));
    }
    // The type is among the matchers: take it out, keep the rest.
    let sel = Selector::parse(rest).map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let id = sel
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && m.op == MatchOp::Eq)
        .map(|m| m.value.clone())
        .ok_or_else(|| {
            ApiError::bad_request(
                "query must name a profile type, e.g. process_cpu:cpu:nanoseconds:cpu:nanoseconds{}",
            )
        })?;
    let others: Vec<String> =
        sel.matchers
            .iter()
            .filter(|m| !(m.name == "__name__" && m.op == MatchOp::Eq))
            .map(|m| {
                // Names that are not Prometheus-style stay quoted.
                let plain = m.name.chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                });
                let name = if plain && !m.name.is_empty() {
                    m.name.clone()
                } else {
                    serde_json::to_string(&m.name).unwrap_or_default()
                };
                format!(
                    "{name}{}{}",
                    m.op,
                    serde_json::to_string(&m.value).unwrap_or_default()
                )
            })
            .collect();
    Ok((format!("{{{}}}", others.join(",")), id))
}

/// A render query's selection, made by [`Params::selection`] like every other query.
fn selection(
    query: Option<&str>,
    from: Option<&str>,
    until: Option<&str>,
    tenant: &Tenant,
) -> Result<(Selection, String), ApiError> {
    let query = query
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("query is required"))?;
    let (selector, id) = split_query(query)?;
    let (name, sample_type) =
        parse_profile_type_id(&id).map_err(|e| ApiError::bad_request(e.message))?;
    let name = name.as_str();
    let mut sel = Params {
        query: Some(selector),
        from: from.map(str::to_owned),
        until: until.map(str::to_owned),
        profile_type: Some(sample_type),
        ..Params::default()
    }
    .selection()?
    .for_tenant(tenant);
    if !name.is_empty() {
        sel.selector.matchers.push(Matcher::equal("__name__", name));
    }
    Ok((sel, id))
}

/// Pyroscope's units and sample rate for a sample type: time in nanoseconds is shown as
/// `samples` at a rate of 1e9 per second, so the UI prints seconds.
fn units(profile_type: &str) -> (&'static str, i64) {
    let (ty, unit) = profile_type.split_once(':').unwrap_or((profile_type, ""));
    match (ty, unit) {
        (_, "nanoseconds") => ("samples", 1_000_000_000),
        (_, "microseconds") => ("samples", 1_000_000),
        (_, "milliseconds") => ("samples", 1_000),
        (_, "bytes") => ("bytes", 100),
        ("goroutine" | "goroutines", _) => ("goroutines", 100),
        ("contentions" | "lock_count", _) => ("lock_samples", 100),
        _ => ("objects", 100),
    }
}

fn metadata(format: &str, sel: &Selection) -> Value {
    let (units, sample_rate) = units(&sel.profile_type);
    let name = sel.profile_type.split(':').next().unwrap_or("");
    json!({
        "format": format,
        "spyName": "",
        "sampleRate": sample_rate,
        "units": units,
        "name": name,
    })
}

/// The timeline of one series: one sample per step from the aligned start through `until`,
/// zeros where no profile fell.
fn timeline(points: &[(i64, f64)], sel: &Selection, step_secs: i64) -> Value {
    let start = sel.range.from.div_euclid(NS_PER_SEC).div_euclid(step_secs) * step_secs;
    let end = sel.range.until.div_euclid(NS_PER_SEC);
    let n = ((end - start) / step_secs + 1).clamp(1, MAX_TIMELINE_SAMPLES) as usize;
    let mut samples = vec![0f64; n];
    for &(ts_ms, v) in points {
        let i = (ts_ms.div_euclid(1000) - start).div_euclid(step_secs);
        if let Some(s) = usize::try_from(i).ok().and_then(|i| samples.get_mut(i)) {
            *s += v;
        }
    }
    json!({
        "startTime": start,
        "samples": samples.iter().map(|&v| if v.fract() == 0.0 { json!(v as i64) } else { json!(v) })
            .collect::<Vec<_>>(),
        "durationDelta": step_secs,
        "watermarks": null,
    })
}

/// `GET /pyroscope/render`.
pub async fn render_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<RenderParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = q
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let (sel, _id) = selection(
        p.query.as_deref(),
        p.from.as_deref(),
        p.until.as_deref(),
        &tenant,
    )?;
    match p.format.as_deref().map(str::trim) {
        None | Some("" | "json") => {}
        Some("dot") => return render_dot(state, sel, &p, started).await,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json or dot, got {other:?}"
            )));
        }
    }
    let max_nodes = p.max_nodes()?;
    let aggregation = Aggregation::parse(p.aggregation.as_deref())?;
    let group_by = series::parse_group_by(p.group_by.as_deref());
    let range_secs = (sel.range.until - sel.range.from) / NS_PER_SEC;
    let step_secs = series::default_step_secs(sel.range.from, sel.range.until)
        .max(range_secs / MAX_TIMELINE_SAMPLES + 1);
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let tree = build_tree(&st, &sel, ctx)?;
            let fg = flamebearer::encode(&view(&tree, max_nodes));
            let mut q = SeriesQuery {
                group_by: Vec::new(),
                step_nanos: step_secs * NS_PER_SEC,
                aggregation,
                limit: None,
                exemplars: false,
            };
            let total = series::compute(&st, &sel, &q, ctx)?;
            let total_points = total.first().map_or(&[][..], |s| &s.points[..]);
            let groups = if group_by.is_empty() {
                Value::Null
            } else {
                q.group_by = group_by;
                let mut groups = BTreeMap::new();
                for s in series::compute(&st, &sel, &q, ctx)? {
                    // Pyroscope keys groups by the (first) group-by label's value.
                    let key = s
                        .labels
                        .first()
                        .map_or_else(|| "*".to_owned(), |(_, v)| v.clone());
                    groups.insert(key, timeline(&s.points, &sel, step_secs));
                }
                json!(groups)
            };
            // Serialized here, on the blocking thread: the levels can be megabytes.
            Ok::<_, ApiError>(
                json!({
                    "version": 1,
                    "flamebearer": {
                        "names": fg.names,
                        "levels": fg.levels.iter().map(|l| &l.values).collect::<Vec<_>>(),
                        "numTicks": fg.total,
                        "maxSelf": fg.max_self,
                    },
                    "metadata": metadata("single", &sel),
                    "timeline": timeline(total_points, &sel, step_secs),
                    "groups": groups,
                })
                .to_string(),
            )
        })
        .await?;
    state.metrics.observe_query("render", started.elapsed());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /pyroscope/render?format=dot`: the call graph as DOT text (empty when there is no data),
/// of at most `max-nodes` functions (default [`dot::DEFAULT_DOT_NODES`]).
async fn render_dot(
    state: AppState,
    sel: Selection,
    p: &RenderParams,
    started: Instant,
) -> Result<Response, ApiError> {
    let nodes = match p
        .max_nodes
        .as_deref()
        .or(p.max_nodes_dash.as_deref())
        .map(str::trim)
    {
        None | Some("" | "0") => dot::DEFAULT_DOT_NODES,
        v => max_nodes_param("max-nodes", v)?,
    };
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let tree = build_tree(&st, &sel, ctx)?;
            Ok::<_, ApiError>(dot::render(&tree, nodes, &sel.profile_type))
        })
        .await?;
    state.metrics.observe_query("render", started.elapsed());
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// `GET /pyroscope/render-diff`.
pub async fn render_diff_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<RenderParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = q
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let (left, left_id) = selection(
        p.left_query.as_deref(),
        p.left_from.as_deref(),
        p.left_until.as_deref(),
        &tenant,
    )
    .map_err(|e| ApiError::bad_request(format!("leftQuery: {e}")))?;
    let (right, right_id) = selection(
        p.right_query.as_deref(),
        p.right_from.as_deref(),
        p.right_until.as_deref(),
        &tenant,
    )
    .map_err(|e| ApiError::bad_request(format!("rightQuery: {e}")))?;
    if left.profile_type != right.profile_type {
        return Err(ApiError::bad_request(format!(
            "leftQuery and rightQuery must have the same profile type ({left_id} vs {right_id})"
        )));
    }
    let max_nodes = p.max_nodes()?;
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let diff = DiffTree::new(
                &build_tree(&st, &left, ctx)?,
                &build_tree(&st, &right, ctx)?,
            );
            let fg = flamebearer::encode_diff(&diff.view(max_nodes));
            // Serialized here, on the blocking thread: the levels can be megabytes.
            Ok::<_, ApiError>(
                json!({
                    "version": 1,
                    "flamebearer": {
                        "names": fg.names,
                        "levels": fg.levels.iter().map(|l| &l.values).collect::<Vec<_>>(),
                        "numTicks": fg.total,
                        "maxSelf": fg.max_self,
                    },
                    "metadata": metadata("double", &left),
                    "leftTicks": fg.left_ticks,
                    "rightTicks": fg.right_ticks,
                    "timeline": null,
                })
                .to_string(),
            )
        })
        .await?;
    state
        .metrics
        .observe_query("render_diff", started.elapsed());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_into_type_and_selector() {
        let (s, id) =
            split_query("process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name=\"a\"}").unwrap();
        assert_eq!(
            (s.as_str(), id.as_str()),
            (
                "{service_name=\"a\"}",
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
            )
        );
        let (s, id) =
            split_query("{__name__=\"x:cpu:nanoseconds:cpu:nanoseconds\", pid!=\"1\"}").unwrap();
        assert_eq!(id, "x:cpu:nanoseconds:cpu:nanoseconds");
        assert_eq!(s, "{pid!=\"1\"}");
        let (s, _) = split_query("a:b:c:d:e").unwrap();
        assert_eq!(s, "");
        assert!(split_query("{pid=\"1\"}").is_err());
    }

    #[test]
    fn units_follow_pyroscope() {
        assert_eq!(units("cpu:nanoseconds"), ("samples", 1_000_000_000));
        assert_eq!(units("inuse_space:bytes"), ("bytes", 100));
        assert_eq!(units("samples:count"), ("objects", 100));
    }
}
