//! Issue 4, target 2: one merged flame graph over many stored profiles, Kiln against
//! `go tool pprof -proto` merging the same gzipped pprof files.
//!
//! Input (deterministic): `KILN_FG_PROFILES` agent-style profiles (default 1,000) of
//! `KILN_FG_SAMPLES` samples each (default 10,000; one sample = one tick of 19 Hz, so identical
//! stacks in a profile are one row with a count, as the agent sends them), drawn with a skew from a
//! pool of `KILN_FG_STACKS` distinct stacks (default 100,000) of depth 20–40 over 20,000 already
//! symbolized functions (so neither side symbolizes). 10 series (pods) × 100 windows of 10 s.
//!
//! Kiln: the profiles are pushed through the real push handler and `GET /api/v1/flamegraph` is
//! timed through the router in-process (store read, tree merge, JSON rendering; no socket) twice:
//! first with every profile still in the head (the WAL, just ingested: the head's aggregate
//! answers), then after flushing them into blocks and compacting (`Store::flush` +
//! `Store::maintain`, what the background thread does: the blocks' per-series sums answer). `go tool pprof -proto f1.pb.gz … fN.pb.gz > merged.pb.gz` is timed
//! as a child process (reading, merging and writing the merged profile). Both read from files
//! that are in the page cache.
//!
//! With `KILN_FG_STORE=bucket` (and `KILN_TEST_S3_ENDPOINT`, e.g. the Ceph RGW of
//! scripts/ceph-rgw-up.sh) the server stores on object storage instead of local disk: the same
//! head query, then the blocks query on the writer after `flush` (upload) and `maintain`
//! (compaction in the bucket), then a new server with an empty cache on the same prefix answers
//! once cold (downloading the blocks) and `KILN_FG_RUNS` times warm (from its cache).
//!
//! A harness-less bench: `cargo bench -p kiln-benches --bench flamegraph_vs_pprof` runs the full
//! size and prints a table; `cargo test --benches` runs it without `--bench`, at a tiny size and
//! without go, as a smoke test.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use kiln_benches::bucket_server;
use kiln_proto::ProfileBuilder;
use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_proto::{decode_profile, encode_profile_gzip};
use kiln_storage_server::query::flamegraph;
use kiln_storage_server::query::merge::Tree;
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::symbolize::Resolver;
use kiln_storage_server::query::time::TimeRange;
use kiln_storage_server::store::{Merged, ReadRequest};
use kiln_storage_server::{AppState, ServerConfig, StoreConfig};
use prost::Message;
use tower::ServiceExt;

const PERIOD: i64 = 52_631_578;
const FUNCTIONS: usize = 20_000;
const SERIES: usize = 10;
const PROFILE_TYPE: &str = "cpu:nanoseconds";

struct Size {
    /// `Some(S3 endpoint)` when the server stores on object storage (`KILN_FG_STORE=bucket`).
    bucket: Option<String>,
    profiles: usize,
    samples: usize,
    stacks: usize,
    kiln_runs: usize,
    go: bool,
}

