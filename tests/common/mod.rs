//! What the root-level end-to-end tests share: building a workload with gcc, running the real
//! `kiln up` on free ports until it is healthy, and reading the JSON API.

#![allow(dead_code)] // each test binary uses its own subset

pub mod push;
pub mod wait;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wait::{POLL, poll_until, wait_until, within};

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    fn geteuid() -> u32;
}

/// For tests named `root_*` (ignored by default; `scripts/test.sh` runs them as root): fails with a
/// clear message instead of a confusing error further in when run without root.
pub fn require_root() {
    assert!(
        unsafe { geteuid() == 0 },
        "this test needs root (eBPF, perf, namespaces); run it as root: cargo test -- --ignored root_"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Compiles `tests/workloads/<source>` with `gcc <flags>` into `dir/<name>` (the name is what the
/// agent reports as comm and service_name).
pub fn build_workload(dir: &Path, source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(source);
    let bin = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed to build {source}");
    bin
}

/// A running `kiln up`; Ctrl-C (then SIGKILL after 10 s) when dropped.
pub struct KilnUp {
    child: Child,
    pub base: String,
    pub metrics_port: u16,
}

impl KilnUp {
    /// Starts `kiln up` at 99 Hz with 2 s windows on free ports and waits until it is healthy.
    pub fn start(data_dir: &Path) -> KilnUp {
        Self::start_with(data_dir, 99, &[])
    }

    /// [`KilnUp::start`] sampling at `frequency_hz`, with `extra_args` for `kiln up`.
    pub fn start_with(data_dir: &Path, frequency_hz: u32, extra_args: &[&str]) -> KilnUp {
        let port = free_port();
        let metrics_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--frequency",
                &frequency_hz.to_string(),
                "--window",
                "2s",
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            // No upload budget: the first file the agent uploads is usually kiln's own executable
            // (~180 MB in a debug build), which would spend minutes of the default budget before a
            // test's workload gets its turn — and a workload that has exited is never offered again.
            .args(["--upload-budget", "off"])
            .args(extra_args)
            .arg("--data-dir")
            .arg(data_dir)
            // `RUST_LOG=kiln_agent=debug cargo test …` to see more.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln up starts");
        let up = KilnUp {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics_port,
        };
        wait_until(within(60), "kiln up answers /healthz", || {
            is_healthy(&format!("{}/healthz", up.base))
        });
        up
    }
}

impl Drop for KilnUp {
    fn drop(&mut self) {
        // SIGINT first: `kiln up` flushes and exits cleanly on Ctrl-C.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let exited = poll_until(Instant::now() + Duration::from_secs(10), POLL, || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `url` answers 2xx now.
pub fn is_healthy(url: &str) -> bool {
    reqwest::blocking::get(url).is_ok_and(|r| r.status().is_success())
}

/// The value of one series (name with its labels, exactly as exposed, e.g.
/// `kiln_agent_push_success_total`) on the Prometheus page at `url`; `None` if absent or unreachable.
pub fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::blocking::get(url).ok()?.text().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Percent-encodes what a label selector needs in a query string.
pub fn enc(s: &str) -> String {
    s.replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace('=', "%3D")
}

pub fn get_json(url: &str) -> Value {
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
pub fn find_chain<'a>(node: &'a Value, chain: &[&str]) -> Option<&'a Value> {
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

pub fn follow<'a>(node: &'a Value, rest: &[&str]) -> Option<&'a Value> {
    let Some((first, tail)) = rest.split_first() else {
        return Some(node);
    };
    let child = node["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == *first)?;
    follow(child, tail)
}

/// Polls the flame graph at `flame_url` (60 s at most) until `main -> alpha -> beta -> hot` holds
/// most of its samples and at least `min_total_nanos` have arrived; returns the flame graph and the
/// `hot` node, or panics with the last flame graph seen.
pub fn wait_for_hot_chain(flame_url: &str, min_total_nanos: u64) -> (Value, Value) {
    let mut last = Value::Null;
    let found = poll_until(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let flame = get_json(flame_url);
            if let Some(hot) = find_chain(&flame["root"], &["main", "alpha", "beta", "hot"]) {
                let hot = hot.clone();
                if hot["total"].as_u64().unwrap_or(0) * 2
                    > flame["total"].as_u64().unwrap_or(u64::MAX)
                    && flame["total"].as_u64().unwrap_or(0) >= min_total_nanos
                {
                    return Some((flame, hot));
                }
            }
            last = flame;
            None
        },
    );
    found.unwrap_or_else(|| {
        panic!(
            "the flame graph never showed main -> alpha -> beta -> hot with most samples in hot:\n{}",
            serde_json::to_string_pretty(&last).unwrap()
        )
    })
}
