//! The one error type every HTTP handler returns, and how it becomes a `{"error": "..."}` response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API failure: the status class plus a message that names the problem for the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (a different debuginfo file for a build ID).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed request whose payload could not be ingested (Pyroscope's 422).
    #[error("{0}")]
    Unprocessable(String),
    /// The disk or the storage quota is full (507): the request stored nothing; retry later.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Internal(String),
    /// Over a per-tenant rate: 429 with `Retry-After` (seconds).
    #[error("{msg}")]
    RateLimited { msg: String, retry_after_secs: u64 },
    /// The server is busy (query slots full): 503 with `Retry-After`.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        ApiError::Internal(msg.to_string())
    }
    /// A storage failure: 507 when the disk or quota is full; with object storage, 413 when the
    /// query's range needs more blocks than the local cache holds and 503 (retry in 10 s) when the
    /// bucket does not answer; else 500.
    pub fn store(msg: impl Into<String>, e: &crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            e if e.is_disk_full() => ApiError::InsufficientStorage(msg.into()),
            StoreError::CacheTooSmall(_) => ApiError::PayloadTooLarge(msg.into()),
            StoreError::Bucket(_) => ApiError::Unavailable {
                message: msg.into(),
                retry_after_secs: 10,
            },
            _ => ApiError::Internal(msg.into()),
        }
    }
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A blocking task that died (panicked or was cancelled) is a server fault, not the client's.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("internal task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Unavailable {
            message,
            retry_after_secs,
        } = &self
        {
            tracing::warn!(error = %message, "request refused: server busy");
            return (
                status,
                [(
                    axum::http::header::RETRY_AFTER,
                    retry_after_secs.to_string(),
                )],
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response();
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request rejected");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            return (
                status,
                [(
                    axum::http::header::RETRY_AFTER,
                    retry_after_secs.to_string(),
                )],
                axum::Json(body),
            )
                .into_response();
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme to use.
            return (
                status,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(body),
            )
                .into_response();
        }
        (status, axum::Json(body)).into_response()
    }
}
