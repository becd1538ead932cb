//! Pyroscope's legacy ingest API, `POST /ingest` (also `/pyroscope/ingest`), used by
//! `pyroscope-io` 0.8, `@pyroscope/nodejs`, older Go/Ruby/.NET SDKs and scripts: metadata in the
//! query string, the profile as pprof (raw, gzipped, or in a multipart form), folded text or
//! `lines`. Status codes follow Pyroscope: 400 bad metadata, 413 too large, 422 a body that cannot
//! be ingested.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_proto::codec::{self, CodecError};
use kiln_proto::pprof::Profile;
use prost::Message;
use serde::Deserialize;

use super::folded::{self, TextError, TextOptions};
use super::multipart::{self, MultipartError};
use super::name::{self, AppKey, NameError};
use super::series::{self, TooManySeries};
use super::validate::{LabelError, ProfileError, validate_labels, validate_profile};
use crate::AppState;
use crate::config::Limits;
use crate::error::ApiError;
use crate::query::time::{self, TimeError};
use crate::store::{NewProfile, StoreError};
use crate::tenant::Tenant;

/// Pyroscope's default `sampleRate` (Hz).
const DEFAULT_SAMPLE_RATE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    // 400: the request's metadata.
    #[error("bad query string: {0}")]
    Query(String),
    #[error("missing required parameter `name` (e.g. name=myapp.cpu{{env=prod}})")]
    NoName,
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("{param}: {err}")]
    Time { param: &'static str, err: TimeError },
    #[error("from is after until")]
    Reversed,
    #[error("sampleRate {0:?} must be a positive integer (samples per second)")]
    SampleRate(String),
    #[error("aggregationType {0:?} must be sum or average")]
    Aggregation(String),
    #[error("format {0:?} is not supported: use pprof, folded (default) or lines")]
    Unsupported(String),
    #[error("unknown format {0:?}: use pprof, folded (default) or lines")]
    UnknownFormat(String),
    #[error("labels: {0}")]
    Labels(#[from] LabelError),
    // 413
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    // 415
    #[error("unsupported Content-Encoding {0:?}: use gzip or none")]
    ContentEncoding(String),
    // 422: a body that cannot be ingested.
    #[error("reading request body: {0}")]
    Body(String),
    #[error("request body: {0}")]
    Codec(CodecError),
    #[error("pprof profile: {0}")]
    Profile(ProfileError),
    #[error("{0}")]
    Text(TextError),
    #[error("{0}")]
    Multipart(#[from] MultipartError),
    #[error("multipart form has no `profile` field")]
    NoProfileField,
    #[error(
        "multipart form has a non-empty `prev_profile`: cumulative uploads from old clients are not supported, update the client"
    )]
    PrevProfile,
    #[error("sample_type_config is not valid JSON: {0}")]
    SampleTypeConfig(serde_json::Error),
    #[error("{0}")]
    Split(#[from] TooManySeries),
    #[error("storing profiles: {0}")]
    Store(#[from] StoreError),
}

impl IngestError {
    fn is_too_large(&self) -> bool {
        match self {
            IngestError::BodyTooLarge(_)
            | IngestError::Codec(CodecError::TooLarge { .. })
            | IngestError::Split(_)
            | IngestError::Profile(
                ProfileError::TooManySamples { .. } | ProfileError::StackTooDeep { .. },
            ) => true,
            IngestError::Text(e) => e.is_too_large(),
            _ => false,
        }
    }

    /// The `reason` label of the rejection metric.
    fn reason(&self) -> &'static str {
        if self.is_too_large() {
            return "too_large";
        }
        match self {
            IngestError::Query(_)
            | IngestError::NoName
            | IngestError::Name(_)
            | IngestError::Time { .. }
            | IngestError::Reversed
            | IngestError::SampleRate(_)
            | IngestError::Aggregation(_)
            | IngestError::Unsupported(_)
            | IngestError::UnknownFormat(_) => "bad_metadata",
            IngestError::Labels(_) => "bad_labels",
            IngestError::ContentEncoding(_) => "content_encoding",
            IngestError::Store(_) => "store",
            _ => "bad_profile",
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let msg = e.to_string();
        if e.is_too_large() {
            return ApiError::PayloadTooLarge(msg);
        }
        match e {
            IngestError::Query(_)
            | IngestError::NoName
            | IngestError::Name(_)
            | IngestError::Time { .. }
            | IngestError::Reversed
            | IngestError::SampleRate(_)
            | IngestError::Aggregation(_)
            | IngestError::Unsupported(_)
            | IngestError::UnknownFormat(_)
            | IngestError::Labels(_) => ApiError::BadRequest(msg),
            IngestError::ContentEncoding(_) => ApiError::UnsupportedMediaType(msg),
            IngestError::Store(e) => ApiError::store(msg, &e),
            _ => ApiError::Unprocessable(msg),
        }
    }
}

/// The query string, as Pyroscope names it.
#[derive(Debug, Default, Deserialize)]
pub struct IngestParams {
    pub name: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub format: Option<String>,
    #[serde(rename = "sampleRate")]
    pub sample_rate: Option<String>,
    #[serde(rename = "spyName")]
    pub spy_name: Option<String>,
    pub units: Option<String>,
    #[serde(rename = "aggregationType")]
    pub aggregation_type: Option<String>,
}

/// The validated metadata of one upload.
#[derive(Debug)]
struct Metadata {
    key: AppKey,
    from: i64,
    until: i64,
    sample_rate: u32,
    spy_name: String,
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Folded,
    Lines,
}

fn metadata(p: &IngestParams, now: i64) -> Result<Metadata, IngestError> {
    let key = name::parse_name(p.name.as_deref().ok_or(IngestError::NoName)?)?;
    let time = |param: &'static str, v: Option<&str>| match v.map(str::trim) {
        None | Some("") => Ok(now),
        Some(s) => parse_ingest_time(s, now).map_err(|err| IngestError::Time { param, err }),
    };
    let from = time("from", p.from.as_deref())?;
    let until = time("until", p.until.as_deref())?;
    if from > until {
        return Err(IngestError::Reversed);
    }
    let sample_rate = match p.sample_rate.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_SAMPLE_RATE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| IngestError::SampleRate(s.to_owned()))?,
    };
    match p.aggregation_type.as_deref().map(str::trim) {
        None | Some("" | "sum" | "average" | "avg") => {}
        Some(other) => return Err(IngestError::Aggregation(other.to_owned())),
    }
    // `units` only ever described text formats, whose unit follows from the type suffix; it is
    // accepted and ignored, as Pyroscope does.
    let format = match p.format.as_deref().map(str::trim).unwrap_or("") {
        "pprof" => Format::Pprof,
        "" | "folded" | "collapsed" => Format::Folded,
        "lines" => Format::Lines,
        f @ ("trie" | "tree" | "jfr" | "speedscope") => {
            return Err(IngestError::Unsupported(f.to_owned()));
        }
        other => return Err(IngestError::UnknownFormat(other.to_owned())),
    };
    let spy_name = match p.spy_name.as_deref().map(str::trim) {
        None | Some("") => "unknown".to_owned(),
        Some(s) => s.to_owned(),
    };
    Ok(Metadata {
        key,
        from,
        until,
        sample_rate,
        spy_name,
        format,
    })
}

