//! Issue 14 point 6: Kiln on object storage (a real S3 endpoint: the Ceph RGW of
//! scripts/ceph-rgw-up.sh, at KILN_TEST_S3_ENDPOINT).
//!
//! 1. **Scale-out.** 1, 2 and 3 servers (`BucketStore`s with their own data directories, routers
//!    in-process) on one bucket prefix. Ingest: one client thread per server pushes its share of
//!    the profiles through the push handler, then every server uploads its head (flush): profiles
//!    and samples per second over the whole. Query: one thread per server runs merged flame graphs
//!    (`GET /api/v1/flamegraph`, the last hour) on its server, warm: queries per second. Object-store
//!    requests (the client's own counters, also `kiln_server_object_store_requests_total`) per
//!    ingested profile and per query.
//! 2. **Cold vs warm** over 1 h, 24 h and 7 d of a synthetic fleet uploaded by one server: a new
//!    server (empty cache) answers the flame graph (cold: it downloads what the range needs), then
//!    again (warm: from its cache); against `go tool pprof -proto` merging the same gzipped inputs
//!    in the same run. Totals must match. Twice: over the hourly blocks as uploaded, then after a
//!    maintenance pass as a server runs it (every 10 s by default), which rolls the closed hours of
//!    each day up into one block with per-hour sums.
//!
//! The servers' background sync is slowed to an hour so the harness drives flush/refresh at fixed
//! points. Without KILN_TEST_S3_ENDPOINT it prints SKIPPED and returns. `cargo test --benches`
//! (no `--bench`) runs it at a tiny size without go.
//!
//! Size (with `--bench`; defaults fit ~10 minutes in release on a loaded 2-core machine):
//! `KILN_BENCH_SCALE_PROFILES` (300) profiles per scale-out run, `KILN_BENCH_FLEET_NODES` (10)
//! nodes each pushing one profile every `KILN_BENCH_FLEET_EVERY_MINS` (60) minutes for a week.
//! A real fleet pushes a profile per node every 10 s: 100 nodes are 10 profiles/s, 6 M a week.
//! The ingest table says how many such nodes one server's measured rate takes; the query tables
//! scale with profiles per range, which the fleet rows report (7 d here is 1,680 profiles; 100 real
//! nodes make that many in under 3 minutes, which is what the 1 h row of a bigger run measures).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use kiln_benches::bucket_server::{self, Server, requests};
use kiln_benches::fleet;
use kiln_storage_server::store::bucket::client::RequestCounts;
use tower::ServiceExt;

const NS: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * NS;

