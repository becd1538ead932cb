//! Time series of a selection: each profile's total for the sample type, summed (or averaged) into
//! `step`-wide buckets aligned to multiples of `step` since the epoch, one series per distinct
//! combination of the `group_by` labels' values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::admission::QueryCtx;
use super::{Params, Selection, params, profile_total, read_each};
use crate::AppState;
use crate::error::ApiError;
use crate::store::Labels;
use crate::tenant::Tenant;

const NS_PER_SEC: i64 = 1_000_000_000;
const NS_PER_MS: i64 = 1_000_000;
/// Buckets a default step aims for over the range (Pyroscope's timeline resolution).
const TARGET_POINTS: i64 = 1500;
/// The smallest default step: agents ship one profile per 10 s window.
const MIN_DEFAULT_STEP_SECS: i64 = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregation {
    /// Sum of the profiles' totals in the bucket.
    #[default]
    Sum,
    /// Their mean: the total divided by how many profiles fell in the bucket.
    Average,
}

impl Aggregation {
    pub fn parse(s: Option<&str>) -> Result<Aggregation, ApiError> {
        match s.map(str::trim) {
            None | Some("") | Some("sum") => Ok(Aggregation::Sum),
            Some("avg" | "average") => Ok(Aggregation::Average),
            Some(other) => Err(ApiError::bad_request(format!(
                "aggregation must be sum or avg, got {other:?}"
            ))),
        }
    }
}

/// What to compute, beyond the selection.
#[derive(Clone, Debug)]
pub struct SeriesQuery {
    pub group_by: Vec<String>,
    /// Bucket width in nanoseconds (> 0).
    pub step_nanos: i64,
    pub aggregation: Aggregation,
    /// Keep the `limit` series with the largest totals.
    pub limit: Option<usize>,
    /// Name each point's largest profile ([`Series::exemplars`]).
    pub exemplars: bool,
}

/// One series: its `group_by` label values (labels absent from a profile are left out) and its
/// points, `(bucket start in Unix ms, value)`, for buckets that hold at least one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    pub points: Vec<(i64, f64)>,
    /// With [`SeriesQuery::exemplars`]: per point (by its time, ms), the profile with the largest
    /// total in it, as Pyroscope keeps one exemplar per point.
    pub exemplars: BTreeMap<i64, Exemplar>,
}

/// One stored profile standing for a point: its time, its total, its series labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub time_nanos: i64,
    pub value: i64,
    pub labels: Arc<Labels>,
}

/// The step to use when none is given: about [`TARGET_POINTS`] buckets over the range, whole
/// seconds, at least [`MIN_DEFAULT_STEP_SECS`].
pub fn default_step_secs(from_nanos: i64, until_nanos: i64) -> i64 {
    let range_secs = until_nanos.saturating_sub(from_nanos) / NS_PER_SEC;
    (range_secs / TARGET_POINTS).max(MIN_DEFAULT_STEP_SECS)
}

/// Parses a step in seconds (fractions allowed, at least 1 ms).
pub fn parse_step(s: Option<&str>, sel: &Selection) -> Result<i64, ApiError> {
    match s.map(str::trim) {
        None | Some("") => Ok(default_step_secs(sel.range.from, sel.range.until) * NS_PER_SEC),
        Some(s) => step_nanos(s.parse::<f64>().ok()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "step must be a positive number of seconds (at least 0.001), got {s:?}"
            ))
        }),
    }
}

/// Seconds to nanoseconds, for finite steps of at least a millisecond (points are in ms).
pub fn step_nanos(secs: Option<f64>) -> Option<i64> {
    let secs = secs.filter(|s| s.is_finite() && *s >= 0.001 && *s <= 1e9)?;
    Some((secs * NS_PER_SEC as f64).round() as i64)
}

