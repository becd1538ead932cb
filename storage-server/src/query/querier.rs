//! Pyroscope's Connect query service, `POST /querier.v1.QuerierService/<Method>`, so that Grafana's
//! Pyroscope datasource (and `profilecli`) query Kiln unchanged.
//!
//! Connect unary: the request body is the message as `application/proto` or `application/json`
//! (proto3 JSON mapping), optionally `Content-Encoding: gzip`; the reply uses the same codec; errors
//! are `{"code": "...", "message": "..."}` JSON with the matching HTTP status.
//!
//! Profile type IDs (`name:sample_type:sample_unit:period_type:period_unit`, e.g.
//! `process_cpu:cpu:nanoseconds:cpu:nanoseconds`) map onto Kiln's data as `__name__ = name` plus
//! the `sample_type:sample_unit` sample type; the period part is accepted and ignored. Kiln does
//! not index periods, so listed IDs carry the period Pyroscope uses for that sample type
//! ([`period_for`]).

use std::collections::BTreeSet;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_proto::codec::CodecError;
use kiln_proto::pprof::Profile;
use kiln_proto::querier::{
    DiffRequest, DiffResponse, LabelNamesRequest, LabelNamesResponse, LabelPair,
    LabelValuesRequest, LabelValuesResponse, Labels, Point, ProfileType, ProfileTypesRequest,
    ProfileTypesResponse, SelectMergeProfileRequest, SelectMergeStacktracesRequest,
    SelectMergeStacktracesResponse, SelectSeriesRequest, SelectSeriesResponse, Series,
    SeriesRequest, SeriesResponse, TimeSeriesAggregationType,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::admission::QueryCtx;
use super::diff::DiffTree;
use super::flamegraph::{DEFAULT_MAX_NODES, clamp_max_nodes, view};
use super::selector::Matcher;
use super::series::{self, Aggregation, SeriesQuery};
use super::{Params, Selection, build_tree, flamebearer, merged_pprof};
use crate::AppState;
use crate::error::ApiError;
use crate::store::ReadRequest;
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
    fn new(code: &'static str, message: impl Into<String>) -> ConnectError {
        let status = match code {
            "invalid_argument" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "not_found" => StatusCode::NOT_FOUND,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
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
    fn invalid(message: impl Into<String>) -> ConnectError {
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
enum Codec {
    Proto,
    Json,
}

impl Codec {
    fn of(headers: &HeaderMap) -> Result<Codec, ConnectError> {
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

    fn content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/proto",
            Codec::Json => "application/json",
        }
    }

    fn decode<M: Message + Default + DeserializeOwned>(
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

    fn reply<M: Message + Serialize>(self, msg: &M) -> Result<Response, ConnectError> {
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
    let body = if is_gzip(headers) {
        // Inflating up to --max-decompressed-bytes is CPU work: off the async workers.
        let (st, raw) = (state.clone(), body.to_vec());
        tokio::task::spawn_blocking(move || gunzip(&st, &raw)).await??
    } else {
        check_identity(headers)?;
        body.to_vec()
    };
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
                let names =
                    union_over_matchers(&req.matchers, req.start, req.end, &tenant, |sel| {
                        st.store.label_names(&sel.selector, sel.range)
                    })?;
                Ok(LabelNamesResponse {
                    names: names.into_iter().filter(|n| n != TENANT_LABEL).collect(),
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
                if req.name == TENANT_LABEL {
                    return Ok(LabelValuesResponse::default());
                }
                let names =
                    union_over_matchers(&req.matchers, req.start, req.end, &tenant, |sel| {
                        st.store.label_values(&req.name, &sel.selector, sel.range)
                    })?;
                Ok(LabelValuesResponse {
                    names: names.into_iter().collect(),
                })
            })
            .await?;
            codec.reply(&resp)
        }
        "SelectMergeStacktraces" => {
            let req: SelectMergeStacktracesRequest = codec.decode(&body)?;
            query(state, codec, move |ctx| {
                let sel = typed_selection(
                    &req.profile_type_id,
                    &req.label_selector,
                    req.start,
                    req.end,
                    &tenant,
                )?;
                let tree = build_tree(&st, &sel, ctx)?;
                let fg = flamebearer::encode(&view(&tree, max_nodes(req.max_nodes)));
                Ok(SelectMergeStacktracesResponse {
                    flamegraph: Some(fg),
                    tree: Vec::new(),
                })
            })
            .await
        }
        "Diff" => {
            let req: DiffRequest = codec.decode(&body)?;
            let (Some(left), Some(right)) = (req.left, req.right) else {
                return Err(ConnectError::invalid("left and right are both required"));
            };
            query(state, codec, move |ctx| {
                let l = typed_selection(
                    &left.profile_type_id,
                    &left.label_selector,
                    left.start,
                    left.end,
                    &tenant,
                )
                .map_err(|e| ConnectError::invalid(format!("left: {}", e.message)))?;
                let r = typed_selection(
                    &right.profile_type_id,
                    &right.label_selector,
                    right.start,
                    right.end,
                    &tenant,
                )
                .map_err(|e| ConnectError::invalid(format!("right: {}", e.message)))?;
                let diff = DiffTree::new(&build_tree(&st, &l, ctx)?, &build_tree(&st, &r, ctx)?);
                let max = max_nodes(left.max_nodes.or(right.max_nodes));
                Ok(DiffResponse {
                    flamegraph: Some(flamebearer::encode_diff(&diff.view(max))),
                })
            })
            .await
        }
        "Series" => {
            let req: SeriesRequest = codec.decode(&body)?;
            query(state, codec, move |ctx| {
                series_labels(&st, &tenant, &req, ctx)
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
        "SelectMergeProfile" => {
            let req: SelectMergeProfileRequest = codec.decode(&body)?;
            query_raw(state, move |ctx| {
                let sel = typed_selection(
                    &req.profile_type_id,
                    &req.label_selector,
                    req.start,
                    req.end,
                    &tenant,
                )?;
                let profile = merged_pprof(&st, &sel, Some(&sel.profile_type), None, ctx)?;
                let body = match codec {
                    Codec::Proto => profile.encode_to_vec(),
                    Codec::Json => profile_json(&profile).to_string().into_bytes(),
                };
                Ok(([(header::CONTENT_TYPE, codec.content_type())], body).into_response())
            })
            .await
        }
        other => Err(ConnectError::new(
            "unimplemented",
            format!("querier.v1.QuerierService/{other} is not implemented by Kiln"),
        )),
    }
}

/// Runs `f` on the blocking pool (store reads do disk I/O).
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
pub fn parse_profile_type_id(id: &str) -> Result<(&str, String), ConnectError> {
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        [name, ty, unit, _period_type, _period_unit] if !ty.is_empty() && !unit.is_empty() => {
            Ok((name, format!("{ty}:{unit}")))
        }
        _ => Err(ConnectError::invalid(format!(
            "profile type ID {id:?} must be name:sample_type:sample_unit:period_type:period_unit, \
             e.g. process_cpu:cpu:nanoseconds:cpu:nanoseconds"
        ))),
    }
}

/// The period Pyroscope reports with a sample type of profile `name` (Kiln stores periods but
/// does not index them).
pub fn period_for(name: &str, sample_type: &str, unit: &str) -> (String, String) {
    let (t, u) = match (sample_type, unit) {
        // Wall-clock profiles (Node.js) count samples per wall-time period.
        ("samples", "count") if name == "wall" => ("wall", "nanoseconds"),
        ("cpu", "nanoseconds") | ("samples", "count") => ("cpu", "nanoseconds"),
        ("wall", _) => ("wall", "nanoseconds"),
        ("alloc_objects" | "alloc_space" | "inuse_objects" | "inuse_space", _) => {
            ("space", "bytes")
        }
        ("contentions" | "delay", _) => ("contentions", "count"),
        ("goroutine" | "goroutines", _) => ("goroutine", "count"),
        (t, u) => (t, u),
    };
    (t.to_owned(), u.to_owned())
}

/// A selection from a Pyroscope label selector and millisecond range. The selector and tenant go
/// through [`Params::selection`] like every other query; the exact range replaces the parsed one
/// (a 0 `start` or `end` keeps that end of the default range: the last hour).
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
    .selection()?
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

/// [`selection`] restricted to one profile type.
fn typed_selection(
    profile_type_id: &str,
    label_selector: &str,
    start_ms: i64,
    end_ms: i64,
    tenant: &Tenant,
) -> Result<Selection, ConnectError> {
    let (name, sample_type) = parse_profile_type_id(profile_type_id)?;
    let mut sel = selection(label_selector, start_ms, end_ms, tenant)?;
    if !name.is_empty() {
        sel.selector.matchers.push(Matcher::equal("__name__", name));
    }
    sel.profile_type = sample_type;
    Ok(sel)
}

/// Pyroscope's `matchers` are alternatives: a series matching any of them counts.
fn union_over_matchers(
    matchers: &[String],
    start: i64,
    end: i64,
    tenant: &Tenant,
    mut f: impl FnMut(&Selection) -> Vec<String>,
) -> Result<BTreeSet<String>, ConnectError> {
    let all = [String::new()];
    let matchers = if matchers.is_empty() {
        &all[..]
    } else {
        matchers
    };
    let mut out = BTreeSet::new();
    for m in matchers {
        out.extend(f(&selection(m, start, end, tenant)?));
    }
    Ok(out)
}

/// `max_nodes` of a request: absent or not positive means the default; clamped to the maximum.
fn max_nodes(requested: Option<i64>) -> usize {
    requested
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .map_or(DEFAULT_MAX_NODES, clamp_max_nodes)
}

/// `Series`: the distinct label sets of the selected series, one per profile type, with
/// Pyroscope's synthetic labels (`__profile_type__`, `__type__`, `__unit__`, `__period_type__`,
/// `__period_unit__`), projected onto `label_names` when given. Kiln keeps no series index apart
/// from the profiles, so this reads the selected profiles (like a flame-graph query does).
fn series_labels(
    state: &AppState,
    tenant: &Tenant,
    req: &SeriesRequest,
    ctx: &QueryCtx,
) -> Result<SeriesResponse, ConnectError> {
    let all = [String::new()];
    let matchers = if req.matchers.is_empty() {
        &all[..]
    } else {
        &req.matchers[..]
    };
    let mut sets: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
    for m in matchers {
        let sel = selection(m, req.start, req.end, tenant)?;
        state
            .store
            .read(
                ReadRequest {
                    selector: &sel.selector,
                    range: sel.range,
                    profile_type: None,
                    stop: Some(ctx.stop_flag()),
                },
                &mut |stored| {
                    if !ctx.admit_read(1, stored.profile.encoded_len()) {
                        return;
                    }
                    let p = &stored.profile;
                    let name = stored.labels.get("__name__").unwrap_or("");
                    for st in &p.sample_type {
                        let (ty, unit) = (p.str(st.r#type), p.str(st.unit));
                        let (pt, pu) = match &p.period_type {
                            Some(v) if !p.str(v.r#type).is_empty() => {
                                (p.str(v.r#type).to_owned(), p.str(v.unit).to_owned())
                            }
                            _ => period_for(name, ty, unit),
                        };
                        let synthetic = [
                            ("__profile_type__", format!("{name}:{ty}:{unit}:{pt}:{pu}")),
                            ("__type__", ty.to_owned()),
                            ("__unit__", unit.to_owned()),
                            ("__period_type__", pt),
                            ("__period_unit__", pu),
                        ];
                        let mut set: Vec<(String, String)> = stored
                            .labels
                            .iter()
                            .filter(|(k, _)| *k != TENANT_LABEL)
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .chain(synthetic.into_iter().map(|(k, v)| (k.to_owned(), v)))
                            .filter(|(k, _)| {
                                req.label_names.is_empty() || req.label_names.contains(k)
                            })
                            .collect();
                        set.sort();
                        sets.insert(set);
                    }
                },
            )
            .map_err(ApiError::internal)?;
        ctx.finish()?;
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
    let mut out = Vec::new();
    for name in state
        .store
        .label_values("__name__", &sel.selector, sel.range)
    {
        let mut by_name = sel.selector.clone();
        by_name.matchers.push(Matcher::equal("__name__", &name));
        for t in state.store.profile_types(&by_name, sel.range) {
            let Some((ty, unit)) = t.split_once(':') else {
                continue;
            };
            let (pt, pu) = period_for(&name, ty, unit);
            out.push(ProfileType {
                id: format!("{name}:{ty}:{unit}:{pt}:{pu}"),
                name: name.clone(),
                sample_type: ty.to_owned(),
                sample_unit: unit.to_owned(),
                period_type: pt,
                period_unit: pu,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ProfileTypesResponse { profile_types: out })
}

fn select_series(
    state: &AppState,
    tenant: &Tenant,
    req: &SelectSeriesRequest,
    ctx: &QueryCtx,
) -> Result<SelectSeriesResponse, ConnectError> {
    let sel = typed_selection(
        &req.profile_type_id,
        &req.label_selector,
        req.start,
        req.end,
        tenant,
    )?;
    let step_nanos = if req.step == 0.0 {
        series::default_step_secs(sel.range.from, sel.range.until) * 1_000_000_000
    } else {
        series::step_nanos(Some(req.step)).ok_or_else(|| {
            ConnectError::invalid(format!("step {} must be at least 0.001 s", req.step))
        })?
    };
    let aggregation = match req.aggregation.map(TimeSeriesAggregationType::try_from) {
        None | Some(Ok(TimeSeriesAggregationType::Sum)) => Aggregation::Sum,
        Some(Ok(TimeSeriesAggregationType::Average)) => Aggregation::Average,
        Some(Err(_)) => return Err(ConnectError::invalid("unknown aggregation")),
    };
    let q = SeriesQuery {
        group_by: req.group_by.clone(),
        step_nanos,
        aggregation,
        limit: req
            .limit
            .filter(|&l| l > 0)
            .and_then(|l| usize::try_from(l).ok()),
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
                .map(|(timestamp, value)| Point { value, timestamp })
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
        assert_eq!((name, t.as_str()), ("process_cpu", "cpu:nanoseconds"));
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
    }
}
