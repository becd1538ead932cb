//! Pyroscope's other Connect services that Grafana's Profiles Drilldown app calls, answered
//! honestly for a server without those features, so the app's pages load instead of failing on a
//! 404 (grafana/explore-profiles: `settingsApiClient.ts`, `recordingRulesApiClient.ts`,
//! `adHocProfileClient.ts`, `VcsClient.ts`):
//!
//! | service / method | answer |
//! |---|---|
//! | `settings.v1.SettingsService/Get` | no settings: `{"settings": []}` |
//! | `settings.v1.SettingsService/Delete` | nothing to delete: `{}` |
//! | `settings.v1.SettingsService/Set` | `failed_precondition` (412): Kiln stores no settings |
//! | `settings.v1.RecordingRulesService/ListRecordingRules` | `{"rules": []}` |
//! | `settings.v1.RecordingRulesService/GetRecordingRule` | `not_found` |
//! | `settings.v1.RecordingRulesService/UpsertRecordingRule` | `failed_precondition` |
//! | `settings.v1.RecordingRulesService/DeleteRecordingRule` | `{}` |
//! | `capabilities.v1.FeatureFlagsService/GetFeatureFlags` | `{"featureFlags": []}` |
//! | `adhocprofiles.v1.AdHocProfileService/List` | `{"profiles": []}` |
//! | `adhocprofiles.v1.AdHocProfileService/Get` | `not_found` |
//! | `adhocprofiles.v1.AdHocProfileService/Upload`, `/Diff` | `failed_precondition` |
//! | `vcs.v1.VCSService/*` | `failed_precondition`: no GitHub integration |
//!
//! Any other method of these services is `unimplemented`, as a Connect server answers it. Binary
//! (`application/proto`) requests get the empty message (no bytes) where JSON gets the object.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::querier::{Codec, ConnectError};
use crate::AppState;
use crate::error::ApiError;
use crate::tenant::Tenant;

/// The services this module answers, by Connect path prefix.
pub const SERVICES: [&str; 5] = [
    "settings.v1.SettingsService",
    "settings.v1.RecordingRulesService",
    "capabilities.v1.FeatureFlagsService",
    "adhocprofiles.v1.AdHocProfileService",
    "vcs.v1.VCSService",
];

/// What Kiln answers `service`/`method`: an (empty) message as JSON, or an error.
fn answer(service: &str, method: &str) -> Result<Value, ConnectError> {
    let not_here = |what: &str| {
        ConnectError::new(
            "failed_precondition",
            format!("{service}/{method}: Kiln has no {what}"),
        )
    };
    Ok(match (service, method) {
        ("settings.v1.SettingsService", "Get") => json!({"settings": []}),
        ("settings.v1.SettingsService", "Delete") => json!({}),
        ("settings.v1.SettingsService", "Set") => return Err(not_here("settings store")),
        ("settings.v1.RecordingRulesService", "ListRecordingRules") => json!({"rules": []}),
        ("settings.v1.RecordingRulesService", "GetRecordingRule") => {
            return Err(ConnectError::new(
                "not_found",
                "Kiln has no recording rules",
            ));
        }
        ("settings.v1.RecordingRulesService", "UpsertRecordingRule") => {
            return Err(not_here("recording rules"));
        }
        ("settings.v1.RecordingRulesService", "DeleteRecordingRule") => json!({}),
        ("capabilities.v1.FeatureFlagsService", "GetFeatureFlags") => json!({"featureFlags": []}),
        ("adhocprofiles.v1.AdHocProfileService", "List") => json!({"profiles": []}),
        ("adhocprofiles.v1.AdHocProfileService", "Get") => {
            return Err(ConnectError::new(
                "not_found",
                "Kiln keeps no ad hoc profiles",
            ));
        }
        ("adhocprofiles.v1.AdHocProfileService", "Upload" | "Diff") => {
            return Err(not_here("ad hoc profile store"));
        }
        ("vcs.v1.VCSService", _) => return Err(not_here("GitHub integration")),
        _ => {
            return Err(ConnectError::new(
                "unimplemented",
                format!("{service}/{method} is not a method Kiln serves"),
            ));
        }
    })
}

/// `POST /<service>/{method}` for each of the [`SERVICES`].
pub fn routes() -> Router<AppState> {
    SERVICES.iter().fold(Router::new(), |router, &service| {
        router.route(
            &format!("/{service}/{{method}}"),
            post(
                move |tenant: Result<Tenant, ApiError>,
                      Path(method): Path<String>,
                      headers: HeaderMap| async move {
                    handle(service, tenant, &method, &headers)
                },
            ),
        )
    })
}

fn handle(
    service: &str,
    tenant: Result<Tenant, ApiError>,
    method: &str,
    headers: &HeaderMap,
) -> Response {
    let result = (|| {
        tenant?;
        let codec = Codec::of(headers)?;
        let msg = answer(service, method)?;
        let ct = [(header::CONTENT_TYPE, codec.content_type())];
        Ok::<_, ConnectError>(match codec {
            Codec::Proto => (ct, Vec::new()).into_response(),
            Codec::Json => (ct, msg.to_string()).into_response(),
        })
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_empty_lists_or_clear_errors() {
        assert_eq!(
            answer("settings.v1.SettingsService", "Get").unwrap(),
            json!({"settings": []})
        );
        assert_eq!(
            answer("settings.v1.RecordingRulesService", "ListRecordingRules").unwrap(),
            json!({"rules": []})
        );
        let e = answer("settings.v1.SettingsService", "Set").unwrap_err();
        assert_eq!(e.code, "failed_precondition");
        assert!(e.message.contains("no settings store"), "{e}");
        assert_eq!(
            answer("vcs.v1.VCSService", "GithubApp").unwrap_err().code,
            "failed_precondition"
        );
        assert_eq!(
            answer("settings.v1.SettingsService", "Nope")
                .unwrap_err()
                .code,
            "unimplemented"
        );
    }
}
