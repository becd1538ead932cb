//! Metadata endpoints: profile types, label names and label values of the selected series, and
//! the one index walk ([`typed_series`]) they and Pyroscope's `LabelNames`, `LabelValues`,
//! `Series` and `ProfileTypes` share, which evaluates the selector's profile-type matchers per
//! (series, sample type).

use std::collections::BTreeSet;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde_json::json;

use super::profile_type::{TYPE_LABELS, TypeLabels, is_type_label};
use super::selector::Selector;
use super::time::TimeRange;
use super::{Params, params};
use crate::AppState;
use crate::error::ApiError;
use crate::store::{Labels, Store};
use crate::tenant::{TENANT_LABEL, Tenant};

/// Calls `visit` for every (series, sample type) pair with a profile in `range` that `selector`
/// matches, profile-type labels included (blocking: reads the store's index, decodes nothing).
/// A pair may be visited more than once; callers collect into sets.
pub fn typed_series(
    store: &dyn Store,
    selector: &Selector,
    range: TimeRange,
    mut visit: impl FnMut(&Labels, &TypeLabels),
) {
    store.for_each_series(selector, range, &mut |labels, types| {
        let name = labels.get("__name__").unwrap_or("");
        for t in types {
            if selector.matches_type(labels, t) {
                visit(labels, &TypeLabels::new(name, t));
            }
        }
    });
}

/// Sorted label names of the selected series (never the tenant label); with `type_labels`, also
/// Pyroscope's profile-type label names where a series has a matching type.
pub fn names(
    store: &dyn Store,
    selector: &Selector,
    range: TimeRange,
    type_labels: bool,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut any = false;
    typed_series(store, selector, range, |labels, _| {
        any = true;
        for (k, _) in labels.iter() {
            if !out.contains(k) {
                out.insert(k.to_owned());
            }
        }
    });
    if any && type_labels {
        out.extend(TYPE_LABELS.iter().map(|s| (*s).to_owned()));
    }
    out.remove(TENANT_LABEL);
    out
}

/// Sorted values of label `name` among the selected series; a profile-type label's values are
/// those of the matching types.
pub fn values(
    store: &dyn Store,
    name: &str,
    selector: &Selector,
    range: TimeRange,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if name == TENANT_LABEL {
        return out;
    }
    typed_series(store, selector, range, |labels, t| {
        let v = if is_type_label(name) {
            t.get(name)
        } else {
            labels.get(name).map(str::to_owned)
        };
        if let Some(v) = v {
            out.insert(v);
        }
    });
    out
}

/// Sorted `type:unit` types of the selected series.
pub fn types(store: &dyn Store, selector: &Selector, range: TimeRange) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    typed_series(store, selector, range, |_, t| {
        out.insert(format!("{}:{}", t.sample_type, t.sample_unit));
    });
    out
}

/// `GET /api/v1/profile_types`.
pub async fn profile_types(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let sel = params(q)?.index_selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    let types: Vec<String> = tokio::task::spawn_blocking(move || {
        types(&*store, &sel.selector, sel.range)
            .into_iter()
            .collect()
    })
    .await?;
    state
        .metrics
        .observe_query("profile_types", started.elapsed());
    Ok(Json(json!({ "profile_types": types })))
}

/// `GET /api/v1/labels`.
pub async fn label_names(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let sel = params(q)?.index_selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    // The tenant label is the server's bookkeeping, not the caller's data: `names` leaves it out.
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        names(&*store, &sel.selector, sel.range, false)
            .into_iter()
            .collect()
    })
    .await?;
    state.metrics.observe_query("labels", started.elapsed());
    Ok(Json(json!({ "names": names })))
}

/// `GET /api/v1/labels/{name}/values`.
pub async fn label_values(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(name): Path<String>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let sel = params(q)?.index_selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    let values: Vec<String> = tokio::task::spawn_blocking(move || {
        values(&*store, &name, &sel.selector, sel.range)
            .into_iter()
            .collect()
    })
    .await?;
    state
        .metrics
        .observe_query("label_values", started.elapsed());
    Ok(Json(json!({ "values": values })))
}
