//! Any bytes through `POST /ingest` as Pyroscope's legacy clients send it: the first line is the
//! `name` parameter (`app.type{k=v,...}`), the rest the folded (or, by the flag byte, `lines`)
//! body. A response (2xx or 4xx), never a panic or a 5xx.
#![no_main]

use std::fmt::Write;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
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
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    let (name, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut uri = String::from("/ingest?sampleRate=100&name=");
    for b in name {
        let _ = write!(uri, "%{b:02X}");
    }
    if flag & 1 == 1 {
        uri.push_str("&format=lines");
    }
    let req = Request::post(uri)
        .body(Body::from(body.to_vec()))
        .expect("request");
    let h = harness();
    let resp =
        h.rt.block_on(h.app.clone().oneshot(req))
            .expect("infallible");
    assert!(
        !resp.status().is_server_error(),
        "5xx on fuzz input: {}",
        resp.status()
    );
});
