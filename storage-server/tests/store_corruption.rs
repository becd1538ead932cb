//! Damage on disk costs only what is damaged. Each test flips bytes at many offsets of WAL
//! segments (active and sealed, both frame layouts) and of blocks (header, every section, footer),
//! reopens the store, and asserts that every profile not itself damaged reads back exactly once,
//! that flame-graph reads (merged) and label listings agree with it, that maintenance and
//! retention still succeed, and that `check` (what `kiln check` prints) names the damage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_proto::ProfileBuilder;
use kiln_storage_server::StoreConfig;
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::time::{TimeRange, now_nanos};
use kiln_storage_server::store::block::{self, BlockBuilder, Provenance};
use kiln_storage_server::store::check::{self, BlockProblem, Report};
use kiln_storage_server::store::{Labels, LocalStore, NewProfile, ReadRequest, Store};
use prost::Message;

const HOUR: i64 = 3_600_000_000_000;

/// One stored profile: its series' service and its (unique) sample value.
type Key = (String, i64);

fn config() -> StoreConfig {
    StoreConfig {
        maintenance_interval_secs: 3600,
        ..StoreConfig::default()
    }
}

fn open(dir: &Path, config: StoreConfig) -> LocalStore {
    LocalStore::open(dir, config, 64 << 20).unwrap()
}

fn base() -> i64 {
    (now_nanos() - 5 * HOUR).div_euclid(HOUR) * HOUR
}

fn new_profile(service: &str, time: i64, value: i64) -> NewProfile {
    let mut b = ProfileBuilder::new(&[("samples", "count")]);
    let f = b.function(&format!("work_{service}"), "w.c");
    let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
    b.add_sample(&[l], &[value], &[]);
    NewProfile {
        labels: Labels::new(vec![("service_name".into(), service.into())]),
        time_nanos: time,
        profile_types: vec!["samples:count".into()],
        pprof: b.finish().encode_to_vec(),
    }
}

fn append(store: &LocalStore, key: &Key, time: i64) {
    store
        .append(vec![new_profile(&key.0, time, key.1)])
        .unwrap();
}

fn request<'a>(selector: &'a Selector, profile_type: Option<&'static str>) -> ReadRequest<'a> {
    ReadRequest {
        selector,
        range: TimeRange::ALL,
        profile_type,
        stop: None,
    }
}

/// Every readable profile, sorted (a profile read twice shows twice).
fn contents(store: &LocalStore) -> Vec<Key> {
    let all = Selector::all();
    let mut out = Vec::new();
    let n = store
        .read(request(&all, None), &mut |p| {
            let service = p.labels.get("service_name").unwrap().to_owned();
            out.push((service, p.profile.sample[0].value[0]));
        })
        .unwrap();
    assert_eq!(n, out.len());
    out.sort();
    out
}

