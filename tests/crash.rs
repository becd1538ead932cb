//! Durability under `kill -9`: a `kiln server` receives pushes and is SIGKILLed right after one is
//! acknowledged (while its storage engine is rotating the WAL and flushing it into blocks every
//! second); after a restart every acknowledged profile is there exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::free_port;
use common::push::{profile, push_body, stored};

/// Kills (SIGKILL) the server if a check fails midway.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        // Every push gets its own WAL segment and the engine flushes each second, so kills land
        // before, during and after flushes into blocks.
        .args([
            "--wal-segment-bytes",
            "1",
            "--store-maintenance-interval",
            "1s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("kiln server starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{port}/healthz");
    while Instant::now() < deadline {
        if reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kiln server did not become healthy");
}

/// Pushes profiles `from..` until `deadline`, returning the acknowledged ones. Returns right after
/// a 200 so that the caller's SIGKILL follows an acknowledgement immediately.
fn push_until(port: u16, from: u64, deadline: Instant) -> Vec<u64> {
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/push.v1.PusherService/Push");
    let mut acked = Vec::new();
    let mut i = from;
    loop {
        let resp = client
            .post(&url)
            .header("content-type", "application/proto")
            .body(push_body(&format!("svc{}", i % 3), &profile(i)))
            .send()
            .expect("server up while pushing");
        assert!(resp.status().is_success(), "push {i}: {}", resp.status());
        acked.push(i);
        i += 1;
        if Instant::now() >= deadline {
            return acked;
        }
    }
}

fn block_files(dir: &Path) -> usize {
    let blocks = dir.join("segments/blocks");
    std::fs::read_dir(blocks).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "blk"))
            .count()
    })
}

#[test]
fn acknowledged_pushes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    let mut next = 0;
    // Different lengths so the kills fall at different points of the once-a-second flush cycle.
    for (round, millis) in [1300, 1700, 2500].into_iter().enumerate() {
        let port = free_port();
        let mut server = start(dir.path(), port);
        let got = push_until(port, next, Instant::now() + Duration::from_millis(millis));
        // SIGKILL, right after the last 200.
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        next = got.last().map_or(next, |l| l + 1);
        acked.extend(got);
        eprintln!(
            "round {round}: {} acknowledged so far, {} block files",
            acked.len(),
            block_files(dir.path())
        );
    }
    let port = free_port();
    let _server = start(dir.path(), port);
    let stored = stored(port);
    for &i in &acked {
        assert_eq!(
            stored.get(&i),
            Some(&(i as i64 + 1)),
            "profile {i} acknowledged but missing or duplicated after kill -9"
        );
    }
    assert_eq!(stored.len(), acked.len(), "nothing unacknowledged appears");
    assert!(
        block_files(dir.path()) > 0,
        "the engine flushed into blocks during the test"
    );
}
