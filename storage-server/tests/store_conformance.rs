//! One conformance suite for every [`Store`] implementation: [`conformance`] takes a constructor
//! and checks the contract — append/read round-trip, selectors, time-range edges, profile types,
//! label names and values, durability across reopen, a torn WAL tail, retention (oldest first, by
//! age and by size) and compaction (totals preserved exactly; a day's hours rolled up into one
//! block that merged reads answer from exactly as from the hours). Each check runs with the data in
//! every place an implementation can hold it: the head, flushed blocks, compacted blocks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_storage_server::BucketConfig;
use kiln_storage_server::StoreConfig;
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::time::{TimeRange, now_nanos};
use kiln_storage_server::store::{BucketStore, Labels, LocalStore, NewProfile, ReadRequest, Store};

mod s3;
use prost::Message;

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;

/// Where the data sits when a check reads it.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// As appended (the head / WAL).
    Head,
    /// After `flush`.
    Flushed,
    /// After `flush` + `maintain` (compaction).
    Compacted,
}

const STAGES: [Stage; 3] = [Stage::Head, Stage::Flushed, Stage::Compacted];

fn settle(store: &impl Store, stage: Stage) {
    match stage {
        Stage::Head => {}
        Stage::Flushed => store.flush().unwrap(),
        Stage::Compacted => {
            store.flush().unwrap();
            store.maintain(now_nanos()).unwrap();
        }
    }
}

/// A test config: the defaults, minus the background thread's timing (checks drive maintenance).
fn config() -> StoreConfig {
    StoreConfig {
        maintenance_interval_secs: 3600,
        ..StoreConfig::default()
    }
}

