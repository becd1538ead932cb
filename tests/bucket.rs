//! Several `kiln server`s on one bucket of a real distributed object store (a Ceph RADOS gateway,
//! started by scripts/test.sh with scripts/ceph-rgw-up.sh): ingest on one, query from another
//! within the freshness bound; `kill -9` during an upload and during a compaction; the object
//! store stopped mid-ingest. Every check ends by comparing what each server shows with what was
//! acknowledged: nothing lost, nothing counted twice.
//!
//! The tests are `#[ignore]`d (a plain `cargo test` lists them as ignored); scripts/test.sh runs
//! them with `-- --ignored s3_` and KILN_TEST_S3_ENDPOINT / KILN_TEST_S3_DIR set. They take turns
//! (one lock), since the outage test stops the gateway they all use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::push::{expected, push, try_stored};
use common::wait::{poll_until, wait_for, wait_until, within};
use common::{free_port, metric};
use kiln_storage_server::store::bucket::client::Bucket;

/// How long the object store is down in the outage test: the scenario (a minute is longer
/// than a sync round, the request retries and the freshness bound together, so uploads really do
/// pile up and wait).
const OUTAGE: Duration = Duration::from_secs(60);

/// The outage test stops the gateway every test uses: it runs alone (a write turn); the others
/// share the gateway and run side by side (read turns).
static TURN: RwLock<()> = RwLock::new(());

fn take_turn() -> std::sync::RwLockReadGuard<'static, ()> {
    TURN.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take_gateway() -> std::sync::RwLockWriteGuard<'static, ()> {
    TURN.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn endpoint() -> String {
    std::env::var("KILN_TEST_S3_ENDPOINT").expect(
        "KILN_TEST_S3_ENDPOINT is not set: start scripts/ceph-rgw-up.sh DIR PORT and export it (scripts/test.sh does)",
    )
}

fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "testkey".into()),
        ("AWS_SECRET_ACCESS_KEY", "testsecret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test/{name}-{}-{nanos}", std::process::id())
}