/// The S3 endpoint when `KILN_FG_STORE=bucket` (it panics without one rather than measure local
/// disk under the bucket's name); `None` for `local` or unset.
fn bucket_endpoint() -> Option<String> {
    match std::env::var("KILN_FG_STORE").as_deref() {
        Ok("bucket") => {
            Some(std::env::var("KILN_TEST_S3_ENDPOINT").expect(
                "KILN_FG_STORE=bucket needs KILN_TEST_S3_ENDPOINT (scripts/ceph-rgw-up.sh)",
            ))
        }
        Ok("local") | Err(_) => None,
        Ok(other) => panic!("KILN_FG_STORE={other}: expected local or bucket"),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn size() -> Size {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a quick smoke run then.
    if std::env::args().any(|a| a == "--bench") {
        Size {
            bucket: bucket_endpoint(),
            profiles: env_usize("KILN_FG_PROFILES", 1_000),
            samples: env_usize("KILN_FG_SAMPLES", 10_000),
            stacks: env_usize("KILN_FG_STACKS", 100_000),
            kiln_runs: env_usize("KILN_FG_RUNS", 5).max(1),
            go: std::env::var("KILN_FG_NO_GO").is_err(),
        }
    } else {
        Size {
            bucket: bucket_endpoint(),
            profiles: 20,
            samples: 200,
            stacks: 500,
            kiln_runs: 1,
            go: false,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Distinct stacks of function indices, root first, sharing prefixes like a real call tree: each
/// extends a prefix of an earlier one to a depth of 20–40.
fn stack_pool(n: usize, rng: &mut Rng) -> Vec<Vec<u32>> {
    let mut seen = HashSet::with_capacity(n);
    let mut pool: Vec<Vec<u32>> = Vec::with_capacity(n);
    let root: Vec<u32> = (0..20).collect();
    seen.insert(root.clone());
    pool.push(root);
    while pool.len() < n {
        let parent = &pool[rng.below(pool.len())];
        let depth = 20 + rng.below(21);
        let keep = parent
            .len()
            .saturating_sub(1 + rng.below(8))
            .clamp(1, depth - 1);
        let mut s = parent[..keep].to_vec();
        while s.len() < depth {
            // Skewed: some functions (runtime, libc, hot libraries) are in far more stacks.
            s.push(((rng.unit().powi(3) * FUNCTIONS as f64) as usize).min(FUNCTIONS - 1) as u32);
        }
        if seen.insert(s.clone()) {
            pool.push(s);
        }
    }
    pool
}

fn function_name(f: usize) -> String {
    format!(
        "github.com/acme/service/pkg{}.(*Handler{}).Method{}",
        f % 97,
        f % 389,
        f
    )
}

/// One 10 s agent window of one pod: `samples` ticks drawn from `pool` (a few hot stacks take
/// most), gzipped; and which stacks of the pool it used.
fn window(pool: &[Vec<u32>], samples: usize, seed: u64, time: i64) -> (Vec<u8>, Vec<usize>) {
    let mut rng = Rng(seed | 1);
    let mut counts: HashMap<usize, i64> = HashMap::new();
    for _ in 0..samples {
        let i = (rng.unit().powi(2) * pool.len() as f64) as usize;
        *counts.entry(i.min(pool.len() - 1)).or_default() += 1;
    }
    let mut counts: Vec<(usize, i64)> = counts.into_iter().collect();
    counts.sort_unstable();
    let used = counts.iter().map(|c| c.0).collect();
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", PERIOD);
    b.time(time, 10_000_000_000);
    let m = b.mapping(
        0x40_0000,
        0x4000_0000,
        0,
        "/usr/bin/service",
        "0123456789abcdef0123456789abcdef01234567",
    );
    b.mark_symbolized(m);
    let mut loc_of = vec![0u64; FUNCTIONS];
    let mut locs = Vec::with_capacity(40);
    for (i, n) in counts {
        locs.clear();
        // pprof stacks are leaf first.
        for &f in pool[i].iter().rev() {
            let f = f as usize;
            if loc_of[f] == 0 {
                let func = b.function(&function_name(f), "service/handler.go");
                loc_of[f] = b.symbolized_location(m, 0x40_0000 + f as u64 * 64, &[(func, 10)]);
            }
            locs.push(loc_of[f]);
        }
        b.add_sample(&locs, &[n, n * PERIOD], &[]);
    }
    (encode_profile_gzip(&b.finish()), used)
}

fn push_body(pod: usize, gz: Vec<u8>) -> Vec<u8> {
    let label = |name: &str, value: &str| LabelPair {
        name: name.into(),
        value: value.into(),
    };
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                label("__name__", "process_cpu"),
                label("service_name", "service"),
                label("pod", &format!("pod-{pod}")),
            ],
            samples: vec![RawSample {
                raw_profile: gz,
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The flame graph through the router, as a client would get it; returns the body.
fn kiln_flamegraph(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    from: i64,
    until: i64,
) -> Vec<u8> {
    let uri = format!(
        "/api/v1/flamegraph?query=%7Bservice_name%3D%22service%22%7D&from={from}&until={until}\
         &profile_type={PROFILE_TYPE}"
    );
    let req = Request::get(uri).body(Body::empty()).expect("request");
    rt.block_on(async {
        let resp = app.clone().oneshot(req).await.expect("response");
        assert!(resp.status().is_success(), "flamegraph: {}", resp.status());
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec()
    })
}

fn main() {
    let size = size();
    let started = Instant::now();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pool = stack_pool(size.stacks, &mut rng);
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("pprof");
    std::fs::create_dir_all(&inputs).expect("mkdir");

    // Times: whole 10 s windows ending before now, so the default retention keeps them.
    let now = kiln_storage_server::query::time::now_nanos();
    let windows = size.profiles.div_ceil(SERIES) as i64;
    // The windows straddle an hour boundary, as a query over the last ~17 minutes often does:
    // blocks are hourly, so after the flush the range is two blocks (one when the windows fit in
    // one hour, which made this bench's figures depend on the minute it ran). The boundary is the
    // latest one that leaves every window in the past.
    let span = windows * 10;
    let boundary = (now / 1_000_000_000 - span / 2 - 60) / 3600 * 3600;
    let start = (boundary - span / 2) * 1_000_000_000;
    let from = start / 1_000_000_000 - 1;
    let until = now / 1_000_000_000 + 1;

    // Generate in parallel (deterministic per profile): the generator is not what is measured.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sampled = vec![false; pool.len()];
    let files: Vec<(usize, PathBuf)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pool = &pool;
                let inputs = &inputs;
                let size = &size;
                s.spawn(move || {
                    (t..size.profiles)
                        .step_by(threads)
                        .map(|i| {
                            let time = start + (i / SERIES) as i64 * 10_000_000_000;
                            let (gz, used) =
                                window(pool, size.samples, 0x9e37_79b9 * (i as u64 + 1), time);
                            let path = inputs.join(format!("{i:05}.pb.gz"));
                            std::fs::write(&path, gz).expect("write input");
                            (i, path, used)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(size.profiles);
        for h in handles {
            for (i, path, used) in h.join().expect("generator thread") {
                for u in used {
                    sampled[u] = true;
                }
                all.push((i, path));
            }
        }
        all.sort();
        all
    });
    let gz_bytes: u64 = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let generated = started.elapsed();

    // Ingest through the push handler, flushing into blocks as the background thread would.
    let prefix = format!("fg-{}-{now}", std::process::id());
    let bucket_writer = size
        .bucket
        .as_deref()
        .map(|endpoint| bucket_server::open(endpoint, &prefix));
    let state = match &bucket_writer {
        Some(server) => server.state.clone(),
        None => {
            let mut config = ServerConfig::with_data_dir(dir.path().join("kiln"));
            config.store = StoreConfig {
                // The harness flushes and compacts itself, at fixed points.
                maintenance_interval_secs: 3600,
                ..StoreConfig::default()
            };
            AppState::open(config).expect("server state")
        }
    };
    let app = kiln_storage_server::router(state.clone());
    eprintln!(
        "store: {}",
        match &size.bucket {
            Some(endpoint) => format!("object storage, prefix {prefix} at {endpoint}"),
            None => "local disk".to_owned(),
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = 0usize;
    let mut samples = 0i64;
    let ingest_started = Instant::now();
    for (i, path) in &files {
        let gz = std::fs::read(path).expect("read input");
        let p = decode_profile(&gz, 1 << 30).expect("decode input");
        rows += p.sample.len();
        samples += p.sample.iter().map(|s| s.value[0]).sum::<i64>();
        let req = Request::post(kiln_proto::push::PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/proto")
            .body(Body::from(push_body(i % SERIES, gz)))
            .expect("request");
        let resp = rt.block_on(app.clone().oneshot(req)).expect("response");
        assert!(resp.status().is_success(), "push failed: {}", resp.status());
    }
    let ingested = ingest_started.elapsed();
    let want_total = samples * PERIOD;
    let head_stats = state.store.stats();
    eprintln!(
        "setup: generated {} profiles ({} B gzipped) in {:.1} s; ingested into the head in {:.1} s \
         ({} WAL segments, {} B)",
        files.len(),
        gz_bytes,
        secs(generated),
        secs(ingested),
        head_stats.segments,
        head_stats.bytes
    );

    // Kiln, head: every profile still in the WAL.
    let (head_kiln, head_times) = timed_flamegraphs(&rt, &app, &size, from, until, want_total);
    // Printed as soon as measured too: the go baseline that follows takes minutes.
    eprintln!("head: median {:.3} s, runs {head_times:?}", secs(head_kiln));
    assert_eq!(
        state.store.stats().blocks,
        0,
        "the head query read no block"
    );

    let flush_started = Instant::now();
    state.store.flush().expect("flush");
    state.store.maintain(now).expect("compact");
    let stats = state.store.stats();
    eprintln!(
        "flushed + compacted in {:.1} s into {} blocks ({} B)",
        secs(flush_started.elapsed()),
        stats.blocks,
        stats.bytes
    );

    // Kiln, blocks: the same query once everything is flushed and compacted.
    let (kiln, kiln_times) = timed_flamegraphs(&rt, &app, &size, from, until, want_total);
    eprintln!("blocks: median {:.3} s, runs {kiln_times:?}", secs(kiln));

    // The same query's parts, for where the time goes: store read (merged per block), tree merge,
    // rendering. Same code as `query::build_tree` + `flamegraph::render`.
    let selector = Selector::parse("{service_name=\"service\"}").expect("selector");
    let range = TimeRange {
        from: from * 1_000_000_000,
        until: until * 1_000_000_000,
    };
    let mut read_time = Duration::ZERO;
    let mut merge_time = Duration::ZERO;
    let t = Instant::now();
    let mut tree = Tree::new();
    let mut resolver = Resolver::new(Some(&state.debuginfo));
    let mut merged_profiles = 0;
    let mut merged_rows = 0;
    let mut last = Instant::now();
    state
        .store
        .read_merged(
            ReadRequest {
                selector: &selector,
                range,
                profile_type: Some(PROFILE_TYPE),
                stop: None,
            },
            &mut |m| {
                read_time += last.elapsed();
                let t = Instant::now();
                merged_profiles += 1;
                match &m.data {
                    Merged::Profile(p) => {
                        merged_rows += p.sample.len();
                        tree.merge_profile(p, PROFILE_TYPE, &mut resolver);
                    }
                    Merged::Stacks(s) => {
                        merged_rows += s.self_values.iter().filter(|&&v| v != 0).count();
                        tree.merge_stacks(s, &mut resolver);
                    }
                }
                merge_time += t.elapsed();
                last = Instant::now();
            },
        )
        .expect("read");
    read_time += last.elapsed();
    let t_render = Instant::now();
    let rendered = flamegraph::render(&tree, flamegraph::DEFAULT_MAX_NODES, PROFILE_TYPE, None);
    let render_time = t_render.elapsed();
    let parts_total = t.elapsed();
    assert_eq!(tree.total(), want_total);

    println!(
        "flamegraph_vs_pprof: {} profiles, {} samples in {} rows, {} distinct stacks in the pool \
         (depth 20-40, {} functions), {:.1} MB gzipped pprof",
        size.profiles,
        samples,
        rows,
        size.stacks,
        FUNCTIONS,
        gz_bytes as f64 / 1e6
    );
    println!(
        "  distinct stacks sampled: {}",
        sampled.iter().filter(|&&b| b).count()
    );
    println!(
        "  kiln  GET /api/v1/flamegraph, head (all in the WAL): median {:.3} s of {} runs {:?}",
        secs(head_kiln),
        head_times.len(),
        head_times
            .iter()
            .map(|d| (secs(*d) * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
    );
    println!(
        "  kiln  GET /api/v1/flamegraph, blocks (router, in-process): median {:.3} s of {} runs {:?}; \
         {} tree nodes, {} B JSON",
        secs(kiln),
        kiln_times.len(),
        kiln_times
            .iter()
            .map(|d| (secs(*d) * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        tree.nodes.len(),
        rendered.len()
    );
    println!(
        "    parts: store read_merged {:.3} s ({} merged profiles, {} rows) + tree merge {:.3} s \
         + render {:.3} s = {:.3} s",
        secs(read_time),
        merged_profiles,
        merged_rows,
        secs(merge_time),
        secs(render_time),
        secs(parts_total)
    );
    let mut bucket_warm = None;
    if let Some(endpoint) = &size.bucket {
        // A new server on the same prefix, with an empty cache: cold, then warm.
        let reader = bucket_server::open(endpoint, &prefix);
        reader.state.store.flush().expect("refresh the block list");
        let before = bucket_server::requests(std::slice::from_ref(&reader));
        let t = Instant::now();
        kiln_flamegraph(&rt, &reader.app, from, until);
        let cold = t.elapsed();
        let after = bucket_server::requests(std::slice::from_ref(&reader));
        let (warm, warm_times) =
            timed_flamegraphs(&rt, &reader.app, &size, from, until, want_total);
        bucket_warm = Some(warm);
        println!(
            "  kiln  GET /api/v1/flamegraph, new server on the bucket: cold {:.3} s (GET {}, LIST {}); \
             warm median {:.3} s of {} runs {:?}",
            secs(cold),
            after.get - before.get,
            after.list - before.list,
            secs(warm),
            warm_times.len(),
            warm_times
                .iter()
                .map(|d| (secs(*d) * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
        );
    }
    if size.go {
        match go_pprof_merge(&files, dir.path()) {
            Ok((go_time, go_total)) => {
                println!(
                    "  go tool pprof -proto <{} files> > merged.pb.gz: {:.3} s (merged total {})",
                    files.len(),
                    secs(go_time),
                    if go_total == want_total {
                        "matches"
                    } else {
                        "DIFFERS"
                    }
                );
                println!(
                    "  ratio, head:   kiln is {:.1}x faster than go tool pprof (target >= 100x)",
                    secs(go_time) / secs(head_kiln)
                );
                println!(
                    "  ratio, blocks: kiln is {:.1}x faster than go tool pprof (target >= 100x)",
                    secs(go_time) / secs(kiln)
                );
                if let Some(warm) = bucket_warm {
                    println!(
                        "  ratio, bucket (warm, new server): kiln is {:.1}x faster than go tool pprof \
                         (target >= 100x)",
                        secs(go_time) / secs(warm)
                    );
                }
            }
            Err(e) => println!("  go tool pprof: not measured ({e})"),
        }
    }
}

/// Times `size.kiln_runs` flame graphs through the router and checks the last one's totals;
/// returns the median and every time.
fn timed_flamegraphs(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    size: &Size,
    from: i64,
    until: i64,
    want_total: i64,
) -> (Duration, Vec<Duration>) {
    let mut times = Vec::new();
    let mut body = Vec::new();
    for _ in 0..size.kiln_runs {
        let t = Instant::now();
        body = kiln_flamegraph(rt, app, from, until);
        times.push(t.elapsed());
    }
    let v: serde_json::Value = serde_json::from_slice(&body).expect("flamegraph JSON");
    assert_eq!(v["total"].as_i64(), Some(want_total), "Kiln loses nothing");
    assert_eq!(v["profiles"].as_u64(), Some(size.profiles as u64));
    (median(times.clone()), times)
}

/// Runs `go tool pprof -proto` over `files`; returns its wall time and the merged cpu total.
fn go_pprof_merge(files: &[(usize, PathBuf)], dir: &Path) -> Result<(Duration, i64), String> {
    let out_path = dir.join("merged.pb.gz");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let status = Command::new("go")
        .args(["tool", "pprof", "-proto"])
        .args(files.iter().map(|(_, p)| p.as_os_str()))
        // No symbolization to attempt (the inputs are symbolized), and nowhere to look for one.
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
    let p = decode_profile(&merged, 1 << 31).map_err(|e| e.to_string())?;
    let col = p
        .sample_type
        .iter()
        .position(|st| p.str(st.r#type) == "cpu")
        .ok_or("no cpu sample type in go's output")?;
    Ok((elapsed, p.sample.iter().map(|s| s.value[col]).sum()))
}
