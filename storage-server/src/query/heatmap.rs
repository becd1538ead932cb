//! `SelectHeatmap`: how the selected profiles' (or spans') values spread over time, as
//! Pyroscope's pkg/model/heatmap `RangeHeatmap` buckets them. Each point is one stored profile's
//! total for the sample type (`HEATMAP_QUERY_TYPE_INDIVIDUAL`) or one span's total within a
//! profile (`HEATMAP_QUERY_TYPE_SPAN`, from `span_id` sample labels). Time is cut into `step`
//! slots, each slot named by its right edge and covering (edge - step, edge]; values into 20
//! equal buckets between the smallest and the largest value over all series. A slot lists, per
//! value bucket, its lower bound and how many points fell in it, and (when exemplars are asked
//! for) the largest point of each non-empty bucket, named by its profile's ID
//! ([`super::profile_id`]) or its span.

use std::collections::{BTreeMap, HashMap};

use kiln_proto::querier::{
    Exemplar, ExemplarType, HeatmapQueryType, HeatmapSeries, HeatmapSlot, LabelPair,
    SelectHeatmapRequest, SelectHeatmapResponse,
};
use std::sync::Arc;

use super::admission::QueryCtx;
use super::profile_id::profile_id;
use super::querier::{ConnectError, TypedRequest, enum_field, step_nanos};
use super::{profile_total, read_each, span, value_index};
use crate::AppState;
use crate::error::ApiError;
use crate::store::Labels;
use crate::tenant::{TENANT_LABEL, Tenant};

/// Value buckets per slot (Pyroscope's `DefaultYAxisBuckets`).
pub const Y_BUCKETS: usize = 20;
/// Most points one heatmap gathers before it is refused as too large.
pub const MAX_POINTS: usize = 2_000_000;
const NS_PER_MS: i64 = 1_000_000;

/// A series' `group_by` label values and its points.
pub type PointSeries = (Vec<(String, String)>, Vec<Point>);

/// One point: time (ms), value, the span it belongs to (span heatmaps), and its profile's exact
/// time and series labels (for its exemplar).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub ts_ms: i64,
    pub time_nanos: i64,
    pub value: i64,
    pub span: Option<u64>,
    pub labels: Arc<Labels>,
}

/// Right edge of the slot holding `ts` (slots (start - step, start], (start, start + step], …),
/// clamped to the slots of [start, end]; Pyroscope's `normalizeTimestamp`.
fn slot_of(ts: i64, start: i64, end: i64, step: i64) -> i64 {
    let round_up = |t: i64| {
        let m = start.rem_euclid(step);
        let t = t - m;
        let t = if t.rem_euclid(step) != 0 {
            (t.div_euclid(step) + 1) * step
        } else {
            t
        };
        t + m
    };
    round_up(ts).clamp(start, round_up(end).max(start))
}

