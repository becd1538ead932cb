//! End to end on this machine: the real `kiln up` (server + agent with the eBPF sampler loaded into
//! this kernel) profiles a workload with a known call chain, and the HTTP API, the pprof download and
//! `go tool pprof` must all show that chain by name.
//!
//! Needs root (to load eBPF), gcc, and Debian's golang-go for the `go tool pprof` step; CI runs it as
//! root after `.ci/run` installs both. Elsewhere it prints why it skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGINT first: `kiln up` flushes and exits cleanly on Ctrl-C.
        unsafe { libc_kill(self.0.id() as i32, 2) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    fn geteuid() -> u32;
}

fn is_root() -> bool {
    unsafe { geteuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn build_workload(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/callchain.c");
    // The name is what the agent reports as comm and service_name.
    let bin = dir.join("kiln-e2e-work");
    let status = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed to build the workload");
    bin
}

fn get_json(url: &str) -> Value {
    let resp = reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let text = resp.text().unwrap();
    assert!(status.is_success(), "GET {url} -> {status}: {text}");
    // Whole-machine flame graphs nest deeper than serde_json's default limit of 128 levels (each
    // frame is two: an object in a `children` array; kernel + user stacks reach ~250 frames).
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut de)
        .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// Finds `chain` as consecutive frames somewhere in the tree; returns the node of its last frame.
fn find_chain<'a>(node: &'a Value, chain: &[&str]) -> Option<&'a Value> {
    let children = node["children"].as_array()?;
    for child in children {
        if child["name"] == chain[0]
            && let Some(found) = follow(child, &chain[1..])
        {
            return Some(found);
        }
        if let Some(found) = find_chain(child, chain) {
            return Some(found);
        }
    }
    None
}

fn follow<'a>(node: &'a Value, rest: &[&str]) -> Option<&'a Value> {
    let Some((first, tail)) = rest.split_first() else {
        return Some(node);
    };
    let child = node["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == *first)?;
    follow(child, tail)
}

#[test]
fn kiln_up_profiles_a_known_call_chain() {
    if !is_root() {
        eprintln!(
            "SKIP kiln_up_profiles_a_known_call_chain: needs root to load the eBPF sampler (CI runs as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = build_workload(dir.path());
    let port = free_port();
    let metrics_port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let kiln = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--frequency",
            "99",
            "--window",
            "2s",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln up starts");
    let _kiln = KillOnDrop(kiln);

    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::blocking::get(format!("{base}/healthz"))
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        assert!(
            Instant::now() < deadline,
            "kiln up did not become healthy within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let status = Command::new(&workload)
        .arg("6")
        .status()
        .expect("workload runs");
    assert!(status.success());

    // Wait for the agent's window to close, the push to land and the debuginfo upload to finish.
    let query = r#"{service_name="kiln-e2e-work"}"#;
    let enc = |s: &str| {
        s.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    };
    let flame_url = format!(
        "{base}/api/v1/flamegraph?query={}&from=now-10m&until=now",
        enc(query)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (flame, hot) = loop {
        let flame = get_json(&flame_url);
        if let Some(hot) = find_chain(&flame["root"], &["main", "alpha", "beta", "hot"]) {
            let hot = hot.clone();
            // Enough of the workload has arrived once hot holds most of it and at least 1.5 s of CPU
            // (150 samples at 99 Hz) is in: the 6 s run gets less than 6 s of CPU on a loaded machine.
            if hot["total"].as_u64().unwrap_or(0) * 2 > flame["total"].as_u64().unwrap_or(u64::MAX)
                && flame["total"].as_u64().unwrap_or(0) >= 1_500_000_000
            {
                break (flame, hot);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the flame graph never showed main -> alpha -> beta -> hot with most samples in hot:\n{}",
            serde_json::to_string_pretty(&flame).unwrap()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let total = flame["total"].as_u64().unwrap();
    let hot_total = hot["total"].as_u64().unwrap();
    eprintln!("workload: {total} ns sampled, {hot_total} ns in main->alpha->beta->hot");
    assert!(
        hot_total as f64 / total as f64 > 0.8,
        "hot should hold most of the workload's samples"
    );
    // The workload ran for 6 s of one CPU: 99 Hz * 6 s = ~594 samples of ~10.1 ms each.
    assert!(
        total <= 8_000_000_000,
        "more CPU time than the workload could burn: {total} ns"
    );

    // The whole machine, split by process: the workload is one of the top-level frames.
    let by_process = get_json(&format!(
        "{base}/api/v1/flamegraph?group_by=service_name&from=now-10m"
    ));
    let workload_node = by_process["root"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "service_name=kiln-e2e-work")
        .unwrap_or_else(|| {
            panic!("no service_name=kiln-e2e-work frame under the root: {by_process}")
        });
    assert!(
        find_chain(workload_node, &["main", "alpha", "beta", "hot"]).is_some(),
        "the workload's frame should hold its chain: {workload_node}"
    );

    let values = get_json(&format!(
        "{base}/api/v1/labels/service_name/values?from=now-10m"
    ));
    assert!(
        values["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "kiln-e2e-work"),
        "{values}"
    );

    let top = get_json(&format!(
        "{base}/api/v1/top?query={}&from=now-10m",
        enc(query)
    ));
    let first = &top["functions"][0];
    assert_eq!(
        first["name"], "hot",
        "hot should top the self-time table: {top}"
    );

    // The pprof download, read by Go's own pprof tool.
    let pprof_url = format!("{base}/api/v1/pprof?query={}&from=now-10m", enc(query));
    let body = reqwest::blocking::get(&pprof_url).unwrap().bytes().unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "the pprof download is gzipped");
    if Command::new("go").arg("version").output().is_err() {
        panic!("`go` is not installed: .ci/run installs Debian's golang-go for this step");
    }
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", &pprof_url])
        .output()
        .expect("go tool pprof runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hot_line = stdout
        .lines()
        .find(|l| l.split_whitespace().last() == Some("hot"));
    assert!(
        hot_line.is_some(),
        "go tool pprof -top does not list hot:\n{stdout}"
    );
    eprintln!("go tool pprof -top:\n{stdout}");

    // Both components report their throughput.
    let agent_metrics = reqwest::blocking::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let received = agent_metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_agent_samples_received_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        received >= 500.0,
        "agent /metrics should count the samples it received:\n{agent_metrics}"
    );
    let server_metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        server_metrics.contains("kiln_"),
        "server /metrics:\n{server_metrics}"
    );
}