/// [`time::parse_time`] plus Pyroscope's `YYYYMMDD` (a date, midnight UTC).
fn parse_ingest_time(s: &str, now: i64) -> Result<i64, TimeError> {
    if s.len() == 8
        && s.bytes().all(|b| b.is_ascii_digit())
        && let Some(t) = yyyymmdd(s)
    {
        return Ok(t);
    }
    time::parse_time(s, now)
}

fn yyyymmdd(s: &str) -> Option<i64> {
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(4..6)?.parse().ok()?;
    let d: i64 = s.get(6..8)?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 * 1_000_000_000)
}

/// `POST /ingest` and `/pyroscope/ingest`.
pub async fn ingest(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    query: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limits = state.config.limits.clone();
    let body_len = body.as_ref().map_or(0, Bytes::len);
    let tenant =
        tenant.inspect_err(|_| state.metrics.ingest_failed(body_len, "bad_tenant", false))?;
    let result = async {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                IngestError::BodyTooLarge(limits.max_body_bytes)
            } else {
                IngestError::Body(rejection.body_text())
            }
        })?;
        let Query(params) = query.map_err(|e| IngestError::Query(e.body_text()))?;
        let md = metadata(&params, time::now_nanos())?;
        let gzipped = content_encoding_gzip(&headers)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || {
            let profiles = decode(&body, gzipped, &content_type, &md, &limits, &tenant)?;
            let samples = profiles.iter().map(|p| p.1).sum::<usize>();
            let count = profiles.len();
            // An empty upload (e.g. a profiler that saw nothing) is accepted and stores nothing.
            if count > 0 {
                store.append(profiles.into_iter().map(|p| p.0).collect())?;
            }
            Ok::<_, IngestError>((count, samples))
        })
        .await
        .map_err(|e| {
            IngestError::Store(StoreError::Io {
                path: "ingest task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?
    }
    .await;
    match result {
        Ok((profiles, samples)) => {
            state.metrics.ingest_ok(body_len, profiles, samples);
            tracing::debug!(profiles, samples, bytes = body_len, "ingest stored");
            Ok(StatusCode::OK.into_response())
        }
        Err(e) => {
            let server_fault = matches!(e, IngestError::Store(_));
            state
                .metrics
                .ingest_failed(body_len, e.reason(), server_fault);
            Err(e.into())
        }
    }
}

fn content_encoding_gzip(headers: &HeaderMap) -> Result<bool, IngestError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let raw = v.to_str().unwrap_or("");
    match raw.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Ok(true),
        "" | "identity" => Ok(false),
        _ => Err(IngestError::ContentEncoding(raw.to_owned())),
    }
}

