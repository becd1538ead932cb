//! Optional bearer-token authentication: when `auth_token` is configured, every ingest and query
//! request must carry `Authorization: Bearer <token>` (what Pyroscope's SDKs send for their
//! `auth_token` setting). Health, metrics and the UI's static files stay open so that probes,
//! scrapers and the page itself work without the secret.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// Paths served without a token.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics" | "/") || path.starts_with("/assets/")
}

/// Paths whose refusals count in the ingest metrics (`ingest_rejected{reason="unauthorized"}`).
fn is_ingest(path: &str) -> bool {
    matches!(
        path,
        kiln_proto::push::PUSH_PATH | "/ingest" | "/pyroscope/ingest"
    )
}

/// Axum middleware enforcing [`crate::ServerConfig::auth_token`].
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(want) = state.config.auth_token.as_deref() else {
        return next.run(req).await;
    };
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    match check(req.headers().get(header::AUTHORIZATION), want) {
        Ok(()) => next.run(req).await,
        Err(msg) => {
            tracing::debug!(path = %req.uri().path(), reason = msg, "unauthenticated request");
            if is_ingest(req.uri().path()) {
                // The body is never read: its size is not counted.
                state.metrics.ingest_failed(0, "unauthorized", false);
            }
            ApiError::Unauthorized(msg.to_owned()).into_response()
        }
    }
}

fn check(got: Option<&header::HeaderValue>, want: &str) -> Result<(), &'static str> {
    let Some(got) = got else {
        return Err("missing Authorization header: send `Authorization: Bearer <token>`");
    };
    let got = got.as_bytes();
    // The scheme is case-insensitive (RFC 7235).
    let token = match got.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => got[7..].trim_ascii(),
        _ => return Err("Authorization header must use the Bearer scheme"),
    };
    if constant_time_eq(token, want.as_bytes()) {
        Ok(())
    } else {
        Err("invalid bearer token")
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_checked() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(check(Some(&h("Bearer s3cret")), "s3cret"), Ok(()));
        assert_eq!(check(Some(&h("bearer  s3cret ")), "s3cret"), Ok(()));
        assert!(check(None, "s3cret").unwrap_err().contains("missing"));
        assert!(
            check(Some(&h("Basic abc")), "s3cret")
                .unwrap_err()
                .contains("Bearer")
        );
        assert_eq!(
            check(Some(&h("Bearer s3cre")), "s3cret"),
            Err("invalid bearer token")
        );
        assert_eq!(
            check(Some(&h("Bearer s3creT")), "s3cret"),
            Err("invalid bearer token")
        );
    }

    #[test]
    fn open_paths() {
        assert!(is_open("/healthz") && is_open("/metrics") && is_open("/assets/app.js"));
        assert!(!is_open("/ingest") && !is_open("/api/v1/labels"));
        assert!(is_ingest("/ingest") && is_ingest("/push.v1.PusherService/Push"));
        assert!(!is_ingest("/api/v1/labels") && !is_ingest("/debuginfo/v1/ab"));
    }
}
