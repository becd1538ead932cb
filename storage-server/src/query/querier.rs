//! Pyroscope's Connect query service, `POST /querier.v1.QuerierService/<Method>`, so that Grafana's
//! Pyroscope data source, its Profiles Drilldown app and `profilecli` query Kiln unchanged: every
//! method of api/querier/v1/querier.proto (docs/API.md lists each with what it answers).
//!
//! Connect unary: the request body is the message as `application/proto` or `application/json`
//! (proto3 JSON mapping), optionally `Content-Encoding: gzip`; the reply uses the same codec; errors
//! are `{"code": "...", "message": "..."}` JSON with connect-go's HTTP status for the code.
//!
//! Profile type IDs (`name:sample_type:sample_unit:period_type:period_unit`, e.g.
//! `process_cpu:cpu:nanoseconds:cpu:nanoseconds`) map onto Kiln's data as `__name__ = name` plus
//! the `sample_type:sample_unit` sample type ([`super::profile_type`]); selectors go through the
//! one selector of [`super::selector`], bound to that sample type for reads, evaluated per
//! (series, type) by [`super::labels::typed_series`] for listings. Pyroscope's other services the
//! Drilldown app calls are in [`super::services`].

use std::collections::BTreeSet;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_proto::codec::CodecError;
use kiln_proto::pprof::Profile;
use kiln_proto::querier::{
    AnalyzeQueryRequest, AnalyzeQueryResponse, DiffRequest, DiffResponse, Exemplar, ExemplarType,
    GetProfileStatsRequest, GetProfileStatsResponse, LabelNamesRequest, LabelNamesResponse,
    LabelPair, LabelValuesRequest, LabelValuesResponse, Labels, Point, PprofProfile, ProfileFormat,
    ProfileType, ProfileTypesRequest, ProfileTypesResponse, QueryImpact, QueryScope,
    SelectHeatmapRequest, SelectMergeProfileRequest, SelectMergeSpanProfileRequest,
    SelectMergeStacktracesRequest, SelectMergeStacktracesResponse, SelectSeriesRequest,
    SelectSeriesResponse, Series, SeriesRequest, SeriesResponse, TimeSeriesAggregationType,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::admission::QueryCtx;
use super::diff::DiffTree;
use super::flamegraph::{DEFAULT_MAX_NODES, clamp_max_nodes, view};
use super::merge::{ROOT, Tree};
use super::selector::{Matcher, Selector};
use super::series::{self, Aggregation, SeriesQuery};
use super::{
    Params, Selection, build_tree, flamebearer, heatmap, labels, merged_pprof, pprof, profile_id,
    profile_type, span,
};
use crate::AppState;
use crate::error::ApiError;
use crate::store::{ReadRequest, ReadScope, ScopeStats};
use crate::tenant::{TENANT_LABEL, Tenant};

const NS_PER_MS: i64 = 1_000_000;

/// A Connect error: code name and message, and the HTTP status it is sent with. The status is
/// kept apart from the code because Connect names several of Kiln's statuses alike (a body over
/// its limit, 413, and a rate limit, 429, are both `resource_exhausted`).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    pub code: &'static str,
    pub message: String,
    status: StatusCode,
    /// Sent as `Retry-After` (503 when the query slots are busy).
    retry_after_secs: Option<u64>,
}

impl ConnectError {
    /// An error with the status Connect's protocol gives `code`.
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> ConnectError {
        // connect-go's `connectCodeToHTTP` (what Pyroscope's server sends).
        let status = match code {
            "invalid_argument" | "out_of_range" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" | "unimplemented" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            "canceled" | "deadline_exceeded" => StatusCode::REQUEST_TIMEOUT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ConnectError {
            code,
            message: message.into(),
            status,
            retry_after_secs: None,
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> ConnectError {
        ConnectError::new("invalid_argument", message)
    }
    fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ApiError> for ConnectError {
    fn from(e: ApiError) -> Self {
        // Kiln's status is kept (413 stays 413); the code is Connect's nearest name for it.
        let status = e.status();
        let retry_after_secs = match &e {
            ApiError::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let code = match e {
            ApiError::BadRequest(_) | ApiError::UnsupportedMediaType(_) => "invalid_argument",
            ApiError::Unprocessable(_) => "invalid_argument",
            ApiError::Unauthorized(_) => "unauthenticated",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge(_) => "resource_exhausted",
            ApiError::Conflict(_) => "already_exists",
            ApiError::InsufficientStorage(_) => "resource_exhausted",
            ApiError::RateLimited { .. } => "resource_exhausted",
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable { .. } => "unavailable",
        };
        ConnectError {
            code,
            message: e.to_string(),
            status,
            retry_after_secs,
        }
    }
}

impl From<tokio::task::JoinError> for ConnectError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "connect query failed");
        } else {
            tracing::debug!(error = %self, "connect query rejected");
        }
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"code": self.code, "message": self.message}).to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Proto,
    Json,
}

