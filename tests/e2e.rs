//! End to end on this machine: the real `kiln up` (server + agent with the eBPF sampler loaded into
//! this kernel) profiles a workload with a known call chain, and the HTTP API, the pprof download and
//! `go tool pprof` must all show that chain by name.
//!
//! Needs root (to load eBPF), gcc, and Debian's golang-go for the `go tool pprof` step: ignored by a
//! plain `cargo test`; `scripts/test.sh` runs it as root (`-- --ignored root_`) after `.ci/run`
//! installs both.

mod common;
mod pods;

use std::process::Command;

use common::{KilnUp, build_workload, enc, find_chain, get_json, require_root, wait_for_hot_chain};

#[test]
#[ignore = "needs root"]
fn root_kiln_up_profiles_a_known_call_chain() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let workload = build_workload(
        dir.path(),
        "callchain.c",
        "kiln-e2e-work",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let kiln = KilnUp::start(&dir.path().join("data"));
    let base = &kiln.base;

    let status = Command::new(&workload)
        .arg("6")
        .status()
        .expect("workload runs");
    assert!(status.success());

    // Wait for the agent's window to close, the push to land and the debuginfo upload to finish.
    let query = r#"{service_name="kiln-e2e-work"}"#;
    let flame_url = format!(
        "{base}/api/v1/flamegraph?query={}&from=now-10m&until=now",
        enc(query)
    );
    // Enough of the workload has arrived once hot holds most of it and at least 1.5 s of CPU
    // (150 samples at 99 Hz) is in: the 6 s run gets less than 6 s of CPU on a loaded machine.
    let (flame, hot) = wait_for_hot_chain(&flame_url, 1_500_000_000);
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
    let agent_metrics =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", kiln.metrics_port))
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
    let stored = server_metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_server_ingest_profiles_total{outcome=\"ok\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        stored >= 1.0,
        "server /metrics should count the profiles it stored:\n{server_metrics}"
    );
}
