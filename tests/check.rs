//! `kiln check` (damage report of a data directory, exit 0/1/2) and the data-directory lock as
//! the binary shows them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_proto::ProfileBuilder;
use kiln_storage_server::store::{Labels, NewProfile};
use kiln_storage_server::{AppState, ServerConfig};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn check(dir: &Path) -> Output {
    kiln()
        .args(["check", "--data-dir"])
        .arg(dir)
        .env_remove("KILN_DATA_DIR")
        .output()
        .unwrap()
}

/// A data directory with `n` profiles in its WAL; returns the segment file.
fn data_dir(dir: &Path, n: i64) -> PathBuf {
    let state = AppState::open(ServerConfig::with_data_dir(dir)).unwrap();
    let now = kiln_storage_server::query::time::now_nanos();
    for i in 0..n {
        let mut b = ProfileBuilder::new(&[("samples", "count")]);
        let f = b.function("main", "main.c");
        let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
        b.add_sample(&[l], &[i + 1], &[]);
        state
            .store
            .append(vec![NewProfile {
                labels: Labels::new(vec![("service_name".into(), "app".into())]),
                time_nanos: now + i,
                profile_types: vec!["samples:count".into()],
                pprof: kiln_proto::encode_profile_gzip(&b.finish()),
            }])
            .unwrap();
    }
    let segments = ServerConfig::with_data_dir(dir).segments_dir();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_reports_damage_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let seg = data_dir(dir.path(), 10);

    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("10 readable records"),
        "{}",
        text(&out.stdout)
    );

    // One flipped byte in the middle of the segment.
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let out = check(dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stdout.contains(&name), "names the segment: {stdout}");
    assert!(stdout.contains("9 readable records"), "{stdout}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "check changes nothing");

    let out = check(&dir.path().join("missing"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a directory"));
}

#[test]
fn check_and_a_second_server_refuse_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    data_dir(dir.path(), 1);
    let held = AppState::open(ServerConfig::with_data_dir(dir.path())).unwrap();
    let holder = format!("pid {}", std::process::id());

    let out = check(dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&holder), "names the holder: {stderr}");

    let out = kiln()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("KILN_DATA_DIR")
        .env_remove("KILN_LISTEN")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&holder), "names the holder: {stderr}");

    drop(held);
    assert_eq!(check(dir.path()).status.code(), Some(0));
}
