//! What lives in the bucket and what it means — the only state servers share.
//!
//! ```text
//! PREFIX/blocks/KEY.blk    an immutable block (the local engine's format)
//! PREFIX/meta/KEY.json     its record (BlockRecord): written after the block; it is what makes
//!                          the block exist for readers
//! PREFIX/index.json        every record as of `built_nanos`, rewritten by the maintenance pass,
//!                          so a reader lists only metas newer than it
//! PREFIX/leases/NAME/EPOCH one server's right to compact a partition or to apply retention
//! ```
//!
//! KEY is `CREATED_NANOS(20 digits)-SERVER-TAG`, so keys sort by creation time and a listing can
//! start after the index. A compacted block's record names every block it `covers`; readers show
//! only records no other record covers ([`visible`]), so while sources and their compaction both
//! exist (a compactor died before deleting them, or deletion waits out its grace period), each
//! profile is counted once.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub const BLOCKS: &str = "blocks";
pub const META: &str = "meta";
pub const INDEX: &str = "index.json";
pub const LEASES: &str = "leases";

pub fn block_key(key: &str) -> String {
    format!("{BLOCKS}/{key}.blk")
}
pub fn meta_key(key: &str) -> String {
    format!("{META}/{key}.json")
}
/// The block key from a `blocks/KEY.blk` listing entry.
pub fn key_of_block(path: &str) -> Option<&str> {
    path.strip_prefix(BLOCKS)?
        .strip_prefix('/')?
        .strip_suffix(".blk")
}
/// The record key from a `meta/KEY.json` listing entry.
pub fn key_of_meta(path: &str) -> Option<&str> {
    path.strip_prefix(META)?
        .strip_prefix('/')?
        .strip_suffix(".json")
}
/// A new key, created now by `server`.
pub fn new_key(now_nanos: i64, server: &str, tag: &str) -> String {
    format!("{:020}-{server}-{tag}", now_nanos.max(0))
}
/// The creation time in a key (its first field).
pub fn created_of(key: &str) -> i64 {
    key.split('-')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// One block in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub key: String,
    pub partition_start: i64,
    pub min_time: i64,
    pub max_time: i64,
    pub size: u64,
    pub profiles: u64,
    /// Keys of the blocks this one was compacted from, and of everything they covered.
    #[serde(default)]
    pub covers: Vec<String>,
    /// 0 for an uploaded block, one more than its highest input for a compacted one.
    #[serde(default)]
    pub level: u32,
    /// The block's partition length: 0 (records written before rollups existed) or an hour, a
    /// day for a rollup (see `block::ROLLUP_NANOS`).
    #[serde(default)]
    pub partition_nanos: i64,
}

/// `index.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub built_nanos: i64,
    pub records: Vec<BlockRecord>,
}

/// A lease object's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    pub expires_nanos: i64,
}

/// Which records count, decided the same way by every server from the same records.
///
/// Compacted records are taken in key (creation) order; one is *rejected* if it covers a block
/// already claimed by an accepted record that it does not itself cover (two compactions of
/// overlapping block sets — only possible if a lease was lost to a clock jump — must not both
/// count). A rejected record is ignored whole: its sources keep standing for themselves.
/// Returns (covered keys, rejected keys).
pub fn resolve(records: &BTreeMap<String, BlockRecord>) -> (HashSet<&str>, HashSet<&str>) {
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    let mut rejected: HashSet<&str> = HashSet::new();
    for r in records.values().filter(|r| !r.covers.is_empty()) {
        let covers: HashSet<&str> = r.covers.iter().map(String::as_str).collect();
        let conflict = r.covers.iter().any(|k| {
            claimed
                .get(k.as_str())
                .is_some_and(|by| !covers.contains(by))
        });
        if conflict {
            rejected.insert(r.key.as_str());
            continue;
        }
        for k in &r.covers {
            claimed.insert(k.as_str(), r.key.as_str());
        }
    }
    (claimed.into_keys().collect(), rejected)
}

