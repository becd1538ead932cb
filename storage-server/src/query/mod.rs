//! Query: selection parameters shared by every endpoint, and one module per output (flame graph,
//! top table, pprof, labels, series, diff), plus Pyroscope's query surfaces (the Connect
//! `querier.v1` service and the legacy `/pyroscope/render`).

pub mod admission;
pub mod diff;
pub mod dot;
pub mod flamebearer;
pub mod flamegraph;
pub mod heatmap;
pub mod labels;
pub mod merge;
pub mod pprof;
pub mod profile_id;
pub mod profile_type;
pub mod querier;
pub mod reason;
pub mod render;
pub mod selector;
pub mod series;
pub mod services;
pub mod span;
pub mod symbolize;
pub mod time;
pub mod top;

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::store::{Merged, ReadRequest, StoredProfile};
use crate::tenant::Tenant;
use admission::QueryCtx;
use merge::Tree;
use selector::Selector;
use symbolize::Resolver;
use time::TimeRange;

pub const DEFAULT_PROFILE_TYPE: &str = "cpu:nanoseconds";

/// Raw query-string parameters; parsed by hand so every error is a JSON 400 naming the parameter.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pub query: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub profile_type: Option<String>,
    pub max_nodes: Option<String>,
    pub limit: Option<String>,
    /// `/api/v1/series`: comma-separated label names.
    pub group_by: Option<String>,
    /// `/api/v1/series`: bucket width in seconds.
    pub step: Option<String>,
    /// `/api/v1/series`: `sum` (default) or `avg`.
    pub aggregation: Option<String>,
    /// pprof: the last N seconds when `from` is absent (what `go tool pprof -seconds N` sends).
    pub seconds: Option<String>,
    /// `/api/v1/flamegraph`: also answer the top-functions table (this many rows) from the same
    /// merged tree, so a page needs one query per view.
    pub top: Option<String>,
    /// `/api/v1/flamegraph`: `json` (default) or `columnar` (see [`flamegraph::render_columnar`]).
    pub format: Option<String>,
}

/// Validated selection.
#[derive(Clone, Debug)]
pub struct Selection {
    pub selector: Selector,
    /// Whose data this is (set by [`Selection::for_tenant`]); also whose debuginfo names frames.
    pub tenant: Tenant,
    pub range: TimeRange,
    pub profile_type: String,
}

impl Selection {
    /// Restricts the selection to `tenant`'s series (see [`crate::tenant`]). Every query path
    /// calls this on its selection: the one place tenants are kept apart on reads.
    pub fn for_tenant(mut self, tenant: &Tenant) -> Selection {
        self.selector.matchers.push(tenant.matcher());
        self.tenant = tenant.clone();
        self
    }
}

pub fn params(q: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

impl Selection {
    /// The selection reading sample type `type_unit`: the selector's profile-type matchers
    /// (`__type__`, `__profile_type__`, …) are evaluated against it.
    pub fn typed(mut self, type_unit: &str) -> Selection {
        self.selector = self.selector.bind(type_unit);
        self.profile_type = type_unit.to_owned();
        self
    }
}

impl Params {
    /// The selection of a query that reads profiles of one sample type (`profile_type`).
    pub fn selection(&self) -> Result<Selection, ApiError> {
        let sel = self.index_selection()?;
        let t = sel.profile_type.clone();
        Ok(sel.typed(&t))
    }

    /// The selection of an index read (labels, profile types): every sample type counts, the
    /// selector's profile-type matchers are checked per type by [`labels::typed_series`].
    pub fn index_selection(&self) -> Result<Selection, ApiError> {
        let selector = Selector::parse(self.query.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
        let range = TimeRange::parse(
            self.from.as_deref(),
            self.until.as_deref(),
            time::now_nanos(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let profile_type = match self.profile_type.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_PROFILE_TYPE.to_owned(),
            Some(t)
                if t.split_once(':')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()) =>
            {
                t.to_owned()
            }
            Some(t) => {
                return Err(ApiError::bad_request(format!(
                    "profile_type {t:?} must be <type>:<unit>, e.g. cpu:nanoseconds"
                )));
            }
        };
        Ok(Selection {
            selector,
            tenant: Tenant::default(),
            range,
            profile_type,
        })
    }

    fn positive(
        &self,
        name: &str,
        value: Option<&String>,
        default: usize,
    ) -> Result<usize, ApiError> {
        positive(name, value.map(String::as_str), default)
    }
}

/// Parses an optional positive integer parameter named `name`.
pub(crate) fn positive(name: &str, value: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match value.map(|s| s.trim()) {
        None | Some("") => Ok(default),
        Some(s) => s.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be a positive integer, got {s:?}"))
        }),
    }
}