impl Codec {
    pub(crate) fn of(headers: &HeaderMap) -> Result<Codec, ConnectError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/proto" | "application/protobuf" | "application/x-protobuf" => {
                Ok(Codec::Proto)
            }
            "application/json" => Ok(Codec::Json),
            _ => Err(ConnectError::invalid(format!(
                "Content-Type {ct:?}: expected application/proto or application/json"
            ))),
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/proto",
            Codec::Json => "application/json",
        }
    }

    pub(crate) fn decode<M: Message + Default + DeserializeOwned>(
        self,
        body: &[u8],
    ) -> Result<M, ConnectError> {
        match self {
            Codec::Proto => M::decode(body)
                .map_err(|e| ConnectError::invalid(format!("bad protobuf request: {e}"))),
            // An empty JSON body is the empty message, as for protobuf.
            Codec::Json if body.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
            Codec::Json => serde_json::from_slice(body)
                .map_err(|e| ConnectError::invalid(format!("bad JSON request: {e}"))),
        }
    }

    pub(crate) fn reply<M: Message + Serialize>(self, msg: &M) -> Result<Response, ConnectError> {
        let body = match self {
            Codec::Proto => msg.encode_to_vec(),
            Codec::Json => serde_json::to_vec(msg)
                .map_err(|e| ConnectError::new("internal", format!("encoding JSON: {e}")))?,
        };
        Ok(([(header::CONTENT_TYPE, self.content_type())], body).into_response())
    }
}