/// A whole hour, three hours ago: far from retention's edge and from the partition edge of now.
fn base() -> i64 {
    (now_nanos() - 3 * HOUR).div_euclid(HOUR) * HOUR
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn series(service: &str) -> Labels {
    labels(&[("__name__", "process_cpu"), ("service_name", service)])
}

/// A profile with `samples:count` + `cpu:nanoseconds` over a few symbolized and raw frames.
fn cpu_profile(seed: i64, time: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    b.period("cpu", "nanoseconds", 10_000_000);
    b.time(time, 10 * SEC);
    let m = b.mapping(0x1000, 0x9000, 0x100, "/bin/app", "aabbccdd");
    let main = b.function("main", "main.c");
    let work = b.function("work", "work.c");
    let inl = b.function("inlined", "work.c");
    let l_main = b.symbolized_location(m, 0x1100, &[(main, 10)]);
    let l_work = b.symbolized_location(m, 0x1200, &[(inl, 3), (work, 20)]);
    let l_raw = b.raw_location(m, 0x1300 + seed as u64);
    b.add_sample(&[l_work, l_main], &[seed, seed * 10_000_000], &[]);
    b.add_sample(&[l_raw, l_work, l_main], &[2, 20_000_000], &[("span", "x")]);
    b.add_sample(&[l_main], &[1, 10_000_000], &[]);
    b.finish()
}

fn wall_profile(time: i64) -> Profile {
    let mut b = ProfileBuilder::new(&[("wall", "nanoseconds")]);
    b.time(time, 10 * SEC);
    let f = b.function("sleep", "");
    let l = b.symbolized_location(0, 0x42, &[(f, 0)]);
    b.add_sample(&[l], &[7], &[]);
    b.finish()
}

fn types_of(p: &Profile) -> Vec<String> {
    p.sample_type
        .iter()
        .map(|st| format!("{}:{}", p.str(st.r#type), p.str(st.unit)))
        .collect()
}

fn new_profile(labels: Labels, time: i64, p: &Profile) -> NewProfile {
    NewProfile {
        labels,
        time_nanos: time,
        profile_types: types_of(p),
        pprof: p.encode_to_vec(),
    }
}

type SampleKey = (Vec<String>, Vec<String>);

/// A profile's content without its ids: everything a reader can observe.
#[derive(Debug, PartialEq)]
struct Canonical {
    types: Vec<String>,
    period: (String, i64),
    times: (i64, i64),
    samples: BTreeMap<SampleKey, Vec<i64>>,
}

fn canonical(p: &Profile) -> Canonical {
    let loc = |id: u64| -> String {
        let Some(l) = p.location.iter().find(|l| l.id == id) else {
            return "?".into();
        };
        let m = p
            .mapping
            .iter()
            .find(|m| m.id == l.mapping_id && l.mapping_id != 0)
            .map(|m| {
                format!(
                    "{}[{:x}-{:x}@{:x}]{}",
                    p.str(m.filename),
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    p.str(m.build_id)
                )
            })
            .unwrap_or_default();
        let lines: Vec<String> = l
            .line
            .iter()
            .map(|ln| {
                let f = p.function.iter().find(|f| f.id == ln.function_id).unwrap();
                format!(
                    "{}/{}/{}:{}:{}",
                    p.str(f.name),
                    p.str(f.system_name),
                    p.str(f.filename),
                    f.start_line,
                    ln.line
                )
            })
            .collect();
        format!("{m}+{:x}{lines:?}", l.address)
    };
    let mut samples: BTreeMap<SampleKey, Vec<i64>> = BTreeMap::new();
    for s in &p.sample {
        let stack = s.location_id.iter().map(|&id| loc(id)).collect();
        let mut labels: Vec<String> = s
            .label
            .iter()
            .map(|l| format!("{}={}{}", p.str(l.key), p.str(l.str), l.num))
            .collect();
        labels.sort();
        let acc = samples
            .entry((stack, labels))
            .or_insert_with(|| vec![0; s.value.len()]);
        for (a, v) in acc.iter_mut().zip(&s.value) {
            *a += v;
        }
    }
    Canonical {
        types: types_of(p),
        period: (
            p.period_type
                .map(|pt| format!("{}:{}", p.str(pt.r#type), p.str(pt.unit)))
                .unwrap_or_default(),
            p.period,
        ),
        times: (p.time_nanos, p.duration_nanos),
        samples,
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

/// Every selected profile as (service, time) → canonical content.
fn read_all(
    store: &impl Store,
    selector: &str,
    range: TimeRange,
    profile_type: Option<&str>,
) -> BTreeMap<(String, i64), Canonical> {
    let selector = sel(selector);
    let mut out = BTreeMap::new();
    let n = store
        .read(
            ReadRequest {
                selector: &selector,
                range,
                profile_type,
                stop: None,
            },
            &mut |p| {
                let key = (
                    p.labels.get("service_name").unwrap_or("").to_owned(),
                    p.time_nanos,
                );
                assert!(
                    out.insert(key.clone(), canonical(&p.profile)).is_none(),
                    "{key:?} read twice"
                );
            },
        )
        .unwrap();
    assert_eq!(n, out.len());
    out
}

/// Sum of `profile_type` values over the selection.
fn total(store: &impl Store, range: TimeRange, profile_type: &str) -> i64 {
    let selector = Selector::all();
    let mut sum = 0;
    store
        .read(
            ReadRequest {
                selector: &selector,
                range,
                profile_type: Some(profile_type),
                stop: None,
            },
            &mut |p| {
                let i = types_of(&p.profile)
                    .iter()
                    .position(|t| t == profile_type)
                    .unwrap();
                sum += p.profile.sample.iter().map(|s| s.value[i]).sum::<i64>();
            },
        )
        .unwrap();
    sum
}

/// Runs the whole contract against stores made by `make(dir, config)`.
pub fn conformance<S: Store>(make: impl Fn(&Path, &StoreConfig) -> S) {
    for stage in STAGES {
        round_trip(&make, stage);
        selectors(&make, stage);
        time_range_edges(&make, stage);
        profile_types(&make, stage);
        label_names_and_values(&make, stage);
        series_types_and_time_bounds(&make, stage);
        reopen_durability(&make, stage);
        merged_reads_match(&make, stage);
        read_scope_counts(&make, stage);
    }
    torn_wal_tail(&make);
    retention_by_age_drops_oldest(&make);
    retention_by_size_drops_oldest(&make);
    compaction_preserves_totals(&make);
    rollups_read_like_hours(&make);
}

/// `read_scope` (Pyroscope's `AnalyzeQuery`) counts what `read` would read: the selected series,
/// profiles and samples of the type asked for, in the head or in blocks depending on the stage,
/// with their bytes.
fn read_scope_counts<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    store
        .append(vec![
            new_profile(series("a"), t + SEC, &cpu_profile(1, t + SEC)),
            new_profile(series("a"), t + 2 * SEC, &cpu_profile(2, t + 2 * SEC)),
            new_profile(series("b"), t + 3 * SEC, &cpu_profile(3, t + 3 * SEC)),
            new_profile(series("w"), t + 4 * SEC, &wall_profile(t + 4 * SEC)),
        ])
        .unwrap();
    settle(&store, stage);
    let scope = |selector: &str, profile_type: Option<&str>, range: TimeRange| {
        let selector = sel(selector);
        store
            .read_scope(ReadRequest {
                selector: &selector,
                range,
                profile_type,
                stop: None,
            })
            .unwrap()
    };
    let a = scope(
        r#"{service_name="a"}"#,
        Some("cpu:nanoseconds"),
        TimeRange::ALL,
    );
    let (here, empty) = match stage {
        Stage::Head => (a.head, a.blocks),
        Stage::Flushed | Stage::Compacted => (a.blocks, a.head),
    };
    // Two profiles of three samples each, one series.
    assert_eq!(
        (here.series, here.profiles, here.samples),
        (1, 2, 6),
        "{stage:?}: {a:?}"
    );
    assert!(
        here.blocks >= 1 && here.profile_bytes > 0,
        "{stage:?}: {a:?}"
    );
    if !matches!(stage, Stage::Head) {
        assert!(here.index_bytes > 0 && here.symbol_bytes > 0, "{a:?}");
    }
    assert_eq!(empty, Default::default(), "{stage:?}: {a:?}");
    // Every series, cpu type: a and b; wall: w alone; out of range: nothing.
    let all = scope("", Some("cpu:nanoseconds"), TimeRange::ALL);
    assert_eq!(all.head.profiles + all.blocks.profiles, 3, "{stage:?}");
    assert_eq!(all.head.series + all.blocks.series, 2, "{stage:?}");
    let wall = scope("", Some("wall:nanoseconds"), TimeRange::ALL);
    assert_eq!(
        (
            wall.head.profiles + wall.blocks.profiles,
            wall.head.samples + wall.blocks.samples
        ),
        (1, 1),
        "{stage:?}"
    );
    let before = TimeRange {
        from: t - HOUR,
        until: t,
    };
    assert_eq!(scope("", None, before), Default::default(), "{stage:?}");
}

/// `read_merged` covers the same profiles and sums to the same values per stack as `read`.
fn merged_reads_match<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    for i in 0..6i64 {
        let svc = ["m1", "m2"][i as usize % 2];
        store
            .append(vec![
                new_profile(series(svc), t + i * SEC, &cpu_profile(i + 1, t + i * SEC)),
                new_profile(series("w"), t + i * SEC, &wall_profile(t + i * SEC)),
            ])
            .unwrap();
        if i == 3 {
            settle(&store, stage);
        }
    }
    for (q, range, ty) in [
        ("", TimeRange::ALL, "cpu:nanoseconds"),
        ("", TimeRange::ALL, "wall:nanoseconds"),
        (r#"{service_name="m1"}"#, TimeRange::ALL, "samples:count"),
        (
            "",
            TimeRange {
                from: t + SEC,
                until: t + 4 * SEC,
            },
            "samples:count",
        ),
    ] {
        let selector = sel(q);
        let req = ReadRequest {
            selector: &selector,
            range,
            profile_type: Some(ty),
            stop: None,
        };
        // Per stack (frame names, leaf first): summed values.
        let stacks = |p: &Profile, acc: &mut BTreeMap<Vec<String>, i64>| {
            let i = types_of(p).iter().position(|x| x == ty).unwrap();
            let c = canonical(p);
            for ((stack, _), v) in c.samples {
                *acc.entry(stack).or_default() += v[i];
            }
        };
        let mut plain = BTreeMap::new();
        let n_plain = store
            .read(req, &mut |p| stacks(&p.profile, &mut plain))
            .unwrap();
        let mut merged = BTreeMap::new();
        let mut covered = 0;
        let n_merged = store
            .read_merged(req, &mut |m| {
                covered += m.profiles;
                stacks(&m.to_profile(), &mut merged)
            })
            .unwrap();
        assert_eq!(merged, plain, "{q} {ty} {stage:?}");
        assert_eq!(n_merged, n_plain, "{q} {ty} {stage:?}");
        assert_eq!(covered, n_plain, "{q} {ty} {stage:?}");
        assert!(n_plain > 0);
    }
}

fn round_trip<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    let mut want = BTreeMap::new();
    let mut batch = Vec::new();
    for (i, svc) in ["a", "b", "a", "c"].iter().enumerate() {
        let time = t + i as i64 * 10 * SEC;
        let p = cpu_profile(i as i64 + 1, time);
        want.insert((svc.to_string(), time), canonical(&p));
        batch.push(new_profile(series(svc), time, &p));
    }
    let w = wall_profile(t + 5 * SEC);
    want.insert(("w".to_owned(), t + 5 * SEC), canonical(&w));
    store.append(batch).unwrap();
    store
        .append(vec![new_profile(series("w"), t + 5 * SEC, &w)])
        .unwrap();
    settle(&store, stage);
    assert_eq!(
        read_all(&store, "", TimeRange::ALL, None),
        want,
        "{stage:?}"
    );
    let stats = store.stats();
    assert_eq!(stats.profiles, 5, "{stage:?}");
    assert_eq!(stats.series, 4, "{stage:?}");
}

fn selectors<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    let mk = |svc: &str, node: &str, i: i64| {
        new_profile(
            labels(&[
                ("__name__", "process_cpu"),
                ("service_name", svc),
                ("node", node),
            ]),
            t + i * SEC,
            &cpu_profile(1, t + i * SEC),
        )
    };
    store
        .append(vec![
            mk("api", "n1", 0),
            mk("api", "n2", 1),
            mk("db", "n1", 2),
            mk("web", "n3", 3),
        ])
        .unwrap();
    settle(&store, stage);
    let count = |q: &str| read_all(&store, q, TimeRange::ALL, None).len();
    assert_eq!(count(""), 4, "{stage:?}");
    assert_eq!(count(r#"{service_name="api"}"#), 2, "{stage:?}");
    assert_eq!(count(r#"{service_name="api",node="n2"}"#), 1, "{stage:?}");
    assert_eq!(count(r#"{service_name!="api"}"#), 2, "{stage:?}");
    assert_eq!(count(r#"{service_name=~"a.*|d.*"}"#), 3, "{stage:?}");
    assert_eq!(count(r#"{node!~"n1"}"#), 2, "{stage:?}");
    assert_eq!(count(r#"{service_name="nope"}"#), 0, "{stage:?}");
    assert_eq!(count(r#"{missing="x"}"#), 0, "{stage:?}");
}

fn time_range_edges<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    // Around an hour boundary: the last nanosecond of one partition and the first of the next.
    let edge = base() + HOUR;
    let times = [edge - HOUR, edge - 1, edge, edge + 10 * SEC];
    store
        .append(
            times
                .iter()
                .map(|&t| new_profile(series("s"), t, &cpu_profile(1, t)))
                .collect(),
        )
        .unwrap();
    settle(&store, stage);
    let got = |from: i64, until: i64| -> Vec<i64> {
        read_all(&store, "", TimeRange { from, until }, None)
            .into_keys()
            .map(|(_, t)| t)
            .collect()
    };
    assert_eq!(got(edge, edge), [edge], "inclusive both ends, {stage:?}");
    assert_eq!(got(edge - 1, edge), [edge - 1, edge], "{stage:?}");
    assert_eq!(got(edge - HOUR + 1, edge - 1), [edge - 1], "{stage:?}");
    assert_eq!(
        got(edge + 1, edge + 10 * SEC - 1),
        Vec::<i64>::new(),
        "{stage:?}"
    );
    assert_eq!(got(edge - HOUR, edge - HOUR), [edge - HOUR], "{stage:?}");
    assert_eq!(got(i64::MIN, i64::MAX), times, "{stage:?}");
    // Label queries honour the same edges exactly.
    let r = TimeRange {
        from: edge + 1,
        until: edge + 10 * SEC - 1,
    };
    assert!(
        store.label_names(&Selector::all(), r).is_empty(),
        "{stage:?}"
    );
    assert!(
        store.profile_types(&Selector::all(), r).is_empty(),
        "{stage:?}"
    );
    let r = TimeRange {
        from: edge + 10 * SEC,
        until: edge + 10 * SEC,
    };
    assert_eq!(
        store.label_values("service_name", &Selector::all(), r),
        ["s"],
        "{stage:?}"
    );
}

fn profile_types<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    store
        .append(vec![
            new_profile(series("cpu"), t, &cpu_profile(3, t)),
            new_profile(series("wall"), t + SEC, &wall_profile(t + SEC)),
        ])
        .unwrap();
    settle(&store, stage);
    assert_eq!(
        store.profile_types(&Selector::all(), TimeRange::ALL),
        ["cpu:nanoseconds", "samples:count", "wall:nanoseconds"],
        "{stage:?}"
    );
    assert_eq!(
        store.profile_types(&sel(r#"{service_name="wall"}"#), TimeRange::ALL),
        ["wall:nanoseconds"],
        "{stage:?}"
    );
    let only = |ty: &str| -> Vec<String> {
        read_all(&store, "", TimeRange::ALL, Some(ty))
            .into_keys()
            .map(|(s, _)| s)
            .collect()
    };
    assert_eq!(only("wall:nanoseconds"), ["wall"], "{stage:?}");
    assert_eq!(only("samples:count"), ["cpu"], "{stage:?}");
    assert!(only("alloc:bytes").is_empty(), "{stage:?}");
    assert_eq!(total(&store, TimeRange::ALL, "samples:count"), 3 + 2 + 1);
    assert_eq!(total(&store, TimeRange::ALL, "wall:nanoseconds"), 7);
}

fn label_names_and_values<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    store
        .append(vec![
            new_profile(
                labels(&[("service_name", "a"), ("pod", "p1")]),
                t,
                &cpu_profile(1, t),
            ),
            new_profile(
                labels(&[("service_name", "b"), ("node", "n1")]),
                t + HOUR,
                &cpu_profile(1, t + HOUR),
            ),
        ])
        .unwrap();
    settle(&store, stage);
    let all = Selector::all();
    assert_eq!(
        store.label_names(&all, TimeRange::ALL),
        ["node", "pod", "service_name"],
        "{stage:?}"
    );
    assert_eq!(
        store.label_values("service_name", &all, TimeRange::ALL),
        ["a", "b"],
        "{stage:?}"
    );
    let first = TimeRange {
        from: t,
        until: t + HOUR - 1,
    };
    assert_eq!(store.label_names(&all, first), ["pod", "service_name"]);
    assert_eq!(store.label_values("service_name", &all, first), ["a"]);
    assert_eq!(
        store.label_values("pod", &sel(r#"{service_name="b"}"#), TimeRange::ALL),
        Vec::<String>::new()
    );
}

/// `for_each_series` gives each selected series with the types of its profiles in range (what
/// Pyroscope's profile-type matchers are evaluated on), `time_bounds` the oldest and newest
/// profile times.
fn series_types_and_time_bounds<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    assert_eq!(store.time_bounds(&Selector::all()), None, "{stage:?}");
    store
        .append(vec![
            new_profile(series("cpu"), t + 5 * SEC, &cpu_profile(3, t + 5 * SEC)),
            new_profile(series("wall"), t + HOUR, &wall_profile(t + HOUR)),
            new_profile(series("cpu"), t + 2 * HOUR, &wall_profile(t + 2 * HOUR)),
        ])
        .unwrap();
    settle(&store, stage);
    let collect = |selector: &Selector, range: TimeRange| {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        store.for_each_series(selector, range, &mut |labels, types| {
            out.entry(labels.get("service_name").unwrap_or("").to_owned())
                .or_default()
                .extend(types.iter().cloned());
        });
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        collect(&Selector::all(), TimeRange::ALL),
        [
            (
                "cpu".to_owned(),
                s(&["cpu:nanoseconds", "samples:count", "wall:nanoseconds"])
            ),
            ("wall".to_owned(), s(&["wall:nanoseconds"])),
        ],
        "{stage:?}"
    );
    // Only the types of profiles in range.
    let first = TimeRange {
        from: t,
        until: t + HOUR - 1,
    };
    assert_eq!(
        collect(&Selector::all(), first),
        [("cpu".to_owned(), s(&["cpu:nanoseconds", "samples:count"]))],
        "{stage:?}"
    );
    assert_eq!(
        store.time_bounds(&Selector::all()),
        Some((t + 5 * SEC, t + 2 * HOUR)),
        "{stage:?}"
    );
    assert_eq!(
        store.time_bounds(&sel(r#"{service_name="wall"}"#)),
        Some((t + HOUR, t + HOUR)),
        "{stage:?}"
    );
    assert_eq!(store.time_bounds(&sel(r#"{service_name="none"}"#)), None);
}

fn reopen_durability<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    let mut want = BTreeMap::new();
    {
        let store = make(dir.path(), &config());
        for i in 0..6 {
            let time = t + i * 10 * SEC;
            let p = cpu_profile(i + 1, time);
            want.insert(("r".to_owned(), time), canonical(&p));
            store
                .append(vec![new_profile(series("r"), time, &p)])
                .unwrap();
            if i == 2 {
                // Part in blocks, part in the head.
                settle(&store, stage);
            }
        }
    }
    let store = make(dir.path(), &config());
    assert_eq!(
        read_all(&store, "", TimeRange::ALL, None),
        want,
        "{stage:?}"
    );
    settle(&store, stage);
    assert_eq!(
        read_all(&store, "", TimeRange::ALL, None),
        want,
        "{stage:?}"
    );
    drop(store);
    let store = make(dir.path(), &config());
    assert_eq!(
        read_all(&store, "", TimeRange::ALL, None),
        want,
        "{stage:?}"
    );
}

/// The newest WAL segment file under `dir`.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn torn_wal_tail<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    {
        let store = make(dir.path(), &config());
        for i in 0..2 {
            store
                .append(vec![new_profile(
                    series("t"),
                    t + i,
                    &cpu_profile(1, t + i),
                )])
                .unwrap();
        }
    }
    let seg = newest_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // A crash mid-append: half of a third record's frame.
    let third = new_profile(series("t"), t + 2, &cpu_profile(1, t + 2)).pprof;
    let mut torn = (third.len() as u32 + 100).to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 4]);
    torn.extend_from_slice(&third[..third.len() / 2]);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();
    {
        let store = make(dir.path(), &config());
        assert_eq!(read_all(&store, "", TimeRange::ALL, None).len(), 2);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "tail cut");
        store
            .append(vec![new_profile(
                series("t"),
                t + 3,
                &cpu_profile(1, t + 3),
            )])
            .unwrap();
        store.flush().unwrap();
    }
    let store = make(dir.path(), &config());
    let times: Vec<i64> = read_all(&store, "", TimeRange::ALL, None)
        .into_keys()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(times, [t, t + 1, t + 3]);
}

fn retention_by_age_drops_oldest<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    assert_eq!(config().retention_age_secs, 30 * 24 * 3600, "on by default");
    let now = now_nanos();
    let times = [now - 40 * DAY, now - 31 * DAY, now - 29 * DAY, now - HOUR];
    for &t in &times {
        store
            .append(vec![new_profile(series("old"), t, &cpu_profile(1, t))])
            .unwrap();
    }
    store.flush().unwrap();
    store.maintain(now).unwrap();
    let kept: Vec<i64> = read_all(&store, "", TimeRange::ALL, None)
        .into_keys()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(kept, times[2..]);
    drop(store);
    let store = make(dir.path(), &config());
    assert_eq!(read_all(&store, "", TimeRange::ALL, None).len(), 2);
}

fn retention_by_size_drops_oldest<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S) {
    let dir = tempfile::tempdir().unwrap();
    assert!(config().retention_bytes > 0, "on by default");
    let t = base() - 10 * HOUR;
    let mut total_bytes = 0;
    {
        let store = make(dir.path(), &config());
        // One block per hour, hours apart.
        for h in 0..4 {
            let time = t + h * HOUR;
            store
                .append(vec![new_profile(
                    series("sz"),
                    time,
                    &cpu_profile(h + 1, time),
                )])
                .unwrap();
            store.flush().unwrap();
            if h == 2 {
                total_bytes = store.stats().bytes;
            }
        }
    }
    // A budget that the three oldest hours already filled: the oldest must go to fit the newest.
    let cfg = StoreConfig {
        retention_bytes: total_bytes,
        ..config()
    };
    let store = make(dir.path(), &cfg);
    store.maintain(now_nanos()).unwrap();
    let kept: Vec<i64> = read_all(&store, "", TimeRange::ALL, None)
        .into_keys()
        .map(|(_, t)| t)
        .collect();
    assert!(!kept.is_empty() && kept.len() < 4, "{kept:?}");
    assert_eq!(*kept.last().unwrap(), t + 3 * HOUR, "newest kept");
    let first_kept = 4 - kept.len() as i64;
    let want: Vec<i64> = (first_kept..4).map(|h| t + h * HOUR).collect();
    assert_eq!(kept, want, "a contiguous newest suffix survives");
    assert!(store.stats().bytes <= total_bytes);
}

fn compaction_preserves_totals<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let t = base();
    let mut want = BTreeMap::new();
    // Many small flushes into the same hour, several series, both kinds of profile.
    for round in 0..5i64 {
        let mut batch = Vec::new();
        for svc in ["x", "y"] {
            let time = t + round * 60 * SEC + i64::from(svc == "y");
            let p = cpu_profile(round + 1, time);
            want.insert((svc.to_owned(), time), canonical(&p));
            batch.push(new_profile(series(svc), time, &p));
        }
        let time = t + round * 60 * SEC + 2;
        let w = wall_profile(time);
        want.insert(("w".to_owned(), time), canonical(&w));
        batch.push(new_profile(series("w"), time, &w));
        store.append(batch).unwrap();
        store.flush().unwrap();
    }
    let before = store.stats();
    let sums = |s: &S| {
        [
            total(s, TimeRange::ALL, "samples:count"),
            total(s, TimeRange::ALL, "cpu:nanoseconds"),
            total(s, TimeRange::ALL, "wall:nanoseconds"),
        ]
    };
    let totals = sums(&store);
    store.maintain(now_nanos()).unwrap();
    let after = store.stats();
    assert_eq!(sums(&store), totals);
    assert_eq!(read_all(&store, "", TimeRange::ALL, None), want);
    assert_eq!(after.profiles, before.profiles);
    assert!(after.blocks <= before.blocks, "{before:?} -> {after:?}");
    drop(store);
    let store = make(dir.path(), &config());
    assert_eq!(sums(&store), totals);
}

fn local(dir: &Path, cfg: &StoreConfig) -> LocalStore {
    LocalStore::open(dir, cfg.clone(), 64 << 20).unwrap()
}

#[test]
fn local_store_conforms() {
    conformance(local);
}

/// Same engine, every append in its own WAL segment: flushes see many segments at once.
#[test]
fn local_store_with_tiny_segments_conforms() {
    conformance(|dir: &Path, cfg: &StoreConfig| {
        local(
            dir,
            &StoreConfig {
                max_segment_bytes: 1,
                ..cfg.clone()
            },
        )
    });
}

/// The object-storage backend on a real Ceph RGW: the WAL in `dir`, blocks in the bucket under a
/// prefix of its own (the same for every reopen of `dir`).
fn bucket(dir: &Path, cfg: &StoreConfig) -> BucketStore {
    BucketStore::open(
        dir,
        s3::bucket(&s3::prefix_for_dir(dir)),
        BucketConfig::default(),
        cfg.clone(),
        64 << 20,
    )
    .unwrap()
}

#[test]
#[ignore = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)"]
fn s3_bucket_store_conforms() {
    conformance(bucket);
}

/// LocalStore specifics the generic suite cannot see: compaction rolls the closed hours of a day
/// up into one block and merges the blocks of an open hour into one, the WAL is gone once flushed.
#[test]
fn local_store_compacts_hours_into_days_and_truncates_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(dir.path(), &config());
    let t = base();
    for i in 0..4 {
        store
            .append(vec![new_profile(
                series("c"),
                t + i,
                &cpu_profile(1, t + i),
            )])
            .unwrap();
        store.flush().unwrap();
    }
    store
        .append(vec![new_profile(
            series("c"),
            t + HOUR,
            &cpu_profile(1, t + HOUR),
        )])
        .unwrap();
    store.flush().unwrap();
    // The current hour is still open: its blocks are merged by hour, not rolled up.
    let now = now_nanos();
    let open_hour = now.div_euclid(HOUR) * HOUR;
    for i in 0..2 {
        store
            .append(vec![new_profile(
                series("c"),
                open_hour + i,
                &cpu_profile(1, open_hour + i),
            )])
            .unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.stats().blocks, 7);
    store.maintain(now).unwrap();
    let stats = store.stats();
    // The two closed hours make one rollup; if they fall on two days, the second day's lone
    // block has nothing to merge with and stays as it is.
    let days = (t + HOUR).div_euclid(DAY) - t.div_euclid(DAY) + 1;
    assert_eq!(
        stats.blocks as i64,
        days + 1,
        "a rollup per day, one open hour"
    );
    let metas: Vec<kiln_storage_server::store::block::BlockMeta> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .map(|p| kiln_storage_server::store::block::read_meta(&p).unwrap().0)
        .collect();
    assert_eq!(metas.iter().filter(|m| m.is_rollup()).count(), 1);
    assert_eq!(metas.iter().filter(|m| !m.is_rollup()).count() as i64, days);
    assert_eq!(stats.segments, 1, "only the (empty) active segment is left");
    let segs: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(total(&store, TimeRange::ALL, "samples:count"), 7 * 4);
}

/// A merged read: its flame graph (rendered), the profiles it covers and the summed value.
fn merged_flamegraph(store: &impl Store, range: TimeRange, ty: &str) -> (String, usize, i64) {
    use kiln_storage_server::query::flamegraph;
    use kiln_storage_server::query::merge::Tree;
    use kiln_storage_server::query::symbolize::Resolver;
    use kiln_storage_server::store::Merged;
    let selector = Selector::all();
    let mut tree = Tree::new();
    let mut resolver = Resolver::new(None);
    let mut covered = 0;
    let n = store
        .read_merged(
            ReadRequest {
                selector: &selector,
                range,
                profile_type: Some(ty),
                stop: None,
            },
            &mut |m| {
                covered += m.profiles;
                match &m.data {
                    Merged::Stacks(s) => tree.merge_stacks(s, &mut resolver),
                    Merged::Profile(p) => {
                        tree.merge_profile(p, ty, &mut resolver);
                    }
                }
                // As the query does: one merge stands for `m.profiles` stored profiles.
                tree.profiles += m.profiles.saturating_sub(1);
            },
        )
        .unwrap();
    assert_eq!(n, covered);
    (flamegraph::render(&tree, 10_000, ty, None), n, tree.total())
}

/// A whole UTC day (two days ago, every hour long closed) of three series, two profiles per hour
/// each, flushed into 24 hourly blocks; returns the day's start.
fn write_day(store: &impl Store) -> i64 {
    let day = now_nanos().div_euclid(DAY) * DAY - 2 * DAY;
    for h in 0..24i64 {
        let mut batch = Vec::new();
        for (k, svc) in ["a", "b", "c"].iter().enumerate() {
            // At 10 and 40 minutes past.
            for m in [10, 40] {
                let time = day + h * HOUR + m * 60 * SEC + k as i64;
                batch.push(new_profile(
                    series(svc),
                    time,
                    &cpu_profile(h * 3 + k as i64 + 1, time),
                ));
            }
        }
        store.append(batch).unwrap();
    }
    // One flush writes a block per hour.
    store.flush().unwrap();
    day
}

/// Ranges over [`write_day`]'s day: all of it, whole hours of it, two cut hours, an open end.
fn day_ranges(day: i64) -> [(&'static str, TimeRange); 5] {
    [
        ("all", TimeRange::ALL),
        (
            "the day",
            TimeRange {
                from: day,
                until: day + DAY - 1,
            },
        ),
        (
            "hours 3..=20 whole",
            TimeRange {
                from: day + 3 * HOUR,
                until: day + 21 * HOUR - 1,
            },
        ),
        (
            "cuts hour 5 and hour 17 in half",
            TimeRange {
                from: day + 5 * HOUR + 30 * 60 * SEC,
                until: day + 17 * HOUR + 30 * 60 * SEC,
            },
        ),
        (
            "from inside the day on",
            TimeRange {
                from: day + 12 * HOUR + 20 * 60 * SEC,
                until: i64::MAX,
            },
        ),
    ]
}

/// Maintenance rolls a day of hourly blocks up into one block; merged reads over ranges that
/// cover the day, whole hours of it, or cut hours in half give the same flame graphs, profile
/// counts and totals as the hourly blocks did, and as `read` does.
fn rollups_read_like_hours<S: Store>(make: &impl Fn(&Path, &StoreConfig) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let store = make(dir.path(), &config());
    let day = write_day(&store);
    assert_eq!(store.stats().blocks, 24);
    let ty = "cpu:nanoseconds";
    let ranges = day_ranges(day);
    let hourly: Vec<(String, usize, i64)> = ranges
        .iter()
        .map(|(_, r)| merged_flamegraph(&store, *r, ty))
        .collect();
    store.maintain(now_nanos()).unwrap();
    assert_eq!(store.stats().blocks, 1, "the day rolled up into one block");
    for ((name, range), want) in ranges.iter().zip(&hourly) {
        let got = merged_flamegraph(&store, *range, ty);
        assert_eq!(&got, want, "{name}");
        assert_eq!(got.2, total(&store, *range, ty), "{name}: read agrees");
        assert!(got.1 > 0, "{name}");
    }
}

/// The local engine's rollup on disk: one block of the day with 24 hours of sums per series.
/// Its rows are then damaged in place: a read of whole hours still answers exactly (it reads the
/// hours' sums, never the rows), while one that cuts an hour needs the rows and loses the series.
#[test]
fn local_store_rollups_answer_long_ranges_exactly_from_hour_sums() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(dir.path(), &config());
    let day = write_day(&store);
    let ranges = day_ranges(day);
    let ty = "cpu:nanoseconds";
    let hourly: Vec<(String, usize, i64)> = ranges
        .iter()
        .map(|(_, r)| merged_flamegraph(&store, *r, ty))
        .collect();
    store.maintain(now_nanos()).unwrap();
    let metas: Vec<(PathBuf, kiln_storage_server::store::block::BlockMeta)> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .map(|p| {
            let m = kiln_storage_server::store::block::read_meta(&p).unwrap().0;
            (p, m)
        })
        .collect();
    assert_eq!(metas.len(), 1, "the day rolled up into one block");
    let (path, meta) = &metas[0];
    assert!(meta.is_rollup());
    assert_eq!(meta.partition_start, day);
    assert!(meta.series.iter().all(|s| s.hour_totals.len() == 24));
    for ((name, range), want) in ranges.iter().zip(&hourly) {
        let got = merged_flamegraph(&store, *range, ty);
        assert_eq!(&got, want, "{name}");
        assert_eq!(got.2, total(&store, *range, ty), "{name}: read agrees");
        assert!(got.1 > 0, "{name}");
    }
    // Damage every series' rows in place (the store reads through its open handle).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        for s in &meta.series {
            let r = s.rows_section.as_ref().unwrap();
            f.write_all_at(&[0xff; 8], r.offset + r.len / 2).unwrap();
        }
    }
    for (i, (name, range)) in ranges.iter().enumerate().take(3) {
        assert_eq!(
            merged_flamegraph(&store, *range, ty),
            hourly[i],
            "{name}: whole hours read only sums"
        );
    }
    let cut = merged_flamegraph(&store, ranges[3].1, ty);
    assert_eq!(cut.1, 0, "a cut hour needs the damaged rows: {cut:?}");
}