/// Reads and merges the selection into a tree (blocking: run it through [`admission`]). Stops
/// early, with the matching error, when `ctx` is stopped or its budget is spent.
pub(crate) fn build_tree(
    state: &AppState,
    sel: &Selection,
    ctx: &QueryCtx,
) -> Result<Tree, ApiError> {
    let mut tree = Tree::new();
    let mut resolver = Resolver::new(Some(&state.debuginfo)).for_tenant(&sel.tenant);
    state
        .store
        // Pre-merged by the store where it can (blocks summed by stack id), so each stack is
        // resolved once per block rather than once per stored profile.
        .read_merged(
            ReadRequest {
                selector: &sel.selector,
                range: sel.range,
                profile_type: Some(&sel.profile_type),
                stop: Some(ctx.stop_flag()),
            },
            &mut |merged| {
                if !ctx.admit_read(merged.profiles, merged.bytes()) {
                    return;
                }
                let added = match &merged.data {
                    Merged::Profile(p) => tree.merge_profile(p, &sel.profile_type, &mut resolver),
                    Merged::Stacks(s) => {
                        tree.merge_stacks(s, &mut resolver);
                        true
                    }
                };
                if added {
                    // One merged profile can stand for many stored ones.
                    tree.profiles += merged.profiles.saturating_sub(1);
                }
            },
        )
        .map_err(|e| ApiError::store(e.to_string(), &e))?;
    ctx.finish()?;
    Ok(tree)
}

/// Like [`build_tree`], with each profile's stacks under one frame per `group_by` label
/// (`name=value`, `name=` when the series lacks it): the flame graph by process.
pub(crate) fn build_grouped_tree(
    state: &AppState,
    sel: &Selection,
    group_by: &[String],
    ctx: &QueryCtx,
) -> Result<Tree, ApiError> {
    let mut tree = Tree::new();
    read_each(state, sel, ctx, &mut |stored, resolver| {
        let frames: Vec<String> = group_by
            .iter()
            .map(|name| format!("{name}={}", stored.labels.get(name).unwrap_or("")))
            .collect();
        let prefix: Vec<&str> = frames.iter().map(String::as_str).collect();
        tree.merge_profile_under(&stored.profile, &sel.profile_type, resolver, &prefix);
    })?;
    Ok(tree)
}

/// Calls `visit` with each stored profile of the selection's sample type that the query's read
/// budget admits, and a resolver naming frames from the tenant's debuginfo (blocking: run it
/// through [`admission`]; stops early like [`build_tree`]). For queries that need what the
/// store's pre-merged read drops: each profile's series labels, time or sample labels.
pub(crate) fn read_each(
    state: &AppState,
    sel: &Selection,
    ctx: &QueryCtx,
    visit: &mut dyn FnMut(&StoredProfile, &mut Resolver),
) -> Result<(), ApiError> {
    let mut resolver = Resolver::new(Some(&state.debuginfo)).for_tenant(&sel.tenant);
    state
        .store
        .read(
            ReadRequest {
                selector: &sel.selector,
                range: sel.range,
                profile_type: Some(&sel.profile_type),
                stop: Some(ctx.stop_flag()),
            },
            &mut |stored| {
                if ctx.admit_read(1, stored.profile.encoded_len()) {
                    visit(&stored, &mut resolver);
                }
            },
        )
        .map_err(|e| ApiError::store(e.to_string(), &e))?;
    ctx.finish()
}

