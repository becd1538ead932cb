//! The hostile-client suite (issue 10, point 8): the real `kiln server`, started with small limits,
//! is attacked the way a shared cluster's worst clients would, while a steady "good" client pushes
//! real pprof profiles and records every one the server acknowledged.
//!
//! `hostile_clients_get_documented_answers_and_cost_others_nothing` runs the attacks one after the
//! other against one server (one start for all: the whole binary takes well under 3 minutes), each
//! attack in its own function, and reports every attack that failed (not just the first). The
//! byte flips need their own server, stopped and restarted: `byte_flips_on_disk_cost_only_what_is_corrupt`.
//!
//! Asserted throughout:
//! - every answer is the documented status (docs/API.md): 400 malformed input (garbage, extreme or
//!   overflowing values, out-of-range indices, times outside [now − retention, now + 10 min], bad
//!   dates), 404 unknown (another tenant's build ID), 413 too large before or after decompression on
//!   every path (gzip bombs, zstd bombs, the zero-padded ELF, a profile split into too many series),
//!   429 + `Retry-After` over a tenant's ingest rate, 503 + `Retry-After` for queries over the query
//!   queue; for zstd on paths that do not take zstd at all, 415, or on the Connect querier
//!   Connect's `unimplemented` (HTTP 404, as connect-go and Pyroscope send it) (the body is then
//!   never inflated);
//! - the server's RSS stays under [`RSS_BOUND_MIB`] (sampled from /proc/PID/status every 100 ms);
//! - the good client keeps being served: every push answered 200, p99 under [`GOOD_P99`]; a fresh
//!   connection during the idle/slow-connection attack is answered within [`FRESH_CONNECTION_MAX`];
//! - every profile the good client got acknowledged is intact afterwards (its own leaf function
//!   carries exactly its value), and on disk: every acknowledged profile outside the flipped WAL
//!   record and block section is intact, the loss is what `/metrics` reports, `kiln check` reports
//!   the damage, and maintenance goes on.
//!
//! The defects of issue 10 and the test (or attack function here) that covers each:
//! - one flipped byte in the active WAL segment truncates the rest of it; in a sealed segment drops
//!   the rest: `byte_flips_on_disk_cost_only_what_is_corrupt` (WAL flip: at most one record lost)
//! - one flipped byte in a block's data section silently hides data while label listings show it;
//!   maintenance then fails forever: `byte_flips_on_disk_cost_only_what_is_corrupt` (loss equals the
//!   reported loss, listings agree with queries, new blocks are still written)
//! - debuginfo global, first-writer-wins; `kind=debuginfo` takes over: `debuginfo_is_per_tenant`
//! - a zero-padded 512 MiB ELF arriving as 19 KB is stored whole: `debuginfo_is_per_tenant`
//!   (padded ELF bomb → 413)
//! - `GET` tells whether another tenant's build ID exists: `debuginfo_is_per_tenant` (404)
//! - a 389 KB push split by distinct sample labels grows the server by ~490 MB; a few concurrent ones
//!   OOM it: `flood_of_distinct_series` (413, RSS bound)
//! - merging quadratic in same-named frames; a flame graph over many profiles slows ingest:
//!   `heavy_and_abandoned_queries_during_ingest` (good client p99, 503 + Retry-After)
//! - a query whose client went away keeps running: `heavy_and_abandoned_queries_during_ingest`
//!   (queries in flight back to 0, cancellations counted)
//! - no idle or header-read timeout, ~1,100 idle connections lock every client out:
//!   `idle_and_slow_connections`
//! - negative and extreme sample values stored: `extreme_values`
//! - out-of-range sample-label, `period_type`, comment, `default_sample_type` indices accepted:
//!   `out_of_range_indices`
//! - `from=20231340` read as Unix seconds; timestamps outside retention acknowledged:
//!   `times_outside_the_window`
//! - push and `/ingest` apply different rules and encodings; a querier bomb gets 400:
//!   `bombs_on_every_path`, `garbage_on_every_path` (both ingest paths and the querier)
//! - per-tenant ingest rate limits: `per_tenant_rate_limit`
//! - some tests cannot fail, root-only tests pass by returning, sleeps to wait: tests/cli.rs, the
//!   `root_*` tests run by scripts/test.sh as root, tests/common/wait.rs
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::wait::{poll_until, wait_until, within};
use common::{enc, free_port};
use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::{Label, Profile, ValueType};
use serde_json::Value;

/// The server's resident memory may never exceed this while it is attacked. Its steady state here
/// is ~100-200 MiB (debug build, a few tens of thousands of profiles, query buffers); the attacks
/// that used to blow it up (split bombs, heavy queries) each cost hundreds of MiB on their own.
const RSS_BOUND_MIB: u64 = 600;
/// 99th percentile of the good client's push latency over the whole run (a noisy 2-CPU machine
/// running a debug build; before the fixes, idle connections stalled it indefinitely).
const GOAL_NOTE: &str = "p99 of the good client's pushes";
const GOOD_P99: Duration = Duration::from_secs(2);
/// Longest wait of a fresh connection's request while ~1,200 idle and slow connections are open
/// (the server's header-read timeout is set to 1 s here, so slots free up within about that).
const FRESH_CONNECTION_MAX: Duration = Duration::from_secs(3);
/// Idle connections opened at once: more than the server's descriptor limit (set to 1024 below).
const IDLE_CONNECTIONS: usize = 1200;
/// The server's retention here: profile times older than this are refused.
const RETENTION_DAYS: i64 = 7;

// ---------------------------------------------------------------------------------------------
// The server under attack

unsafe extern "C" {
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
    fn getrlimit(resource: i32, rlim: *mut [u64; 2]) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}
const RLIMIT_NOFILE: i32 = 7;