/// Asserts that reads, merged (flame-graph) reads, label listings and stats all show exactly
/// `want`.
fn assert_reads(store: &LocalStore, want: &[Key], what: &str) {
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(contents(store), want, "{what}: profiles read back");
    let all = Selector::all();
    let mut total = 0;
    let n = store
        .read_merged(request(&all, Some("samples:count")), &mut |m| {
            total += m
                .to_profile()
                .sample
                .iter()
                .map(|s| s.value[0])
                .sum::<i64>();
        })
        .unwrap();
    assert_eq!(n, want.len(), "{what}: profiles merged");
    assert_eq!(
        total,
        want.iter().map(|k| k.1).sum::<i64>(),
        "{what}: merged total"
    );
    let services: BTreeSet<String> = want.iter().map(|k| k.0.clone()).collect();
    assert_eq!(
        store.label_values("service_name", &all, TimeRange::ALL),
        services.into_iter().collect::<Vec<_>>(),
        "{what}: label listing"
    );
    assert_eq!(store.stats().profiles, want.len() as u64, "{what}: stats");
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Copies every file of `from` (recursively) into a fresh temporary directory.
fn copy_tree(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(from, dir.path());
    dir
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xa5;
    std::fs::write(path, bytes).unwrap();
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// WAL segments

/// A store directory holding only WAL segments (one sealed or more, and the active one), and
/// which profile each frame holds.
struct Wal {
    dir: tempfile::TempDir,
    segments: Vec<PathBuf>,
    /// Per segment: (frame start, frame end, the profile in it).
    frames: Vec<Vec<(u64, u64, Key)>>,
    keys: Vec<Key>,
    t: i64,
}

/// Frame boundaries of a segment: version 2 frames are `[sync][len][crc][header crc]` + payload,
/// version 1 frames `[len][crc]` + payload (see the segment module).
fn frame_bounds(bytes: &[u8], v1: bool) -> Vec<(u64, u64)> {
    let (len_at, header) = if v1 { (0, 8) } else { (4, 16) };
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let end = at + header + u32_at(bytes, at + len_at) as usize;
        out.push((at as u64, end as u64));
        at = end;
    }
    out
}

fn wal_fixture() -> Wal {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    let keys: Vec<Key> = (0..36)
        .map(|i| (format!("svc{}", i % 3), 1000 + i))
        .collect();
    {
        // Small segments: the appends spread over a few of them.
        let store = open(
            dir.path(),
            StoreConfig {
                max_segment_bytes: 1500,
                ..config()
            },
        );
        for (i, k) in keys.iter().enumerate() {
            append(&store, k, t + i as i64);
        }
    }
    let segments = files(dir.path(), "seg");
    assert!(segments.len() >= 3, "{segments:?}");
    let mut frames = Vec::new();
    let mut next = keys.iter();
    for s in &segments {
        let bytes = std::fs::read(s).unwrap();
        assert_eq!(&bytes[..8], b"KILNSEG2");
        frames.push(
            frame_bounds(&bytes, false)
                .into_iter()
                .map(|(a, b)| (a, b, next.next().unwrap().clone()))
                .collect(),
        );
    }
    assert!(next.next().is_none(), "every append is one frame");
    Wal {
        dir,
        segments,
        frames,
        keys,
        t,
    }
}

/// Rewrites every segment of `wal` in the version 1 layout (what older servers wrote).
fn to_v1(wal: &mut Wal) {
    for (s, frames) in wal.segments.iter().zip(&mut wal.frames) {
        let bytes = std::fs::read(s).unwrap();
        let mut out = b"KILNSEG1".to_vec();
        for f in frames.iter_mut() {
            let (a, b) = (f.0 as usize, f.1 as usize);
            let start = out.len() as u64;
            out.extend_from_slice(&bytes[a + 4..a + 12]);
            out.extend_from_slice(&bytes[a + 16..b]);
            *f = (start, out.len() as u64, f.2.clone());
        }
        std::fs::write(s, out).unwrap();
    }
}

/// The segment report of `check` covering `offset` of the `seg`-th segment names the damage.
fn assert_check_names(report: &Report, seg: &Path, offset: u64) {
    assert!(!report.is_clean(), "check found nothing at {offset}");
    let s = report
        .segments
        .iter()
        .find(|s| s.path.file_name() == seg.file_name())
        .unwrap();
    let named = if offset < 8 {
        !s.magic_ok
    } else {
        s.damaged
            .iter()
            .chain(&s.tail)
            .any(|d| d.offset <= offset && offset < d.offset + d.len)
    };
    assert!(named, "check does not name offset {offset}: {s:?}");
    assert!(
        report
            .to_string()
            .contains(&*seg.file_name().unwrap().to_string_lossy()),
        "{report}"
    );
}

/// Flips one byte at each of `offsets` of segment `seg` (each in a fresh copy of the store),
/// reopens, and checks that exactly the profile whose frame holds the byte is lost.
fn flip_segment(wal: &Wal, seg: usize, offsets: &[u64], thorough_every: usize) {
    let active = seg + 1 == wal.segments.len();
    for (n, &offset) in offsets.iter().enumerate() {
        let copy = copy_tree(wal.dir.path());
        let path = copy.path().join(wal.segments[seg].file_name().unwrap());
        flip(&path, offset);
        let what = format!("segment {seg} (active: {active}), byte {offset}");

        let report = check::check(copy.path()).unwrap();
        assert_check_names(&report, &path, offset);

        let lost: Vec<&Key> = wal.frames[seg]
            .iter()
            .filter(|(a, b, _)| *a <= offset && offset < *b)
            .map(|(_, _, k)| k)
            .collect();
        let want: Vec<Key> = wal
            .keys
            .iter()
            .filter(|k| !lost.contains(k))
            .cloned()
            .collect();
        let store = open(copy.path(), config());
        assert_reads(&store, &want, &what);
        assert_eq!(store.stats().profiles_lost, lost.len() as u64, "{what}");
        if n % thorough_every != 0 {
            continue;
        }
        // Appends go on after the damage, and everything survives another restart, a flush into
        // blocks and maintenance.
        let extra: Key = ("svc-after".into(), 99);
        append(&store, &extra, wal.t + 100);
        drop(store);
        let mut want = want;
        want.push(extra);
        let store = open(copy.path(), config());
        assert_reads(&store, &want, &format!("{what}, reopened"));
        store.flush().unwrap();
        store.maintain(now_nanos()).unwrap();
        assert_reads(&store, &want, &format!("{what}, flushed"));
        assert!(files(copy.path(), "seg").len() <= 2, "{what}: WAL flushed");
    }
}

/// Offsets to flip in a segment: every `step`th byte, plus every byte of the magic and of the
/// header of a frame in the middle (each field of it).
fn offsets(frames: &[(u64, u64, Key)], file_len: u64, step: u64, header: u64) -> Vec<u64> {
    let mid = frames[frames.len() / 2].0;
    let mut out: BTreeSet<u64> = (0..8).chain(mid..mid + header).collect();
    out.extend((8..file_len).step_by(step as usize));
    out.into_iter().collect()
}

#[test]
fn wal_damage_costs_only_the_damaged_record() {
    let wal = wal_fixture();
    let sealed = 0;
    let active = wal.segments.len() - 1;
    for seg in [sealed, active] {
        let len = std::fs::metadata(&wal.segments[seg]).unwrap().len();
        flip_segment(&wal, seg, &offsets(&wal.frames[seg], len, 37, 16), 6);
    }
}

#[test]
fn legacy_wal_damage_costs_only_the_damaged_record() {
    let mut wal = wal_fixture();
    to_v1(&mut wal);
    let sealed = 0;
    let active = wal.segments.len() - 1;
    for seg in [sealed, active] {
        let len = std::fs::metadata(&wal.segments[seg]).unwrap().len();
        flip_segment(&wal, seg, &offsets(&wal.frames[seg], len, 53, 8), 8);
    }
}

/// The old failure: a damaged record in the middle of the active segment truncated everything
/// after it. Pinned on its own so the figure is plain: one record of 36 lost, not a third.
#[test]
fn damaged_record_mid_segment_is_skipped_not_truncated() {
    let wal = wal_fixture();
    let active = wal.segments.len() - 1;
    let copy = copy_tree(wal.dir.path());
    let path = copy.path().join(wal.segments[active].file_name().unwrap());
    let len_before = std::fs::metadata(&path).unwrap().len();
    let (start, _, lost) = wal.frames[active][1].clone();
    // The length field: the scan can no longer trust it and must find the next frame itself.
    flip(&path, start + 5);
    let store = open(copy.path(), config());
    assert_eq!(contents(&store).len(), wal.keys.len() - 1);
    assert!(!contents(&store).contains(&lost));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len_before,
        "the records after the damage stay in the segment"
    );
    assert!(store.stats().wal_damaged_bytes > 0);
}