/// Buckets series of points into heatmap slots (pure: the part Pyroscope's `RangeHeatmap` does).
/// With `exemplars`, each non-empty bucket of a slot names its largest point: time, value, span
/// and the profile's labels other than the `group_by` ones (the series has those), as
/// Pyroscope's heatmap builder keeps them.
pub fn bucket(
    series: Vec<PointSeries>,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    exemplars: bool,
    group_by: &[String],
) -> Vec<HeatmapSeries> {
    let step = step_ms.max(1);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for p in series.iter().flat_map(|(_, pts)| pts) {
        lo = lo.min(p.value);
        hi = hi.max(p.value);
    }
    if lo > hi {
        return Vec::new();
    }
    if lo == hi {
        hi = lo + 1;
    }
    let size = (hi - lo) as f64 / Y_BUCKETS as f64;
    let mins: Vec<i64> = (0..Y_BUCKETS)
        .map(|i| lo + (i as f64 * size) as i64)
        .collect();
    let bucket_of = |v: i64| -> usize {
        // The last bucket holds everything from its lower bound up, the maximum included.
        (0..Y_BUCKETS).rev().find(|&i| v >= mins[i]).unwrap_or(0)
    };
    series
        .into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .map(|(labels, pts)| {
            // slot -> (counts, best point per bucket)
            let mut slots: BTreeMap<i64, (Vec<i32>, Vec<Option<Point>>)> = BTreeMap::new();
            for p in pts {
                let slot = slot_of(p.ts_ms, start_ms, end_ms, step);
                let b = bucket_of(p.value);
                let (counts, best) = slots
                    .entry(slot)
                    .or_insert_with(|| (vec![0; Y_BUCKETS], vec![None; Y_BUCKETS]));
                counts[b] = counts[b].saturating_add(1);
                if best[b].as_ref().is_none_or(|q| p.value > q.value) {
                    best[b] = Some(p);
                }
            }
            HeatmapSeries {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| LabelPair { name, value })
                    .collect(),
                slots: slots
                    .into_iter()
                    .map(|(timestamp, (counts, best))| HeatmapSlot {
                        timestamp,
                        y_min: mins.iter().map(|&m| m as f64).collect(),
                        counts,
                        exemplars: if exemplars {
                            best.into_iter()
                                .flatten()
                                .map(|p| Exemplar {
                                    timestamp: p.ts_ms,
                                    span_id: p
                                        .span
                                        .map(|s| format!("{s:016x}"))
                                        .unwrap_or_default(),
                                    value: p.value,
                                    // A span is part of a profile: as Pyroscope, no profile ID.
                                    profile_id: if p.span.is_none() {
                                        profile_id(&p.labels, p.time_nanos)
                                    } else {
                                        String::new()
                                    },
                                    labels: exemplar_labels(&p.labels, group_by),
                                    ..Exemplar::default()
                                })
                                .collect()
                        } else {
                            Vec::new()
                        },
                    })
                    .collect(),
            }
        })
        .collect()
}

