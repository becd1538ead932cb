//! Debuginfo as a trust boundary (issue 10, point 2): uploads are per tenant and cannot change
//! the names another tenant sees; uploads are verified, bounded (padding, per-file limit, quotas)
//! and replaced only by files carrying more; unreferenced debuginfo expires; debuginfod is asked
//! in the background, never inside a query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_proto::push::{LabelPair, PUSH_PATH, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::{AppState, ServerConfig, router};
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

const GENUINE_C: &str = "__attribute__((noinline)) int hot(int n) { volatile int s = 0; for (int i = 0; i < n; i++) s += i; return s; }\n\
     __attribute__((noinline)) int alpha(int n) { return hot(n) + 1; }\n\
     int main(int argc, char **argv) { (void)argv; return alpha(argc * 1000) & 1; }\n";

/// The same code under other names (and with some data of its own, so that even stripped it is
/// not the same file): what an attacker uploads under the victim's build ID.
const POISON_C: &str = "__attribute__((used)) static const char tag[] = \"poison\";\n\
     __attribute__((noinline)) int evil_hot(int n) { volatile int s = 0; for (int i = 0; i < n; i++) s += i; return s; }\n\
     __attribute__((noinline)) int evil_alpha(int n) { return evil_hot(n) + 1; }\n\
     int main(int argc, char **argv) { (void)argv; return evil_alpha(argc * 1000) & 1; }\n";

/// A fixed build ID, so that two different programs can claim the same one.
const FORCED_ID: &str = "00112233445566778899aabbccddeeff00112233";

fn compile(dir: &Path, name: &str, src: &str, build_id: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let out = dir.join(name);
    let ok = Command::new("gcc")
        .args(["-g", "-O0", "-fno-inline"])
        .arg(format!("-Wl,--build-id={build_id}"))
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .status()
        .expect("these tests need gcc")
        .success();
    assert!(ok, "gcc failed");
    out
}

fn run(cmd: &mut Command) {
    assert!(cmd.status().expect("binutils").success(), "{cmd:?}");
}

fn stripped(exe: &Path) -> PathBuf {
    let out = exe.with_extension("stripped");
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(exe));
    out
}

fn debug_file(exe: &Path) -> PathBuf {
    let out = exe.with_extension("debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(exe)
        .arg(&out));
    out
}

struct Elf {
    build_id: String,
    mapping: (u64, u64, u64),
    addrs: HashMap<String, u64>,
}