/// Decodes one upload into the profiles to store, each with its sample count. Any failure fails
/// the whole upload, so nothing of a bad request is stored.
fn decode(
    body: &[u8],
    gzipped: bool,
    content_type: &str,
    md: &Metadata,
    limits: &Limits,
    tenant: &Tenant,
) -> Result<Vec<(NewProfile, usize)>, IngestError> {
    let max = limits.max_decompressed_bytes;
    let body: Cow<'_, [u8]> = if gzipped {
        Cow::Owned(codec::gunzip_limited(body, max).map_err(IngestError::Codec)?)
    } else {
        Cow::Borrowed(body)
    };
    // Any multipart form is pprof (Pyroscope's rule), whatever `format` says.
    if let Some(boundary) = multipart::boundary(content_type) {
        let boundary = boundary?;
        let parts = multipart::parse(&body, &boundary)?;
        let field = |name: &str| parts.iter().find(|p| p.name == name).map(|p| p.data);
        if field("prev_profile").is_some_and(|d| !d.is_empty()) {
            return Err(IngestError::PrevProfile);
        }
        let config = match field("sample_type_config") {
            Some(d) if !d.is_empty() => Some(
                serde_json::from_slice::<HashMap<String, SampleTypeConfig>>(d)
                    .map_err(IngestError::SampleTypeConfig)?,
            ),
            _ => None,
        };
        let profile = field("profile").ok_or(IngestError::NoProfileField)?;
        return pprof(profile, config.as_ref(), md, limits, tenant);
    }
    match md.format {
        Format::Pprof => pprof(&body, None, md, limits, tenant),
        Format::Folded | Format::Lines => {
            // Pyroscope's text uploads are never compressed, but a gzip body is unambiguous.
            let body = codec::maybe_gunzip(&body, max).map_err(IngestError::Codec)?;
            let (service, ty) = name::split_text_type(&md.key.app)?;
            let opts = TextOptions {
                ty,
                sample_rate: md.sample_rate,
                lines: md.format == Format::Lines,
                time_nanos: md.from,
                duration_nanos: md.until - md.from,
            };
            let profile = folded::parse(&body, &opts, limits).map_err(IngestError::Text)?;
            if profile.sample.is_empty() {
                return Ok(Vec::new());
            }
            let profile_types = validate_profile(&profile, limits).map_err(IngestError::Profile)?;
            let labels = series_labels(md, ty.metric, &service, &[], limits, tenant)?;
            let samples = profile.sample.len();
            Ok(vec![(
                NewProfile {
                    labels,
                    time_nanos: md.from,
                    profile_types,
                    pprof: profile.encode_to_vec(),
                },
                samples,
            )])
        }
    }
}

