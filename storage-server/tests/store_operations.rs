//! Operational edges of the store: one server per data directory, and a full disk answered with
//! 507 and survived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kiln_proto::ProfileBuilder;
use kiln_proto::push::{LabelPair, PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::time::{TimeRange, now_nanos};
use kiln_storage_server::store::{
    NewProfile, ReadRequest, SharedStore, Store, StoreError, StoreStats, StoredProfile,
};
use kiln_storage_server::{AppState, ServerConfig, router};
use prost::Message;
use tower::ServiceExt;

fn push_body(service: &str, value: i64) -> Vec<u8> {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let f = b.function("main", "main.c");
    let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
    b.add_sample(&[l], &[value], &[]);
    b.time(now_nanos(), 10_000_000_000);
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                LabelPair {
                    name: "service_name".into(),
                    value: service.into(),
                },
            ],
            samples: vec![RawSample {
                raw_profile: b.finish().encode_to_vec(),
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn push(app: &Router, service: &str, value: i64) -> (StatusCode, String) {
    let req = Request::post(PUSH_PATH)
        .header(header::CONTENT_TYPE, "application/proto")
        .body(Body::from(push_body(service, value)))
        .unwrap();
    send(app, req).await
}

async fn ingest_folded(app: &Router) -> (StatusCode, String) {
    let req = Request::post("/ingest?name=app")
        .body(Body::from(&b"main;work 1\n"[..]))
        .unwrap();
    send(app, req).await
}

#[test]
fn second_server_on_a_data_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = AppState::open(ServerConfig::with_data_dir(dir.path())).unwrap();
    let err = AppState::open(ServerConfig::with_data_dir(dir.path()))
        .err()
        .expect("a second server on the same directory");
    let msg = format!("{err:#}");
    assert!(msg.contains("in use"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "names the holder: {msg}"
    );
    drop(first);
    // The lock goes with the server.
    AppState::open(ServerConfig::with_data_dir(dir.path())).unwrap();
}

/// A store whose disk is full until `space` is set: what the server sees on ENOSPC.
#[derive(Default)]
struct FullDisk {
    space: AtomicBool,
    stored: std::sync::Mutex<usize>,
}

impl Store for FullDisk {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        if !self.space.load(Ordering::SeqCst) {
            return Err(StoreError::io(
                Path::new("segments/00000000000000000001.seg"),
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        *self.stored.lock().unwrap() += profiles.len();
        Ok(())
    }
    fn label_names(&self, _: &Selector, _: TimeRange) -> Vec<String> {
        Vec::new()
    }
    fn label_values(&self, _: &str, _: &Selector, _: TimeRange) -> Vec<String> {
        Vec::new()
    }
    fn profile_types(&self, _: &Selector, _: TimeRange) -> Vec<String> {
        Vec::new()
    }
    fn read(
        &self,
        _: ReadRequest<'_>,
        _: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

#[tokio::test]
async fn full_disk_answers_507_on_every_ingest_path_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FullDisk::default());
    let shared: SharedStore = store.clone();
    let app = router(AppState::with_store(
        ServerConfig::with_data_dir(dir.path()),
        shared,
    ));
    let (status, body) = push(&app, "a", 1).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body.contains("no space left"), "{body}");
    let (status, body) = ingest_folded(&app).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body.contains("no space left"), "{body}");
    store.space.store(true, Ordering::SeqCst);
    assert_eq!(push(&app, "a", 1).await.0, StatusCode::OK);
    assert_eq!(ingest_folded(&app).await.0, StatusCode::OK);
    assert_eq!(*store.stored.lock().unwrap(), 2);
}

/// Mounts a small tmpfs at `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Whatever the last partial chunk left: the disk is full to the byte.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
}

fn total(state: &AppState) -> i64 {
    let all = Selector::all();
    let mut sum = 0;
    state
        .store
        .read(
            ReadRequest {
                selector: &all,
                range: TimeRange::ALL,
                profile_type: None,
                stop: None,
            },
            &mut |p| sum += p.profile.sample[0].value[0],
        )
        .unwrap();
    sum
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            out.push(name);
        }
    }
    out
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A real full filesystem: appends answer 507 and store nothing, a flush fails without leaving
/// temporary files, and once space returns everything acknowledged is there and new appends work.
#[tokio::test]
#[ignore = "needs root"]
async fn root_real_full_disk_answers_507_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(dir.path(), "4m");
    let data = dir.path().join("data");
    let mut config = ServerConfig::with_data_dir(&data);
    // Every append after the first starts a segment: the flush below has a sealed one to write.
    config.store.max_segment_bytes = 1;
    let state = AppState::open(config.clone()).unwrap();
    let app = router(state.clone());
    assert_eq!(push(&app, "before", 1).await.0, StatusCode::OK);
    assert_eq!(push(&app, "sealed", 2).await.0, StatusCode::OK);

    let filler = dir.path().join("filler");
    fill(&filler);
    let (status, body) = push(&app, "full", 1000).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body.contains("no space left"), "{body}");
    let store = state.store.clone();
    let flushed = tokio::task::spawn_blocking(move || store.flush())
        .await
        .unwrap();
    assert!(
        matches!(flushed, Err(StoreError::DiskFull { .. })),
        "{flushed:?}"
    );
    assert_eq!(leftovers(&data), Vec::<String>::new(), "no temporary files");
    assert_eq!(total(&state), 3, "the refused push stored nothing");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(push(&app, "after", 10).await.0, StatusCode::OK);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total(&state), 13);
    drop(app);
    drop(state);
    let state = AppState::open(config).unwrap();
    assert_eq!(total(&state), 13, "after a restart");
}

/// Damage found in a block is counted on `/metrics`.
#[tokio::test]
async fn block_damage_is_counted_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::with_data_dir(dir.path());
    {
        let state = AppState::open(config.clone()).unwrap();
        let app = router(state.clone());
        for (service, value) in [("a", 1), ("a", 2), ("b", 3)] {
            assert_eq!(push(&app, service, value).await.0, StatusCode::OK);
        }
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap()
            .unwrap();
    }
    let blocks = config.segments_dir().join("blocks");
    let block = walkdir(&blocks)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "blk"))
        .unwrap();
    let (meta, _, _) = kiln_storage_server::store::block::read_meta(&block).unwrap();
    let a = meta
        .series
        .iter()
        .find(|s| s.labels().get("service_name") == Some("a"))
        .unwrap();
    let rows = a.rows_section.as_ref().unwrap();
    let mut bytes = std::fs::read(&block).unwrap();
    bytes[(rows.offset + rows.len / 2) as usize] ^= 0x01;
    std::fs::write(&block, bytes).unwrap();

    let mut config = config;
    config.store.verify_on_open = true;
    let app = router(AppState::open(config).unwrap());
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let (status, metrics) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "kiln_server_store_quarantined_blocks_total 1",
        "kiln_server_store_profiles_lost_total 2",
        "kiln_server_store_profiles 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kiln_server_store_quarantined_bytes ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
