//! Pyroscope's push API (`POST /push.v1.PusherService/Push`, Connect unary), proto or JSON, with an
//! optionally gzipped body and optionally gzipped raw profiles. Only the envelope is read here;
//! every profile goes through [`super::admit`].

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kiln_proto::push::{PushRequest, PushResponse};
use prost::Message;
use serde::Deserialize;

use super::admit::{self, Admission, AdmitError, Admitted, Source, UnsupportedEncoding, Window};
use super::rate::{self, RateLimited, Resource};
use super::series;
use super::validate::{LabelError, validate_labels};
use crate::AppState;
use crate::config::Limits;
use crate::error::ApiError;
use crate::query::time::now_nanos;
use crate::store::StoreError;
use crate::tenant::Tenant;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("reading request body: {0}")]
    Body(String),
    #[error("unsupported Content-Type {0:?}: use application/proto or application/json")]
    ContentType(String),
    #[error("{0}")]
    ContentEncoding(#[from] UnsupportedEncoding),
    #[error("{0}")]
    BodyAdmit(AdmitError),
    #[error("request body is not a valid PushRequest: {0}")]
    Proto(prost::DecodeError),
    #[error("request body is not a valid JSON PushRequest: {0}")]
    Json(serde_json::Error),
    #[error("series {series}, sample {sample}: rawProfile is not valid base64: {err}")]
    Base64 {
        series: usize,
        sample: usize,
        err: base64::DecodeError,
    },
    #[error("series {series}: {err}")]
    Labels { series: usize, err: LabelError },
    #[error("series {series}, sample {sample}: {err}")]
    Admit {
        series: usize,
        sample: usize,
        err: AdmitError,
    },
    #[error("{0}")]
    RateLimited(#[from] RateLimited),
    #[error("storing profiles: {0}")]
    Store(#[from] StoreError),
}

impl PushError {
    /// The `reason` label of the rejection metric.
    fn reason(&self) -> &'static str {
        match self {
            PushError::BodyTooLarge(_) => "body_too_large",
            PushError::Body(_) => "body_read",
            PushError::ContentType(_) => "content_type",
            PushError::ContentEncoding(_) => "content_encoding",
            PushError::BodyAdmit(e) if e.is_too_large() => "body_decompressed_too_large",
            PushError::BodyAdmit(_) => "body_gzip",
            PushError::Proto(_) => "bad_proto",
            PushError::Json(_) | PushError::Base64 { .. } => "bad_json",
            PushError::Labels { .. } => "bad_labels",
            PushError::Admit { err, .. } => err.reason(),
            PushError::RateLimited(_) => "rate_limited",
            PushError::Store(_) => "store",
        }
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        let msg = e.to_string();
        match e {
            PushError::BodyTooLarge(_) => ApiError::PayloadTooLarge(msg),
            PushError::BodyAdmit(err) | PushError::Admit { err, .. } if err.is_too_large() => {
                ApiError::PayloadTooLarge(msg)
            }
            PushError::ContentType(_) | PushError::ContentEncoding(_) => {
                ApiError::UnsupportedMediaType(msg)
            }
            PushError::RateLimited(e) => e.into(),
            PushError::Store(e) => ApiError::store(msg, &e),
            _ => ApiError::BadRequest(msg),
        }
    }
}

/// One series as sent: its label pairs and its raw (possibly gzipped) profiles.
type RawSeries = (Vec<(String, String)>, Vec<Vec<u8>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Proto,
    Json,
}

/// The JSON form of `PushRequest` (protobuf JSON mapping: camelCase, bytes as base64).
#[derive(Deserialize)]
struct JsonPushRequest {
    #[serde(default)]
    series: Vec<JsonSeries>,
}

#[derive(Deserialize)]
struct JsonSeries {
    #[serde(default)]
    labels: Vec<JsonLabel>,
    #[serde(default)]
    samples: Vec<JsonSample>,
}

#[derive(Deserialize)]
struct JsonLabel {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct JsonSample {
    #[serde(default, rename = "rawProfile", alias = "raw_profile")]
    raw_profile: String,
}

/// `POST /push.v1.PusherService/Push`.
pub async fn push(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant.inspect_err(|_| {
        let body_len = body.as_ref().map_or(0, Bytes::len);
        state.metrics.ingest_failed(body_len, "bad_tenant", false);
    })?;
    let limits = state.config.limits.clone();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let e = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                PushError::BodyTooLarge(limits.max_body_bytes)
            } else {
                PushError::Body(rejection.body_text())
            };
            state.metrics.ingest_failed(0, e.reason(), false);
            return Err(e.into());
        }
    };
    let body_len = body.len();
    let result = async {
        let format = content_type(&headers)?;
        let gzipped = admit::gzip_encoded(&headers)?;
        let rate = state.ingest_rate.clone();
        rate.take(&tenant, Resource::Bytes, body_len as u64, rate::clock())?;
        let store = state.store.clone();
        let window = Window::for_config(&state.config, now_nanos());
        tokio::task::spawn_blocking(move || {
            let profiles = decode_request(&body, format, gzipped, &limits, &tenant, window)?;
            let counts = (
                profiles.len(),
                profiles.iter().map(|p| p.samples).sum::<usize>(),
            );
            rate.take(&tenant, Resource::Profiles, counts.0 as u64, rate::clock())?;
            let (profiles, decompressed) = admit::for_store(profiles);
            store.append_decompressed(profiles, decompressed)?;
            Ok::<_, PushError>((format, counts))
        })
        .await
        .map_err(|e| {
            PushError::Store(StoreError::Io {
                path: "ingest task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?
    }
    .await;
    match result {
        Ok((format, (profiles, samples))) => {
            state.metrics.ingest_ok(body_len, profiles, samples);
            tracing::debug!(profiles, samples, bytes = body_len, "push stored");
            Ok(match format {
                Format::Proto => (
                    [(header::CONTENT_TYPE, "application/proto")],
                    PushResponse {}.encode_to_vec(),
                )
                    .into_response(),
                Format::Json => {
                    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
                }
            })
        }
        Err(e) => {
            let server_fault = matches!(e, PushError::Store(_));
            state
                .metrics
                .ingest_failed(body_len, e.reason(), server_fault);
            if let PushError::Admit { .. } = e {
                state.metrics.profiles_rejected(1);
            }
            Err(e.into())
        }
    }
}

fn content_type(headers: &HeaderMap) -> Result<Format, PushError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        // Connect requires a Content-Type; binary proto is the only sensible guess for a bare POST.
        return Ok(Format::Proto);
    };
    let raw = v.to_str().unwrap_or("");
    let mime = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/proto" | "application/protobuf" | "application/x-protobuf" => {
            Ok(Format::Proto)
        }
        "application/json" => Ok(Format::Json),
        _ => Err(PushError::ContentType(raw.to_owned())),
    }
}