/// An exemplar's labels: its profile's series labels but the `group_by` ones (its series has
/// them) and Kiln's tenant label.
pub(crate) fn exemplar_labels(labels: &Labels, group_by: &[String]) -> Vec<LabelPair> {
    labels
        .iter()
        .filter(|(k, _)| *k != TENANT_LABEL && !group_by.iter().any(|g| g == k))
        .map(|(name, value)| LabelPair {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .collect()
}

/// `SelectHeatmap` (blocking: run it through [`super::admission`]).
pub fn select_heatmap(
    state: &AppState,
    tenant: &Tenant,
    req: &SelectHeatmapRequest,
    ctx: &QueryCtx,
) -> Result<SelectHeatmapResponse, ConnectError> {
    let sel = req.selection(tenant)?;
    let spans = match enum_field(req.query_type, "query_type")? {
        HeatmapQueryType::Unspecified | HeatmapQueryType::Individual => false,
        HeatmapQueryType::Span => true,
    };
    // Exemplars of the points' own kind, as Pyroscope's query backend requires.
    let exemplars = match enum_field(req.exemplar_type, "exemplar_type")? {
        ExemplarType::Unspecified | ExemplarType::None => false,
        ExemplarType::Individual if !spans => true,
        ExemplarType::Span if spans => true,
        ExemplarType::Individual | ExemplarType::Span => {
            return Err(ConnectError::invalid(
                "exemplar_type must match query_type (individual or span)",
            ));
        }
    };
    let step_nanos = step_nanos(req.step, &sel)?;
    let mut groups: HashMap<Vec<(String, String)>, Vec<Point>> = HashMap::new();
    let mut points = 0usize;
    read_each(state, &sel, ctx, &mut |stored, _| {
        if points > MAX_POINTS {
            return;
        }
        let p = &stored.profile;
        let Some(vi) = value_index(p, &sel.profile_type) else {
            return;
        };
        let key: Vec<(String, String)> = req
            .group_by
            .iter()
            .filter_map(|n| stored.labels.get(n).map(|v| (n.clone(), v.to_owned())))
            .collect();
        let ts_ms = stored.time_nanos.div_euclid(NS_PER_MS);
        let out = groups.entry(key).or_default();
        if spans {
            for (span, value) in span::span_totals(p, vi) {
                out.push(Point {
                    ts_ms,
                    time_nanos: stored.time_nanos,
                    value,
                    span: Some(span),
                    labels: stored.labels.clone(),
                });
                points += 1;
            }
        } else {
            let value = profile_total(p, &sel.profile_type).unwrap_or(0);
            out.push(Point {
                ts_ms,
                time_nanos: stored.time_nanos,
                value,
                span: None,
                labels: stored.labels.clone(),
            });
            points += 1;
        }
    })?;
    if points > MAX_POINTS {
        return Err(ApiError::PayloadTooLarge(format!(
            "the heatmap would hold more than {MAX_POINTS} points: narrow the time range or the \
             label selector"
        ))
        .into());
    }
    let mut series: Vec<PointSeries> = groups.into_iter().collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(limit) = req
        .limit
        .filter(|&l| l > 0)
        .and_then(|l| usize::try_from(l).ok())
    {
        let total = |pts: &[Point]| pts.iter().fold(0i64, |a, p| a.saturating_add(p.value));
        series.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0)));
        series.truncate(limit);
        series.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(SelectHeatmapResponse {
        series: bucket(
            series,
            sel.range.from.div_euclid(NS_PER_MS),
            sel.range.until.div_euclid(NS_PER_MS),
            step_nanos.div_euclid(NS_PER_MS),
            exemplars,
            &req.group_by,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ts_ms: i64, value: i64) -> Point {
        Point {
            ts_ms,
            time_nanos: ts_ms * 1_000_000,
            value,
            span: None,
            labels: Arc::new(Labels::new(vec![
                ("pid".into(), ts_ms.to_string()),
                ("service_name".into(), "api".into()),
            ])),
        }
    }

    #[test]
    fn slots_are_right_edges_like_pyroscope() {
        // start 1000, step 10: slots (990,1000], (1000,1010], …
        assert_eq!(slot_of(1000, 1000, 1100, 10), 1000);
        assert_eq!(slot_of(1001, 1000, 1100, 10), 1010);
        assert_eq!(slot_of(1010, 1000, 1100, 10), 1010);
        assert_eq!(slot_of(5, 1000, 1100, 10), 1000);
        assert_eq!(slot_of(9999, 1000, 1100, 10), 1100);
    }

    #[test]
    fn values_fall_in_twenty_buckets() {
        let s = bucket(
            vec![(
                vec![],
                vec![pt(1000, 0), pt(1000, 100), pt(1005, 50), pt(1020, 99)],
            )],
            1000,
            1100,
            10,
            true,
            &["service_name".to_owned()],
        );
        assert_eq!(s.len(), 1);
        let slots = &s[0].slots;
        assert_eq!(
            slots.iter().map(|s| s.timestamp).collect::<Vec<_>>(),
            [1000, 1010, 1020]
        );
        assert_eq!(slots[0].y_min.len(), Y_BUCKETS);
        assert_eq!(slots[0].y_min[1], 5.0);
        // 0 in the first bucket, 100 (the maximum) in the last.
        assert_eq!(slots[0].counts[0], 1);
        assert_eq!(slots[0].counts[Y_BUCKETS - 1], 1);
        assert_eq!(slots[1].counts[10], 1);
        assert_eq!(slots[2].counts[19], 1);
        let total: i32 = slots.iter().flat_map(|s| &s.counts).sum();
        assert_eq!(total, 4);
        // Per non-empty bucket its largest point, named by its profile's labels but the grouped.
        assert_eq!(slots[0].exemplars.len(), 2);
        let e = &slots[2].exemplars[0];
        assert_eq!((e.timestamp, e.value), (1020, 99));
        assert_eq!(
            e.profile_id,
            profile_id(&pt(1020, 99).labels, 1_020_000_000)
        );
        assert_eq!(
            e.labels,
            [LabelPair {
                name: "pid".into(),
                value: "1020".into()
            }]
        );
        assert!(bucket(vec![], 0, 1, 1, false, &[]).is_empty());
    }
}