// ---------------------------------------------------------------------------------------------
// Blocks

/// A store directory with three blocks: the first (the one damaged) and the second share an
/// hour, so compaction would merge them; the third is the next hour.
struct Blocks {
    dir: tempfile::TempDir,
    target: PathBuf,
    /// Per series of the target block (footer order): its service.
    target_series: Vec<String>,
    target_keys: Vec<Key>,
    keys: Vec<Key>,
    /// Whether the two hours of the fixture (the target's, and the next) fall on one UTC day, so
    /// that compaction rolls them up together.
    one_day: bool,
}

fn blocks_fixture() -> Blocks {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    let mut keys = Vec::new();
    let mut target_keys = Vec::new();
    {
        let store = open(dir.path(), config());
        for i in 0..12 {
            let k: Key = (format!("svc{}", i % 3), 100 + i);
            append(&store, &k, t + i);
            target_keys.push(k.clone());
            keys.push(k);
        }
        store.flush().unwrap();
        for i in 0..4 {
            let k: Key = (format!("svc{}", i % 2), 200 + i);
            append(&store, &k, t + 100 + i);
            keys.push(k);
            let k: Key = ("svc2".into(), 300 + i);
            append(&store, &k, t + HOUR + i);
            keys.push(k);
        }
        store.flush().unwrap();
    }
    let blocks = files(&dir.path().join("blocks"), "blk");
    assert_eq!(blocks.len(), 3);
    // The first flush's block has the smallest id.
    let target = blocks
        .iter()
        .min_by_key(|p| {
            block::parse_block_name(p.file_name().unwrap().to_str().unwrap())
                .unwrap()
                .1
        })
        .unwrap()
        .clone();
    let (meta, _, _) = block::read_meta(&target).unwrap();
    assert_eq!(meta.profiles, 12);
    let target_series = meta
        .series
        .iter()
        .map(|s| s.labels().get("service_name").unwrap().to_owned())
        .collect();
    let day = |t: i64| t.div_euclid(24 * HOUR);
    Blocks {
        dir,
        target,
        target_series,
        target_keys,
        keys,
        one_day: day(t) == day(t + HOUR),
    }
}

