//! The embedded web UI: `index.html` at `/`, its ES modules and stylesheet under `/assets/`.
//!
//! Every file is compiled in with `include_str!` (no Node toolchain, no files next to the binary).
//! [`ASSETS`] is the one list of what is served; a test checks it against `web/` so a new module
//! cannot be forgotten.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX_HTML: &str = include_str!("../../web/index.html");

/// One served file: its path under `/assets/`, content type and bytes.
struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static str,
}

macro_rules! js {
    ($p:literal) => {
        Asset {
            path: $p,
            mime: "text/javascript; charset=utf-8",
            body: include_str!(concat!("../../web/", $p)),
        }
    };
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "style.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    js!("app.js"),
    js!("js/api.js"),
    js!("js/chart.js"),
    js!("js/colors.js"),
    js!("js/diff.js"),
    js!("js/draw.js"),
    js!("js/export.js"),
    js!("js/format.js"),
    js!("js/keys.js"),
    js!("js/layout.js"),
    js!("js/selector.js"),
    js!("js/table.js"),
    js!("js/transforms.js"),
    js!("js/tree.js"),
    js!("js/url-state.js"),
];

pub async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

/// `GET /assets/{*path}`.
pub async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => ([(header::CONTENT_TYPE, a.mime)], a.body).into_response(),
        None => ApiError::NotFound(format!("no asset {path:?}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module in web/js is served (the browser would fail to import a missing one).
    #[test]
    fn every_module_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/js");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".js") {
                let path = format!("js/{name}");
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{path} not in ASSETS"
                );
            }
        }
    }
}
