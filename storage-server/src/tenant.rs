//! Tenants: who a request acts for, from Pyroscope's `X-Scope-OrgID` header, and how that becomes
//! a series label at ingest and a matcher on every query.
//!
//! A tenant's series carry the reserved label [`TENANT_LABEL`]. The default tenant (no header)
//! stores *no* such label, so data written before tenants existed, and everything the agent pushes
//! without a header, stays with the default tenant; its query matcher is `__tenant__=""`, which
//! matches exactly the series without the label.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::query::selector::Matcher;
use crate::store::Labels;

/// The header Pyroscope (and Cortex, Loki, Mimir) read the tenant from.
pub const HEADER: &str = "X-Scope-OrgID";
/// The reserved series label holding the tenant. Clients may not send it.
pub const TENANT_LABEL: &str = "__tenant__";
/// The tenant of requests without the header (Pyroscope's name for it).
pub const DEFAULT_TENANT: &str = "anonymous";
/// Longest tenant ID accepted (Cortex's limit).
pub const MAX_TENANT_LEN: usize = 150;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("{HEADER} is empty")]
    Empty,
    #[error("{HEADER} is longer than {MAX_TENANT_LEN} bytes")]
    TooLong,
    #[error("{HEADER} {0:?} has an unsupported character: use letters, digits and !-_.*'() only")]
    BadChar(String),
    #[error("{HEADER} may not be \".\" or \"..\"")]
    Dots,
    #[error("{HEADER} is not valid UTF-8")]
    NotUtf8,
}

/// The caller's tenant, validated. An axum extractor: a bad header is a 400 naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Default for Tenant {
    fn default() -> Self {
        Tenant(DEFAULT_TENANT.to_owned())
    }
}

impl Tenant {
    /// Validates a tenant ID with Cortex's rules (the IDs Pyroscope accepts).
    pub fn parse(id: &str) -> Result<Tenant, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(TenantError::TooLong);
        }
        if id == "." || id == ".." {
            return Err(TenantError::Dots);
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
        if !id.chars().all(ok) {
            return Err(TenantError::BadChar(id.to_owned()));
        }
        Ok(Tenant(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TENANT
    }

    /// The value stored in [`TENANT_LABEL`]: none for the default tenant.
    fn label_value(&self) -> &str {
        if self.is_default() { "" } else { &self.0 }
    }

    /// The matcher every query of this tenant adds to its selector.
    pub fn matcher(&self) -> Matcher {
        Matcher::equal(TENANT_LABEL, self.label_value())
    }

    /// `labels` (validated, without [`TENANT_LABEL`]) with this tenant's label added.
    pub fn label(&self, labels: Labels) -> Labels {
        if self.is_default() {
            return labels;
        }
        let mut pairs: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        pairs.push((TENANT_LABEL.to_owned(), self.0.clone()));
        Labels::new(pairs)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(HEADER) else {
            return Ok(Tenant::default());
        };
        let id = v
            .to_str()
            .map_err(|_| ApiError::bad_request(TenantError::NotUtf8.to_string()))?;
        Tenant::parse(id.trim()).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validated() {
        assert_eq!(Tenant::parse("team-a_1.x").unwrap().as_str(), "team-a_1.x");
        assert_eq!(Tenant::parse(""), Err(TenantError::Empty));
        assert_eq!(Tenant::parse(".."), Err(TenantError::Dots));
        assert_eq!(
            Tenant::parse(&"a".repeat(MAX_TENANT_LEN + 1)),
            Err(TenantError::TooLong)
        );
        assert!(matches!(Tenant::parse("a/b"), Err(TenantError::BadChar(_))));
        assert!(matches!(Tenant::parse("a b"), Err(TenantError::BadChar(_))));
        assert!(matches!(Tenant::parse("a|b"), Err(TenantError::BadChar(_))));
    }

    #[test]
    fn default_tenant_stores_no_label_and_matches_unlabelled_series() {
        let base = Labels::new(vec![("__name__".into(), "process_cpu".into())]);
        let anon = Tenant::default();
        assert_eq!(anon.label(base.clone()), base);
        assert!(anon.matcher().matches(&base));

        let a = Tenant::parse("a").unwrap();
        let labelled = a.label(base.clone());
        assert_eq!(labelled.get(TENANT_LABEL), Some("a"));
        assert!(a.matcher().matches(&labelled));
        assert!(!a.matcher().matches(&base));
        assert!(!anon.matcher().matches(&labelled));
        assert!(!Tenant::parse("b").unwrap().matcher().matches(&labelled));
    }
}