/// Which profiles of the target block a flipped byte at `offset` costs.
#[derive(Debug, Clone, PartialEq)]
enum Region {
    /// The leading magic: reported, nothing lost.
    Magic,
    /// The symbol or stack table: the whole block.
    Tables,
    /// A section of series `i`: that series.
    Series(usize),
    /// The footer or trailer: the whole block, set aside.
    Footer,
}

fn regions(path: &Path) -> Vec<(u64, u64, Region)> {
    let (meta, _, size) = block::read_meta(path).unwrap();
    let mut out = vec![(0, 8, Region::Magic)];
    for s in [&meta.symbols, &meta.stacks] {
        let s = s.as_ref().unwrap();
        out.push((s.offset, s.offset + s.len, Region::Tables));
    }
    for (i, series) in meta.series.iter().enumerate() {
        // The totals section (per-stack sums) is optional: blocks before it lack it.
        for s in [
            &series.profiles_section,
            &series.rows_section,
            &series.totals_section,
        ] {
            let Some(s) = s.as_ref() else { continue };
            out.push((s.offset, s.offset + s.len, Region::Series(i)));
        }
    }
    let footer = out.iter().map(|r| r.1).max().unwrap();
    out.push((footer, size, Region::Footer));
    out.sort_by_key(|r| r.0);
    // The sections tile the file: no byte is outside a known region.
    for w in out.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{out:?}");
    }
    out
}