struct Size {
    /// Profiles ingested in each scale-out run (spread over the last hour).
    scale_profiles: usize,
    /// Flame graphs per scale-out run.
    queries: usize,
    ticks: usize,
    stacks: usize,
    /// Fleet: nodes, and minutes between one node's profiles.
    nodes: usize,
    every_mins: i64,
    go: bool,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn size() -> Size {
    if std::env::args().any(|a| a == "--bench") {
        Size {
            scale_profiles: env_num("KILN_BENCH_SCALE_PROFILES", 300),
            queries: 30,
            ticks: 2_000,
            stacks: 20_000,
            nodes: env_num("KILN_BENCH_FLEET_NODES", 10),
            every_mins: env_num("KILN_BENCH_FLEET_EVERY_MINS", 60).max(1),
            go: true,
        }
    } else {
        Size {
            scale_profiles: 6,
            queries: 3,
            ticks: 100,
            stacks: 100,
            nodes: 2,
            every_mins: 24 * 60,
            go: false,
        }
    }
}

fn per(after: RequestCounts, before: RequestCounts, n: usize) -> String {
    let d = |a: u64, b: u64| (a - b) as f64 / n.max(1) as f64;
    format!(
        "PUT {:.2} GET {:.2} LIST {:.2} DELETE {:.2}",
        d(after.put, before.put),
        d(after.get, before.get),
        d(after.list, before.list),
        d(after.delete, before.delete)
    )
}

fn push(rt: &tokio::runtime::Runtime, app: &axum::Router, node: usize, gz: Vec<u8>) {
    let req = Request::post(kiln_proto::push::PUSH_PATH)
        .header(header::CONTENT_TYPE, "application/proto")
        .body(Body::from(fleet::push_body(node, gz)))
        .expect("request");
    let resp = rt.block_on(app.clone().oneshot(req)).expect("response");
    assert!(resp.status().is_success(), "push: {}", resp.status());
}

/// The merged flame graph's total over [from, until] (Unix ns).
fn flamegraph(rt: &tokio::runtime::Runtime, app: &axum::Router, from: i64, until: i64) -> i64 {
    let uri = format!(
        "/api/v1/flamegraph?query=%7Bservice_name%3D%22service%22%7D&from={}&until={}\
         &profile_type=cpu:nanoseconds",
        from / NS,
        until / NS
    );
    let req = Request::get(uri).body(Body::empty()).expect("request");
    let body = rt.block_on(async {
        let resp = app.clone().oneshot(req).await.expect("response");
        assert!(resp.status().is_success(), "flamegraph: {}", resp.status());
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
    });
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    v["total"].as_i64().expect("total")
}

/// `uptime`'s three load averages, to print next to the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let Ok(endpoint) = std::env::var("KILN_TEST_S3_ENDPOINT") else {
        println!(
            "bucket: SKIPPED: needs an S3 endpoint in KILN_TEST_S3_ENDPOINT (scripts/ceph-rgw-up.sh \
             DIR PORT starts a Ceph RGW; scripts/test.sh does it as root)"
        );
        return;
    };
    let size = size();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = format!(
        "bench/{}-{}",
        std::process::id(),
        kiln_storage_server::query::time::now_nanos()
    );
    let now = kiln_storage_server::query::time::now_nanos() / NS * NS;
    println!(
        "bucket: S3 at {endpoint}; profiles of {} ticks over {} distinct stacks (depth {}); load average {}",
        size.ticks,
        size.stacks,
        fleet::DEPTH,
        load_average()
    );
    let started = Instant::now();

    // 1. Scale-out.
    let inputs: Vec<(usize, Vec<u8>, i64)> = (0..size.scale_profiles)
        .map(|i| {
            let node = i % 10;
            let time =
                now - HOUR + 60 * NS + (i as i64 * (HOUR - 120 * NS)) / size.scale_profiles as i64;
            let (gz, total) = fleet::window(node, i as u64, time, size.ticks, size.stacks);
            (node, gz, total)
        })
        .collect();
    let want: i64 = inputs.iter().map(|i| i.2).sum();
    println!(
        "\n| servers | ingest profiles/s | ingest samples/s | requests per ingested profile | flame graphs/s (1 h, warm) | requests per query |"
    );
    println!("|---|---|---|---|---|---|");
    let mut ingest_rates = Vec::new();
    for n in 1..=3usize {
        let prefix = format!("{run}/scale{n}");
        let servers: Vec<Server> = (0..n)
            .map(|_| bucket_server::open(&endpoint, &prefix))
            .collect();
        let before = requests(&servers);
        let t = Instant::now();
        std::thread::scope(|s| {
            for (k, server) in servers.iter().enumerate() {
                let (rt, inputs) = (&rt, &inputs);
                s.spawn(move || {
                    for (node, gz, _) in inputs.iter().skip(k).step_by(n) {
                        push(rt, &server.app, *node, gz.clone());
                    }
                    server.state.store.flush().expect("upload");
                });
            }
        });
        let ingest = t.elapsed();
        let after_ingest = requests(&servers);
        // Every server reads the block list and warms its cache with one query (not timed).
        for s in &servers {
            s.state.store.flush().expect("refresh");
            assert_eq!(
                flamegraph(&rt, &s.app, now - HOUR, now),
                want,
                "{n} servers: a server shows everything, once"
            );
        }
        let before_q = requests(&servers);
        let t = Instant::now();
        std::thread::scope(|sc| {
            for (k, server) in servers.iter().enumerate() {
                let rt = &rt;
                let count = (k..size.queries).step_by(n).count();
                sc.spawn(move || {
                    for _ in 0..count {
                        assert_eq!(flamegraph(rt, &server.app, now - HOUR, now), want);
                    }
                });
            }
        });
        let query = t.elapsed();
        let after_q = requests(&servers);
        let samples = (size.ticks * size.scale_profiles) as f64;
        let rate = size.scale_profiles as f64 / ingest.as_secs_f64();
        ingest_rates.push(rate);
        println!(
            "| {n} | {rate:.0} | {:.2} M | {} | {:.1} | {} |",
            samples / ingest.as_secs_f64() / 1e6,
            per(after_ingest, before, size.scale_profiles),
            size.queries as f64 / query.as_secs_f64(),
            per(after_q, before_q, size.queries),
        );
    }

    // A node pushes one profile every 10 s: 0.1 profiles/s.
    if let Some(one) = ingest_rates.first() {
        println!(
            "\none server ingests {one:.0} profiles/s of {} samples (push + WAL + upload to the bucket): {:.0} nodes pushing every 10 s; load average {}",
            size.ticks,
            one * 10.0,
            load_average()
        );
    }

    // 2. Cold vs warm over a week of a fleet.
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("{run}/fleet");
    let writer = bucket_server::open(&endpoint, &prefix);
    let every = size.every_mins * 60 * NS;
    let windows = (7 * 24 * HOUR / every) as usize;
    let mut files: Vec<(i64, PathBuf, i64)> = Vec::new();
    let t = Instant::now();
    for w in 0..windows {
        let time = now - 7 * 24 * HOUR + 60 * NS + w as i64 * every;
        for node in 0..size.nodes {
            let (gz, total) = fleet::window(
                node,
                (w * size.nodes + node) as u64,
                time,
                size.ticks,
                size.stacks,
            );
            let path = dir.path().join(format!("{w:05}-{node:03}.pb.gz"));
            std::fs::write(&path, &gz).expect("write input");
            push(&rt, &writer.app, node, gz);
            files.push((time, path, total));
        }
    }
    writer.state.store.flush().expect("upload");
    let blocks = writer.state.store.stats().blocks;
    println!(
        "\nfleet: {} nodes, one profile each every {} min over 7 d: {} profiles ingested and uploaded in {:.1} s into {} blocks",
        size.nodes,
        size.every_mins,
        files.len(),
        t.elapsed().as_secs_f64(),
        blocks
    );
    let ranges = [
        ("1 h", HOUR),
        ("24 h", 24 * HOUR),
        ("7 d", 7 * 24 * HOUR + HOUR),
    ];
    // Per range: (cold, requests, warm) over the hourly blocks, then over the rollups.
    let mut hourly = Vec::new();
    for (name, span) in ranges {
        let from = now - span;
        let want: i64 = files
            .iter()
            .filter(|f| f.0 >= from && f.0 <= now)
            .map(|f| f.2)
            .sum();
        hourly.push(cold_warm(&rt, &endpoint, &prefix, name, from, now, want));
    }
    let t = Instant::now();
    writer.state.store.maintain(now).expect("maintenance");
    let maintenance = t.elapsed();
    let reader = bucket_server::open(&endpoint, &prefix);
    reader.state.store.flush().expect("refresh");
    println!(
        "\none maintenance pass (compaction: each day's closed hours rolled up into one block) took {:.1} s: {} blocks -> {} visible; load average {}",
        maintenance.as_secs_f64(),
        blocks,
        reader.state.store.stats().blocks,
        load_average()
    );
    drop(reader);
    println!(
        "\n| range | profiles | blocks | cold (bucket) | requests (cold) | warm (cache) | go tool pprof -proto | go / warm | go / cold |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((name, span), before) in ranges.into_iter().zip(hourly) {
        let from = now - span;
        let chosen: Vec<&(i64, PathBuf, i64)> =
            files.iter().filter(|f| f.0 >= from && f.0 <= now).collect();
        let want: i64 = chosen.iter().map(|f| f.2).sum();
        let after = cold_warm(&rt, &endpoint, &prefix, name, from, now, want);
        let go = if size.go {
            go_pprof_merge(
                &chosen.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
                dir.path(),
                want,
            )
        } else {
            Err("skipped in test mode".into())
        };
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        for (blocks, (cold, requests, warm)) in [("hourly", before), ("rolled up", after)] {
            let (go_s, r_warm, r_cold) = match &go {
                Ok(g) => (
                    ms(*g),
                    format!("{:.1}x", g.as_secs_f64() / warm.as_secs_f64()),
                    format!("{:.1}x", g.as_secs_f64() / cold.as_secs_f64()),
                ),
                Err(e) => (e.clone(), "-".into(), "-".into()),
            };
            println!(
                "| {name} | {} | {blocks} | {} | {requests} | {} | {go_s} | {r_warm} | {r_cold} |",
                chosen.len(),
                ms(cold),
                ms(warm),
            );
        }
    }
    println!(
        "\nbucket bench done in {:.0} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

/// A new server (empty cache) on `prefix` answers the flame graph over [from, until] cold, then
/// three times warm: (cold time, its requests, median warm time). Checks the total is `want`.
fn cold_warm(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    prefix: &str,
    name: &str,
    from: i64,
    now: i64,
    want: i64,
) -> (Duration, String, Duration) {
    // A new server: empty cache.
    let reader = bucket_server::open(endpoint, prefix);
    reader.state.store.flush().expect("refresh");
    let before = requests(std::slice::from_ref(&reader));
    let t = Instant::now();
    assert_eq!(
        flamegraph(rt, &reader.app, from, now),
        want,
        "{name}: cold total"
    );
    let cold = t.elapsed();
    let after = requests(std::slice::from_ref(&reader));
    let mut warm = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(
            flamegraph(rt, &reader.app, from, now),
            want,
            "{name}: warm total"
        );
        warm.push(t.elapsed());
    }
    warm.sort();
    (cold, per(after, before, 1), warm[1])
}

/// `go tool pprof -proto` over `files`: its wall time; checks the merged cpu total is `want`.
fn go_pprof_merge(files: &[PathBuf], dir: &Path, want: i64) -> Result<Duration, String> {
    let out_path = dir.join("merged.pb.gz");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let status = Command::new("go")
        .args(["tool", "pprof", "-proto"])
        .args(files)
        .env("PPROF_BINARY_PATH", dir)
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running go: {e}"))?;
    let elapsed = t.elapsed();
    if !status.success() {
        return Err(format!("go tool pprof failed: {status}"));
    }
    let merged = std::fs::read(&out_path).map_err(|e| e.to_string())?;
    let p = kiln_proto::decode_profile(&merged, 1 << 31).map_err(|e| e.to_string())?;
    let col = p
        .sample_type
        .iter()
        .position(|st| p.str(st.r#type) == "cpu")
        .ok_or("no cpu sample type in go's output")?;
    let total: i64 = p.sample.iter().map(|s| s.value[col]).sum();
    if total != want {
        return Err(format!("go's merged total {total} differs from {want}"));
    }
    Ok(elapsed)
}