fn inspect(path: &Path, wanted: &[&str]) -> Elf {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let bytes = std::fs::read(path).unwrap();
    let file = object::File::parse(bytes.as_slice()).unwrap();
    let build_id = hex(file.build_id().unwrap().unwrap());
    let base = 0x5555_5555_0000u64;
    let mut mapping = None;
    let mut addrs = HashMap::new();
    for sym in file.symbols() {
        let name = sym.name().unwrap_or("");
        if !wanted.contains(&name) {
            continue;
        }
        let vaddr = sym.address() + 4;
        let seg = file
            .segments()
            .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())
            .unwrap();
        let (seg_off, _) = seg.file_range();
        let page_off = seg_off & !0xfff;
        let start = base + (seg.address() & !0xfff);
        mapping = Some((start, start + seg.size() + 0x1000, page_off));
        addrs.insert(
            name.to_owned(),
            start + (vaddr - seg.address() + seg_off - page_off),
        );
    }
    assert_eq!(addrs.len(), wanted.len(), "{addrs:?}");
    Elf {
        build_id,
        mapping: mapping.unwrap(),
        addrs,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the agent sends for a process running the genuine program: raw addresses of main, alpha
/// and hot in one mapping with the build ID.
fn agent_profile(elf: &Elf) -> Profile {
    let (start, limit, offset) = elf.mapping;
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let m = b.mapping(start, limit, offset, "/usr/bin/app", &elf.build_id);
    let l = |b: &mut ProfileBuilder, f: &str| b.raw_location(m, elf.addrs[f]);
    let (lm, la, lh) = (l(&mut b, "main"), l(&mut b, "alpha"), l(&mut b, "hot"));
    b.add_sample(&[lh, la, lm], &[9, 90], &[]);
    b.finish()
}

struct Server {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    state: AppState,
    app: Router,
}

fn server(configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path().join("data"));
    configure(&mut config);
    let state = AppState::open(config).unwrap();
    Server {
        dir: dir.path().to_owned(),
        _dir: dir,
        app: router(state.clone()),
        state,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

fn with_tenant(
    req: axum::http::request::Builder,
    tenant: Option<&str>,
) -> axum::http::request::Builder {
    match tenant {
        Some(t) => req.header("X-Scope-OrgID", t),
        None => req,
    }
}

async fn push(app: &Router, tenant: Option<&str>, profile: &Profile) {
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: [("__name__", "process_cpu"), ("service_name", "app")]
                .iter()
                .map(|(n, v)| LabelPair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: vec![RawSample {
                raw_profile: profile.encode_to_vec(),
                id: String::new(),
            }],
        }],
    };
    let req = with_tenant(Request::post(PUSH_PATH), tenant)
        .header(header::CONTENT_TYPE, "application/proto")
        .body(Body::from(req.encode_to_vec()))
        .unwrap();
    let (status, body) = send(app, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

/// `PUT /debuginfo/v1/{id}{query}` with `file` zstd-compressed: the status and the JSON answer.
async fn put(
    app: &Router,
    tenant: Option<&str>,
    id: &str,
    query: &str,
    file: &Path,
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let body = zstd::encode_all(std::fs::read(file).unwrap().as_slice(), 3).unwrap();
    put_body(app, tenant, id, query, body, extra).await
}

async fn put_body(
    app: &Router,
    tenant: Option<&str>,
    id: &str,
    query: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = with_tenant(Request::put(format!("/debuginfo/v1/{id}{query}")), tenant)
        .header(header::CONTENT_ENCODING, "zstd");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (status, body) = send(app, req.body(Body::from(body)).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get_status(app: &Router, tenant: Option<&str>, uri: &str) -> (StatusCode, Value) {
    let req = with_tenant(Request::get(uri), tenant)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(app, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn names(node: &Value, out: &mut Vec<String>) {
    if let Some(n) = node["name"].as_str() {
        out.push(n.to_owned());
    }
    for c in node["children"].as_array().into_iter().flatten() {
        names(c, out);
    }
}

async fn flame_names(app: &Router, tenant: Option<&str>) -> Vec<String> {
    let (status, fg) = get_status(app, tenant, "/api/v1/flamegraph").await;
    assert_eq!(status, StatusCode::OK, "{fg}");
    let mut out = Vec::new();
    names(&fg["root"], &mut out);
    out
}

async fn metrics(app: &Router) -> String {
    let (_, body) = send(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    String::from_utf8(body.to_vec()).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn has(names: &[String], f: &str) -> bool {
    names.iter().any(|n| n == f)
}

/// The poisoning attempt: a client of another tenant uploads an ELF under the victim's build ID
/// (before the genuine upload, and a `kind=debuginfo` one after it). The victim never sees its
/// names, its own upload is not blocked, and the attacker cannot even tell the build ID exists.
#[tokio::test]
async fn poisoning_upload_from_another_tenant_changes_nothing() {
    let s = server(|_| {});
    let genuine = compile(&s.dir, "app", GENUINE_C, &format!("0x{FORCED_ID}"));
    let poison = compile(&s.dir, "poison", POISON_C, &format!("0x{FORCED_ID}"));
    let elf = inspect(&genuine, &["main", "alpha", "hot"]);
    assert_eq!(elf.build_id, FORCED_ID);
    let mallory = Some("mallory");

    // The attacker goes first, with both kinds of file.
    let (status, body) = put(&s.app, mallory, FORCED_ID, "", &poison, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let poison_debug = debug_file(&poison);
    let (status, body) = put(
        &s.app,
        mallory,
        FORCED_ID,
        "?kind=debuginfo",
        &poison_debug,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The victim (the default tenant, as the agent uploads) sees nothing of it.
    for kind in ["", "?kind=debuginfo"] {
        let (status, _) =
            get_status(&s.app, None, &format!("/debuginfo/v1/{FORCED_ID}{kind}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind}");
    }
    push(&s.app, None, &agent_profile(&elf)).await;
    let before = flame_names(&s.app, None).await;
    assert!(!before.iter().any(|n| n.contains("evil")), "{before:?}");
    assert!(
        before
            .iter()
            .any(|n| n.ends_with("(no symbols: debuginfo not uploaded)")),
        "{before:?}"
    );

    // The genuine upload is not blocked, and names the victim's frames.
    let (status, body) = put(&s.app, None, FORCED_ID, "", &genuine, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let after = flame_names(&s.app, None).await;
    for f in ["main", "alpha", "hot"] {
        assert!(has(&after, f), "{after:?}");
    }
    assert!(!after.iter().any(|n| n.contains("evil")), "{after:?}");

    // A later `kind=debuginfo` upload by the attacker does not take over either.
    let (status, _) = put(
        &s.app,
        mallory,
        FORCED_ID,
        "?kind=debuginfo",
        &poison_debug,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the same bytes again: unchanged");
    let later = flame_names(&s.app, None).await;
    assert_eq!(later, after);

    // The attacker's files name only the attacker's own profiles.
    push(&s.app, mallory, &agent_profile(&elf)).await;
    let theirs = flame_names(&s.app, mallory).await;
    assert!(has(&theirs, "evil_hot"), "{theirs:?}");
    // A third tenant sees neither upload: 404, exactly as for a build ID never seen.
    let (status, body) =
        get_status(&s.app, Some("other"), &format!("/debuginfo/v1/{FORCED_ID}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, never) = get_status(&s.app, Some("other"), "/debuginfo/v1/abcdef").await;
    assert_eq!(
        body["error"].as_str().unwrap().replace(FORCED_ID, "ID"),
        never["error"].as_str().unwrap().replace("abcdef", "ID")
    );
}

/// The padded-ELF bomb: a real ELF followed by 512 MiB of zeros arrives as a few hundred KB of
/// zstd. It is refused with 413 as soon as the zero run passes the limit (not after writing 512
/// MiB), and nothing is stored; with a small per-file limit, the limit stops it first.
#[tokio::test]
async fn padded_elf_bomb_is_refused() {
    let s = server(|_| {});
    let exe = compile(&s.dir, "app", GENUINE_C, "sha1");
    let elf = inspect(&exe, &["main"]);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&std::fs::read(&exe).unwrap()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());

    let (status, body) = put_body(&s.app, None, &elf.build_id, "", bomb.clone(), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("zero bytes"),
        "{body}"
    );
    let (status, _) = get_status(&s.app, None, &format!("/debuginfo/v1/{}", elf.build_id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let data = s.dir.join("data");
    assert!(files_under(&data.join("debuginfo")).is_empty());
    assert!(files_under(&data.join("tmp")).is_empty());
    assert!(
        metrics(&s.app)
            .await
            .contains("kiln_server_debuginfo_uploads_refused_total{reason=\"padding\"} 1")
    );

    // With a per-file limit below the padding, the limit answers first.
    let len = std::fs::metadata(&exe).unwrap().len();
    let small = server(|c| c.limits.debuginfo_max_bytes = len + (1 << 20));
    let (status, body) = put_body(&small.app, None, &elf.build_id, "", bomb, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("decompressed bytes"),
        "{body}"
    );
    // The genuine file alone is within the limit.
    let (status, body) = put(&small.app, None, &elf.build_id, "", &exe, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Replacing a stored file: only with one carrying strictly more (a stripped executable by the
/// full one), never silently: the same bytes are `200`, anything else `409` with a message.
#[tokio::test]
async fn replacement_only_with_more_else_409() {
    let s = server(|_| {});
    let genuine = compile(&s.dir, "app", GENUINE_C, &format!("0x{FORCED_ID}"));
    let other = compile(&s.dir, "poison", POISON_C, &format!("0x{FORCED_ID}"));
    let (genuine_stripped, other_stripped) = (stripped(&genuine), stripped(&other));

    let (status, _) = put(&s.app, None, FORCED_ID, "", &genuine_stripped, &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = put(&s.app, None, FORCED_ID, "", &genuine_stripped, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], false);
    // Another stripped file for the build ID: no more than what is stored.
    let (status, body) = put(&s.app, None, FORCED_ID, "", &other_stripped, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already stored"),
        "{body}"
    );
    // The full file adds a symbol table and DWARF.
    let (status, body) = put(&s.app, None, FORCED_ID, "", &genuine, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["replaced"], true);
    // And cannot be replaced by less, nor by a different file carrying as much.
    for file in [&genuine_stripped, &other] {
        let (status, body) = put(&s.app, None, FORCED_ID, "", file, &[]).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }
    let (_, info) = get_status(&s.app, None, &format!("/debuginfo/v1/{FORCED_ID}")).await;
    assert_eq!(info["size"], std::fs::metadata(&genuine).unwrap().len());
    assert!(
        metrics(&s.app)
            .await
            .contains("kiln_server_debuginfo_uploads_refused_total{reason=\"conflict\"} 3")
    );
}

/// Quotas per tenant: files and bytes; past them `507` with a message, other tenants unaffected.
#[tokio::test]
async fn per_tenant_quotas_answer_507() {
    let s = server(|c| c.limits.debuginfo_tenant_max_files = 1);
    let a = compile(&s.dir, "a", GENUINE_C, "sha1");
    let b = compile(&s.dir, "b", POISON_C, "sha1");
    let (ida, idb) = (
        inspect(&a, &["main"]).build_id,
        inspect(&b, &["main"]).build_id,
    );
    assert_eq!(
        put(&s.app, None, &ida, "", &a, &[]).await.0,
        StatusCode::CREATED
    );
    let (status, body) = put(&s.app, None, &idb, "", &b, &[]).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--debuginfo-tenant-max-files"),
        "{body}"
    );
    assert_eq!(
        put(&s.app, Some("team-b"), &idb, "", &b, &[]).await.0,
        StatusCode::CREATED
    );
    let m = metrics(&s.app).await;
    assert!(
        m.contains("kiln_server_debuginfo_files{tenant=\"anonymous\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kiln_server_debuginfo_files{tenant=\"team-b\"} 1"),
        "{m}"
    );

    let len_a = std::fs::metadata(&a).unwrap().len();
    let s = server(|c| c.limits.debuginfo_tenant_max_bytes = len_a + 100);
    assert_eq!(
        put(&s.app, None, &ida, "", &a, &[]).await.0,
        StatusCode::CREATED
    );
    let (status, body) = put(&s.app, None, &idb, "", &b, &[]).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--debuginfo-tenant-max-bytes"),
        "{body}"
    );
}

/// The shared store takes uploads only with the configured token; what it holds names every
/// tenant's frames.
#[tokio::test]
async fn shared_store_needs_the_token_and_serves_every_tenant() {
    let s = server(|_| {});
    let exe = compile(&s.dir, "app", GENUINE_C, "sha1");
    let elf = inspect(&exe, &["main", "alpha", "hot"]);
    let token = [("X-Kiln-Shared-Token", "s3cret")];
    let (status, body) = put(&s.app, None, &elf.build_id, "?scope=shared", &exe, &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no token configured: {body}"
    );

    let s = server(|c| c.debuginfo_shared_token = Some("s3cret".into()));
    let wrong = [("X-Kiln-Shared-Token", "guess")];
    let (status, _) = put(&s.app, None, &elf.build_id, "?scope=shared", &exe, &wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = put(&s.app, None, &elf.build_id, "?scope=shared", &exe, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = put(&s.app, None, &elf.build_id, "?scope=shared", &exe, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for tenant in [None, Some("team-a")] {
        let (status, info) =
            get_status(&s.app, tenant, &format!("/debuginfo/v1/{}", elf.build_id)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(info["scope"], "shared");
        push(&s.app, tenant, &agent_profile(&elf)).await;
        let names = flame_names(&s.app, tenant).await;
        for f in ["main", "alpha", "hot"] {
            assert!(has(&names, f), "{tenant:?}: {names:?}");
        }
    }
}

/// Sets the modification time ("last referenced") of every stored file of `id` under `dir`.
fn age_files(dir: &Path, id: &str, when: SystemTime) -> usize {
    let mut n = 0;
    for f in files_under(dir) {
        let name = f.to_string_lossy();
        if name.contains(&id[2..]) && (name.ends_with(".elf") || name.ends_with(".debug")) {
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(when)
                .unwrap();
            n += 1;
        }
    }
    n
}

fn modified(dir: &Path, id: &str) -> Option<SystemTime> {
    files_under(dir)
        .into_iter()
        .find(|f| f.to_string_lossy().contains(&id[2..]))
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
}

/// Debuginfo no stored profile referenced within the retention age is deleted by maintenance;
/// debuginfo a profile references (at ingest) stays. Past half of `--retention-bytes`, the least
/// recently referenced goes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_debuginfo_expires_with_retention() {
    let s = server(|c| c.store.retention_age_secs = 3600);
    let used = compile(&s.dir, "used", GENUINE_C, "sha1");
    let unused = compile(&s.dir, "unused", POISON_C, "sha1");
    let used_elf = inspect(&used, &["main", "alpha", "hot"]);
    let unused_id = inspect(&unused, &["main"]).build_id;
    assert_eq!(
        put(&s.app, None, &used_elf.build_id, "", &used, &[])
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&s.app, None, &unused_id, "", &unused, &[]).await.0,
        StatusCode::CREATED
    );
    let store = s.dir.join("data/debuginfo");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    assert_eq!(age_files(&store, &used_elf.build_id, two_hours_ago), 1);
    assert_eq!(age_files(&store, &unused_id, two_hours_ago), 1);

    // A profile referencing one of them marks it as used (in the background).
    push(&s.app, None, &agent_profile(&used_elf)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while modified(&store, &used_elf.build_id).unwrap() < two_hours_ago + Duration::from_secs(60) {
        assert!(
            Instant::now() < deadline,
            "ingest never marked the build ID as referenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let st = s.state.clone();
    tokio::task::spawn_blocking(move || st.debuginfo.maintain(SystemTime::now()).unwrap())
        .await
        .unwrap();
    let (status, _) = get_status(&s.app, None, &format!("/debuginfo/v1/{unused_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unreferenced: expired");
    let (status, _) = get_status(
        &s.app,
        None,
        &format!("/debuginfo/v1/{}", used_elf.build_id),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "referenced: kept");
    let m = metrics(&s.app).await;
    assert!(
        m.contains("kiln_server_debuginfo_expired_total{reason=\"age\"} 1"),
        "{m}"
    );
    let used_len = std::fs::metadata(&used).unwrap().len();
    assert_eq!(
        s.state
            .debuginfo
            .total_bytes()
            .load(std::sync::atomic::Ordering::Relaxed),
        used_len,
        "the bytes the profile store's retention adds to its own"
    );

    // Size: debuginfo may take half of --retention-bytes; the least recently referenced goes.
    let unused_len = std::fs::metadata(&unused).unwrap().len();
    let s = server(|c| c.store.retention_bytes = (used_len + unused_len) * 3 / 2);
    for (id, file) in [(&used_elf.build_id, &used), (&unused_id, &unused)] {
        assert_eq!(
            put(&s.app, None, id, "", file, &[]).await.0,
            StatusCode::CREATED
        );
    }
    let store = s.dir.join("data/debuginfo");
    age_files(&store, &unused_id, two_hours_ago);
    let st = s.state.clone();
    tokio::task::spawn_blocking(move || st.debuginfo.maintain(SystemTime::now()).unwrap())
        .await
        .unwrap();
    assert!(
        modified(&store, &unused_id).is_none(),
        "oldest reference deleted"
    );
    assert!(modified(&store, &used_elf.build_id).is_some());
}

/// Debuginfo bytes count toward `--retention-bytes`: with debuginfo filling the budget, the
/// profile store deletes its blocks.
#[test]
fn debuginfo_bytes_count_toward_retention_bytes() {
    use kiln_storage_server::StoreConfig;
    use kiln_storage_server::store::{LocalStore, NewProfile, Store};
    let dir = tempfile::tempdir().unwrap();
    let other = Arc::new(AtomicU64::new(0));
    let config = StoreConfig {
        maintenance_interval_secs: 3600,
        retention_bytes: 1 << 30,
        other_bytes: Some(other.clone()),
        ..StoreConfig::default()
    };
    let store = LocalStore::open(dir.path(), config, 64 << 20).unwrap();
    let mut b = ProfileBuilder::new(&[("samples", "count")]);
    let f = b.function("f", "f.c");
    let l = b.symbolized_location(0, 1, &[(f, 1)]);
    b.add_sample(&[l], &[1], &[]);
    let now = kiln_storage_server::query::time::now_nanos();
    store
        .append(vec![NewProfile {
            labels: kiln_storage_server::store::Labels::new(vec![(
                "__name__".into(),
                "process_cpu".into(),
            )]),
            time_nanos: now - 3_600_000_000_000,
            profile_types: vec!["samples:count".into()],
            pprof: b.finish().encode_to_vec(),
        }])
        .unwrap();
    store.flush().unwrap();
    store.maintain(now).unwrap();
    assert_eq!(store.stats().profiles, 1, "within the budget: kept");
    other.store(1 << 30, std::sync::atomic::Ordering::Relaxed);
    store.maintain(now).unwrap();
    assert_eq!(store.stats().profiles, 0, "debuginfo took the budget");
}

/// A debuginfod stand-in whose answers wait until released: the query does not wait with it.
struct FakeDebuginfod {
    url: String,
    release: Arc<tokio::sync::Semaphore>,
}

async fn fake_debuginfod(files: HashMap<String, PathBuf>) -> FakeDebuginfod {
    use axum::extract::{Path as UrlPath, State};
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    type Shared = (Arc<HashMap<String, PathBuf>>, Arc<tokio::sync::Semaphore>);
    async fn serve(
        State((files, release)): State<Shared>,
        UrlPath((id, artifact)): UrlPath<(String, String)>,
    ) -> Result<Vec<u8>, StatusCode> {
        // Held until the test releases it (permits are never returned: one release, all pass).
        let _held = release.acquire().await.map_err(|_| StatusCode::GONE)?;
        files
            .get(&format!("{id}/{artifact}"))
            .map(|p| std::fs::read(p).unwrap())
            .ok_or(StatusCode::NOT_FOUND)
    }
    let app = Router::new()
        .route("/buildid/{id}/{artifact}", axum::routing::get(serve))
        .with_state((Arc::new(files), release.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeDebuginfod { url, release }
}

/// No network I/O inside a query: with debuginfod not answering, a query returns at once and its
/// frames say the debuginfo is being fetched; once debuginfod answers, the names appear; a build
/// ID it lacks then says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debuginfod_is_asked_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "app", GENUINE_C, "sha1");
    let elf = inspect(&exe, &["main", "alpha", "hot"]);
    let files = HashMap::from([
        (format!("{}/executable", elf.build_id), stripped(&exe)),
        (format!("{}/debuginfo", elf.build_id), debug_file(&exe)),
    ]);
    let fake = fake_debuginfod(files).await;
    let s = server(|c| c.debuginfod_urls = vec![fake.url.clone()]);
    let mut profile = agent_profile(&elf);
    push(&s.app, None, &profile).await;
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let m = b.mapping(
        0x1000,
        0x2000,
        0,
        "/usr/lib/libunknown.so",
        &"ab".repeat(20),
    );
    let l = b.raw_location(m, 0x1234);
    b.add_sample(&[l], &[1, 7], &[]);
    profile = b.finish();
    push(&s.app, None, &profile).await;

    // debuginfod holds every answer: the query still completes, saying why names are missing.
    let names = flame_names(&s.app, None).await;
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("(no symbols: debuginfo being fetched from debuginfod)")),
        "{names:?}"
    );
    let (_, stats) = get_status(&s.app, None, "/api/v1/symbolization").await;
    assert!(stats.to_string().contains("debuginfod_pending"), "{stats}");
    assert!(
        metrics(&s.app)
            .await
            .contains("kiln_server_debuginfod_queue_depth")
    );

    fake.release.add_permits(1 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = flame_names(&s.app, None).await;
        let named = ["main", "alpha", "hot"].iter().all(|f| has(&names, f));
        let missed = has(
            &names,
            "libunknown.so+0x234 (no symbols: no debuginfo uploaded or on debuginfod)",
        );
        if named && missed {
            break;
        }
        assert!(Instant::now() < deadline, "never fetched: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fetched into the shared store: every tenant sees it.
    let (status, info) = get_status(
        &s.app,
        Some("team-a"),
        &format!("/debuginfo/v1/{}?kind=debuginfo", elf.build_id),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["scope"], "shared");
}

/// `file` then non-zero filler, `len` bytes in all.
fn with_filler(file: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = file.to_vec();
    let mut x = 0x9E37_79B9u32;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push((x as u8) | 1);
    }
    bytes
}

/// `bytes` as a request body handed out 64 KiB at a time as the server asks for it; `pulled`
/// counts the bytes the server took.
fn counted_body(bytes: &[u8], pulled: Arc<AtomicU64>) -> Body {
    use futures::StreamExt;
    let chunks: Vec<Bytes> = bytes.chunks(64 << 10).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::iter(chunks).map(move |c| {
        pulled.fetch_add(c.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(c)
    });
    Body::from_stream(stream)
}

/// The build ID is checked while the upload streams: a file uploaded under another build ID is
/// refused (400) as soon as its note has arrived, the rest of the body never read; the same body
/// under its own build ID is read to the end (and refused for the filler, as before).
#[tokio::test]
async fn a_mismatching_upload_is_refused_before_its_body_is_read() {
    use std::sync::atomic::Ordering;
    let s = server(|_| {});
    let exe = compile(&s.dir, "app", GENUINE_C, &format!("0x{FORCED_ID}"));
    let plain = with_filler(&std::fs::read(&exe).unwrap(), 16 << 20);
    let zst = zstd::encode_all(plain.as_slice(), 1).unwrap();
    let other = "ffeeddccbbaa99887766554433221100ffeeddcc";
    // Plain (sniffed) and zstd-compressed (declared).
    for (what, body, encoding) in [("plain", &plain, None), ("zstd", &zst, Some("zstd"))] {
        let put = |id: &str, pulled: Arc<AtomicU64>| {
            let mut req = Request::put(format!("/debuginfo/v1/{id}"));
            if let Some(e) = encoding {
                req = req.header(header::CONTENT_ENCODING, e);
            }
            req.body(counted_body(body, pulled)).unwrap()
        };
        let total = body.len() as u64;

        let pulled = Arc::new(AtomicU64::new(0));
        let (status, answer) = send(&s.app, put(other, pulled.clone())).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(answer.contains("build ID mismatch"), "{what}: {answer}");
        let read = pulled.load(Ordering::SeqCst);
        eprintln!("{what}: refused after the server read {read} of {total} bytes");
        assert!(
            read <= 256 << 10 && read < total / 8,
            "{what}: the server read {read} of {total} bytes before refusing"
        );
        assert!(files_under(&s.dir.join("data").join("tmp")).is_empty());

        // Under its own build ID the same body is read whole (the filler then fails the checks
        // of the complete file, as before).
        let pulled = Arc::new(AtomicU64::new(0));
        let (status, answer) = send(&s.app, put(FORCED_ID, pulled.clone())).await;
        assert_ne!(status, StatusCode::BAD_REQUEST, "{what}: {answer:?}");
        assert_eq!(pulled.load(Ordering::SeqCst), total, "{what}");
    }
    let (status, _) = get_status(&s.app, None, &format!("/debuginfo/v1/{other}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let m = metrics(&s.app).await;
    assert!(
        m.contains("kiln_server_debuginfo_uploads_refused_total{reason=\"wrong_build_id\"} 2"),
        "{m}"
    );
}