fn flip_block(b: &Blocks, offset: u64, region: &Region) {
    let what = format!("block byte {offset} ({region:?})");
    let copy = copy_tree(b.dir.path());
    let path = copy
        .path()
        .join("blocks")
        .join(b.target.file_name().unwrap());
    flip(&path, offset);

    let lost: Vec<Key> = match region {
        Region::Magic => Vec::new(),
        Region::Tables | Region::Footer => b.target_keys.clone(),
        Region::Series(i) => b
            .target_keys
            .iter()
            .filter(|k| k.0 == b.target_series[*i])
            .cloned()
            .collect(),
    };
    let want: Vec<Key> = b
        .keys
        .iter()
        .filter(|k| !lost.contains(k))
        .cloned()
        .collect();

    // What `kiln check` prints names the block and the part of it that is damaged.
    let report = check::check(copy.path()).unwrap();
    if *region == Region::Magic {
        // Checked and reported, but the footer and sections prove the rest: nothing lost.
        assert!(!report.is_clean(), "{what}: {report}");
        assert_eq!(report.profiles_lost(), 0, "{what}: {report}");
        assert!(
            report.to_string().contains("damaged leading magic"),
            "{report}"
        );
    } else {
        let r = report
            .blocks
            .iter()
            .find(|r| r.path.file_name() == path.file_name())
            .unwrap_or_else(|| panic!("{what}: {report}"));
        match (region, &r.problem) {
            (Region::Tables, Some(BlockProblem::Tables(_))) => {}
            (Region::Footer, Some(BlockProblem::Footer { lost: count, .. })) => {
                assert_eq!(count.profiles(), lost.len() as u64, "{what}: {count:?}");
            }
            (Region::Series(_), Some(BlockProblem::Series(s))) => {
                assert_eq!(s.len(), 1, "{what}");
                assert_eq!(s[0].profiles, lost.len() as u64, "{what}");
            }
            other => panic!("{what}: check reported {other:?}"),
        }
        assert_eq!(report.profiles_lost(), r.profiles_lost(), "{what}");
        assert!(
            report
                .to_string()
                .contains(&*path.file_name().unwrap().to_string_lossy()),
            "{report}"
        );
    }

    let store = open(copy.path(), config());
    assert_reads(&store, &want, &what);
    let stats = store.stats();
    let damaged = *region != Region::Magic;
    assert_eq!(stats.quarantined_blocks, u64::from(damaged), "{what}");
    // A footer's profiles too: counted from the block's own profile tables.
    assert_eq!(stats.profiles_lost, lost.len() as u64, "{what}");
    assert_eq!(stats.quarantined_bytes > 0, damaged, "{what}");

    // Maintenance goes on around the damage: compaction leaves the damaged block alone, and rolls
    // the sound blocks of the (closed) hours of each day up into one (the target included when
    // it is sound; a footer's damage sets it aside). A day with a single sound block keeps it.
    store.maintain(now_nanos()).unwrap();
    store.maintain(now_nanos()).unwrap();
    assert_reads(&store, &want, &format!("{what}, after maintenance"));
    let expected_blocks = match (region, b.one_day) {
        (Region::Magic | Region::Footer, true) => 1,
        (Region::Magic | Region::Footer, false) => 2,
        (_, true) => 2,
        (_, false) => 3,
    };
    assert_eq!(store.stats().blocks, expected_blocks, "{what}");
    drop(store);
    let store = open(copy.path(), config());
    assert_reads(&store, &want, &format!("{what}, reopened"));

    // Retention still deletes everything by age, the damaged block and set-aside files included.
    store.apply_retention(now_nanos() + 40 * 24 * HOUR).unwrap();
    assert_eq!(store.stats().blocks, 0, "{what}");
    assert_eq!(store.stats().quarantined_bytes, 0, "{what}");
    assert!(files(&copy.path().join("blocks"), "blk").is_empty());
    assert!(files(&copy.path().join("blocks/quarantine"), "blk").is_empty());
    assert!(files(&copy.path().join("blocks"), "tmp").is_empty());
}

#[test]
fn block_damage_costs_only_the_damaged_sections() {
    let b = blocks_fixture();
    let regions = regions(&b.target);
    let size = std::fs::metadata(&b.target).unwrap().len();
    // The first, middle and last byte of every region, and every 41st byte.
    let mut offsets = BTreeSet::new();
    for (a, z, _) in &regions {
        offsets.extend([*a, (a + z) / 2, z - 1]);
    }
    offsets.extend((0..size).step_by(41));
    let mut seen = BTreeSet::new();
    for offset in offsets {
        let region = &regions
            .iter()
            .find(|r| r.0 <= offset && offset < r.1)
            .unwrap()
            .2;
        seen.insert(format!("{region:?}"));
        flip_block(&b, offset, region);
    }
    assert_eq!(
        seen.len(),
        3 + b.target_series.len(),
        "every region hit: {seen:?}"
    );
}