/// A `kiln server` child process, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `kiln server` on `data` with the suite's small limits plus `extra` flags, with an
    /// open-file limit of 1024 (soft and hard: a typical default, so that descriptor exhaustion is
    /// real), and waits until it answers /healthz.
    fn start(data: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args([
                "--retention",
                &format!("{RETENTION_DAYS}d"),
                "--max-body-bytes",
                "1048576",
                "--max-decompressed-bytes",
                "16777216",
                "--store-maintenance-interval",
                "1s",
            ])
            .args(extra)
            // Limits of the fixes of issue 10, given as environment variables: a server without
            // them still starts (and then fails the attack the limit is for).
            .env("KILN_INGEST_RATE_BYTES", "4MiB")
            .env("KILN_INGEST_RATE_PROFILES", "500")
            .env("KILN_INGEST_MAX_FUTURE_SKEW", "10m")
            .env("KILN_QUERY_CONCURRENCY", "1")
            .env("KILN_QUERY_QUEUE", "1")
            .env("KILN_QUERY_QUEUE_TIMEOUT", "2s")
            .env("KILN_HTTP_HEADER_TIMEOUT", "1s")
            .env("KILN_DEBUGINFO_MAX_FILE_BYTES", "64MiB")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if setrlimit(RLIMIT_NOFILE, &[1024, 1024]) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // PR_SET_PDEATHSIG = 1, SIGKILL = 9: no server outlives a killed test run.
                prctl(1, 9, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("kiln server starts");
        let server = Server { child, port };
        let health = format!("{}/healthz", server.base());
        wait_until(within(60), "kiln server answers /healthz", || {
            common::is_healthy(&health)
        });
        server
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: nothing is flushed, the WAL keeps what was acknowledged.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn metric(&self, series: &str) -> Option<f64> {
        common::metric(&format!("{}/metrics", self.base()), series)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets this process open the attack's sockets (the hard limit is usually far higher).
fn raise_own_fd_limit() {
    let mut lim = [0u64; 2];
    // SAFETY: valid pointers to two u64s (struct rlimit on 64-bit Linux).
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) == 0 {
            lim[0] = lim[1];
            setrlimit(RLIMIT_NOFILE, &lim);
        }
    }
}

/// Resident set size of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Samples the server's RSS every 100 ms until stopped; keeps the maximum.
struct RssWatch {
    max_mib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let max_mib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max_mib, stop) = (max_mib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = rss_mib(pid) {
                        max_mib.fetch_max(m, Ordering::Relaxed);
                    }
                    // The sampling period (this thread's workload), not a wait for a condition.
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssWatch {
            max_mib,
            stop,
            thread: Some(thread),
        }
    }

    fn max(&self) -> u64 {
        self.max_mib.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests, by hand (the root package has no protobuf or async dependency of its own)

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One series of a push: its labels besides `__name__`, and its raw profiles.
type Series<'a> = (Vec<(&'a str, String)>, Vec<Vec<u8>>);

/// A Pyroscope `PushRequest`.
fn push_body(series: &[Series]) -> Vec<u8> {
    let mut req = Vec::new();
    for (labels, profiles) in series {
        let mut s = Vec::new();
        let name = [("__name__", "process_cpu".to_owned())];
        for (k, v) in name.iter().chain(labels) {
            let mut pair = Vec::new();
            field(&mut pair, 1, k.as_bytes());
            field(&mut pair, 2, v.as_bytes());
            field(&mut s, 1, &pair);
        }
        for p in profiles {
            let mut sample = Vec::new();
            field(&mut sample, 1, p);
            field(&mut s, 2, &sample);
        }
        field(&mut req, 1, &s);
    }
    req
}

fn one_series(service: &str, profile: Vec<u8>) -> Vec<u8> {
    push_body(&[(vec![("service_name", service.to_owned())], vec![profile])])
}

/// A profile whose only stack ends in the unique leaf `f{i}`, worth `i + 1` samples, stamped now.
fn good_profile(i: u64) -> Vec<u8> {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.time(now_nanos(), 1_000_000_000);
    let main = b.function("main", "main.c");
    let leaf = b.function(&format!("f{i}"), "leaf.c");
    let l_main = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l_leaf = b.symbolized_location(0, 0x20 + i, &[(leaf, 2)]);
    let v = i as i64 + 1;
    b.add_sample(&[l_leaf, l_main], &[v, v * 10_000_000], &[]);
    kiln_proto::encode_profile_gzip(&b.finish())
}

/// A well-formed profile, for mutating into a bad one.
fn base_profile() -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.time(now_nanos(), 1_000_000_000);
    let main = b.function("main", "main.c");
    let l = b.symbolized_location(0, 0x10, &[(main, 1)]);
    b.add_sample(&[l], &[1, 10_000_000], &[]);
    b.finish()
}

/// A profile meant to be expensive to merge: `stacks` stacks 24 frames deep in which the same few
/// names recur under different parents (the case that made merging quadratic).
fn heavy_profile(seed: u64, stacks: u64) -> Vec<u8> {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.time(now_nanos(), 1_000_000_000);
    let names: Vec<u64> = (0..8)
        .map(|n| b.function(&format!("step{n}"), "work.c"))
        .collect();
    let roots: Vec<u64> = (0..64)
        .map(|n| b.function(&format!("handler{n}"), "main.c"))
        .collect();
    for s in 0..stacks {
        // 32 variants of each stack across profiles: ~20k distinct nodes to merge in all.
        let x = (seed % 32)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(s.wrapping_mul(1442695040888963407));
        let mut locs = Vec::new();
        for d in 0..23u64 {
            let f = names[((x >> (d * 2)) & 7) as usize];
            locs.push(b.symbolized_location(0, 0x1000 + d * 0x100 + ((x >> d) & 0xff), &[(f, 1)]));
        }
        let root = roots[(x % 64) as usize];
        locs.push(b.symbolized_location(0, 0x10 + (x % 64), &[(root, 1)]));
        b.add_sample(&locs, &[1, 10_000_000], &[]);
    }
    kiln_proto::encode_profile_gzip(&b.finish())
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An answer: status, `Retry-After` (if any) and body text.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(300).collect();
        write!(
            f,
            "{} (Retry-After {:?}) {body}",
            self.status, self.retry_after
        )
    }
}

fn send(req: reqwest::blocking::RequestBuilder) -> Answer {
    let a = try_send(req);
    assert!(a.status != 0, "the server did not answer: {}", a.body);
    a
}

/// [`send`], with no answer (timeout, connection refused) as status 0.
fn try_send(req: reqwest::blocking::RequestBuilder) -> Answer {
    let resp = match req.send() {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                status: 0,
                retry_after: None,
                body: format!("no answer: {e}"),
            };
        }
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().unwrap_or_default();
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Asserts `answer` has `status`; a 4xx must also say what is wrong.
fn expect(what: &str, answer: &Answer, status: u16) {
    assert_eq!(
        answer.status, status,
        "{what}: expected {status}, got {answer:?}"
    );
    // `{"error": ...}`, or Connect's `{"code": ..., "message": ...}` on the querier paths.
    if (400..500).contains(&status) && status != 404 {
        assert!(
            (answer.body.contains("\"error\"") || answer.body.contains("\"message\""))
                && answer.body.len() > 15,
            "{what}: a {status} must say what is wrong: {}",
            answer.body
        );
    }
}

fn push(base: &str, tenant: &str, body: Vec<u8>) -> Answer {
    send(
        http()
            .post(format!("{base}/push.v1.PusherService/Push"))
            .header("content-type", "application/proto")
            .header("x-scope-orgid", tenant)
            .body(body),
    )
}

fn ingest(base: &str, tenant: &str, query: &str, body: Vec<u8>) -> Answer {
    send(
        http()
            .post(format!("{base}/ingest?{query}"))
            .header("x-scope-orgid", tenant)
            .body(body),
    )
}

