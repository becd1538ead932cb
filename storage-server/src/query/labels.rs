//! Metadata endpoints: profile types, label names and label values of the selected series.

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde_json::json;

use super::{Params, params};
use crate::AppState;
use crate::error::ApiError;
use crate::tenant::{TENANT_LABEL, Tenant};

/// `GET /api/v1/profile_types`.
pub async fn profile_types(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let sel = params(q)?.selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    let types =
        tokio::task::spawn_blocking(move || store.profile_types(&sel.selector, sel.range)).await?;
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
    let sel = params(q)?.selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    let mut names =
        tokio::task::spawn_blocking(move || store.label_names(&sel.selector, sel.range)).await?;
    // The tenant label is the server's bookkeeping, not the caller's data.
    names.retain(|n| n != TENANT_LABEL);
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
    let sel = params(q)?.selection()?.for_tenant(&tenant);
    let store = state.store.clone();
    let values = if name == TENANT_LABEL {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || store.label_values(&name, &sel.selector, sel.range))
            .await?
    };
    state
        .metrics
        .observe_query("label_values", started.elapsed());
    Ok(Json(json!({ "values": values })))
}