/// `POST /querier.v1.QuerierService/{method}`.
pub async fn connect_handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let result = dispatch(&state, tenant, &method, &headers, &body).await;
    state.metrics.observe_query("querier", started.elapsed());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    state: &AppState,
    tenant: Result<Tenant, ApiError>,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ConnectError> {
    let tenant = tenant?;
    let codec = Codec::of(headers)?;
    let caps = Capabilities::of(headers);
    let body = request_body(state, headers, body).await?;
    let st = state.clone();
    match method {
        "ProfileTypes" => {
            let req: ProfileTypesRequest = codec.decode(&body)?;
            let resp = blocking(move || profile_types(&st, &tenant, &req)).await?;
            codec.reply(&resp)
        }
        "LabelNames" => {
            let req: LabelNamesRequest = codec.decode(&body)?;
            let resp = blocking(move || {
                let mut names = BTreeSet::new();
                for sel in alternatives(&req.matchers, req.start, req.end, &tenant)? {
                    names.extend(labels::names(&*st.store, &sel.selector, sel.range, true));
                }
                Ok(LabelNamesResponse {
                    names: names.into_iter().filter(|n| caps.shows(n)).collect(),
                })
            })
            .await?;
            codec.reply(&resp)
        }
        "LabelValues" => {
            let req: LabelValuesRequest = codec.decode(&body)?;
            if req.name.is_empty() {
                return Err(ConnectError::invalid("name is required"));
            }
            let resp = blocking(move || {
                let mut values = BTreeSet::new();
                for sel in alternatives(&req.matchers, req.start, req.end, &tenant)? {
                    values.extend(labels::values(
                        &*st.store,
                        &req.name,
                        &sel.selector,
                        sel.range,
                    ));
                }
                Ok(LabelValuesResponse {
                    names: values.into_iter().collect(),
                })
            })
            .await?;
            codec.reply(&resp)
        }
        "Series" => {
            let req: SeriesRequest = codec.decode(&body)?;
            let resp = blocking(move || series_labels(&st, &tenant, &req, caps)).await?;
            codec.reply(&resp)
        }
        "SelectMergeStacktraces" => {
            let req: SelectMergeStacktracesRequest = codec.decode(&body)?;
            let format = profile_format(req.format)?;
            let narrow = Narrowing::of(&req)?;
            query(state, codec, move |ctx| {
                let sel = req.selection(&tenant)?;
                if format == ProfileFormat::Pprof {
                    // A span pprof is not merged here: the answer without `pprof` makes clients
                    // fall back to SelectMergeSpanProfile (profilecli's querySpanProfile).
                    if narrow.spans.is_some() {
                        return Ok(SelectMergeStacktracesResponse::default());
                    }
                    let mut profile = match &narrow.ids {
                        Some(ids) => profile_id::merged_pprof(&st, &sel, ids, ctx)?,
                        None => merged_pprof(&st, &sel, Some(&sel.profile_type), None, ctx)?,
                    };
                    if !narrow.call_site.is_empty() {
                        pprof::keep_call_site(&mut profile, &narrow.call_site);
                    }
                    return Ok(SelectMergeStacktracesResponse {
                        pprof: Some(PprofProfile {
                            profile: Some(profile),
                        }),
                        ..SelectMergeStacktracesResponse::default()
                    });
                }
                let tree = narrow.tree(&st, &sel, ctx)?;
                Ok(stacktraces(&tree, max_nodes(req.max_nodes), format, &sel))
            })
            .await
        }
        "SelectMergeSpanProfile" => {
            let req: SelectMergeSpanProfileRequest = codec.decode(&body)?;
            let format = profile_format(req.format)?;
            let spans = span::SpanSet::parse(&req.span_selector).map_err(ConnectError::invalid)?;
            query(state, codec, move |ctx| {
                let sel = req.selection(&tenant)?;
                let tree = span::build_span_tree(&st, &sel, &spans, ctx)?;
                Ok(stacktraces(&tree, max_nodes(req.max_nodes), format, &sel))
            })
            .await
        }
        "Diff" => {
            let req: DiffRequest = codec.decode(&body)?;
            let (Some(left), Some(right)) = (req.left, req.right) else {
                return Err(ConnectError::invalid("left and right are both required"));
            };
            let side = |name: &str, req: &SelectMergeStacktracesRequest| {
                let sel = req
                    .selection(&tenant)
                    .map_err(|e| ConnectError::invalid(format!("{name}: {}", e.message)))?;
                let narrow = Narrowing::of(req)
                    .map_err(|e| ConnectError::invalid(format!("{name}: {}", e.message)))?;
                Ok::<_, ConnectError>((sel, narrow))
            };
            let (l, l_narrow) = side("left", &left)?;
            let (r, r_narrow) = side("right", &right)?;
            query(state, codec, move |ctx| {
                let diff =
                    DiffTree::new(&l_narrow.tree(&st, &l, ctx)?, &r_narrow.tree(&st, &r, ctx)?);
                let max = max_nodes(left.max_nodes.or(right.max_nodes));
                Ok(DiffResponse {
                    flamegraph: Some(flamebearer::encode_diff(&diff.view(max))),
                })
            })
            .await
        }
        "SelectSeries" => {
            let req: SelectSeriesRequest = codec.decode(&body)?;
            query(state, codec, move |ctx| {
                select_series(&st, &tenant, &req, ctx)
            })
            .await
        }
        "SelectHeatmap" => {
            let req: SelectHeatmapRequest = codec.decode(&body)?;
            query(state, codec, move |ctx| {
                heatmap::select_heatmap(&st, &tenant, &req, ctx)
            })
            .await
        }
        "SelectMergeProfile" => {
            let req: SelectMergeProfileRequest = codec.decode(&body)?;
            let ids = profile_ids(&req.profile_id_selector, false)?;
            query_raw(state, move |ctx| {
                let sel = req.selection(&tenant)?;
                let call_site: Vec<String> = req
                    .stack_trace_selector
                    .as_ref()
                    .map(|s| s.call_site.iter().map(|l| l.name.clone()).collect())
                    .unwrap_or_default();
                let mut profile = match &ids {
                    Some(ids) => profile_id::merged_pprof(&st, &sel, ids, ctx)?,
                    None => merged_pprof(&st, &sel, Some(&sel.profile_type), None, ctx)?,
                };
                if !call_site.is_empty() {
                    pprof::keep_call_site(&mut profile, &call_site);
                }
                let body = match codec {
                    Codec::Proto => profile.encode_to_vec(),
                    Codec::Json => profile_json(&profile).to_string().into_bytes(),
                };
                Ok(([(header::CONTENT_TYPE, codec.content_type())], body).into_response())
            })
            .await
        }
        "GetProfileStats" => {
            let _req: GetProfileStatsRequest = codec.decode(&body)?;
            let resp = blocking(move || {
                let mut own = Selector::all();
                own.matchers.push(tenant.matcher());
                let bounds = st.store.time_bounds(&own);
                Ok(match bounds {
                    Some((oldest, newest)) => GetProfileStatsResponse {
                        data_ingested: true,
                        oldest_profile_time: oldest.div_euclid(NS_PER_MS),
                        newest_profile_time: newest.div_euclid(NS_PER_MS),
                    },
                    None => GetProfileStatsResponse::default(),
                })
            })
            .await?;
            codec.reply(&resp)
        }
        "AnalyzeQuery" => {
            let req: AnalyzeQueryRequest = codec.decode(&body)?;
            // Through the query slots: the head's records are decoded for their sample counts.
            query(state, codec, move |ctx| {
                analyze_query(&st, &tenant, &req, ctx)
            })
            .await
        }
        other => Err(ConnectError::new(
            "unimplemented",
            format!("querier.v1.QuerierService/{other} is not a method of the querier service"),
        )),
    }
}

/// Client capabilities announced in `Accept` parameters, as Pyroscope reads them
/// (pkg/featureflags/client_capability.go): `Accept: */*; allow-utf8-labelnames=true`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Capabilities {
    /// Without it, label names that are not Prometheus-style (`service.name`) are left out of
    /// `LabelNames` and `Series`, as Pyroscope does for older clients.
    pub utf8_label_names: bool,
}

impl Capabilities {
    pub(crate) fn of(headers: &HeaderMap) -> Capabilities {
        let utf8_label_names = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|param| param.split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("allow-utf8-labelnames")
                    && v.trim().trim_matches('"') == "true"
            });
        Capabilities { utf8_label_names }
    }

    /// Whether label `name` is shown to this client.
    fn shows(self, name: &str) -> bool {
        self.utf8_label_names || is_legacy_label_name(name)
    }
}

