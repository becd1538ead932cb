//! Crash recovery of [`LocalStore`]'s background work, made deterministic: the files a crash would
//! leave behind at each step of a flush or a compaction are recreated by hand, and a reopen must
//! show every profile exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kiln_proto::ProfileBuilder;
use kiln_storage_server::StoreConfig;
use kiln_storage_server::query::selector::Selector;
use kiln_storage_server::query::time::{TimeRange, now_nanos};
use kiln_storage_server::store::{Labels, LocalStore, NewProfile, ReadRequest, Store};
use prost::Message;

const HOUR: i64 = 3_600_000_000_000;

fn open(dir: &Path) -> LocalStore {
    let config = StoreConfig {
        maintenance_interval_secs: 3600,
        ..StoreConfig::default()
    };
    LocalStore::open(dir, config, 64 << 20).unwrap()
}

fn append(store: &LocalStore, time: i64, value: i64) {
    let mut b = ProfileBuilder::new(&[("samples", "count")]);
    let f = b.function("f", "f.c");
    let l = b.symbolized_location(0, 1, &[(f, 1)]);
    b.add_sample(&[l], &[value], &[]);
    store
        .append(vec![NewProfile {
            labels: Labels::new(vec![("service_name".into(), "r".into())]),
            time_nanos: time,
            profile_types: vec!["samples:count".into()],
            pprof: b.finish().encode_to_vec(),
        }])
        .unwrap();
}

/// (time, value) of every stored profile, sorted.
fn contents(store: &LocalStore) -> Vec<(i64, i64)> {
    let all = Selector::all();
    let mut out = Vec::new();
    store
        .read(
            ReadRequest {
                selector: &all,
                range: TimeRange::ALL,
                profile_type: None,
                stop: None,
            },
            &mut |p| out.push((p.time_nanos, p.profile.sample[0].value[0])),
        )
        .unwrap();
    out.sort_unstable();
    out
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Copies of `paths` to restore later: (path, bytes).
fn save(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

fn restore(saved: &[(PathBuf, Vec<u8>)]) {
    for (p, bytes) in saved {
        std::fs::write(p, bytes).unwrap();
    }
}

fn base() -> i64 {
    (now_nanos() - 5 * HOUR).div_euclid(HOUR) * HOUR
}

#[test]
fn flush_done_but_wal_not_yet_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    let want = {
        let store = open(dir.path());
        append(&store, t, 1);
        append(&store, t + 1, 2);
        let segs = save(&files(dir.path(), "seg"));
        store.flush().unwrap();
        let want = contents(&store);
        drop(store);
        // The crash came after the blocks were renamed into place, before the WAL was deleted.
        restore(&segs);
        want
    };
    let store = open(dir.path());
    assert_eq!(contents(&store), want, "no profile twice");
    assert_eq!(want, [(t, 1), (t + 1, 2)]);
    drop(store);
    assert_eq!(contents(&open(dir.path())), want);
}

#[test]
fn flush_interrupted_between_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    {
        let store = open(dir.path());
        // Three hours: one flush writes three blocks.
        append(&store, t, 1);
        append(&store, t + HOUR, 2);
        append(&store, t + 2 * HOUR, 3);
        let segs = save(&files(dir.path(), "seg"));
        store.flush().unwrap();
        drop(store);
        let blocks = files(&dir.path().join("blocks"), "blk");
        assert_eq!(blocks.len(), 3);
        // The crash came after the first block: the others were never written.
        for b in &blocks[1..] {
            std::fs::remove_file(b).unwrap();
        }
        restore(&segs);
        // And a half-written block under its temporary name.
        std::fs::write(dir.path().join("blocks/partial.tmp"), b"KILNBLK1 half").unwrap();
    }
    let store = open(dir.path());
    assert_eq!(contents(&store), [(t, 1), (t + HOUR, 2), (t + 2 * HOUR, 3)]);
    assert!(files(&dir.path().join("blocks"), "tmp").is_empty());
    store.flush().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(contents(&store), [(t, 1), (t + HOUR, 2), (t + 2 * HOUR, 3)]);
    assert_eq!(store.stats().blocks, 3);
}

#[test]
fn compaction_done_but_inputs_not_yet_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    {
        let store = open(dir.path());
        for i in 0..3 {
            append(&store, t + i, i + 1);
            store.flush().unwrap();
        }
        let inputs = save(&files(&dir.path().join("blocks"), "blk"));
        assert_eq!(inputs.len(), 3);
        store.maintain(now_nanos()).unwrap();
        assert_eq!(store.stats().blocks, 1);
        drop(store);
        restore(&inputs);
    }
    let store = open(dir.path());
    assert_eq!(contents(&store), [(t, 1), (t + 1, 2), (t + 2, 3)]);
    assert_eq!(store.stats().blocks, 1, "replaced inputs deleted");
}

#[test]
fn corrupt_block_is_set_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    {
        let store = open(dir.path());
        append(&store, t, 1);
        store.flush().unwrap();
        append(&store, t + HOUR, 2);
    }
    let blk = files(&dir.path().join("blocks"), "blk").remove(0);
    let mut bytes = std::fs::read(&blk).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0xff;
    std::fs::write(&blk, &bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(contents(&store), [(t + HOUR, 2)]);
    assert_eq!(
        files(&dir.path().join("blocks/quarantine"), "blk").len(),
        1,
        "the block is set aside for inspection"
    );
    assert_eq!(store.stats().quarantined_blocks, 1);
}

#[test]
fn segment_ids_never_repeat_after_the_wal_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let t = base();
    {
        let store = open(dir.path());
        append(&store, t, 1);
        store.flush().unwrap();
    }
    // Every WAL segment gone (as after a flush and a clean restart with nothing new).
    for s in files(dir.path(), "seg") {
        std::fs::remove_file(s).unwrap();
    }
    {
        let store = open(dir.path());
        append(&store, t + 1, 2);
    }
    // A reused id would make start-up think the new segment was already flushed.
    let store = open(dir.path());
    assert_eq!(contents(&store), [(t, 1), (t + 1, 2)]);
}

/// Nobody calls flush or maintain: the background thread flushes the WAL into blocks and applies
/// the default age retention by itself.
#[test]
fn background_thread_flushes_and_expires_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        maintenance_interval_secs: 1,
        max_segment_age_secs: 0,
        ..StoreConfig::default()
    };
    let store = LocalStore::open(dir.path(), config, 64 << 20).unwrap();
    let now = now_nanos();
    append(&store, now - 40 * 24 * HOUR, 1);
    append(&store, now - HOUR, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = store.stats();
        if stats.blocks > 0 && contents(&store) == [(now - HOUR, 2)] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background maintenance did not run: {stats:?} {:?}",
            contents(&store)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(files(dir.path(), "seg").len() <= 2, "flushed WAL deleted");
}