/// The test bucket under `prefix`, to look at what the servers wrote.
fn bucket(prefix: &str) -> Bucket {
    let env = aws_env();
    Bucket::from_url_with(
        &format!("s3://profiles/{prefix}"),
        env.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .unwrap()
}

/// One `kiln server --storage s3://profiles/PREFIX` (SIGKILLed when dropped).
struct Server {
    child: Child,
    port: u16,
    data: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    fn start(data: &Path, prefix: &str, extra: &[&str]) -> Server {
        let mut s = Server {
            child: Command::new("true").spawn().unwrap(),
            port: 0,
            data: data.to_owned(),
            args: [
                "--storage".to_owned(),
                format!("s3://profiles/{prefix}"),
                "--store-maintenance-interval".into(),
                "1s".into(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| (*a).to_owned()))
            .collect(),
            env: Vec::new(),
        };
        s.restart();
        s
    }

    /// Starts a server that kills itself (SIGKILL) at `point` (see `crash_point` in the bucket
    /// store): it does not wait for it to be healthy only if it dies first.
    fn start_crashing_at(data: &Path, prefix: &str, extra: &[&str], point: &str) -> Server {
        let mut s = Server::start(data, prefix, extra);
        s.env = vec![("KILN_BUCKET_CRASH_AT".into(), point.into())];
        s.restart();
        s
    }

    /// True once the process has ended (by itself).
    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// (Re)starts the server on a new port and waits until it is healthy.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port = free_port();
        self.child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .envs(aws_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("kiln server starts");
        let url = self.url("/healthz");
        wait_until(within(60), "kiln server to become healthy", || {
            common::is_healthy(&url)
        });
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// This server's id in bucket keys and leases.
    fn id(&self) -> String {
        std::fs::read_to_string(self.data.join("segments/bucket/server-id"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn outbox_has_block(&self) -> bool {
        std::fs::read_dir(self.data.join("segments/bucket/outbox")).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "blk"))
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `server` holds exactly the acknowledged profiles, each once.
fn wait_exact(server: &Server, acked: &[u64], deadline: Instant, who: &str) {
    let want = expected(acked);
    let mut last = BTreeMap::new();
    let got = poll_until(deadline, Duration::from_millis(200), || {
        last = try_stored(server.port).unwrap_or_default();
        (last == want).then_some(())
    });
    if got.is_none() {
        let missing: Vec<&u64> = want.keys().filter(|k| !last.contains_key(*k)).collect();
        let doubled: Vec<(&u64, &i64)> = last
            .iter()
            .filter(|(k, v)| want.get(*k).is_some_and(|w| w != *v))
            .collect();
        panic!(
            "{who}: {} acknowledged, {} shown; missing {missing:?}; wrong counts {doubled:?}",
            want.len(),
            last.len()
        );
    }
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_two_servers_one_bucket_fresh_within_the_bound() {
    let _turn = take_turn();
    let prefix = unique_prefix("fresh");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The default freshness bound (15 s).
    let a = Server::start(da.path(), &prefix, &[]);
    let b = Server::start(db.path(), &prefix, &[]);
    let client = reqwest::blocking::Client::new();
    let mut acked = Vec::new();
    for (i, (to, from, name)) in [(&a, &b, "a → b"), (&b, &a, "b → a")]
        .into_iter()
        .enumerate()
    {
        let first = i as u64 * 100;
        for n in first..first + 20 {
            assert!(push(&client, to.port, n), "push {n}");
            acked.push(n);
        }
        let pushed = Instant::now();
        // At once on the server that took them (head included).
        assert_eq!(
            try_stored(to.port).unwrap(),
            expected(&acked),
            "{name}: the ingesting server"
        );
        // Within the bound on the other.
        wait_exact(from, &acked, pushed + Duration::from_secs(15), name);
        eprintln!(
            "freshness {name}: {:.1} s (bound 15 s)",
            pushed.elapsed().as_secs_f64()
        );
    }
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_three_servers_kill_9_during_upload_and_compaction_lose_nothing() {
    let _turn = take_turn();
    let prefix = unique_prefix("kill9");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Sync every second (freshness 3 s), one WAL segment per push, leases of a dead server
    // expire after 5 s: kills land in uploads and compactions, and recovery is quick.
    let args = [
        "--storage-freshness",
        "3s",
        "--wal-segment-bytes",
        "1",
        "--storage-lease",
        "5s",
    ];
    let mut servers: Vec<Server> = dirs
        .iter()
        .map(|d| Server::start(d.path(), &prefix, &args))
        .collect();
    let client = reqwest::blocking::Client::new();
    let mut acked = Vec::new();
    let mut next = 0u64;
    let mut push_to = |s: &Server, n: usize, acked: &mut Vec<u64>| {
        for _ in 0..n {
            assert!(push(&client, s.port, next), "push {next}");
            acked.push(next);
            next += 1;
        }
    };

    // 1. kill -9 server 0 while a block is in its outbox (being uploaded).
    push_to(&servers[0], 30, &mut acked);
    wait_until(within(30), "a block in server 0's outbox", || {
        servers[0].outbox_has_block()
    });
    servers[0].kill_9();
    servers[0].restart();

    // 2. kill -9 whichever server holds a compaction lease, while it holds it.
    let look = bucket(&prefix);
    let ids: Vec<String> = servers.iter().map(Server::id).collect();
    let mut killed_during_compaction = false;
    for round in 0..5 {
        push_to(&servers[round % 2], 20, &mut acked);
        let holder = poll_until(within(20), Duration::from_millis(10), || {
            // A held lease epoch (released ones stay behind, held by no server).
            let leases = look.list("leases", None).ok()?;
            leases
                .iter()
                .filter(|k| k.contains("compact-"))
                .find_map(|key| {
                    let body = look.get(key).ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                    let holder = v["holder"].as_str()?;
                    ids.iter().position(|id| id == holder)
                })
        });
        if let Some(h) = holder {
            servers[h].kill_9();
            eprintln!("round {round}: killed server {h} during a compaction");
            servers[h].restart();
            killed_during_compaction = true;
            break;
        }
    }
    assert!(killed_during_compaction, "no compaction was seen to kill");
    push_to(&servers[2], 20, &mut acked);

    // Every server ends up showing each acknowledged profile exactly once.
    for (i, s) in servers.iter().enumerate() {
        wait_exact(s, &acked, within(60), &format!("server {i}"));
    }
    // And compaction did run to completion (a record covering others exists).
    let compacted = wait_for(within(60), "a completed compaction", || {
        let metas = look.list("meta", None).ok()?;
        metas
            .iter()
            .filter_map(|k| look.get(k).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .find(|v| v["covers"].as_array().is_some_and(|c| !c.is_empty()))
    });
    eprintln!(
        "{} profiles acknowledged; a compacted block covers {} others",
        acked.len(),
        compacted["covers"].as_array().unwrap().len()
    );
    for (i, s) in servers.iter().enumerate() {
        wait_exact(
            s,
            &acked,
            within(30),
            &format!("server {i} after compaction"),
        );
    }
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_object_store_outage_delays_uploads_and_loses_nothing() {
    let _turn = take_gateway();
    let ceph = PathBuf::from(std::env::var("KILN_TEST_S3_DIR").expect(
        "KILN_TEST_S3_DIR (the directory given to scripts/ceph-rgw-up.sh) is needed to stop and restart the gateway",
    ));
    let prefix = unique_prefix("outage");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--storage-freshness", "3s"];
    let a = Server::start(da.path(), &prefix, &args);
    let b = Server::start(db.path(), &prefix, &args);
    let client = reqwest::blocking::Client::new();
    let mut acked: Vec<u64> = (0..10).collect();
    for &i in &acked {
        assert!(push(&client, a.port, i));
    }
    wait_exact(&b, &acked, within(30), "before the outage");

    // Stop the gateway.
    let pid_file = ceph.join("run/ceph-client.rgw.a.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(Command::new("kill").arg(&pid).status().unwrap().success());
    let ep = endpoint();
    wait_until(within(30), "the gateway to stop answering", || {
        reqwest::blocking::get(&ep).is_err()
    });
    let down = Instant::now();
    let mut next = 1000u64;
    let mut saw_backlog = (false, false);
    // Ingest goes on through the outage (one push every 200 ms: a steady trickle, not a flood).
    while down.elapsed() < OUTAGE {
        assert!(push(&client, a.port, next), "push {next} during the outage");
        acked.push(next);
        next += 1;
        if !saw_backlog.0 {
            let health = reqwest::blocking::get(a.url("/healthz")).unwrap();
            assert!(
                health.status().is_success(),
                "healthy while the bucket is down"
            );
            saw_backlog.0 = health.text().unwrap().contains("upload_backlog_blocks=");
        }
        if !saw_backlog.1 {
            saw_backlog.1 = metric(
                &a.url("/metrics"),
                "kiln_server_store_upload_backlog_blocks",
            )
            .is_some_and(|v| v > 0.0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(saw_backlog.0, "/healthz reported the upload backlog");
    assert!(saw_backlog.1, "/metrics reported the upload backlog");
    // Everything acknowledged is readable where it was taken, outage or not.
    assert_eq!(try_stored(a.port).unwrap(), expected(&acked));

    // Bring the gateway back: the backlog drains and the other server sees everything.
    let started = Command::new(ceph.join("rgw-start.sh")).status().unwrap();
    assert!(started.success(), "gateway restarted");
    let back = Instant::now();
    wait_exact(&b, &acked, within(90), "after the outage");
    wait_until(within(30), "the backlog to drain", || {
        metric(
            &a.url("/metrics"),
            "kiln_server_store_upload_backlog_blocks",
        ) == Some(0.0)
    });
    eprintln!(
        "outage {:?}: {} profiles acknowledged during it, all visible on the other server {:.1} s after the gateway returned",
        OUTAGE,
        next - 1000,
        back.elapsed().as_secs_f64()
    );
}

/// Block keys without a record (orphans), and records another record covers (retired inputs not
/// deleted yet), in the bucket under `look` now.
fn garbage(look: &Bucket) -> Option<(Vec<String>, Vec<String>)> {
    use kiln_storage_server::store::bucket::layout;
    let blocks = look.list(layout::BLOCKS, None).ok()?;
    let metas = look.list(layout::META, None).ok()?;
    let mut records = BTreeMap::new();
    for m in &metas {
        let body = look.get(m).ok()?;
        let r: layout::BlockRecord = serde_json::from_slice(&body).ok()?;
        records.insert(r.key.clone(), r);
    }
    let orphans = blocks
        .iter()
        .filter_map(|b| layout::key_of_block(b))
        .filter(|k| !records.contains_key(*k))
        .map(str::to_owned)
        .collect();
    let visible: Vec<&str> = layout::visible(&records)
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    let covered = records
        .keys()
        .filter(|k| !visible.contains(&k.as_str()))
        .cloned()
        .collect();
    Some((orphans, covered))
}

/// A server is `kill -9`ed at `point` (it SIGKILLs itself there, so the kill lands exactly between
/// two object-store writes); a second server on the bucket and the first one restarted must end
/// up showing every acknowledged profile exactly once, and the maintenance pass must clean up
/// what the crash left (`left` says what that is and checks it was really left).
fn crash_at(point: &str, left: &str, was_left: fn(&(Vec<String>, Vec<String>)) -> bool) {
    let _turn = take_turn();
    let prefix = unique_prefix(point);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One block per push, sync every second, maintenance every second, leases of a dead server
    // expire after 3 s, replaced and orphaned blocks deleted after 2 s.
    let args = [
        "--storage-freshness",
        "3s",
        "--wal-segment-bytes",
        "1",
        "--storage-lease",
        "3s",
        "--storage-grace",
        "2s",
    ];
    let mut a = Server::start_crashing_at(da.path(), &prefix, &args, point);
    let client = reqwest::blocking::Client::new();
    let (mut acked, mut next) = (Vec::new(), 0u64);
    // Pushes go on until the crash point is reached (a push it interrupts is not acknowledged).
    wait_until(within(120), &format!("server A to reach {point}"), || {
        if a.exited() {
            return true;
        }
        if push(&client, a.port, next) {
            acked.push(next);
        }
        next += 1;
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    let look = bucket(&prefix);
    let after_crash = garbage(&look).expect("bucket readable");
    assert!(
        was_left(&after_crash),
        "{point}: the crash should leave {left}: orphans {:?}, covered {:?}",
        after_crash.0,
        after_crash.1
    );
    eprintln!(
        "{point}: {} acknowledged before the crash; left {} orphaned blocks, {} covered records",
        acked.len(),
        after_crash.0.len(),
        after_crash.1.len()
    );
    // A second server takes over; the first comes back without the crash point.
    let b = Server::start(db.path(), &prefix, &args);
    a.env.clear();
    a.restart();
    for _ in 0..5 {
        assert!(push(&client, b.port, next), "push {next}");
        acked.push(next);
        next += 1;
    }
    wait_exact(&a, &acked, within(60), &format!("{point}: server A"));
    wait_exact(&b, &acked, within(60), &format!("{point}: server B"));
    // The crash's leftovers are collected: no orphaned block, no retired input left.
    let mut last = after_crash;
    let clean = poll_until(within(60), Duration::from_millis(500), || {
        last = garbage(&look)?;
        (last.0.is_empty() && last.1.is_empty()).then_some(())
    });
    assert!(
        clean.is_some(),
        "{point}: garbage left: orphans {:?}, covered {:?}",
        last.0,
        last.1
    );
    // And collecting it lost nothing.
    wait_exact(
        &a,
        &acked,
        within(30),
        &format!("{point}: server A after GC"),
    );
    wait_exact(
        &b,
        &acked,
        within(30),
        &format!("{point}: server B after GC"),
    );
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_crash_after_compaction_output_before_commit_leaves_an_orphan_that_is_collected() {
    crash_at(
        "compact-before-commit",
        "the compacted block without its record",
        |(orphans, _)| !orphans.is_empty(),
    );
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_crash_after_compaction_commit_leaves_inputs_that_are_retired() {
    crash_at(
        "compact-after-commit",
        "the compaction's inputs beside it",
        |(_, covered)| !covered.is_empty(),
    );
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_crash_while_retiring_inputs_leaves_an_orphan_that_is_collected() {
    crash_at(
        "retire-after-record",
        "a retired input's block without its record",
        |(orphans, _)| !orphans.is_empty(),
    );
}