/// Prometheus' legacy label name rule, `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_legacy_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The request body, inflated when `Content-Encoding: gzip`.
async fn request_body(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, ConnectError> {
    if is_gzip(headers) {
        // Inflating up to --max-decompressed-bytes is CPU work: off the async workers.
        let (st, raw) = (state.clone(), body.to_vec());
        tokio::task::spawn_blocking(move || gunzip(&st, &raw)).await?
    } else {
        check_identity(headers)?;
        Ok(body.to_vec())
    }
}

/// A request's `profile_id_selector` ([`profile_id`]); it does not combine with a span selector,
/// as in profilecli (one names whole profiles, the other samples).
fn profile_ids(
    ids: &[String],
    with_spans: bool,
) -> Result<Option<profile_id::ProfileIds>, ConnectError> {
    let ids = profile_id::ProfileIds::parse(ids).map_err(ConnectError::invalid)?;
    if ids.is_some() && with_spans {
        return Err(ConnectError::invalid(
            "profile_id_selector and span_selector cannot be used together",
        ));
    }
    Ok(ids)
}

/// What narrows a `SelectMergeStacktraces` read (or a `Diff` side) beyond its label selector:
/// span IDs, profile IDs, a call site.
struct Narrowing {
    spans: Option<span::SpanSet>,
    ids: Option<profile_id::ProfileIds>,
    /// `stack_trace_selector.call_site`, root first; empty: every stack.
    call_site: Vec<String>,
}

impl Narrowing {
    fn of(req: &SelectMergeStacktracesRequest) -> Result<Narrowing, ConnectError> {
        let spans = if req.span_selector.is_empty() {
            None
        } else {
            Some(span::SpanSet::parse(&req.span_selector).map_err(ConnectError::invalid)?)
        };
        Ok(Narrowing {
            ids: profile_ids(&req.profile_id_selector, spans.is_some())?,
            spans,
            call_site: req
                .stack_trace_selector
                .iter()
                .flat_map(|s| &s.call_site)
                .map(|l| l.name.clone())
                .collect(),
        })
    }

    /// The merged tree of `sel` so narrowed (blocking: inside [`query`]).
    fn tree(&self, st: &AppState, sel: &Selection, ctx: &QueryCtx) -> Result<Tree, ConnectError> {
        let tree = match (&self.spans, &self.ids) {
            (Some(spans), _) => span::build_span_tree(st, sel, spans, ctx)?,
            (None, Some(ids)) => profile_id::build_tree(st, sel, ids, ctx)?,
            (None, None) => build_tree(st, sel, ctx)?,
        };
        Ok(if self.call_site.is_empty() {
            tree
        } else {
            keep_call_site(&tree, &self.call_site)
        })
    }
}

/// The requested format of a flame-graph answer.
fn profile_format(format: i32) -> Result<ProfileFormat, ConnectError> {
    enum_field(format, "profile format")
}

/// A request's `step` (seconds, fractional) in ns: 0 means the default for the range.
pub(crate) fn step_nanos(step: f64, sel: &Selection) -> Result<i64, ConnectError> {
    if step == 0.0 {
        return Ok(series::default_step_secs(sel.range.from, sel.range.until) * 1_000_000_000);
    }
    series::step_nanos(Some(step))
        .ok_or_else(|| ConnectError::invalid(format!("step {step} must be at least 0.001 s")))
}

/// A proto enum field's value, or `invalid_argument` naming the field: proto3 keeps unknown enum
/// numbers, so each is checked before use.
pub(crate) fn enum_field<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E, ConnectError> {
    E::try_from(value).map_err(|_| ConnectError::invalid(format!("unknown {field} {value}")))
}

/// The selection fields every request that reads one profile type carries (`profile_typeID`,
/// `label_selector`, `start`, `end` in ms): one place turns them into a [`Selection`].
pub(crate) trait TypedRequest {
    /// (profile type ID, label selector, start ms, end ms).
    fn fields(&self) -> (&str, &str, i64, i64);

    /// [`typed_selection`] of the request's fields for `tenant`.
    fn selection(&self, tenant: &Tenant) -> Result<Selection, ConnectError> {
        let (id, selector, start, end) = self.fields();
        typed_selection(id, selector, start, end, tenant)
    }
}

macro_rules! typed_requests {
    ($($t:ty),*) => {$(
        impl TypedRequest for $t {
            fn fields(&self) -> (&str, &str, i64, i64) {
                (&self.profile_type_id, &self.label_selector, self.start, self.end)
            }
        }
    )*};
}

typed_requests!(
    SelectMergeStacktracesRequest,
    SelectMergeSpanProfileRequest,
    SelectMergeProfileRequest,
    SelectSeriesRequest,
    SelectHeatmapRequest
);

/// The stacks of `tree` that begin (root first) with the frames `call_site`, whole: Pyroscope's
/// stack trace selector on a flame graph or tree (`profilecli query tree --stacktrace-selector`),
/// as [`pprof::keep_call_site`] is on a pprof.
fn keep_call_site(tree: &Tree, call_site: &[String]) -> Tree {
    let children = tree.child_lists();
    let mut out = Tree::new();
    out.profiles = tree.profiles;
    let mut at = ROOT;
    for name in call_site {
        let next = children[at as usize]
            .iter()
            .find(|&&c| tree.names[tree.nodes[c as usize].name as usize] == *name);
        match next {
            Some(&c) => at = c,
            None => return out,
        }
    }
    // Every node below the call site (itself included) adds its self value along its path.
    let mut todo = vec![at];
    while let Some(n) = todo.pop() {
        let node = &tree.nodes[n as usize];
        if node.self_value != 0 {
            let mut path = Vec::new();
            let mut p = n;
            while p != ROOT {
                path.push(tree.nodes[p as usize].name);
                p = tree.nodes[p as usize].parent;
            }
            let path: Vec<u32> = path
                .into_iter()
                .rev()
                .map(|name| out.intern(&tree.names[name as usize]))
                .collect();
            out.add(path, node.self_value);
        }
        todo.extend(&children[n as usize]);
    }
    out
}

/// A flame-graph answer in the requested format: Pyroscope's levels, its binary tree alone
/// (`PROFILE_FORMAT_TREE`) or the DOT call graph (`PROFILE_FORMAT_DOT`), as pkg/querier answers.
fn stacktraces(
    tree: &Tree,
    max_nodes: usize,
    format: ProfileFormat,
    sel: &Selection,
) -> SelectMergeStacktracesResponse {
    match format {
        ProfileFormat::Tree => SelectMergeStacktracesResponse {
            tree: flamebearer::encode_tree(&view(tree, max_nodes)),
            ..SelectMergeStacktracesResponse::default()
        },
        ProfileFormat::Dot => SelectMergeStacktracesResponse {
            dot: super::dot::render(tree, max_nodes, &sel.profile_type),
            ..SelectMergeStacktracesResponse::default()
        },
        ProfileFormat::Unspecified | ProfileFormat::Flamegraph | ProfileFormat::Pprof => {
            SelectMergeStacktracesResponse {
                flamegraph: Some(flamebearer::encode(&view(tree, max_nodes))),
                ..SelectMergeStacktracesResponse::default()
            }
        }
    }
}

/// `AnalyzeQuery`: what the query would read, in the shape of Pyroscope's querier
/// (pkg/querier/analyze_query.go): two query scopes, "Short term storage" (Kiln's head: WAL
/// records not yet in blocks) and "Long term storage" (blocks, on disk or from the bucket), each
/// with the files, series, profiles, samples and bytes that a read of the query decompresses
/// ([`crate::store::Store::read_scope`]); the impact sums their bytes and counts the (series,
/// profile type) pairs the query selects, as Pyroscope counts its `Series` answer. A query without
/// a profile type (`{…}`) reads every type, unless its type matchers leave exactly one.
fn analyze_query(
    state: &AppState,
    tenant: &Tenant,
    req: &AnalyzeQueryRequest,
    ctx: &QueryCtx,
) -> Result<AnalyzeQueryResponse, ConnectError> {
    let q = req.query.trim();
    let typed = !(q.is_empty() || q.starts_with('{'));
    let sel = if typed {
        let (selector, id) = super::render::split_query(q)?;
        typed_selection(&id, &selector, req.start, req.end, tenant)?
    } else {
        selection(q, req.start, req.end, tenant)?
    };
    let mut pairs = BTreeSet::new();
    let mut types = BTreeSet::new();
    labels::typed_series(&*state.store, &sel.selector, sel.range, |l, t| {
        let type_unit = format!("{}:{}", t.sample_type, t.sample_unit);
        if !typed || type_unit == sel.profile_type {
            pairs.insert((l.clone(), t.id()));
            types.insert(type_unit);
        }
    });
    let (selector, profile_type) = if typed {
        (sel.selector.clone(), Some(sel.profile_type.clone()))
    } else {
        match types.first() {
            Some(t) if types.len() == 1 && sel.selector.has_type_matchers() => {
                (sel.selector.clone().bind(t), Some(t.clone()))
            }
            _ => (sel.selector.clone(), None),
        }
    };
    let scope = if pairs.is_empty() {
        ReadScope::default()
    } else {
        state
            .store
            .read_scope(ReadRequest {
                selector: &selector,
                range: sel.range,
                profile_type: profile_type.as_deref(),
                stop: Some(ctx.stop_flag()),
            })
            .map_err(|e| ApiError::store(e.to_string(), &e))?
    };
    ctx.finish()?;
    let query_scope = |name: &str, s: &ScopeStats| QueryScope {
        component_type: name.into(),
        component_count: 1,
        block_count: s.blocks,
        series_count: s.series,
        profile_count: s.profiles,
        sample_count: s.samples,
        index_bytes: s.index_bytes,
        profile_bytes: s.profile_bytes,
        symbol_bytes: s.symbol_bytes,
    };
    let bytes = |s: &ScopeStats| s.index_bytes + s.profile_bytes + s.symbol_bytes;
    Ok(AnalyzeQueryResponse {
        query_scopes: vec![
            query_scope("Short term storage", &scope.head),
            query_scope("Long term storage", &scope.blocks),
        ],
        query_impact: Some(QueryImpact {
            total_bytes_in_time_range: bytes(&scope.head) + bytes(&scope.blocks),
            total_queried_series: pairs.len() as u64,
            deduplication_needed: false,
        }),
    })
}

/// Runs an index read (label names and values, profile types: no profile is decoded) on a
/// blocking thread, outside the query slots so that pickers stay responsive under load.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(f).await?
}

