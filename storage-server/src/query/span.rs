//! Span profiles: the samples of the selected profiles that carry a selected `span_id` sample
//! label, as Pyroscope's SDKs write them (the OpenTelemetry integrations, e.g. PyPI's
//! `pyroscope-otel`, label each sample taken while a span is active with the span's ID in 16 hex
//! digits). Ingest keeps `span_id` on the samples (it does not split series by it), so a span
//! profile is a filter over samples: what `SelectMergeSpanProfile` and the span heatmap read.

use std::collections::{HashMap, HashSet};

use super::admission::QueryCtx;
use super::merge::Tree;
use super::{Selection, read_each};
use crate::AppState;
use crate::error::ApiError;
use kiln_proto::pprof::{Profile, Sample};

/// The sample label naming the span a sample was taken in.
pub const SPAN_ID_LABEL: &str = "span_id";
/// Most span IDs one request may select.
pub const MAX_SPANS: usize = 10_000;

/// Parses a span ID: 1 to 16 hex digits (OpenTelemetry writes 16, lower case).
pub fn parse_span_id(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The selected span IDs.
#[derive(Clone, Debug, Default)]
pub struct SpanSet(HashSet<u64>);

impl SpanSet {
    /// From `span_selector`: at least one, at most [`MAX_SPANS`], each hex.
    pub fn parse(ids: &[String]) -> Result<SpanSet, String> {
        if ids.is_empty() {
            return Err("span_selector must name at least one span ID".into());
        }
        if ids.len() > MAX_SPANS {
            return Err(format!(
                "span_selector names {} span IDs, at most {MAX_SPANS} are allowed",
                ids.len()
            ));
        }
        ids.iter()
            .map(|id| {
                parse_span_id(id).ok_or_else(|| format!("span ID {id:?} is not 1 to 16 hex digits"))
            })
            .collect::<Result<HashSet<u64>, String>>()
            .map(SpanSet)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0.contains(&id)
    }
}

/// The span a sample of `p` was taken in, if labelled; `key` is the string index of
/// [`SPAN_ID_LABEL`] in `p` (see [`span_key`]).
pub fn span_of(p: &Profile, key: i64, s: &Sample) -> Option<u64> {
    s.label
        .iter()
        .find(|l| l.key == key)
        .and_then(|l| parse_span_id(p.str(l.str)))
}

/// The string index of [`SPAN_ID_LABEL`] in `p`, when any sample could carry it.
pub fn span_key(p: &Profile) -> Option<i64> {
    p.string_table
        .iter()
        .position(|s| s == SPAN_ID_LABEL)
        .and_then(|i| i64::try_from(i).ok())
}

/// Per span, the sum of sample values `vi` of `p` (samples without a span are left out).
pub fn span_totals(p: &Profile, vi: usize) -> HashMap<u64, i64> {
    let mut out: HashMap<u64, i64> = HashMap::new();
    let Some(key) = span_key(p) else {
        return out;
    };
    for s in &p.sample {
        if let Some(span) = span_of(p, key, s) {
            let v = s.value.get(vi).copied().unwrap_or(0);
            let e = out.entry(span).or_default();
            *e = e.saturating_add(v);
        }
    }
    out
}

/// Merges the samples of the selection taken in one of `spans` into a tree (blocking: run it
/// through [`super::admission`]). Reads stored profiles one by one: the store's pre-merged read
/// drops sample labels.
pub fn build_span_tree(
    state: &AppState,
    sel: &Selection,
    spans: &SpanSet,
    ctx: &QueryCtx,
) -> Result<Tree, ApiError> {
    let mut tree = Tree::new();
    read_each(state, sel, ctx, &mut |stored, resolver| {
        let p = &stored.profile;
        let Some(key) = span_key(p) else {
            return;
        };
        let keep = |s: &Sample| span_of(p, key, s).is_some_and(|id| spans.contains(id));
        tree.merge_samples_where(p, &sel.profile_type, resolver, &[], &keep);
    })?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_parse_as_hex() {
        assert_eq!(
            parse_span_id("00f067aa0ba902b7"),
            Some(0x00f0_67aa_0ba9_02b7)
        );
        assert_eq!(parse_span_id("F067AA0BA902B7"), Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(parse_span_id(""), None);
        assert_eq!(parse_span_id("00f067aa0ba902b7a"), None);
        assert_eq!(parse_span_id("xyz"), None);
        assert!(SpanSet::parse(&[]).is_err());
        assert!(SpanSet::parse(&["nothex".into()]).is_err());
        let set = SpanSet::parse(&["9a517183f26a089d".into()]).unwrap();
        assert!(set.contains(0x9a51_7183_f26a_089d));
    }
}
