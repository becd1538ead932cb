//! Symbolization through the HTTP API: every unnamed frame says why, per-binary counts
//! (`/api/v1/symbolization`, `/metrics`), and stored profiles re-symbolized when debuginfo arrives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn open(dir: &Path) -> Router {
    router(AppState::open(ServerConfig::with_data_dir(dir)).unwrap())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

async fn get(app: &Router, uri: &str) -> Value {
    let (status, body) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body:?}");
    serde_json::from_slice(&body).unwrap()
}

async fn push(app: &Router, profile: &Profile) {
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
    let req = Request::post(PUSH_PATH)
        .header(header::CONTENT_TYPE, "application/proto")
        .body(Body::from(req.encode_to_vec()))
        .unwrap();
    let (status, body) = send(app, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

async fn put_debuginfo(app: &Router, id: &str, elf: &[u8]) -> StatusCode {
    let req = Request::put(format!("/debuginfo/v1/{id}"))
        .header(header::CONTENT_ENCODING, "zstd")
        .body(Body::from(zstd::encode_all(elf, 3).unwrap()))
        .unwrap();
    send(app, req).await.0
}

/// Every node name in the flame graph.
fn names(node: &Value, out: &mut Vec<String>) {
    if let Some(n) = node["name"].as_str() {
        out.push(n.to_owned());
    }
    for c in node["children"].as_array().into_iter().flatten() {
        names(c, out);
    }
}

async fn flame_names(app: &Router) -> Vec<String> {
    let fg = get(app, "/api/v1/flamegraph").await;
    let mut out = Vec::new();
    names(&fg["root"], &mut out);
    out
}

/// gcc -g a small program with `main -> alpha -> hot`; `None` (test skipped) without gcc.
fn compile(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("app.c");
    std::fs::write(
        &src,
        "__attribute__((noinline)) int hot(int n) { volatile int s = 0; for (int i = 0; i < n; i++) s += i; return s; }\n\
         __attribute__((noinline)) int alpha(int n) { return hot(n) + 1; }\n\
         int main(int argc, char **argv) { (void)argv; return alpha(argc * 1000) & 1; }\n",
    )
    .unwrap();
    let out = dir.join("app");
    let ok = Command::new("gcc")
        .args(["-g", "-O0", "-fno-inline", "-Wl,--build-id=sha1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?
        .success();
    ok.then_some(out)
}

struct Elf {
    build_id: String,
    /// (memory start, memory limit, file offset) of the text segment, "loaded" somewhere.
    mapping: (u64, u64, u64),
    /// A runtime address inside each of main, alpha, hot.
    addrs: HashMap<String, u64>,
}

fn inspect(path: &Path) -> Elf {
    inspect_symbols(path, &["main", "alpha", "hot"])
}

fn inspect_symbols(path: &Path, wanted: &[&str]) -> Elf {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let bytes = std::fs::read(path).unwrap();
    let file = object::File::parse(bytes.as_slice()).unwrap();
    let build_id: String = file
        .build_id()
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
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

/// What the agent sends for a process running `exe`: raw addresses, one mapping with the build ID;
/// plus one frame in no mapping (as when a process exits before its maps are read).
fn agent_profile(exe: &Path, elf: &Elf) -> Profile {
    let (start, limit, offset) = elf.mapping;
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let m = b.mapping(start, limit, offset, exe.to_str().unwrap(), &elf.build_id);
    let l = |b: &mut ProfileBuilder, f: &str| b.raw_location(m, elf.addrs[f]);
    let (lm, la, lh) = (l(&mut b, "main"), l(&mut b, "alpha"), l(&mut b, "hot"));
    let orphan = b.raw_location(0, 0x7f00_dead_0000);
    b.add_sample(&[lh, la, lm], &[9, 90], &[]);
    b.add_sample(&[la, lm], &[1, 10], &[]);
    b.add_sample(&[orphan], &[2, 20], &[]);
    b.finish()
}

/// The `/api/v1/symbolization` entry for `build_id`.
fn binary<'a>(v: &'a Value, build_id: &str) -> &'a Value {
    v["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["build_id"] == build_id)
        .unwrap_or_else(|| panic!("no {build_id} in {v}"))
}

/// Issue 3 ("truthful stacks"): a profile pushed before its binary's debuginfo shows why its
/// frames are unnamed; once the debuginfo is uploaded, the same stored profile shows the names.
#[tokio::test]
async fn stored_profile_is_resymbolized_when_debuginfo_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile(dir.path()) else {
        eprintln!("SKIPPED: gcc is not available to build the test program");
        return;
    };
    let elf = inspect(&exe);
    let app = open(&dir.path().join("data"));
    push(&app, &agent_profile(&exe, &elf)).await;

    let before = flame_names(&app).await;
    let unnamed: Vec<&String> = before.iter().filter(|n| n.starts_with("app+0x")).collect();
    assert_eq!(unnamed.len(), 3, "{before:?}");
    for n in &unnamed {
        assert!(
            n.ends_with(" (no symbols: debuginfo not uploaded)"),
            "{n:?}"
        );
    }
    assert!(
        before.contains(
            &"0x7f00dead0000 (no symbols: address in no known mapping (process exited?))"
                .to_owned()
        ),
        "{before:?}"
    );
    for f in ["main", "alpha", "hot"] {
        assert!(!before.contains(&f.to_owned()), "{before:?}");
    }

    let stats = get(&app, "/api/v1/symbolization").await;
    assert_eq!(stats["profiles"], 1, "{stats}");
    let b = binary(&stats, &elf.build_id);
    assert_eq!(b["file"], exe.to_str().unwrap());
    assert_eq!(b["frames"]["symbolized"], 0, "{b}");
    assert_eq!(b["frames"]["unsymbolized"]["no_debuginfo"], 3, "{b}");
    // cpu ns through the binary's frames: main 100 + alpha 100 + hot 90.
    assert_eq!(b["samples"]["unsymbolized"]["no_debuginfo"], 290, "{b}");
    let orphan = binary(&stats, "");
    assert_eq!(
        orphan["frames"]["unsymbolized"]["no_mapping"], 1,
        "{orphan}"
    );
    assert_eq!(
        orphan["samples"]["unsymbolized"]["no_mapping"], 20,
        "{orphan}"
    );

    assert_eq!(
        put_debuginfo(&app, &elf.build_id, &std::fs::read(&exe).unwrap()).await,
        StatusCode::CREATED
    );

    let after = flame_names(&app).await;
    for f in ["main", "alpha", "hot"] {
        assert!(after.contains(&f.to_owned()), "{after:?}");
    }
    assert!(
        !after.iter().any(|n| n.contains("debuginfo not uploaded")),
        "{after:?}"
    );
    let stats = get(&app, "/api/v1/symbolization").await;
    let b = binary(&stats, &elf.build_id);
    assert_eq!(b["frames"]["symbolized"], 3, "{b}");
    assert_eq!(b["samples"]["symbolized"], 290, "{b}");
    assert_eq!(b["frames"]["unsymbolized"], serde_json::json!({}), "{b}");

    // The outcomes are counted for Prometheus too.
    let (_, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for line in [
        "kiln_server_symbolization_frames_total{reason=\"no_debuginfo\"}",
        "kiln_server_symbolization_frames_total{reason=\"symbolized\"}",
        "kiln_server_symbolization_frames_total{reason=\"no_mapping\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

/// A stripped binary uploaded without separate debuginfo: its frames say so.
#[tokio::test]
async fn stripped_binary_frames_say_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile(dir.path()) else {
        eprintln!("SKIPPED: gcc is not available to build the test program");
        return;
    };
    let elf = inspect(&exe);
    let stripped = dir.path().join("app.stripped");
    let ok = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: strip (binutils) is not available");
        return;
    }
    let app = open(&dir.path().join("data"));
    assert_eq!(
        put_debuginfo(&app, &elf.build_id, &std::fs::read(&stripped).unwrap()).await,
        StatusCode::CREATED
    );
    push(&app, &agent_profile(&exe, &elf)).await;
    let names = flame_names(&app).await;
    let unnamed: Vec<&String> = names.iter().filter(|n| n.starts_with("app+0x")).collect();
    assert_eq!(unnamed.len(), 3, "{names:?}");
    for n in unnamed {
        assert!(
            n.ends_with(" (no symbols: stripped, no debuginfo)"),
            "{n:?}"
        );
    }
    let stats = get(&app, "/api/v1/symbolization").await;
    let b = binary(&stats, &elf.build_id);
    assert_eq!(b["frames"]["unsymbolized"]["stripped"], 3, "{b}");
}

/// Runs `cmd`, `false` when it is missing or fails.
fn run(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// A stripped executable plus its separate debug file (`objcopy --only-keep-debug`, `strip
/// --strip-all`, `--add-gnu-debuglink`), uploaded as `?kind=debuginfo`: names and lines come back.
#[tokio::test]
async fn stripped_binary_resolves_through_separate_debuginfo() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile(dir.path()) else {
        eprintln!("SKIPPED: gcc is not available to build the test program");
        return;
    };
    let elf = inspect(&exe);
    let debug = dir.path().join("app.debug");
    let stripped = dir.path().join("app.stripped");
    let debuglink = format!("--add-gnu-debuglink={}", debug.display());
    let ok = run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug))
        && run(Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&exe))
        && run(Command::new("objcopy").arg(&debuglink).arg(&stripped));
    if !ok {
        eprintln!("SKIPPED: objcopy/strip (binutils) are not available");
        return;
    }
    let app = open(&dir.path().join("data"));
    let put = |kind: &'static str, path: PathBuf| {
        let app = app.clone();
        let id = elf.build_id.clone();
        async move {
            let req = Request::put(format!("/debuginfo/v1/{id}{kind}"))
                .header(header::CONTENT_ENCODING, "zstd")
                .body(Body::from(
                    zstd::encode_all(std::fs::read(path).unwrap().as_slice(), 3).unwrap(),
                ))
                .unwrap();
            send(&app, req).await.0
        }
    };
    assert_eq!(put("", stripped.clone()).await, StatusCode::CREATED);
    push(&app, &agent_profile(&exe, &elf)).await;
    // Only the stripped executable so far.
    let names = flame_names(&app).await;
    assert!(
        names
            .iter()
            .any(|n| n.ends_with(" (no symbols: stripped, no debuginfo)")),
        "{names:?}"
    );
    let (status, _) = send(
        &app,
        Request::get(format!("/debuginfo/v1/{}?kind=debuginfo", elf.build_id))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A debug file of another build refused; a bad kind refused.
    assert_eq!(
        put("?kind=bogus", debug.clone()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        put("?kind=debuginfo", debug.clone()).await,
        StatusCode::CREATED
    );
    let info = get(
        &app,
        &format!("/debuginfo/v1/{}?kind=debuginfo", elf.build_id),
    )
    .await;
    assert_eq!(info["size"], std::fs::metadata(&debug).unwrap().len());

    let names = flame_names(&app).await;
    for f in ["main", "alpha", "hot"] {
        assert!(names.contains(&f.to_owned()), "{names:?}");
    }
    // Lines too: the pprof export carries file:line from the debug file's DWARF.
    let (status, body) = send(
        &app,
        Request::get("/api/v1/pprof").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = kiln_proto::codec::decode_profile(&body, 1 << 26).unwrap();
    let mut lines = HashMap::new();
    for loc in &p.location {
        for line in &loc.line {
            let f = p
                .function
                .iter()
                .find(|f| f.id == line.function_id)
                .unwrap();
            lines.insert(
                p.str(f.name).to_owned(),
                (p.str(f.filename).to_owned(), line.line),
            );
        }
    }
    // app.c: hot is on line 1, alpha on line 2, main on line 3.
    for (f, want) in [("hot", 1), ("alpha", 2), ("main", 3)] {
        let (file, line) = &lines[f];
        assert!(file.ends_with("app.c"), "{f}: {file}");
        assert_eq!(*line, want, "{f}: {lines:?}");
    }
}

/// Kills the debuginfod server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nothing uploaded, but a real debuginfod server (Debian's `debuginfod -F` over a directory)
/// holds the stripped executable and its debug file: the server fetches both in the background
/// (asked at ingest or by the first query) and names the frames; a build ID debuginfod does not
/// know says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_from_debuginfod_on_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    if !run(Command::new("debuginfod").arg("--version")) {
        eprintln!("SKIPPED: debuginfod is not installed (apt-get install debuginfod)");
        return;
    }
    let Some(exe) = compile(dir.path()) else {
        eprintln!("SKIPPED: gcc is not available to build the test program");
        return;
    };
    let elf = inspect(&exe);
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let stripped = served.join("app");
    let ok = run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(served.join("app.debug")))
        && run(Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&exe));
    assert!(ok, "objcopy/strip failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Child(
        Command::new("debuginfod")
            .arg("-F")
            .arg(&served)
            .arg("-p")
            .arg(port.to_string())
            .arg("-d")
            .arg(dir.path().join("debuginfod.sqlite"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    // Wait until it has scanned the directory.
    let probe = format!("{url}/buildid/{}/debuginfo", elf.build_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if reqwest::get(&probe)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "debuginfod never served {probe}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let mut config = ServerConfig::with_data_dir(dir.path().join("data"));
    config.debuginfod_urls = vec![url];
    let app = router(AppState::open(config).unwrap());
    let mut profile = agent_profile(&exe, &elf);
    // One more binary, unknown to debuginfod.
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
    push(&app, &profile).await;
    profile = b.finish();
    push(&app, &profile).await;

    // Fetched in the background (queries never wait for it): poll until the names appear.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let names = flame_names(&app).await;
        let named = ["main", "alpha", "hot"]
            .iter()
            .all(|f| names.contains(&(*f).to_owned()));
        let missed = names.contains(
            &"libunknown.so+0x234 (no symbols: no debuginfo uploaded or on debuginfod)".to_owned(),
        );
        if named && missed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "debuginfod's files never arrived: {names:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stats = get(&app, "/api/v1/symbolization").await;
    let b = binary(&stats, &elf.build_id);
    assert_eq!(b["frames"]["symbolized"], 3, "{b}");
    let unknown = binary(&stats, &"ab".repeat(20));
    assert_eq!(
        unknown["frames"]["unsymbolized"]["debuginfod_miss"], 1,
        "{unknown}"
    );
}

/// A Go binary (`go build`; Go's linker writes `.symtab`, and `-B` a GNU build ID): its frames
/// are named from Go's symbol table, package-qualified (`main.hot`).
#[tokio::test]
async fn go_binary_frames_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.go");
    std::fs::write(
        &src,
        "package main\n\nimport \"os\"\n\n//go:noinline\nfunc hot(n int) int {\n\ts := 0\n\tfor i := 0; i < n; i++ {\n\t\ts += i\n\t}\n\treturn s\n}\n\nfunc main() { os.Exit(hot(len(os.Args)) & 1) }\n",
    )
    .unwrap();
    let exe = dir.path().join("goapp");
    let built = Command::new("go")
        .args([
            "build",
            "-ldflags=-B=0x0123456789abcdef0123456789abcdef01234567",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!("SKIPPED: go is not available to build the test program");
        return;
    }
    let elf = inspect_symbols(&exe, &["main.hot", "main.main"]);
    let app = open(&dir.path().join("data"));
    assert_eq!(
        put_debuginfo(&app, &elf.build_id, &std::fs::read(&exe).unwrap()).await,
        StatusCode::CREATED
    );
    let (start, limit, offset) = elf.mapping;
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let m = b.mapping(start, limit, offset, exe.to_str().unwrap(), &elf.build_id);
    let hot = b.raw_location(m, elf.addrs["main.hot"]);
    let main = b.raw_location(m, elf.addrs["main.main"]);
    b.add_sample(&[hot, main], &[1, 10], &[]);
    push(&app, &b.finish()).await;
    let names = flame_names(&app).await;
    assert!(names.contains(&"main.hot".to_owned()), "{names:?}");
    assert!(names.contains(&"main.main".to_owned()), "{names:?}");
}