/// Runs `f` as one query through the server's [`super::admission`]: queued (or 503), on a blocking
/// thread, stopped when the client goes away, within the read budget; the reply is encoded on that
/// thread too (a flame graph of 65 k nodes is megabytes of JSON).
async fn query<M: Message + Serialize + 'static>(
    state: &AppState,
    codec: Codec,
    f: impl FnOnce(&QueryCtx) -> Result<M, ConnectError> + Send + 'static,
) -> Result<Response, ConnectError> {
    query_raw(state, move |ctx| codec.reply(&f(ctx)?)).await
}

/// Like [`query`] for a reply `f` encodes itself.
async fn query_raw(
    state: &AppState,
    f: impl FnOnce(&QueryCtx) -> Result<Response, ConnectError> + Send + 'static,
) -> Result<Response, ConnectError> {
    state.queries.run(move |ctx| Ok(f(ctx))).await?
}

/// True when the body is `Content-Encoding: gzip`.
fn is_gzip(headers: &HeaderMap) -> bool {
    content_encoding(headers).as_deref() == Some("gzip")
}

fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
}

/// Refuses a `Content-Encoding` other than gzip (handled by [`gunzip`]) or identity.
fn check_identity(headers: &HeaderMap) -> Result<(), ConnectError> {
    match content_encoding(headers).as_deref() {
        None | Some("" | "identity") => Ok(()),
        Some(other) => Err(ConnectError::new(
            "unimplemented",
            format!("Content-Encoding {other:?}: only gzip is supported"),
        )),
    }
}