/// The records readers use: those no accepted compaction covers, minus rejected compactions
/// ([`resolve`]). `covers` is transitive, so a compaction of compactions hides everything below.
pub fn visible(records: &BTreeMap<String, BlockRecord>) -> Vec<&BlockRecord> {
    let (covered, rejected) = resolve(records);
    records
        .values()
        .filter(|r| !covered.contains(r.key.as_str()) && !rejected.contains(r.key.as_str()))
        .collect()
}

/// Records no reader needs once their grace period is over: those covered by a visible record
/// created before `before`, and rejected compactions older than that. A maintenance pass deletes
/// them.
pub fn collectable(records: &BTreeMap<String, BlockRecord>, before: i64) -> Vec<String> {
    let (_, rejected) = resolve(records);
    let mut out: HashSet<String> = rejected
        .into_iter()
        .filter(|k| created_of(k) < before)
        .map(str::to_owned)
        .collect();
    for r in visible(records) {
        if created_of(&r.key) < before {
            out.extend(
                r.covers
                    .iter()
                    .filter(|k| records.contains_key(*k))
                    .cloned(),
            );
        }
    }
    let mut out: Vec<String> = out.into_iter().collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, covers: &[&str]) -> BlockRecord {
        BlockRecord {
            key: key.into(),
            partition_start: 0,
            min_time: 0,
            max_time: 0,
            size: 1,
            profiles: 1,
            covers: covers.iter().map(|s| (*s).to_owned()).collect(),
            level: 0,
            partition_nanos: 0,
        }
    }

    fn map(rs: Vec<BlockRecord>) -> BTreeMap<String, BlockRecord> {
        rs.into_iter().map(|r| (r.key.clone(), r)).collect()
    }

    #[test]
    fn compacted_blocks_hide_their_sources_transitively() {
        let m = map(vec![
            rec("01-a-x", &[]),
            rec("02-a-y", &[]),
            rec("03-b-z", &[]),
            rec("04-a-c", &["01-a-x", "02-a-y"]),
            rec("05-b-c", &["04-a-c", "01-a-x", "02-a-y", "03-b-z"]),
        ]);
        let keys: Vec<&str> = visible(&m).iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["05-b-c"]);
        // Before the second compaction is known, the first one stands for its sources.
        let mut m2 = m.clone();
        m2.remove("05-b-c");
        let keys: Vec<&str> = visible(&m2).iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["03-b-z", "04-a-c"]);
    }

    #[test]
    fn of_two_overlapping_compactions_only_the_first_counts() {
        let m = map(vec![
            rec("01-a-x", &[]),
            rec("02-a-y", &[]),
            rec("03-b-z", &[]),
            rec("04-a-c", &["01-a-x", "02-a-y"]),
            // Raced the first one (a lost lease) and overlaps it on 02-a-y.
            rec("05-b-c", &["02-a-y", "03-b-z"]),
        ]);
        let keys: Vec<&str> = visible(&m).iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["03-b-z", "04-a-c"], "each source counted once");
        assert_eq!(collectable(&m, 6), ["01-a-x", "02-a-y", "05-b-c"]);
    }

    #[test]
    fn garbage_waits_for_the_grace_period() {
        let m = map(vec![
            rec("00000000000000000001-a-x", &[]),
            rec("00000000000000000005-a-c", &["00000000000000000001-a-x"]),
        ]);
        assert!(collectable(&m, 5).is_empty());
        assert_eq!(collectable(&m, 6), ["00000000000000000001-a-x"]);
    }

    #[test]
    fn keys_sort_by_creation_and_parse_back() {
        let a = new_key(5, "srv", "b1");
        let b = new_key(40, "srv", "b1");
        assert!(a < b);
        assert_eq!(created_of(&b), 40);
        assert_eq!(key_of_meta(&meta_key(&a)), Some(a.as_str()));
    }
}
