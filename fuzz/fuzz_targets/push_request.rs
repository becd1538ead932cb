//! Any bytes as the body of `POST /push.v1.PusherService/Push` (proto, and gzipped proto) through
//! the real router: a response (2xx or 4xx), never a panic or a 5xx.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = kiln_storage_server::AppState::open(
            kiln_storage_server::ServerConfig::with_data_dir(dir.path()),
        )
        .expect("server state");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            rt,
            app: kiln_storage_server::router(state),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let (gzip, body) = match data.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest.to_vec()),
        None => (false, Vec::new()),
    };
    let mut req = Request::post(kiln_proto::push::PUSH_PATH)
        .header(header::CONTENT_TYPE, "application/proto");
    if gzip {
        req = req.header(header::CONTENT_ENCODING, "gzip");
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp =
        h.rt.block_on(h.app.clone().oneshot(req))
            .expect("infallible");
    assert!(
        !resp.status().is_server_error(),
        "5xx on fuzz input: {}",
        resp.status()
    );
});