/// Inflates a gzip body within `--max-decompressed-bytes` (blocking).
fn gunzip(state: &AppState, body: &[u8]) -> Result<Vec<u8>, ConnectError> {
    kiln_proto::codec::gunzip_limited(body, state.config.limits.max_decompressed_bytes).map_err(
        |e| match e {
            // A bomb is too large, not malformed: 413 as on every other path.
            CodecError::TooLarge { .. } => {
                ApiError::PayloadTooLarge(format!("request body: {e}")).into()
            }
            _ => ConnectError::invalid(format!("request body: {e}")),
        },
    )
}

/// `name:sample_type:sample_unit:period_type:period_unit` → (`name`, `sample_type:sample_unit`).
pub fn parse_profile_type_id(id: &str) -> Result<(String, String), ConnectError> {
    profile_type::parse_id(id)
        .map(|p| (p.name, p.type_unit))
        .map_err(ConnectError::invalid)
}

pub use super::profile_type::period_for;

/// A selection from a Pyroscope label selector and millisecond range, for an index read (every
/// sample type). The selector and tenant go through [`Params::index_selection`] like every other
/// query; the exact range replaces the parsed one (a 0 `start` or `end` keeps that end of the
/// default range: the last hour).
fn selection(
    label_selector: &str,
    start_ms: i64,
    end_ms: i64,
    tenant: &Tenant,
) -> Result<Selection, ConnectError> {
    let mut sel = Params {
        query: Some(label_selector.to_owned()),
        ..Params::default()
    }
    .index_selection()?
    .for_tenant(tenant);
    if start_ms != 0 {
        sel.range.from = start_ms.saturating_mul(NS_PER_MS);
    }
    if end_ms != 0 {
        sel.range.until = end_ms.saturating_mul(NS_PER_MS);
    }
    if sel.range.from > sel.range.until {
        return Err(ConnectError::invalid(format!(
            "start ({start_ms}) is after end ({end_ms})"
        )));
    }
    Ok(sel)
}

/// [`selection`] reading one profile type: `__name__` and the sample type from the ID, and the
/// selector bound to that type (so `__profile_type__`, `__type__`, … matchers apply).
pub(crate) fn typed_selection(
    profile_type_id: &str,
    label_selector: &str,
    start_ms: i64,
    end_ms: i64,
    tenant: &Tenant,
) -> Result<Selection, ConnectError> {
    let (name, sample_type) = parse_profile_type_id(profile_type_id)?;
    let mut sel = selection(label_selector, start_ms, end_ms, tenant)?;
    if !name.is_empty() {
        sel.selector
            .matchers
            .push(Matcher::equal("__name__", &name));
    }
    Ok(sel.typed(&sample_type))
}

/// Pyroscope's `matchers` are alternatives: a series matching any of them counts. None: all.
fn alternatives(
    matchers: &[String],
    start: i64,
    end: i64,
    tenant: &Tenant,
) -> Result<Vec<Selection>, ConnectError> {
    if matchers.is_empty() {
        return Ok(vec![selection("", start, end, tenant)?]);
    }
    matchers
        .iter()
        .map(|m| selection(m, start, end, tenant))
        .collect()
}