/// Without any read first, the background verification after start-up finds a damaged series,
/// and label listings stop showing it.
#[test]
fn background_verification_hides_damaged_series_from_listings() {
    let b = blocks_fixture();
    let copy = copy_tree(b.dir.path());
    let path = copy
        .path()
        .join("blocks")
        .join(b.target.file_name().unwrap());
    // svc2's profiles of the first hour are all in the target block (the other block of that
    // hour holds svc0 and svc1): damage the rows of its series there.
    let (meta, _, _) = block::read_meta(&path).unwrap();
    let i = b.target_series.iter().position(|s| s == "svc2").unwrap();
    let rows = meta.series[i].rows_section.as_ref().unwrap();
    flip(&path, rows.offset + rows.len / 2);
    let store = open(copy.path(), config());
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stats().quarantined_blocks == 0 {
        assert!(
            Instant::now() < deadline,
            "background verification never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Listing over the first hour only, before anything has read the series.
    let first_hour = TimeRange {
        from: base(),
        until: base() + HOUR - 1,
    };
    assert_eq!(
        store.label_values("service_name", &Selector::all(), first_hour),
        ["svc0", "svc1"]
    );
    let want: Vec<Key> = b
        .keys
        .iter()
        .filter(|k| !(k.0 == "svc2" && b.target_keys.contains(k)))
        .cloned()
        .collect();
    assert_reads(&store, &want, "after background verification");
}

/// `verify_on_open` (`kiln server --verify`) finds the damage before `open` returns.
#[test]
fn verify_on_open_finds_damage_before_serving() {
    let b = blocks_fixture();
    let copy = copy_tree(b.dir.path());
    let path = copy
        .path()
        .join("blocks")
        .join(b.target.file_name().unwrap());
    let (meta, _, _) = block::read_meta(&path).unwrap();
    let symbols = meta.symbols.as_ref().unwrap();
    flip(&path, symbols.offset + 1);
    let store = open(
        copy.path(),
        StoreConfig {
            verify_on_open: true,
            ..config()
        },
    );
    let stats = store.stats();
    assert_eq!(stats.quarantined_blocks, 1);
    assert_eq!(stats.profiles_lost, 12);
    assert_eq!(stats.profiles, (b.keys.len() - 12) as u64);
}

/// Retention by size counts damaged and set-aside bytes and deletes them oldest first.
#[test]
fn retention_by_size_counts_quarantined_bytes() {
    let b = blocks_fixture();
    let copy = copy_tree(b.dir.path());
    let path = copy
        .path()
        .join("blocks")
        .join(b.target.file_name().unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    // Ruin the trailer: the block is set aside at start-up.
    flip(&path, size - 1);
    let store = open(copy.path(), config());
    let stats = store.stats();
    assert_eq!(stats.quarantined_bytes, size);
    assert_eq!(
        files(&copy.path().join("blocks/quarantine"), "blk").len(),
        1
    );
    drop(store);
    // A limit that only the set-aside block's deletion satisfies: it is the oldest.
    let limit = stats.bytes - size;
    let store = open(
        copy.path(),
        StoreConfig {
            retention_bytes: limit,
            ..config()
        },
    );
    store.apply_retention(now_nanos()).unwrap();
    assert!(files(&copy.path().join("blocks/quarantine"), "blk").is_empty());
    assert_eq!(store.stats().quarantined_bytes, 0);
    assert_eq!(store.stats().blocks, 2, "the sound blocks stay");
}

// ---------------------------------------------------------------------------------------------
// Failed writes

/// A block write that fails (here at the rename: the target name is taken by a directory) leaves
/// no temporary file behind.
#[test]
fn failed_block_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    let mut builder = BlockBuilder::new();
    let p = new_profile("a", t, 1);
    let profile = kiln_proto::pprof::Profile::decode(p.pprof.as_slice()).unwrap();
    builder.add(&p.labels, t, &p.profile_types, &profile);
    let target = block::block_path(dir.path(), block::partition_of(t), 7);
    std::fs::create_dir_all(target.join("occupied")).unwrap();
    let result = builder.write(
        dir.path(),
        Provenance {
            id: 7,
            flush_id: 7,
            flush_parts: 1,
            ..Provenance::default()
        },
    );
    assert!(result.is_err());
    assert!(
        files(dir.path(), "tmp").is_empty(),
        "temporary block removed"
    );
}