/// One entry of the multipart `sample_type_config` field. Only `display-name` changes what is
/// stored (it can rename the type that picks `__name__`); the rest describes how Pyroscope's old
/// storage aggregated, which the pprof itself already says.
#[derive(Debug, Default, Deserialize)]
#[allow(dead_code)]
struct SampleTypeConfig {
    #[serde(default)]
    units: Option<String>,
    #[serde(default, rename = "display-name")]
    display_name: Option<String>,
    #[serde(default)]
    aggregation: Option<String>,
    #[serde(default)]
    cumulative: Option<bool>,
    #[serde(default)]
    sampled: Option<bool>,
}

fn pprof(
    data: &[u8],
    config: Option<&HashMap<String, SampleTypeConfig>>,
    md: &Metadata,
    limits: &Limits,
    tenant: &Tenant,
) -> Result<Vec<(NewProfile, usize)>, IngestError> {
    // @pyroscope/nodejs gzips without saying so: detect by magic bytes.
    let raw =
        codec::maybe_gunzip(data, limits.max_decompressed_bytes).map_err(IngestError::Codec)?;
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut profile =
        Profile::decode(raw.as_ref()).map_err(|e| IngestError::Codec(CodecError::Protobuf(e)))?;
    let profile_types = validate_profile(&profile, limits).map_err(IngestError::Profile)?;
    let metric = name::pprof_metric_name(profile.sample_type.iter().map(|st| {
        let t = profile.str(st.r#type);
        config
            .and_then(|c| c.get(t))
            .and_then(|c| c.display_name.as_deref())
            .filter(|d| !d.is_empty())
            .unwrap_or(t)
    }));
    // Old pyspy, rbspy and pyroscope-rs send no time, or microseconds where nanoseconds belong.
    let mut rewritten = false;
    if profile.time_nanos < 365 * 86_400 * 1_000_000_000 {
        profile.time_nanos = md.from;
        rewritten = true;
    }
    let time_nanos = profile.time_nanos;
    let service = md.key.app.clone();
    let samples = profile.sample.len();
    match series::split(profile, limits.max_decompressed_bytes)? {
        series::Split::Whole(profile) => {
            let labels = series_labels(md, &metric, &service, &[], limits, tenant)?;
            let pprof = if rewritten {
                profile.encode_to_vec()
            } else {
                raw.into_owned()
            };
            Ok(vec![(
                NewProfile {
                    labels,
                    time_nanos,
                    profile_types,
                    pprof,
                },
                samples,
            )])
        }
        // Tags sent as sample labels (all of pyroscope-io 0.8's) become series labels.
        series::Split::Parts(parts) => parts
            .into_iter()
            .map(|part| {
                let labels = series_labels(md, &metric, &service, &part.labels, limits, tenant)?;
                let samples = part.profile.sample.len();
                Ok((
                    NewProfile {
                        labels,
                        time_nanos,
                        profile_types: profile_types.clone(),
                        pprof: part.profile.encode_to_vec(),
                    },
                    samples,
                ))
            })
            .collect(),
    }
}

/// The series labels of an upload: `__name__`, `service_name` (the app name unless the name's
/// labels give one), `pyroscope_spy`, the name's labels, then labels lifted off samples.
fn series_labels(
    md: &Metadata,
    metric: &str,
    service: &str,
    extra: &[(String, String)],
    limits: &Limits,
    tenant: &Tenant,
) -> Result<crate::store::Labels, IngestError> {
    let mut base = vec![
        ("__name__".to_owned(), metric.to_owned()),
        ("service_name".to_owned(), service.to_owned()),
        ("pyroscope_spy".to_owned(), md.spy_name.clone()),
    ];
    let mut user = md.key.labels.clone();
    user.extend(extra.iter().cloned());
    // Later wins: the name's labels over the defaults, sample labels over both.
    let mut merged = Vec::new();
    for (k, v) in user {
        merged.retain(|(mk, _): &(String, String)| *mk != k);
        merged.push((k, v));
    }
    base.retain(|(k, _)| !merged.iter().any(|(mk, _)| mk == k));
    base.extend(merged);
    Ok(tenant.label(validate_labels(base, limits)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn params(q: &str) -> IngestParams {
        serde_json::from_value(serde_json::Value::Object(
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn metadata_defaults_and_errors() {
        let md = metadata(&params("name=app"), NOW).unwrap();
        assert_eq!((md.from, md.until, md.sample_rate), (NOW, NOW, 100));
        assert_eq!(md.spy_name, "unknown");
        assert_eq!(md.format, Format::Folded);
        let md = metadata(
            &params("name=a&from=1700000000&until=1700000010000&format=lines&sampleRate=97"),
            NOW,
        )
        .unwrap();
        assert_eq!(md.from, 1_700_000_000_000_000_000);
        assert_eq!(md.until, 1_700_000_010_000_000_000);
        assert_eq!((md.format, md.sample_rate), (Format::Lines, 97));

        for (q, want) in [
            ("from=1", "missing required parameter `name`"),
            ("name=a{b", "missing closing"),
            ("name=a&from=xyz", "from: bad time"),
            (
                "name=a&from=1700000010&until=1700000000",
                "from is after until",
            ),
            ("name=a&sampleRate=0", "sampleRate"),
            ("name=a&format=trie", "not supported"),
            ("name=a&format=nope", "unknown format"),
            ("name=a&aggregationType=max", "aggregationType"),
        ] {
            let err = metadata(&params(q), NOW).unwrap_err();
            assert!(err.to_string().contains(want), "{q}: {err}");
            assert_eq!(ApiError::from(err).status(), StatusCode::BAD_REQUEST, "{q}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_ingest_time("19700101", NOW), Ok(0));
        assert_eq!(
            parse_ingest_time("20231114", NOW),
            Ok(1_699_920_000 * 1_000_000_000)
        );
        // Not a date: plain seconds.
        assert_eq!(
            parse_ingest_time("99999999", NOW),
            Ok(99_999_999 * 1_000_000_000)
        );
    }

    #[test]
    fn labels_layered() {
        let md = metadata(
            &params("name=my.app{env=prod,service_name=svc}&spyName=pyspy"),
            NOW,
        )
        .unwrap();
        let extra = vec![("env".to_owned(), "staging".to_owned())];
        let l = series_labels(
            &md,
            "process_cpu",
            &md.key.app,
            &extra,
            &Limits::default(),
            &Tenant::default(),
        )
        .unwrap();
        assert_eq!(l.get("__name__"), Some("process_cpu"));
        assert_eq!(l.get("service_name"), Some("svc"));
        assert_eq!(l.get("env"), Some("staging"));
        assert_eq!(l.get("pyroscope_spy"), Some("pyspy"));
    }
}