/// `max_nodes` of a request: absent or not positive means the default; clamped to the maximum.
fn max_nodes(requested: Option<i64>) -> usize {
    requested
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .map_or(DEFAULT_MAX_NODES, clamp_max_nodes)
}

/// `Series`: the distinct label sets of the selected series, one per profile type, with
/// Pyroscope's type labels (`__profile_type__`, `__type__`, `__unit__`, `__period_type__`,
/// `__period_unit__`), projected onto `label_names` when given. Read from the index (nothing is
/// decoded), like Pyroscope's.
fn series_labels(
    state: &AppState,
    tenant: &Tenant,
    req: &SeriesRequest,
    caps: Capabilities,
) -> Result<SeriesResponse, ConnectError> {
    let wanted: Vec<&String> = req.label_names.iter().filter(|n| caps.shows(n)).collect();
    let mut sets: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
    for sel in alternatives(&req.matchers, req.start, req.end, tenant)? {
        labels::typed_series(&*state.store, &sel.selector, sel.range, |l, t| {
            let mut set: Vec<(String, String)> = l
                .iter()
                .filter(|(k, _)| *k != TENANT_LABEL)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain(t.pairs().into_iter().map(|(k, v)| (k.to_owned(), v)))
                .filter(|(k, _)| {
                    if req.label_names.is_empty() {
                        caps.shows(k)
                    } else {
                        wanted.contains(&k)
                    }
                })
                .collect();
            set.sort();
            sets.insert(set);
        });
    }
    Ok(SeriesResponse {
        labels_set: sets
            .into_iter()
            .map(|set| Labels {
                labels: set
                    .into_iter()
                    .map(|(name, value)| LabelPair { name, value })
                    .collect(),
            })
            .collect(),
    })
}

