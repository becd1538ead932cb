//! End to end on this machine for code without frame pointers: the real `kiln up` profiles a
//! `gcc -O2 -fomit-frame-pointer` workload (main -> alpha -> beta -> hot) and the flame graph must show the
//! whole chain by name, which only the agent's DWARF (.eh_frame) unwinding can produce.
//!
//! Needs root (to load eBPF) and gcc: ignored by a plain `cargo test`; `scripts/test.sh` runs it as
//! root (`-- --ignored root_`).

mod common;

use std::process::Command;

use common::{KilnUp, build_workload, enc, require_root, wait_for_hot_chain};

#[test]
#[ignore = "needs root"]
fn root_kiln_up_unwinds_code_without_frame_pointers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let workload = build_workload(
        dir.path(),
        "nofp_chain.c",
        "kiln-e2e-nofp",
        &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
    );
    let kiln = KilnUp::start(&dir.path().join("data"));
    let base = &kiln.base;

    let status = Command::new(&workload)
        .args(["6", "0"])
        .status()
        .expect("workload runs");
    assert!(status.success() || status.code() == Some(1));

    let query = r#"{service_name="kiln-e2e-nofp"}"#;
    let flame_url = format!(
        "{base}/api/v1/flamegraph?query={}&from=now-10m&until=now",
        enc(query)
    );
    // >= 1 s of samples (99 Hz): the 6 s run gets less than a whole CPU on a busy 2-CPU CI box.
    let (flame, hot) = wait_for_hot_chain(&flame_url, 1_000_000_000);
    let total = flame["total"].as_u64().unwrap();
    let hot_total = hot["total"].as_u64().unwrap();
    eprintln!("no-FP workload: {total} ns sampled, {hot_total} ns in main->alpha->beta->hot");
    // Without DWARF unwinding this chain does not exist at all (the FP walk loses alpha and beta).
    assert!(
        hot_total as f64 / total as f64 > 0.8,
        "hot, under its whole chain, should hold most of the workload's samples"
    );
}
