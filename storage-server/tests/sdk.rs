//! The real Pyroscope SDKs against a real Kiln server: PyPI `pyroscope-io` 1.x (push API) and
//! 0.8.x (`/ingest`), and npm `@pyroscope/nodejs` (`/ingest`), each profiling a busy function for a
//! few seconds with static and dynamic tags, a bearer token and (for one) a tenant. The samples
//! must come back through the query API with their labels and the busy function's name.
//!
//! The SDKs are installed by `scripts/sdk-setup.sh` (CI runs it). Without them this test prints
//! why it skips, unless `KILN_REQUIRE_SDKS=1` (set by scripts/test.sh), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kiln_storage_server::{Server, ServerConfig, router};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "sdk-secret";
const TENANT: &str = "sdk-tenant";
/// How long each program keeps its busy function running: past one 10 s upload window.
const SPIN_SECONDS: &str = "11";
/// Upper bound for one program, start-up and final flush included.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One SDK program to run.
struct Sdk {
    /// Also its `service_name`.
    app: &'static str,
    /// argv[0] and the script.
    program: PathBuf,
    script: PathBuf,
    tenant: Option<&'static str>,
    /// The `sdk` tag it sets.
    sdk_tag: &'static str,
    /// Which sample type carries its busy function's time.
    profile_type: &'static str,
    /// A substring of the busy function's frame name.
    function: &'static str,
    /// The `__name__`s its uploads get.
    metrics: &'static [&'static str],
    /// Profile types (one per pprof sample type) that must be queryable.
    types: &'static [&'static str],
}

fn sdks() -> Vec<Sdk> {
    let root = repo_root();
    let venvs = root.join("target/sdk-venvs");
    let busy_py = root.join("tests/sdk/python/busy.py");
    vec![
        Sdk {
            app: "kiln-sdk-py1",
            program: venvs.join("py1/bin/python"),
            script: busy_py.clone(),
            tenant: Some(TENANT),
            sdk_tag: "python-1",
            profile_type: "cpu:nanoseconds",
            function: "kiln_busy_work",
            metrics: &["process_cpu"],
            types: &["cpu:nanoseconds"],
        },
        Sdk {
            app: "kiln-sdk-py08",
            program: venvs.join("py08/bin/python"),
            script: busy_py,
            tenant: None,
            sdk_tag: "python-0",
            profile_type: "cpu:nanoseconds",
            function: "kiln_busy_work",
            metrics: &["process_cpu"],
            types: &["cpu:nanoseconds"],
        },
        Sdk {
            app: "kiln-sdk-node",
            program: PathBuf::from("node"),
            script: root.join("tests/sdk/node/busy.js"),
            tenant: None,
            sdk_tag: "nodejs",
            profile_type: "wall:nanoseconds",
            function: "kilnBusyWork",
            // Its wall profile (with cpu time) and its heap profile.
            metrics: &["memory", "wall"],
            types: &[
                "cpu:nanoseconds",
                "inuse_objects:count",
                "inuse_space:bytes",
                "samples:count",
                "wall:nanoseconds",
            ],
        },
    ]
}

/// Why the SDKs cannot run here, if they cannot.
fn missing() -> Option<String> {
    let root = repo_root();
    let mut why = Vec::new();
    for venv in ["py1", "py08"] {
        let python = root.join("target/sdk-venvs").join(venv).join("bin/python");
        if !python.exists() {
            why.push(format!("{} is missing", python.display()));
        }
    }
    let node_sdk = root.join("tests/sdk/node/node_modules/@pyroscope/nodejs");
    if !node_sdk.exists() {
        why.push(format!("{} is missing", node_sdk.display()));
    }
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        why.push("node is not on PATH".into());
    }
    (!why.is_empty()).then(|| format!("{} (run scripts/sdk-setup.sh)", why.join("; ")))
}