/// Splits `group_by=pid,comm` (repeated parameters arrive comma-joined) into label names.
pub fn parse_group_by(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Bucket start (ns) -> (sum of the profiles' totals, how many profiles, the largest when asked).
type Buckets = BTreeMap<i64, (i64, u64, Option<Exemplar>)>;

/// Reads the selection and buckets it (blocking: run it through [`super::admission`]; stops early
/// when `ctx` is stopped or its budget is spent).
pub fn compute(
    state: &AppState,
    sel: &Selection,
    q: &SeriesQuery,
    ctx: &QueryCtx,
) -> Result<Vec<Series>, ApiError> {
    let mut groups: HashMap<Vec<(String, String)>, Buckets> = HashMap::new();
    read_each(state, sel, ctx, &mut |stored, _| {
        let Some(total) = profile_total(&stored.profile, &sel.profile_type) else {
            return;
        };
        let key: Vec<(String, String)> = q
            .group_by
            .iter()
            .filter_map(|name| {
                stored
                    .labels
                    .get(name)
                    .map(|v| (name.clone(), v.to_owned()))
            })
            .collect();
        let bucket = stored.time_nanos.div_euclid(q.step_nanos) * q.step_nanos;
        let e = groups.entry(key).or_default().entry(bucket).or_default();
        e.0 = e.0.saturating_add(total);
        e.1 += 1;
        if q.exemplars && e.2.as_ref().is_none_or(|x| total > x.value) {
            e.2 = Some(Exemplar {
                time_nanos: stored.time_nanos,
                value: total,
                labels: stored.labels.clone(),
            });
        }
    })?;
    let mut out: Vec<(i64, Series)> = groups
        .into_iter()
        .map(|(labels, buckets)| {
            let total = buckets
                .values()
                .fold(0i64, |a, (s, _, _)| a.saturating_add(*s));
            let mut exemplars = BTreeMap::new();
            let points = buckets
                .into_iter()
                .map(|(t, (sum, n, top))| {
                    let v = match q.aggregation {
                        Aggregation::Sum => sum as f64,
                        Aggregation::Average => sum as f64 / n as f64,
                    };
                    let t = t.div_euclid(NS_PER_MS);
                    if let Some(top) = top {
                        exemplars.insert(t, top);
                    }
                    (t, v)
                })
                .collect();
            (
                total,
                Series {
                    labels,
                    points,
                    exemplars,
                },
            )
        })
        .collect();
    if let Some(limit) = q.limit {
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.labels.cmp(&b.1.labels)));
        out.truncate(limit);
    }
    let mut series: Vec<Series> = out.into_iter().map(|(_, s)| s).collect();
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(series)
}

/// A point value as JSON: integers stay integers.
fn json_value(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// `GET /api/v1/series`.
pub async fn series_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = params(q)?;
    let sel = p.selection()?.for_tenant(&tenant);
    let step_nanos = parse_step(p.step.as_deref(), &sel)?;
    let limit = match p.limit.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(super::positive("limit", Some(s), 0)?),
    };
    let query = SeriesQuery {
        group_by: parse_group_by(p.group_by.as_deref()),
        step_nanos,
        aggregation: Aggregation::parse(p.aggregation.as_deref())?,
        limit,
        exemplars: false,
    };
    let st = state.clone();
    let sel2 = sel.clone();
    let series = state
        .queries
        .run(move |ctx| compute(&st, &sel2, &query, ctx))
        .await?;
    let unit = sel.profile_type.split_once(':').map_or("", |(_, u)| u);
    let body = json!({
        "profile_type": sel.profile_type,
        "unit": unit,
        "step": step_nanos as f64 / NS_PER_SEC as f64,
        "series": series.iter().map(|s| json!({
            "labels": s.labels.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
            "points": s.points.iter().map(|&(t, v)| json!([t, json_value(v)])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    state.metrics.observe_query("series", started.elapsed());
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_group_by_parse() {
        assert_eq!(step_nanos(Some(10.0)), Some(10 * NS_PER_SEC));
        assert_eq!(step_nanos(Some(0.5)), Some(NS_PER_SEC / 2));
        assert_eq!(step_nanos(Some(0.0)), None);
        assert_eq!(step_nanos(Some(f64::NAN)), None);
        assert_eq!(step_nanos(Some(-1.0)), None);
        assert_eq!(parse_group_by(Some("pid, comm,,")), ["pid", "comm"]);
        assert!(parse_group_by(None).is_empty());
        assert_eq!(default_step_secs(0, 3600 * NS_PER_SEC), 10);
        assert_eq!(default_step_secs(0, 86_400 * NS_PER_SEC), 57);
        assert_eq!(
            Aggregation::parse(Some("avg")).unwrap(),
            Aggregation::Average
        );
        assert!(Aggregation::parse(Some("max")).is_err());
    }
}
