//! End to end on this machine for code without frame pointers: the real `kiln up` profiles a
//! `gcc -O2 -fomit-frame-pointer` workload (main -> alpha -> beta -> hot) and the flame graph must show the
//! whole chain by name, which only the agent's DWARF (.eh_frame) unwinding can produce.
//!
//! Needs root (to load eBPF) and gcc; CI runs it as root. Elsewhere it prints why it skips.

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
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/nofp_chain.c");
    // The name is what the agent reports as comm and service_name.
    let bin = dir.join("kiln-e2e-nofp");
    // -O2 without frame pointers: only .eh_frame can find hot's callers.
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
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
fn kiln_up_unwinds_code_without_frame_pointers() {
    if !is_root() {
        eprintln!(
            "SKIP kiln_up_unwinds_code_without_frame_pointers: needs root to load the eBPF sampler (CI runs as root)"
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
        .args(["6", "0"])
        .status()
        .expect("workload runs");
    assert!(status.success() || status.code() == Some(1));

    let query = r#"{service_name="kiln-e2e-nofp"}"#;
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
        // >= 1 s of samples (99 Hz): the 6 s run gets less than a whole CPU on a busy 2-CPU CI box.
        if let Some(hot) = find_chain(&flame["root"], &["main", "alpha", "beta", "hot"]) {
            let hot = hot.clone();
            if hot["total"].as_u64().unwrap_or(0) * 2 > flame["total"].as_u64().unwrap_or(u64::MAX)
                && flame["total"].as_u64().unwrap_or(0) >= 1_000_000_000
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
    eprintln!("no-FP workload: {total} ns sampled, {hot_total} ns in main->alpha->beta->hot");
    // Without DWARF unwinding this chain does not exist at all (the FP walk loses alpha and beta).
    assert!(
        hot_total as f64 / total as f64 > 0.8,
        "hot, under its whole chain, should hold most of the workload's samples"
    );
}