fn profile_types(
    state: &AppState,
    tenant: &Tenant,
    req: &ProfileTypesRequest,
) -> Result<ProfileTypesResponse, ConnectError> {
    let sel = selection("", req.start, req.end, tenant)?;
    let mut types: BTreeSet<profile_type::TypeLabels> = BTreeSet::new();
    labels::typed_series(&*state.store, &sel.selector, sel.range, |_, t| {
        if !types.contains(t) {
            types.insert(t.clone());
        }
    });
    let mut out: Vec<ProfileType> = types
        .into_iter()
        .map(|t| ProfileType {
            id: t.id(),
            name: t.name,
            sample_type: t.sample_type,
            sample_unit: t.sample_unit,
            period_type: t.period_type,
            period_unit: t.period_unit,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ProfileTypesResponse { profile_types: out })
}

fn select_series(
    state: &AppState,
    tenant: &Tenant,
    req: &SelectSeriesRequest,
    ctx: &QueryCtx,
) -> Result<SelectSeriesResponse, ConnectError> {
    let sel = req.selection(tenant)?;
    let step_nanos = step_nanos(req.step, &sel)?;
    let aggregation = match req
        .aggregation
        .map(|a| enum_field(a, "aggregation"))
        .transpose()?
    {
        None | Some(TimeSeriesAggregationType::Sum) => Aggregation::Sum,
        Some(TimeSeriesAggregationType::Average) => Aggregation::Average,
    };
    // As Pyroscope's query backend (pkg/querybackend/query_time_series.go).
    let exemplars = match enum_field(req.exemplar_type, "exemplar_type")? {
        ExemplarType::Unspecified | ExemplarType::None => false,
        ExemplarType::Individual => true,
        ExemplarType::Span => {
            return Err(ConnectError::new(
                "unimplemented",
                "exemplar type span is not implemented",
            ));
        }
    };
    let q = SeriesQuery {
        group_by: req.group_by.clone(),
        step_nanos,
        aggregation,
        limit: req
            .limit
            .filter(|&l| l > 0)
            .and_then(|l| usize::try_from(l).ok()),
        exemplars,
    };
    let series = series::compute(state, &sel, &q, ctx)?
        .into_iter()
        .map(|s| Series {
            labels: s
                .labels
                .into_iter()
                .map(|(name, value)| LabelPair { name, value })
                .collect(),
            points: s
                .points
                .into_iter()
                .map(|(timestamp, value)| Point {
                    value,
                    timestamp,
                    exemplars: s
                        .exemplars
                        .get(&timestamp)
                        .map(|x| Exemplar {
                            timestamp: x.time_nanos.div_euclid(NS_PER_MS),
                            profile_id: profile_id::profile_id(&x.labels, x.time_nanos),
                            value: x.value,
                            labels: heatmap::exemplar_labels(&x.labels, &req.group_by),
                            ..Exemplar::default()
                        })
                        .into_iter()
                        .collect(),
                })
                .collect(),
        })
        .collect();
    Ok(SelectSeriesResponse { series })
}

/// A pprof `Profile` in proto3 JSON (google.v1.Profile field names; 64-bit integers as strings).
pub fn profile_json(p: &Profile) -> Value {
    let s = |v: i64| Value::String(v.to_string());
    let u = |v: u64| Value::String(v.to_string());
    let vt = |t: &kiln_proto::pprof::ValueType| json!({"type": s(t.r#type), "unit": s(t.unit)});
    json!({
        "sampleType": p.sample_type.iter().map(vt).collect::<Vec<_>>(),
        "sample": p.sample.iter().map(|x| json!({
            "locationId": x.location_id.iter().map(|&v| u(v)).collect::<Vec<_>>(),
            "value": x.value.iter().map(|&v| s(v)).collect::<Vec<_>>(),
            "label": x.label.iter().map(|l| json!({
                "key": s(l.key), "str": s(l.str), "num": s(l.num), "numUnit": s(l.num_unit),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "mapping": p.mapping.iter().map(|m| json!({
            "id": u(m.id), "memoryStart": u(m.memory_start), "memoryLimit": u(m.memory_limit),
            "fileOffset": u(m.file_offset), "filename": s(m.filename), "buildId": s(m.build_id),
            "hasFunctions": m.has_functions, "hasFilenames": m.has_filenames,
            "hasLineNumbers": m.has_line_numbers, "hasInlineFrames": m.has_inline_frames,
        })).collect::<Vec<_>>(),
        "location": p.location.iter().map(|l| json!({
            "id": u(l.id), "mappingId": u(l.mapping_id), "address": u(l.address),
            "line": l.line.iter().map(|x| json!({"functionId": u(x.function_id), "line": s(x.line)}))
                .collect::<Vec<_>>(),
            "isFolded": l.is_folded,
        })).collect::<Vec<_>>(),
        "function": p.function.iter().map(|f| json!({
            "id": u(f.id), "name": s(f.name), "systemName": s(f.system_name),
            "filename": s(f.filename), "startLine": s(f.start_line),
        })).collect::<Vec<_>>(),
        "stringTable": p.string_table,
        "dropFrames": s(p.drop_frames),
        "keepFrames": s(p.keep_frames),
        "timeNanos": s(p.time_nanos),
        "durationNanos": s(p.duration_nanos),
        "periodType": p.period_type.as_ref().map(vt),
        "period": s(p.period),
        "comment": p.comment.iter().map(|&v| s(v)).collect::<Vec<_>>(),
        "defaultSampleType": s(p.default_sample_type),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_type_ids() {
        let (name, t) =
            parse_profile_type_id("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        assert_eq!(
            (name.as_str(), t.as_str()),
            ("process_cpu", "cpu:nanoseconds")
        );
        assert!(parse_profile_type_id("cpu:nanoseconds").is_err());
        assert!(parse_profile_type_id("a::b:c:d").is_err());
        assert_eq!(
            period_for("process_cpu", "samples", "count"),
            ("cpu".into(), "nanoseconds".into())
        );
        assert_eq!(
            period_for("wall", "samples", "count"),
            ("wall".into(), "nanoseconds".into())
        );
        assert_eq!(
            period_for("memory", "inuse_space", "bytes"),
            ("space".into(), "bytes".into())
        );
        assert_eq!(
            period_for("x", "odd", "units"),
            ("odd".into(), "units".into())
        );
    }

    #[test]
    fn api_errors_become_connect_codes() {
        let e: ConnectError = ApiError::bad_request("x").into();
        assert_eq!(
            (e.code, e.status()),
            ("invalid_argument", StatusCode::BAD_REQUEST)
        );
        let e: ConnectError = ApiError::internal("y").into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // As connect-go sends them (Pyroscope's server).
        assert_eq!(
            ConnectError::new("unimplemented", "x").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ConnectError::new("failed_precondition", "x").status(),
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn call_site_keeps_whole_stacks_through_it() {
        let mut t = Tree::new();
        let [main, work, leaf, helper] = ["main", "work", "leaf", "helper"].map(|n| t.intern(n));
        t.add([main, work, leaf], 10);
        t.add([main, work], 3);
        t.add([main, helper], 5);
        t.add([helper], 7);
        t.profiles = 2;
        let kept = keep_call_site(&t, &["main".into(), "work".into()]);
        assert_eq!((kept.total(), kept.profiles), (13, 2));
        let names: Vec<&str> = kept.nodes[1..]
            .iter()
            .map(|n| kept.names[n.name as usize].as_str())
            .collect();
        assert!(
            !names.contains(&"helper") && names.contains(&"leaf"),
            "{names:?}"
        );
        assert_eq!(
            keep_call_site(&t, &["main".into(), "nope".into()]).total(),
            0
        );
        assert_eq!(keep_call_site(&t, &["main".into()]).total(), 18);
    }

    #[test]
    fn utf8_label_names_capability() {
        let mut h = HeaderMap::new();
        assert!(!Capabilities::of(&h).utf8_label_names);
        h.insert(
            header::ACCEPT,
            "*/*; allow-utf8-labelnames=true".parse().unwrap(),
        );
        let caps = Capabilities::of(&h);
        assert!(caps.utf8_label_names);
        assert!(caps.shows("service.name"));
        assert!(!Capabilities::default().shows("service.name"));
        assert!(Capabilities::default().shows("service_name"));
        assert!(!Capabilities::default().shows("1x"));
    }
}