/// The index of sample type `type_unit` (`cpu:nanoseconds`) among `p`'s values.
pub(crate) fn value_index(p: &kiln_proto::pprof::Profile, type_unit: &str) -> Option<usize> {
    p.sample_type
        .iter()
        .position(|st| format!("{}:{}", p.str(st.r#type), p.str(st.unit)) == type_unit)
}

/// `p`'s total of sample type `type_unit` (saturating), if it has that type.
pub(crate) fn profile_total(p: &kiln_proto::pprof::Profile, type_unit: &str) -> Option<i64> {
    let vi = value_index(p, type_unit)?;
    Some(
        p.sample
            .iter()
            .filter_map(|s| s.value.get(vi))
            .fold(0i64, |a, &v| a.saturating_add(v)),
    )
}

/// `GET /api/v1/flamegraph`.
pub async fn flamegraph_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = params(q)?;
    let sel = p.selection()?.for_tenant(&tenant);
    let max_nodes = flamegraph::max_nodes_param("max_nodes", p.max_nodes.as_deref())?;
    let format = flamegraph::Format::parse(p.format.as_deref())?;
    let group_by: Vec<String> = p
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if group_by.len() > 4 {
        return Err(ApiError::bad_request(
            "group_by takes at most 4 label names",
        ));
    }
    let top_limit = match p.top.as_deref() {
        None => None,
        Some(_) => Some(p.positive("top", p.top.as_ref(), top::DEFAULT_LIMIT)?),
    };
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let tree = if group_by.is_empty() {
                build_tree(&st, &sel, ctx)?
            } else {
                build_grouped_tree(&st, &sel, &group_by, ctx)?
            };
            // The table comes from the whole tree, before the flame graph folds small nodes.
            let functions = top_limit.map(|n| top::top(&tree, n));
            let (body, content_type) = match format {
                flamegraph::Format::Json => (
                    flamegraph::render(&tree, max_nodes, &sel.profile_type, functions.as_deref())
                        .into_bytes(),
                    "application/json",
                ),
                flamegraph::Format::Columnar => (
                    flamegraph::render_columnar(
                        &tree,
                        max_nodes,
                        &sel.profile_type,
                        functions.as_deref(),
                    ),
                    "application/octet-stream",
                ),
            };
            Ok((body, content_type))
        })
        .await?;
    state.metrics.observe_query("flamegraph", started.elapsed());
    let (body, content_type) = body;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET /api/v1/top`.
pub async fn top_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = params(q)?;
    let sel = p.selection()?.for_tenant(&tenant);
    let limit = p.positive("limit", p.limit.as_ref(), top::DEFAULT_LIMIT)?;
    let st = state.clone();
    let resp = state
        .queries
        .run(move |ctx| {
            let tree = build_tree(&st, &sel, ctx)?;
            let unit = sel
                .profile_type
                .split_once(':')
                .map_or("", |(_, u)| u)
                .to_owned();
            Ok(top::TopResponse {
                total: tree.total(),
                unit,
                profiles: tree.profiles,
                functions: top::top(&tree, limit),
                profile_type: sel.profile_type,
            })
        })
        .await?;
    state.metrics.observe_query("top", started.elapsed());
    Ok(axum::Json(resp).into_response())
}

/// Merges every selected profile into one symbolized pprof (blocking: run it through
/// [`admission`]; stops early like [`build_tree`]).
/// With `only_type` (a `type:unit`), just that sample type; else all the selection has, with
/// `preferred` as the default sample type when present.
pub(crate) fn merged_pprof(
    state: &AppState,
    sel: &Selection,
    only_type: Option<&str>,
    preferred: Option<&str>,
    ctx: &QueryCtx,
) -> Result<kiln_proto::pprof::Profile, ApiError> {
    let types = match only_type {
        Some(t) => vec![t.to_owned()],
        None => state.store.profile_types(&sel.selector, sel.range),
    };
    let mut merger = pprof::PprofMerger::new(&types);
    let mut resolver = Resolver::new(Some(&state.debuginfo)).for_tenant(&sel.tenant);
    state
        .store
        .read(
            ReadRequest {
                selector: &sel.selector,
                range: sel.range,
                profile_type: only_type,
                stop: Some(ctx.stop_flag()),
            },
            &mut |stored| {
                if ctx.admit_read(1, stored.profile.encoded_len()) {
                    merger.add(&stored.profile, stored.time_nanos, &mut resolver);
                }
            },
        )
        .map_err(|e| ApiError::store(e.to_string(), &e))?;
    ctx.finish()?;
    Ok(merger.finish(preferred.or(only_type)))
}

/// `GET /api/v1/pprof`: all sample types of the selection, merged, symbolized and gzipped.
/// `seconds=N` without `from` selects the last N seconds (`go tool pprof -seconds N` appends it).
pub async fn pprof_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    pprof_response(state, tenant, params(q)?).await
}

/// Seconds served by `/debug/pprof/profile` without `?seconds=`: Go's own default.
pub const DEFAULT_PROFILE_SECONDS: usize = 30;

/// `GET /debug/pprof/profile?seconds=N`: what `go tool pprof http://host:port` fetches (a bare
/// host becomes this path). Kiln profiles continuously, so instead of sampling for N seconds now it
/// answers at once with everything stored for the last N seconds (default 30).
pub async fn debug_profile_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut p = params(q)?;
    if p.seconds.as_deref().is_none_or(|s| s.trim().is_empty()) {
        p.seconds = Some(DEFAULT_PROFILE_SECONDS.to_string());
    }
    pprof_response(state, tenant, p).await
}

async fn pprof_response(
    state: AppState,
    tenant: Tenant,
    mut p: Params,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if p.seconds.as_deref().is_some_and(|s| !s.trim().is_empty()) {
        let secs = positive("seconds", p.seconds.as_deref(), DEFAULT_PROFILE_SECONDS)?;
        if p.from.as_deref().is_none_or(str::is_empty) {
            p.from = Some(format!("now-{secs}s"));
        }
    }
    let sel = p.selection()?.for_tenant(&tenant);
    let preferred = p.profile_type.clone().filter(|t| !t.trim().is_empty());
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let profile = merged_pprof(&st, &sel, None, preferred.as_deref(), ctx)?;
            // Encoding and gzip are CPU work too: on the query's blocking thread.
            Ok(kiln_proto::encode_profile_gzip(&profile))
        })
        .await?;
    state.metrics.observe_query("pprof", started.elapsed());
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=kiln.pb.gz",
            ),
        ],
        body,
    )
        .into_response())
}
