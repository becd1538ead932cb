//! Pyroscope's legacy ingest API, `POST /ingest` (also `/pyroscope/ingest`), used by
//! `pyroscope-io` 0.8, `@pyroscope/nodejs`, older Go/Ruby/.NET SDKs and scripts: metadata in the
//! query string, the profile as pprof (raw, gzipped, or in a multipart form), folded text or
//! `lines`. Only the envelope (query string, multipart form, text) is read here; every profile goes
//! through [`super::admit`], as pushed ones do. Statuses: 400 bad metadata or body, 413 too large
//! (before or after decompression), 415 unknown encoding, 429 over the tenant's rate.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::admit::{self, Admission, AdmitError, Admitted, Source, UnsupportedEncoding, Window};
use super::folded::{self, TextError, TextOptions};
use super::multipart::{self, MultipartError};
use super::name::{self, AppKey, NameError};
use super::rate::{self, RateLimited, Resource};
use super::validate::{LabelError, validate_labels};
use crate::AppState;
use crate::config::Limits;
use crate::error::ApiError;
use crate::query::time::{self, TimeError};
use crate::store::{Labels, StoreError};
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
    #[error("{param}: {value:?} is not a valid date (8 digits are read as YYYYMMDD)")]
    Date { param: &'static str, value: String },
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
    #[error("{0}")]
    ContentEncoding(#[from] UnsupportedEncoding),
    // 429
    #[error("{0}")]
    RateLimited(#[from] RateLimited),
    // 400 (or 413 when too large): a body that cannot be ingested.
    #[error("reading request body: {0}")]
    Body(String),
    #[error("{0}")]
    Admit(#[from] AdmitError),
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
    #[error("storing profiles: {0}")]
    Store(#[from] StoreError),
}

impl IngestError {
    fn is_too_large(&self) -> bool {
        match self {
            IngestError::BodyTooLarge(_) => true,
            IngestError::Admit(e) => e.is_too_large(),
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
            | IngestError::Date { .. }
            | IngestError::Reversed
            | IngestError::SampleRate(_)
            | IngestError::Aggregation(_)
            | IngestError::Unsupported(_)
            | IngestError::UnknownFormat(_) => "bad_metadata",
            IngestError::Labels(_) => "bad_labels",
            IngestError::ContentEncoding(_) => "content_encoding",
            IngestError::RateLimited(_) => "rate_limited",
            IngestError::Admit(e) => e.reason(),
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
            IngestError::ContentEncoding(_) => ApiError::UnsupportedMediaType(msg),
            IngestError::RateLimited(e) => e.into(),
            IngestError::Store(e) => ApiError::store(msg, &e),
            _ => ApiError::BadRequest(msg),
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
        Some(s) => parse_ingest_time(param, s, now),
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

/// [`time::parse_time`] plus Pyroscope's `YYYYMMDD` (a date, midnight UTC). Eight digits are
/// always a date: one that does not exist (`20231340`) is an error, never Unix seconds.
fn parse_ingest_time(param: &'static str, s: &str, now: i64) -> Result<i64, IngestError> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        return yyyymmdd(s).ok_or_else(|| IngestError::Date {
            param,
            value: s.to_owned(),
        });
    }
    time::parse_time(s, now).map_err(|err| IngestError::Time { param, err })
}

fn yyyymmdd(s: &str) -> Option<i64> {
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(4..6)?.parse().ok()?;
    let d: i64 = s.get(6..8)?.parse().ok()?;
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=month_days).contains(&d) {
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
        let now = time::now_nanos();
        let md = metadata(&params, now)?;
        let gzipped = admit::gzip_encoded(&headers)?;
        let rate = state.ingest_rate.clone();
        rate.take(&tenant, Resource::Bytes, body.len() as u64, rate::clock())?;
        let window = Window::for_config(&state.config, now);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || {
            let profiles = decode(&body, gzipped, &content_type, &md, &limits, &tenant, window)?;
            let samples = profiles.iter().map(|p| p.samples).sum::<usize>();
            let count = profiles.len();
            // An empty upload (e.g. a profiler that saw nothing) is accepted and stores nothing.
            if count > 0 {
                rate.take(&tenant, Resource::Profiles, count as u64, rate::clock())?;
                let (profiles, decompressed) = admit::for_store(profiles);
                store.append_decompressed(profiles, decompressed)?;
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

/// Parses one upload's envelope and hands its profile to the admission pipeline. Any failure fails
/// the whole upload, so nothing of a bad request is stored.
fn decode(
    body: &[u8],
    gzipped: bool,
    content_type: &str,
    md: &Metadata,
    limits: &Limits,
    tenant: &Tenant,
    window: Window,
) -> Result<Vec<Admitted>, IngestError> {
    let mut admission = Admission::new(limits, tenant, window);
    // Any multipart form is pprof (Pyroscope's rule), whatever `format` says.
    if let Some(boundary) = multipart::boundary(content_type) {
        let boundary = boundary?;
        let body = admission.body(body, gzipped, false)?;
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
        pprof(&mut admission, profile, config.as_ref(), md, limits)?;
        return Ok(admission.finish());
    }
    match md.format {
        Format::Pprof => {
            let body = admission.body(body, gzipped, false)?;
            pprof(&mut admission, &body, None, md, limits)?;
        }
        Format::Folded | Format::Lines => {
            // Pyroscope's text uploads are never compressed, but a gzip body is unambiguous.
            let body = admission.body(body, gzipped, true)?;
            let (service, ty) = name::split_text_type(&md.key.app)?;
            let opts = TextOptions {
                ty,
                sample_rate: md.sample_rate,
                lines: md.format == Format::Lines,
                time_nanos: md.from,
                duration_nanos: md.until - md.from,
            };
            let profile = folded::parse(&body, &opts, limits).map_err(IngestError::Text)?;
            drop(body);
            if !profile.sample.is_empty() {
                let labeler = |_: &[String], lifted: &[(String, String)]| {
                    series_labels(md, ty.metric, &service, lifted, limits)
                };
                let src = Source {
                    labeler: &labeler,
                    fallback_time: md.from,
                };
                admission.profile(profile, &src)?;
            }
        }
    }
    Ok(admission.finish())
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

/// A pprof upload (raw, or gzipped as `@pyroscope/nodejs` sends it without saying so). Its
/// `__name__` comes from its sample types, renamed by the form's `sample_type_config`.
fn pprof(
    admission: &mut Admission<'_>,
    data: &[u8],
    config: Option<&HashMap<String, SampleTypeConfig>>,
    md: &Metadata,
    limits: &Limits,
) -> Result<(), IngestError> {
    if data.is_empty() {
        return Ok(());
    }
    let labeler = |types: &[String], lifted: &[(String, String)]| {
        let metric = name::pprof_metric_name(types.iter().map(|t| {
            config
                .and_then(|c| c.get(t.as_str()))
                .and_then(|c| c.display_name.as_deref())
                .filter(|d| !d.is_empty())
                .unwrap_or(t)
        }));
        // Tags sent as sample labels (all of pyroscope-io 0.8's) become series labels.
        series_labels(md, &metric, &md.key.app, lifted, limits)
    };
    let src = Source {
        labeler: &labeler,
        fallback_time: md.from,
    };
    admission.pprof(data.to_vec(), &src)?;
    Ok(())
}

/// The series labels of an upload: `__name__`, `service_name` (the app name unless the name's
/// labels give one), `pyroscope_spy`, the name's labels, then labels lifted off samples.
fn series_labels(
    md: &Metadata,
    metric: &str,
    service: &str,
    extra: &[(String, String)],
    limits: &Limits,
) -> Result<Labels, LabelError> {
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
    validate_labels(base, limits)
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
    fn dates_are_strict() {
        let t = |s| parse_ingest_time("from", s, NOW).map_err(|e| e.to_string());
        assert_eq!(t("19700101"), Ok(0));
        assert_eq!(t("20231114"), Ok(1_699_920_000 * 1_000_000_000));
        assert_eq!(t("20240229"), Ok(1_709_164_800 * 1_000_000_000));
        // Eight digits are a date or an error, never Unix seconds.
        for bad in [
            "20231340", "20230229", "20230431", "99999999", "19691231", "20230001",
        ] {
            let err = t(bad).unwrap_err();
            assert!(
                err.starts_with("from: ") && err.contains("not a valid date"),
                "{bad}: {err}"
            );
        }
        // Other lengths are Unix time as in queries.
        assert_eq!(t("1700000000"), Ok(1_700_000_000 * 1_000_000_000));
        assert!(t("2023-11-14").is_err());
    }

    #[test]
    fn labels_layered() {
        let md = metadata(
            &params("name=my.app{env=prod,service_name=svc}&spyName=pyspy"),
            NOW,
        )
        .unwrap();
        let extra = vec![("env".to_owned(), "staging".to_owned())];
        let l = series_labels(&md, "process_cpu", &md.key.app, &extra, &Limits::default()).unwrap();
        assert_eq!(l.get("__name__"), Some("process_cpu"));
        assert_eq!(l.get("service_name"), Some("svc"));
        assert_eq!(l.get("env"), Some("staging"));
        assert_eq!(l.get("pyroscope_spy"), Some("pyspy"));
    }
}