/// GET as `tenant`, retrying politely (after `Retry-After`) while the query queue is full.
fn get_json(base: &str, tenant: &str, path_and_query: &str) -> Value {
    let url = format!("{base}{path_and_query}");
    let deadline = within(60);
    loop {
        let a = send(http().get(&url).header("x-scope-orgid", tenant));
        if a.status == 503 && Instant::now() < deadline {
            let secs: u64 = a.retry_after.and_then(|s| s.parse().ok()).unwrap_or(1);
            // Told to come back later: the wait is the server's instruction, bounded by the deadline.
            std::thread::sleep(Duration::from_secs(secs.min(2)));
            continue;
        }
        assert_eq!(a.status, 200, "GET {url}: {a:?}");
        let mut de = serde_json::Deserializer::from_str(&a.body);
        de.disable_recursion_limit();
        return serde::Deserialize::deserialize(&mut de).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Bombs, built without holding the inflated bytes: a byte-aligned deflate (or zstd) chunk of zeros
// repeated (each repetition only refers back to zeros), wrapped in a gzip member.

const MIB: usize = 1 << 20;

/// A gzip member that inflates to `mib` MiB of zeros after `prefix`.
fn gzip_bomb(prefix: &[u8], mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let compress = |c: &mut Compress, input: &[u8], flush| {
        let mut out = Vec::with_capacity(input.len() / 2 + 1024);
        let mut consumed = 0;
        loop {
            out.reserve(64 * 1024);
            let before_in = c.total_in();
            c.compress_vec(&input[consumed..], &mut out, flush).unwrap();
            consumed += (c.total_in() - before_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    };
    let mut c = Compress::new(Compression::best(), false);
    let head = compress(&mut c, prefix, FlushCompress::Sync);
    let zeros = vec![0u8; MIB];
    let chunk = compress(&mut c, &zeros, FlushCompress::Sync);
    let tail = compress(&mut c, &[], FlushCompress::Finish);
    let mut crc = flate2::Crc::new();
    crc.update(prefix);
    for _ in 0..mib {
        crc.update(&zeros);
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&head);
    for _ in 0..mib {
        out.extend_from_slice(&chunk);
    }
    out.extend_from_slice(&tail);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&((prefix.len() + mib * MIB) as u32).to_le_bytes());
    out
}

/// zstd frames that decompress to `prefix` then `mib` MiB of zeros.
fn zstd_bomb(prefix: &[u8], mib: usize) -> Vec<u8> {
    let mut out = zstd::bulk::compress(prefix, 1).unwrap();
    let zeros = zstd::bulk::compress(&vec![0u8; MIB], 1).unwrap();
    for _ in 0..mib {
        out.extend_from_slice(&zeros);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The good client

/// Pushes one small real profile after another (each with its own leaf `f{i}` worth `i + 1`
/// samples, in four series), recording what was acknowledged and how long each push took.
struct GoodClient {
    acked: Arc<Mutex<Vec<u64>>>,
    /// (when it was sent, latency, status)
    pushes: Arc<Mutex<Vec<(Instant, Duration, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GoodClient {
    fn start(base: String) -> GoodClient {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, pushes, stop) = (acked.clone(), pushes.clone(), stop.clone());
            std::thread::spawn(move || {
                // An agent's connection: kept alive between pushes.
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let url = format!("{base}/push.v1.PusherService/Push");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = one_series(&format!("good{}", i % 4), good_profile(i));
                    let sent = Instant::now();
                    let status = client
                        .post(&url)
                        .header("content-type", "application/proto")
                        .body(body)
                        .send()
                        .map_or(0, |r| r.status().as_u16());
                    pushes.lock().unwrap().push((sent, sent.elapsed(), status));
                    if status == 200 {
                        acked.lock().unwrap().push(i);
                    }
                    i += 1;
                    // The client's own pace: ~20 pushes a second.
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        GoodClient {
            acked,
            pushes,
            stop,
            thread: Some(thread),
        }
    }

    /// The 99th percentile latency and the non-200 answers of the pushes sent since `since`.
    fn since(&self, since: Instant) -> (Duration, Vec<u16>, usize) {
        let pushes = self.pushes.lock().unwrap();
        let mut lat: Vec<Duration> = pushes
            .iter()
            .filter(|p| p.0 >= since)
            .map(|p| p.1)
            .collect();
        lat.sort();
        let bad = pushes
            .iter()
            .filter(|p| p.0 >= since && p.2 != 200)
            .map(|p| p.2)
            .collect();
        let p99 = lat
            .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        (p99, bad, lat.len())
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts the good client was served during the attack that started at `since`.
fn assert_good_client_served(good: &GoodClient, since: Instant, attack: &str) {
    let (p99, bad, n) = good.since(since);
    eprintln!("[{attack}] good client: {n} pushes, p99 {p99:?}, non-200: {bad:?}");
    assert!(
        bad.is_empty(),
        "{attack}: the good client's pushes were refused or failed: {bad:?}"
    );
    assert!(
        p99 <= GOOD_P99,
        "{attack}: {GOAL_NOTE} was {p99:?} (bound {GOOD_P99:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// The attacks

/// Bombs on every path: a body over `--max-body-bytes`, gzip bombs (whole body and a profile
/// inside a push), zstd bombs, on push, `/ingest` (pprof and folded) and the querier → 413.
fn bombs_on_every_path(base: &str) {
    let t = "bomber";
    let big = vec![b'x'; 2 * MIB];
    expect("push over max-body-bytes", &push(base, t, big.clone()), 413);
    expect(
        "/ingest over max-body-bytes",
        &ingest(base, t, "name=app&format=folded", big),
        413,
    );

    // 64 MiB of zeros in ~70 KB: under the body limit, 4x the decompressed limit.
    let bomb = gzip_bomb(b"", 64);
    assert!(
        bomb.len() < MIB,
        "the bomb must pass the body limit: {} bytes",
        bomb.len()
    );
    let a = send(
        http()
            .post(format!("{base}/push.v1.PusherService/Push"))
            .header("content-type", "application/proto")
            .header("content-encoding", "gzip")
            .header("x-scope-orgid", t)
            .body(bomb.clone()),
    );
    expect("push body gzip bomb", &a, 413);
    expect(
        "gzipped raw_profile bomb inside a push",
        &push(base, t, one_series("bomb", bomb.clone())),
        413,
    );
    expect(
        "/ingest pprof gzip bomb",
        &ingest(base, t, "name=app&format=pprof", bomb.clone()),
        413,
    );
    let a = send(
        http()
            .post(format!("{base}/ingest?name=app&format=folded"))
            .header("content-encoding", "gzip")
            .header("x-scope-orgid", t)
            .body(gzip_bomb(b"a;b 1\n", 64)),
    );
    expect("/ingest folded gzip bomb", &a, 413);
    let a = send(
        http()
            .post(format!(
                "{base}/querier.v1.QuerierService/SelectMergeStacktraces"
            ))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("x-scope-orgid", t)
            .body(gzip_bomb(b"{\"labelSelector\":\"{}\"", 64)),
    );
    expect("querier (Connect) gzip bomb", &a, 413);
    // A multipart pprof upload whose profile field is a bomb.
    let mut form =
        b"--XX\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"p\"\r\n\r\n"
            .to_vec();
    form.extend_from_slice(&bomb);
    form.extend_from_slice(b"\r\n--XX--\r\n");
    let a = send(
        http()
            .post(format!("{base}/ingest?name=app"))
            .header("content-type", "multipart/form-data; boundary=XX")
            .header("x-scope-orgid", t)
            .body(form),
    );
    expect("/ingest multipart gzip bomb", &a, 413);

    // zstd: 413 where it is taken; a path that does not take zstd refuses it unread.
    let zbomb = zstd_bomb(b"", 64);
    assert!(zbomb.len() < MIB);
    for (path, ctype) in [
        ("/push.v1.PusherService/Push", "application/proto"),
        ("/ingest?name=app&format=pprof", "application/octet-stream"),
        (
            "/querier.v1.QuerierService/SelectMergeStacktraces",
            "application/json",
        ),
    ] {
        let a = send(
            http()
                .post(format!("{base}{path}"))
                .header("content-type", ctype)
                .header("content-encoding", "zstd")
                .header("x-scope-orgid", t)
                .body(zbomb.clone()),
        );
        // Connect's own answer to a compression it does not take is code `unimplemented`, which
        // the Connect protocol (and connect-go, hence Pyroscope) sends as HTTP 404.
        let unread = a.status == 415
            || (path.starts_with("/querier")
                && a.status == 404
                && a.body.contains("\"code\":\"unimplemented\""));
        assert!(
            a.status == 413 || unread,
            "zstd bomb on {path}: expected 413 (or, if zstd is not taken there, 415 / Connect's \
             unimplemented), got {a:?}"
        );
    }
    // Nothing of it was stored.
    let v = get_json(base, t, "/api/v1/labels/service_name/values?from=now-1h");
    assert_eq!(
        v["values"],
        serde_json::json!([]),
        "a refused request stores nothing"
    );
}

/// Garbage on every path → 400 naming the problem (never 422 or 500).
fn garbage_on_every_path(base: &str) {
    let t = "vandal";
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    expect("push: random bytes", &push(base, t, noise.clone()), 400);
    let a = send(
        http()
            .post(format!("{base}/push.v1.PusherService/Push"))
            .header("content-type", "application/json")
            .header("x-scope-orgid", t)
            .body("{\"series\": [{\"labels\": 7}]"),
    );
    expect("push: broken JSON", &a, 400);
    expect(
        "push: a series whose raw profile is not a pprof",
        &push(base, t, one_series("junk", noise.clone())),
        400,
    );
    let mut truncated = good_profile(1);
    truncated.truncate(truncated.len() / 2);
    expect(
        "push: truncated gzip profile",
        &push(base, t, one_series("junk", truncated.clone())),
        400,
    );
    expect(
        "/ingest pprof: random bytes",
        &ingest(base, t, "name=app&format=pprof", noise.clone()),
        400,
    );
    expect(
        "/ingest pprof: truncated gzip",
        &ingest(base, t, "name=app&format=pprof", truncated),
        400,
    );
    expect(
        "/ingest folded: a line without a count",
        &ingest(base, t, "name=app&format=folded", b"a;b;c\n".to_vec()),
        400,
    );
    let a = send(
        http()
            .post(format!("{base}/ingest?name=app"))
            .header("content-type", "multipart/form-data; boundary=XX")
            .header("x-scope-orgid", t)
            .body("--XX\r\nContent-Disposition: form-data; name=\"profile\"\r\n\r\nnot a pprof"),
    );
    expect("/ingest multipart: unterminated, not a pprof", &a, 400);
    let a = send(
        http()
            .post(format!(
                "{base}/querier.v1.QuerierService/SelectMergeStacktraces"
            ))
            .header("content-type", "application/proto")
            .header("x-scope-orgid", t)
            .body(noise),
    );
    expect("querier: random bytes", &a, 400);
    let a = send(
        http()
            .get(format!("{base}/api/v1/flamegraph?query=%7Bservice_name%3D"))
            .header("x-scope-orgid", t),
    );
    expect("flamegraph: broken selector", &a, 400);
}

/// Values no profiler produces: negative, i64::MIN, sums that overflow → 400 on both ingest paths;
/// the tenant's total never turns negative.
fn extreme_values(base: &str) {
    let t = "extremist";
    let with_values = |values: &[[i64; 2]]| {
        let mut p = base_profile();
        let s = p.sample[0].clone();
        p.sample = values
            .iter()
            .map(|v| {
                let mut s = s.clone();
                s.value = v.to_vec();
                s
            })
            .collect();
        kiln_proto::encode_profile_gzip(&p)
    };
    for (what, values) in [
        ("a negative value", vec![[-5, 10]]),
        ("i64::MIN", vec![[i64::MIN, 10]]),
        (
            "i64::MAX twice (the sum overflows)",
            vec![[i64::MAX, 1], [i64::MAX, 1]],
        ),
        ("an overflowing second column", vec![[1, i64::MAX], [1, 1]]),
    ] {
        let body = with_values(&values);
        expect(
            &format!("push: {what}"),
            &push(base, t, one_series("extreme", body.clone())),
            400,
        );
        expect(
            &format!("/ingest pprof: {what}"),
            &ingest(base, t, "name=extreme&format=pprof", body),
            400,
        );
    }
    expect(
        "/ingest folded: counts whose sum overflows",
        &ingest(
            base,
            t,
            "name=extreme&format=folded",
            b"a;b 9223372036854775807\na;c 9223372036854775807\n".to_vec(),
        ),
        400,
    );
    expect(
        "/ingest folded: a negative count",
        &ingest(base, t, "name=extreme&format=folded", b"a;b -4\n".to_vec()),
        400,
    );
    expect(
        "/ingest: sampleRate=0",
        &ingest(
            base,
            t,
            "name=extreme&format=folded&sampleRate=0",
            b"a;b 4\n".to_vec(),
        ),
        400,
    );
    let flame = get_json(
        base,
        t,
        "/api/v1/flamegraph?from=now-1h&profile_type=samples:count",
    );
    assert_eq!(
        flame["total"].as_i64(),
        Some(0),
        "nothing of the refused pushes may be stored: {flame}"
    );
}

/// Profile times outside [now − retention, now + 10 min], and dates that are not dates → 400.
fn times_outside_the_window(base: &str) {
    let t = "time-traveller";
    let at = |nanos: i64| {
        let mut p = base_profile();
        p.time_nanos = nanos;
        one_series("travel", kiln_proto::encode_profile_gzip(&p))
    };
    let day = 86_400 * 1_000_000_000i64;
    expect(
        "push: older than retention",
        &push(base, t, at(now_nanos() - (RETENTION_DAYS + 1) * day)),
        400,
    );
    expect(
        "push: an hour in the future",
        &push(base, t, at(now_nanos() + day / 24)),
        400,
    );
    expect(
        "push: 5 minutes ahead (within the skew)",
        &push(base, t, at(now_nanos() + 5 * 60 * 1_000_000_000)),
        200,
    );
    let old_secs = (now_nanos() - (RETENTION_DAYS + 1) * day) / 1_000_000_000;
    expect(
        "/ingest from older than retention",
        &ingest(
            base,
            t,
            &format!(
                "name=travel&format=folded&from={old_secs}&until={}",
                old_secs + 10
            ),
            b"a;b 1\n".to_vec(),
        ),
        400,
    );
    expect(
        "/ingest from=20231340 (no 13th month)",
        &ingest(
            base,
            t,
            "name=travel&format=folded&from=20231340",
            b"a;b 1\n".to_vec(),
        ),
        400,
    );
    let future_secs = now_nanos() / 1_000_000_000 + 3600;
    expect(
        "/ingest an hour ahead",
        &ingest(
            base,
            t,
            &format!("name=travel&format=folded&from={future_secs}"),
            b"a;b 1\n".to_vec(),
        ),
        400,
    );
}

/// Indices into the string table (and others) past its end → 400 on both ingest paths.
fn out_of_range_indices(base: &str) {
    let t = "indexer";
    let far = 1_000_000i64;
    type Mutation = Box<dyn Fn(&mut Profile)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "sample label key",
            Box::new(move |p: &mut Profile| {
                p.sample[0].label.push(Label {
                    key: far,
                    str: 1,
                    num: 0,
                    num_unit: 0,
                })
            }),
        ),
        (
            "sample label value",
            Box::new(move |p: &mut Profile| {
                p.sample[0].label.push(Label {
                    key: 1,
                    str: far,
                    num: 0,
                    num_unit: 0,
                })
            }),
        ),
        (
            "period_type",
            Box::new(move |p: &mut Profile| {
                p.period_type = Some(ValueType {
                    r#type: far,
                    unit: 1,
                })
            }),
        ),
        (
            "comment",
            Box::new(move |p: &mut Profile| p.comment = vec![far]),
        ),
        (
            "default_sample_type",
            Box::new(move |p: &mut Profile| p.default_sample_type = far),
        ),
        (
            "sample type",
            Box::new(move |p: &mut Profile| p.sample_type[0].unit = far),
        ),
        (
            "function name",
            Box::new(move |p: &mut Profile| p.function[0].name = far),
        ),
        (
            "location id",
            Box::new(|p: &mut Profile| p.sample[0].location_id = vec![987_654]),
        ),
        (
            "negative string index",
            Box::new(|p: &mut Profile| p.function[0].name = -3),
        ),
    ];
    for (what, mutate) in mutations {
        let mut p = base_profile();
        mutate(&mut p);
        let body = kiln_proto::encode_profile_gzip(&p);
        expect(
            &format!("push: out-of-range {what}"),
            &push(base, t, one_series("idx", body.clone())),
            400,
        );
        expect(
            &format!("/ingest: out-of-range {what}"),
            &ingest(base, t, "name=idx&format=pprof", body),
            400,
        );
    }
}

/// A small ELF with functions named `{prefix}_hot` and `{prefix}_main` and the given build ID,
/// built with gcc; returns (bytes, file offset of `{prefix}_hot` + 4).
fn elf_with_build_id(dir: &Path, prefix: &str, build_id: &str) -> (Vec<u8>, u64) {
    let src = dir.join(format!("{prefix}.c"));
    std::fs::write(
        &src,
        format!(
            "__attribute__((noinline)) int {prefix}_hot(int n) {{ volatile int s = 0; for (int i = 0; i < n; i++) s += i; return s; }}\n\
             int main(int argc, char **argv) {{ (void)argv; return {prefix}_hot(argc); }}\n"
        ),
    )
    .unwrap();
    let exe = dir.join(prefix);
    let st = Command::new("gcc")
        .args([
            "-O0",
            "-no-pie",
            &format!("-Wl,--build-id=0x{build_id}"),
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc runs (a prerequisite of the test suite)");
    assert!(st.success(), "gcc failed");
    let nm = Command::new("nm").arg(&exe).output().expect("nm runs");
    let addr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let a = w.next()?;
            let _kind = w.next()?;
            (w.next()? == format!("{prefix}_hot")).then(|| u64::from_str_radix(a, 16).ok())?
        })
        .expect("the function is in the symbol table");
    // Non-PIE: the text is linked at 0x400000 + file offset.
    (std::fs::read(&exe).unwrap(), addr - 0x40_0000 + 4)
}

/// A profile of one sample in the binary with `build_id` at file offset `offset`.
fn profile_in_binary(build_id: &str, offset: u64) -> Vec<u8> {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.time(now_nanos(), 1_000_000_000);
    let m = b.mapping(0x40_0000, 0x50_0000, 0, "/usr/bin/app", build_id);
    let l = b.raw_location(m, 0x40_0000 + offset);
    b.add_sample(&[l], &[7, 70_000_000], &[]);
    kiln_proto::encode_profile_gzip(&b.finish())
}

fn upload(base: &str, tenant: &str, build_id: &str, kind: &str, elf: &[u8]) -> Answer {
    send(
        http()
            .put(format!("{base}/debuginfo/v1/{build_id}?kind={kind}"))
            .header("content-encoding", "zstd")
            .header("x-scope-orgid", tenant)
            .body(zstd::bulk::compress(elf, 3).unwrap()),
    )
}

/// The frame names tenant `tenant` sees for service `svc`.
fn names_seen(base: &str, tenant: &str, svc: &str) -> String {
    let q = enc(&format!("{{service_name=\"{svc}\"}}"));
    get_json(
        base,
        tenant,
        &format!("/api/v1/top?query={q}&from=now-1h&profile_type=samples:count"),
    )["functions"]
        .to_string()
}

/// Cross-tenant debuginfo: another tenant's upload for my build ID (before or after mine, as an
/// executable or `kind=debuginfo`) never changes my names; `GET` of another tenant's build ID is
/// 404; a zero-padded ELF bomb is 413.
fn debuginfo_is_per_tenant(base: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ("team-a", "team-b");
    // Build ID 1: the genuine upload comes first; build ID 2: the attacker's comes first.
    for (n, attacker_first) in [(1, false), (2, true)] {
        let id = format!("{n:02}{}", "ab".repeat(19));
        let (genuine, off) = elf_with_build_id(dir.path(), &format!("genuine{n}"), &id);
        let (evil, _) = elf_with_build_id(dir.path(), &format!("evil{n}"), &id);
        let svc = format!("app{n}");
        expect(
            "team-a pushes",
            &push(base, a, one_series(&svc, profile_in_binary(&id, off))),
            200,
        );
        if attacker_first {
            let e = upload(base, b, &id, "executable", &evil);
            assert!(
                e.status == 200 || e.status == 201,
                "team-b may upload for itself: {e:?}"
            );
        }
        let g = upload(base, a, &id, "executable", &genuine);
        assert_eq!(g.status, 201, "team-a's genuine upload is stored: {g:?}");
        if !attacker_first {
            for kind in ["executable", "debuginfo"] {
                let e = upload(base, b, &id, kind, &evil);
                assert!(
                    e.status < 500,
                    "team-b's upload ({kind}) answered {} {}",
                    e.status,
                    e.body
                );
            }
        }
        let seen = names_seen(base, a, &svc);
        assert!(
            seen.contains(&format!("genuine{n}_hot")) && !seen.contains("evil"),
            "team-a must see its own names (attacker first: {attacker_first}): {seen}"
        );
        let probe = send(
            http()
                .get(format!("{base}/debuginfo/v1/{id}"))
                .header("x-scope-orgid", "team-c"),
        );
        expect("GET of another tenant's build ID", &probe, 404);
    }

    // A real ELF padded with 256 MiB of zeros (the limit here is 64 MiB), a few hundred KB sent.
    let id = format!("03{}", "cd".repeat(19));
    let (elf, _) = elf_with_build_id(dir.path(), "padded", &id);
    let bomb = zstd_bomb(&elf, 256);
    assert!(bomb.len() < 2 * MIB);
    let a2 = send(
        http()
            .put(format!("{base}/debuginfo/v1/{id}"))
            .header("content-encoding", "zstd")
            .header("x-scope-orgid", a)
            .body(bomb),
    );
    expect("zero-padded ELF bomb", &a2, 413);
    let after = send(
        http()
            .get(format!("{base}/debuginfo/v1/{id}"))
            .header("x-scope-orgid", a),
    );
    expect("the refused ELF bomb is not stored", &after, 404);
}

/// Opens `n` connections that send nothing, plus slowloris writers (a header byte every 300 ms),
/// while fresh connections and the good client must still be served.
fn idle_and_slow_connections(base: &str, port: u16, good: &GoodClient) {
    let since = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(s) => idle.push(s),
            Err(_) => break, // the backlog is full: as locked out as it gets
        }
    }
    eprintln!("[idle] {} idle connections open", idle.len());
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    return;
                };
                let head = b"GET /api/v1/labels HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let _ = s.write_all(head);
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(b"a").is_err() {
                        return; // the server closed it: what a header timeout does
                    }
                    // The attacker's pace (its workload), not a wait.
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();
    // Fresh connections (no pooling), one after another for ~6 s.
    let fresh = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(FRESH_CONNECTION_MAX + Duration::from_secs(2))
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    let mut failures = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let t = Instant::now();
        match fresh.get(format!("{base}/api/v1/profile_types")).send() {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => failures.push(format!("status {}", r.status())),
            Err(e) => failures.push(e.to_string()),
        }
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for s in slow {
        let _ = s.join();
    }
    // The server must close idle connections (header-read timeout), not keep them forever.
    let mut open: Vec<TcpStream> = idle;
    for s in &open {
        s.set_nonblocking(true).unwrap();
    }
    let all_closed = poll_until(
        since + Duration::from_secs(12),
        Duration::from_millis(200),
        || {
            open.retain_mut(|s| {
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true, // an error answer before closing: closed on the next read
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                }
            });
            open.is_empty().then_some(())
        },
    );
    eprintln!(
        "[idle] fresh connections: worst {worst:?}, failures {failures:?}; idle connections still open: {}",
        open.len()
    );
    drop(open);
    assert!(
        all_closed.is_some(),
        "the server must close idle connections (header-read timeout): some still open 12 s after they connected"
    );
    assert!(
        failures.is_empty(),
        "fresh clients were refused during the idle/slow attack: {failures:?}"
    );
    assert!(
        worst <= FRESH_CONNECTION_MAX,
        "a fresh connection waited {worst:?} (bound {FRESH_CONNECTION_MAX:?})"
    );
    assert_good_client_served(good, since, "idle and slow connections");
}

/// Profiles split into very many series by distinct sample labels (a few hundred KB each, four at
/// once) → 413 without the memory blow-up; then a flood of distinct series in ordinary pushes is
/// answered 200 (or 429 over the tenant's rate), never worse.
fn flood_of_distinct_series(base: &str, server_pid: u32, good: &GoodClient) {
    let since = Instant::now();
    let t = "splitter";
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.time(now_nanos(), 1_000_000_000);
    let f = b.function("main", "main.c");
    let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
    for i in 0..100_000 {
        b.add_sample(&[l], &[1, 1], &[("request_id", &format!("r{i}"))]);
    }
    let split_bomb = kiln_proto::encode_profile_gzip(&b.finish());
    eprintln!("[series] split bomb: {} bytes", split_bomb.len());
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let body = one_series("split", split_bomb.clone());
                s.spawn(move || push(base, t, body))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        expect("a profile split into 100,000 series", a, 413);
    }
    eprintln!(
        "[series] RSS after split bombs: {:?} MiB",
        rss_mib(server_pid)
    );
    // 20 pushes of 250 new series each.
    let mut statuses = BTreeMap::new();
    for r in 0..20 {
        let series: Vec<_> = (0..250)
            .map(|k| {
                (
                    vec![("service_name", format!("flood-{r}-{k}"))],
                    vec![good_profile(k)],
                )
            })
            .collect();
        let a = push(base, "flooder", push_body(&series));
        assert!(
            a.status == 200 || (a.status == 429 && a.retry_after.is_some()),
            "series flood: {} {}",
            a.status,
            a.body
        );
        *statuses.entry(a.status).or_insert(0) += 1;
    }
    eprintln!("[series] flood answers: {statuses:?}");
    assert_good_client_served(good, since, "flood of distinct series");
}

/// Loads `profiles` heavy profiles for `tenant` (honouring 429s as a well-behaved client does).
fn load_heavy(base: &str, tenant: &str, profiles: u64) {
    let per_request = 50;
    for r in 0..profiles / per_request {
        let series: Vec<_> = (0..per_request)
            .map(|k| {
                (
                    vec![("service_name", format!("heavy{}", k % 8))],
                    vec![heavy_profile(r * per_request + k, 20)],
                )
            })
            .collect();
        let body = push_body(&series);
        let deadline = within(60);
        loop {
            let a = push(base, tenant, body.clone());
            if a.status == 429 && Instant::now() < deadline {
                let secs: u64 = a.retry_after.and_then(|s| s.parse().ok()).unwrap_or(1);
                // The server said when to come back.
                std::thread::sleep(Duration::from_secs(secs.min(2)));
                continue;
            }
            assert_eq!(a.status, 200, "loading heavy profiles: {}", a.body);
            break;
        }
    }
}

/// Heavy flame graphs, many at once, during ingest: each answered 200 or 503 + Retry-After (the
/// queue is one deep here), the good client unharmed; then queries abandoned by their clients stop
/// working (in-flight queries back to 0, cancellations counted).
fn heavy_and_abandoned_queries_during_ingest(base: &str, server: &Server, good: &GoodClient) {
    let t = "analyst";
    load_heavy(base, t, 500);
    let since = Instant::now();
    let url = format!("{base}/api/v1/flamegraph?from=now-1h");
    let started = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| try_send(client.get(&url).header("x-scope-orgid", t))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    eprintln!(
        "[queries] 6 concurrent heavy flame graphs: {statuses:?} in {:?}",
        started.elapsed()
    );
    for a in &answers {
        assert!(
            a.status == 200 || a.status == 503,
            "heavy query: {} {}",
            a.status,
            a.body
        );
        if a.status == 503 {
            let secs: Option<u64> = a.retry_after.as_deref().and_then(|s| s.parse().ok());
            assert!(
                secs.is_some_and(|s| s >= 1),
                "a 503 carries Retry-After in seconds: {a:?}"
            );
        }
    }
    assert!(
        statuses.contains(&503),
        "six heavy queries at once over a one-query, one-deep queue: some must be turned away (503)"
    );
    assert!(statuses.contains(&200), "some heavy queries are served");

    // Abandoned: the clients go away after 300 ms. A plain flame graph is now answered from the
    // head's pre-merged stacks in well under that; grouped by a label it still reads every
    // profile (the labels are per profile), which is the slow query a client gives up on.
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let grouped = format!("{url}&group_by=service_name");
    for _ in 0..6 {
        let _ = impatient.get(&grouped).header("x-scope-orgid", t).send();
    }
    let in_flight = || server.metric("kiln_server_queries_in_flight");
    let stopped = poll_until(within(5), Duration::from_millis(100), || {
        (in_flight()? == 0.0).then_some(())
    });
    assert!(
        stopped.is_some(),
        "abandoned queries must stop working within 5 s: kiln_server_queries_in_flight = {:?}",
        in_flight()
    );
    let cancelled = server.metric("kiln_server_queries_cancelled_total");
    assert!(
        cancelled.is_some_and(|c| c >= 1.0),
        "abandoned queries are counted as cancelled: {cancelled:?}"
    );
    assert_good_client_served(good, since, "heavy and abandoned queries during ingest");
}

/// A tenant over its ingest rate gets 429 + Retry-After; another tenant is still served.
fn per_tenant_rate_limit(base: &str) {
    // 250 small profiles a request, 40 of them as fast as the server takes them: far over the
    // 500 profiles/s (burst 1,000) set here.
    let series: Vec<_> = (0..250)
        .map(|k| {
            (
                vec![("service_name", format!("greedy{}", k % 4))],
                vec![good_profile(k)],
            )
        })
        .collect();
    let body = push_body(&series);
    eprintln!("[rate] {} bytes a request", body.len());
    let mut statuses = BTreeMap::new();
    let mut limited = None;
    for _ in 0..40 {
        let a = push(base, "greedy", body.clone());
        *statuses.entry(a.status).or_insert(0) += 1;
        assert!(
            a.status == 200 || a.status == 429,
            "greedy tenant: {} {}",
            a.status,
            a.body
        );
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    eprintln!("[rate] greedy tenant: {statuses:?}");
    let limited = limited.expect("a tenant pushing far over its rate gets 429");
    assert!(
        limited
            .retry_after
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "429 carries Retry-After in seconds: {limited:?}"
    );
    let other = push(base, "modest", one_series("modest", good_profile(3)));
    expect("another tenant while one is limited", &other, 200);
}

/// Every profile the good client got acknowledged is there with exactly its value.
fn acknowledged_profiles_intact(base: &str, acked: &[u64]) {
    let q = enc("{service_name=~\"good.*\"}");
    let v = get_json(
        base,
        "anonymous",
        &format!(
            "/api/v1/top?query={q}&from=now-1h&until=now&profile_type=samples:count&limit=1000000"
        ),
    );
    let stored: BTreeMap<u64, i64> = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let i = f["name"].as_str()?.strip_prefix('f')?.parse().ok()?;
            Some((i, f["self"].as_i64()?))
        })
        .collect();
    let bad: Vec<_> = acked
        .iter()
        .filter(|&&i| stored.get(&i) != Some(&(i as i64 + 1)))
        .take(10)
        .collect();
    assert!(
        bad.is_empty(),
        "{} acknowledged good profiles, some missing or wrong, e.g. {bad:?}",
        acked.len()
    );
}

/// Runs `attack`, turning a failure into a line of the report instead of stopping the run.
/// `KILN_HOSTILE_ONLY=bombs,idle cargo test --test hostile` runs only the attacks whose names
/// contain one of the words (the final checks always run).
fn run_attack(failures: &mut Vec<String>, pid: u32, name: &str, attack: impl FnOnce()) {
    if let Ok(only) = std::env::var("KILN_HOSTILE_ONLY")
        && !only.split(',').any(|w| name.contains(w.trim()))
        && name.contains('_')
    {
        return;
    }
    let t = Instant::now();
    eprintln!("=== {name}");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(attack));
    eprintln!(
        "=== {name}: {:?}, server RSS now {:?} MiB",
        t.elapsed(),
        rss_mib(pid)
    );
    match outcome {
        Ok(()) => eprintln!("=== {name}: held"),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("=== {name}: FAILED: {msg}");
            failures.push(format!("{name}: {msg}"));
        }
    }
}

#[test]
fn hostile_clients_get_documented_answers_and_cost_others_nothing() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--wal-segment-bytes", "4MiB"]);
    let base = server.base();
    let rss = RssWatch::start(server.pid());
    let mut good = GoodClient::start(base.clone());
    let mut failures = Vec::new();
    let pid = server.pid();

    run_attack(&mut failures, pid, "bombs_on_every_path", || {
        bombs_on_every_path(&base)
    });
    run_attack(&mut failures, pid, "garbage_on_every_path", || {
        garbage_on_every_path(&base)
    });
    run_attack(&mut failures, pid, "extreme_values", || {
        extreme_values(&base)
    });
    run_attack(&mut failures, pid, "times_outside_the_window", || {
        times_outside_the_window(&base)
    });
    run_attack(&mut failures, pid, "out_of_range_indices", || {
        out_of_range_indices(&base)
    });
    run_attack(&mut failures, pid, "debuginfo_is_per_tenant", || {
        debuginfo_is_per_tenant(&base)
    });
    run_attack(&mut failures, pid, "idle_and_slow_connections", || {
        idle_and_slow_connections(&base, server.port, &good)
    });
    run_attack(&mut failures, pid, "flood_of_distinct_series", || {
        flood_of_distinct_series(&base, server.pid(), &good)
    });
    run_attack(
        &mut failures,
        pid,
        "heavy_and_abandoned_queries_during_ingest",
        || heavy_and_abandoned_queries_during_ingest(&base, &server, &good),
    );
    run_attack(&mut failures, pid, "per_tenant_rate_limit", || {
        per_tenant_rate_limit(&base)
    });

    good.finish();
    let acked = good.acked.lock().unwrap().clone();
    run_attack(&mut failures, pid, "good client served throughout", || {
        let (p99, bad, n) = good.since(Instant::now() - Duration::from_secs(3600));
        eprintln!(
            "good client overall: {n} pushes, {} acknowledged, p99 {p99:?}",
            acked.len()
        );
        // (A run of a few attacks, KILN_HOSTILE_ONLY, is too short for this count.)
        if std::env::var_os("KILN_HOSTILE_ONLY").is_none() {
            assert!(n >= 100, "the good client pushed only {n} times");
        }
        assert!(bad.is_empty(), "good pushes not acknowledged: {bad:?}");
        assert!(p99 <= GOOD_P99, "{GOAL_NOTE}: {p99:?} > {GOOD_P99:?}");
    });
    run_attack(
        &mut failures,
        pid,
        "every acknowledged profile intact",
        || acknowledged_profiles_intact(&base, &acked),
    );
    let max_rss = rss.max();
    eprintln!("server RSS: max {max_rss} MiB (bound {RSS_BOUND_MIB} MiB)");
    run_attack(&mut failures, pid, "server RSS under its bound", || {
        assert!(
            max_rss > 0 && max_rss < RSS_BOUND_MIB,
            "the server's RSS reached {max_rss} MiB (bound {RSS_BOUND_MIB} MiB)"
        );
    });
    assert!(
        failures.is_empty(),
        "{} attack(s) got through:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Byte flips on disk

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// Pushes profiles `range` (one per request, `good_profile(i)` in series `svc{i % 8}`); all must be
/// acknowledged.
fn push_range(base: &str, range: std::ops::Range<u64>) {
    let client = http();
    for i in range {
        let a = send(
            client
                .post(format!("{base}/push.v1.PusherService/Push"))
                .header("content-type", "application/proto")
                .body(one_series(&format!("svc{}", i % 8), good_profile(i))),
        );
        assert_eq!(a.status, 200, "push {i}: {}", a.body);
    }
}

/// Self value of every `f{i}` stored, and the service names listed.
fn stored_profiles(base: &str) -> BTreeMap<u64, i64> {
    let v = get_json(
        base,
        "anonymous",
        "/api/v1/top?from=now-1h&until=now&profile_type=samples:count&limit=1000000",
    );
    v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let i = f["name"].as_str()?.strip_prefix('f')?.parse().ok()?;
            Some((i, f["self"].as_i64()?))
        })
        .collect()
}

/// Every listed `service_name` has readable data (listings and queries agree).
fn listings_agree_with_queries(base: &str) {
    let values = get_json(
        base,
        "anonymous",
        "/api/v1/labels/service_name/values?from=now-1h",
    );
    for v in values["values"].as_array().unwrap() {
        let svc = v.as_str().unwrap();
        let q = enc(&format!("{{service_name=\"{svc}\"}}"));
        let flame = get_json(
            base,
            "anonymous",
            &format!("/api/v1/flamegraph?query={q}&from=now-1h&profile_type=samples:count"),
        );
        assert!(
            flame["total"].as_i64().unwrap_or(0) > 0,
            "{svc} is listed but its data reads as empty"
        );
    }
}

fn kiln_check(data: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["check", "--data-dir"])
        .arg(data)
        .output()
        .expect("kiln runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn byte_flips_on_disk_cost_only_what_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let segments = data.join("segments");
    let blocks_dir = segments.join("blocks");

    // 1. Profiles 0..600 flushed into blocks (small WAL segments, maintenance every second).
    let server = Server::start(&data, &["--wal-segment-bytes", "64KiB"]);
    push_range(&server.base(), 0..600);
    wait_until(within(30), "the WAL is flushed into blocks", || {
        !files(&blocks_dir, "blk").is_empty() && files(&segments, "seg").len() <= 2
    });
    let before = stored_profiles(&server.base());
    assert_eq!(before.len(), 600, "all acknowledged before any damage");
    server.kill();

    // 2. One byte flipped in the middle of a block (its per-series sections sit there).
    let block = files(&blocks_dir, "blk").pop().unwrap();
    let len = std::fs::metadata(&block).unwrap().len();
    flip(&block, len / 2);
    let (code, report) = kiln_check(&data);
    assert_eq!(
        code,
        Some(1),
        "kiln check must report the damaged block (exit 1):\n{report}"
    );
    assert!(
        report.contains(&block.file_name().unwrap().to_string_lossy().to_string()),
        "kiln check names the damaged block:\n{report}"
    );
    let server = Server::start(&data, &["--wal-segment-bytes", "64KiB", "--verify"]);
    let base = server.base();
    let after_block = stored_profiles(&base);
    for (i, v) in &after_block {
        assert_eq!(*v, *i as i64 + 1, "profile {i} reads back changed");
    }
    let lost_block = 600 - after_block.len() as u64;
    let reported = server
        .metric("kiln_server_store_profiles_lost_total")
        .unwrap_or(-1.0);
    eprintln!("block flip: {lost_block} of 600 profiles unreadable; /metrics reports {reported}");
    assert_eq!(
        reported, lost_block as f64,
        "the profiles lost to the damaged block are what /metrics reports"
    );
    listings_agree_with_queries(&base);

    // 3. Maintenance goes on around the bad block: new pushes are flushed into a new block.
    let blocks_before = files(&blocks_dir, "blk");
    push_range(&base, 600..900);
    wait_until(
        within(30),
        "maintenance still flushes into new blocks",
        || {
            files(&blocks_dir, "blk")
                .iter()
                .any(|b| !blocks_before.contains(b))
                && files(&segments, "seg").len() <= 2
        },
    );
    server.kill();

    // 4. Profiles 900..1500 stay in the active WAL segment (large segments now); one byte flipped
    //    in its middle costs at most the record it hits.
    let server = Server::start(&data, &["--wal-segment-bytes", "64MiB"]);
    push_range(&server.base(), 900..1500);
    server.kill();
    let seg = files(&segments, "seg")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    flip(&seg, len / 2);
    let (code, report) = kiln_check(&data);
    assert_eq!(
        code,
        Some(1),
        "kiln check reports the damaged WAL segment:\n{report}"
    );
    let server = Server::start(&data, &["--wal-segment-bytes", "64MiB"]);
    let base = server.base();
    let after_wal = stored_profiles(&base);
    let wal_missing: Vec<u64> = (900..1500).filter(|i| !after_wal.contains_key(i)).collect();
    eprintln!(
        "WAL flip: {} of 600 WAL profiles lost: {wal_missing:?}",
        wal_missing.len()
    );
    assert!(
        wal_missing.len() <= 1,
        "one flipped byte in the WAL may cost one record, not {} (the rest of the segment)",
        wal_missing.len()
    );
    let damaged = server.metric("kiln_server_store_wal_damaged_bytes_total");
    assert!(
        damaged.is_some_and(|d| d > 0.0),
        "the WAL damage is reported on /metrics: {damaged:?}"
    );
    // Everything acknowledged and not in the damaged section or record reads back exactly.
    for i in 0..1500u64 {
        let expected = after_block.contains_key(&i)
            || (600..900).contains(&i)
            || (900..1500).contains(&i) && !wal_missing.contains(&i);
        match after_wal.get(&i) {
            Some(v) => assert_eq!(*v, i as i64 + 1, "profile {i} reads back changed"),
            None => assert!(
                !expected,
                "acknowledged profile {i} is gone after the WAL flip"
            ),
        }
    }
    listings_agree_with_queries(&base);
    drop(server);
}