async fn query(app: &Router, tenant: Option<&str>, uri: &str) -> Value {
    let mut req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{uri}: {body:?}");
    serde_json::from_slice(&body).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn names(node: &Value, out: &mut Vec<String>) {
    out.push(node["name"].as_str().unwrap_or("").to_owned());
    for c in node["children"].as_array().into_iter().flatten() {
        names(c, out);
    }
}

/// Waits for `child`, killing it after `PROGRAM_TIMEOUT`; returns its output.
async fn finish(what: &str, mut child: Child) -> String {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(status.success(), "{what} failed ({status}):\n{text}");
            return text;
        }
        if started.elapsed() > PROGRAM_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {PROGRAM_TIMEOUT:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_pyroscope_sdks_round_trip() {
    if let Some(why) = missing() {
        if std::env::var("KILN_REQUIRE_SDKS").is_ok_and(|v| v == "1") {
            panic!("KILN_REQUIRE_SDKS=1 but the Pyroscope SDKs are not installed: {why}");
        }
        eprintln!("skipping the Pyroscope SDK test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.auth_token = Some(TOKEN.into());
    let server = Server::bind(config).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let app = router(server.state().clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let started = Instant::now();
    let sdks = sdks();
    let children: Vec<_> = sdks
        .iter()
        .map(|s| {
            let mut cmd = Command::new(&s.program);
            cmd.arg(&s.script)
                .args([url.as_str(), s.app, SPIN_SECONDS])
                .args(s.tenant)
                .env("KILN_SDK_TOKEN", TOKEN)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", s.program.display()));
            (s.app, child)
        })
        .collect();
    for (app_name, child) in children {
        let out = finish(app_name, child).await;
        eprintln!("{app_name}: {}", out.trim());
    }
    eprintln!("SDK programs finished in {:?}", started.elapsed());

    let all = "from=now-10m&until=now";
    // The SDK-tenant data is only visible to that tenant, the rest only to the default tenant.
    let services = |tenant| {
        let app = &app;
        async move {
            strings(
                &query(
                    app,
                    tenant,
                    &format!("/api/v1/labels/service_name/values?{all}"),
                )
                .await["values"],
            )
        }
    };
    assert_eq!(services(Some(TENANT)).await, ["kiln-sdk-py1"]);
    assert_eq!(
        services(None).await,
        ["kiln-sdk-node", "kiln-sdk-py08"],
        "default tenant"
    );

    for s in &sdks {
        let sel = |extra: &str| format!(r#"{{service_name="{}"{extra}}}"#, s.app);
        let values = |label: &str| {
            let (app, tenant, sel) = (&app, s.tenant, sel(""));
            let label = label.to_owned();
            async move {
                strings(
                    &query(
                        app,
                        tenant,
                        &format!("/api/v1/labels/{label}/values?{all}&query={}", enc(&sel)),
                    )
                    .await["values"],
                )
            }
        };
        assert_eq!(values("__name__").await, s.metrics, "{}", s.app);
        let types = query(
            &app,
            s.tenant,
            &format!("/api/v1/profile_types?{all}&query={}", enc(&sel(""))),
        )
        .await;
        assert_eq!(strings(&types["profile_types"]), s.types, "{}", s.app);
        for ty in s.types {
            let fg = query(
                &app,
                s.tenant,
                &format!(
                    "/api/v1/flamegraph?{all}&profile_type={ty}&query={}",
                    enc(&sel(""))
                ),
            )
            .await;
            assert!(fg["total"].as_i64().unwrap() > 0, "{} {ty}: {fg}", s.app);
        }
        assert_eq!(values("sdk").await, [s.sdk_tag], "{}", s.app);
        assert_eq!(values("region").await, ["test-eu"], "{}", s.app);
        // The dynamic tag (tag_wrapper / wrapWithLabels) became a series label too.
        assert!(
            values("phase").await.contains(&"spin".to_owned()),
            "{}",
            s.app
        );

        let fg = query(
            &app,
            s.tenant,
            &format!(
                "/api/v1/flamegraph?{all}&profile_type={}&query={}",
                s.profile_type,
                enc(&sel(r#",phase="spin""#))
            ),
        )
        .await;
        assert!(fg["total"].as_i64().unwrap() > 0, "{}: {fg}", s.app);
        let mut n = Vec::new();
        names(&fg["root"], &mut n);
        assert!(
            n.iter().any(|name| name.contains(s.function)),
            "{}: no {} in {n:?}",
            s.app,
            s.function
        );
        let top = query(
            &app,
            s.tenant,
            &format!(
                "/api/v1/top?{all}&profile_type={}&query={}",
                s.profile_type,
                enc(&sel(""))
            ),
        )
        .await;
        eprintln!(
            "{}: {} {} in {} profiles; top function {}",
            s.app, fg["total"], s.profile_type, fg["profiles"], top["functions"][0]["name"]
        );
    }

    let _ = stop_tx.send(());
    serving.await.unwrap().unwrap();
}