/// Parses the envelope and hands every profile to the admission pipeline; any bad part fails all
/// of it, so nothing is stored.
fn decode_request(
    body: &[u8],
    format: Format,
    gzipped: bool,
    limits: &Limits,
    tenant: &Tenant,
    window: Window,
) -> Result<Vec<Admitted>, PushError> {
    let mut admission = Admission::new(limits, tenant, window);
    let body = admission
        .body(body, gzipped, false)
        .map_err(PushError::BodyAdmit)?;
    let series: Vec<RawSeries> = match format {
        Format::Proto => PushRequest::decode(body.as_ref())
            .map_err(PushError::Proto)?
            .series
            .into_iter()
            .map(|s| {
                (
                    s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                    s.samples.into_iter().map(|x| x.raw_profile).collect(),
                )
            })
            .collect(),
        Format::Json => {
            let req: JsonPushRequest =
                serde_json::from_slice(body.as_ref()).map_err(PushError::Json)?;
            let mut out = Vec::with_capacity(req.series.len());
            for (si, s) in req.series.into_iter().enumerate() {
                let mut raws = Vec::with_capacity(s.samples.len());
                for (pi, x) in s.samples.into_iter().enumerate() {
                    raws.push(
                        decode_base64(&x.raw_profile).map_err(|err| PushError::Base64 {
                            series: si,
                            sample: pi,
                            err,
                        })?,
                    );
                }
                out.push((
                    s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                    raws,
                ));
            }
            out
        }
    };
    drop(body);

    let now = admission.window().now();
    for (si, (pairs, raws)) in series.into_iter().enumerate() {
        // Checked even for a series without profiles, and named by the series.
        validate_labels(pairs.iter().cloned(), limits)
            .map_err(|err| PushError::Labels { series: si, err })?;
        // Tags sent as sample labels become series labels, overriding the series' own.
        let labeler = |_: &[String], lifted: &[(String, String)]| {
            validate_labels(series::merge_labels(pairs.iter().cloned(), lifted), limits)
        };
        let src = Source {
            labeler: &labeler,
            fallback_time: now,
        };
        for (pi, sent) in raws.into_iter().enumerate() {
            admission
                .pprof(sent, &src)
                .map_err(|err| PushError::Admit {
                    series: si,
                    sample: pi,
                    err,
                })?;
        }
    }
    Ok(admission.finish())
}

/// Protobuf JSON accepts standard and URL-safe base64, padded or not.
fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    STANDARD
        .decode(s)
        .or_else(|e| URL_SAFE.decode(s).map_err(|_| e))
}
