//! [`BucketStore`]: Kiln over S3-compatible object storage, for any number of servers on one
//! bucket (`kiln server --storage s3://bucket/prefix`).
//!
//! Each server keeps the embedded engine ([`LocalStore`], in its bucket-head role) for its
//! write-ahead log and head, so an acknowledged push survives `kill -9` exactly as on local disk.
//! Every `freshness / 3` a background thread flushes the head into blocks, uploads them
//! ([`upload`](BucketStore::upload): block first, then its record — the record is what makes it
//! exist) and refreshes the list of the bucket's blocks from `index.json` plus the records newer
//! than it ([`layout`]). So a profile is readable at once on the server that took it, and from
//! every other server within `freshness`.
//!
//! Blocks not yet uploaded wait in `bucket/outbox/` (the upload backlog, on `/metrics` and
//! `/healthz`); downloaded ones in `bucket/cache/`, bounded by `cache_bytes` and kept across
//! restarts. Compaction and retention run on whichever server gets the lease ([`lease`]); readers
//! hide blocks a compacted block covers, so nothing is counted twice while both exist.

pub mod client;
pub mod layout;
pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;

use super::block;
use super::local::{self, PendingBlock, Role};
use super::{
    LocalStore, MergedProfile, NewProfile, ReadRequest, Store, StoreError, StoreStats,
    StoredProfile, io_err,
};
use crate::config::{BucketConfig, StoreConfig};
use crate::query::selector::Selector;
use crate::query::time::{self, TimeRange};
use client::{Bucket, BucketError};
use layout::BlockRecord;

/// How far a listing starts before the index's build time: covers clock skew between servers
/// and the time between a key's creation and its record's upload.
const LIST_SKEW_NANOS: i64 = 300 * 1_000_000_000;
/// Record bodies fetched in one refresh at most (the rest come on the next one).
const MAX_META_GETS_PER_REFRESH: usize = 2_000;
/// Blocks downloaded ahead of queries per sync round at most (newest first).
const PREFETCH_PER_ROUND: usize = 8;
/// Compacted blocks of one level merged into the next level once this many are there.
const FAN_IN: usize = 4;
/// Orphaned block objects deleted in one maintenance pass at most.
const MAX_ORPHANS_PER_PASS: usize = 100;

impl From<BucketError> for StoreError {
    fn from(e: BucketError) -> StoreError {
        StoreError::Bucket(e.to_string())
    }
}

/// Kiln's storage on a bucket. Dropping it stops its background thread.
pub struct BucketStore {
    inner: Arc<Inner>,
    background: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

struct Inner {
    local: LocalStore,
    bucket: Bucket,
    /// This server's id in keys (persisted in `bucket/server-id`).
    server: String,
    outbox: PathBuf,
    cache: PathBuf,
    staging: PathBuf,
    config: BucketConfig,
    store: StoreConfig,
    /// Every record known in the bucket as of the last refresh.
    records: Mutex<BTreeMap<String, BlockRecord>>,
    /// Serializes upload, refresh, compaction and retention (the cache has one writer).
    work: Mutex<()>,
}

/// A block waiting in the outbox.
struct Outgoing {
    record: BlockRecord,
    path: PathBuf,
}

impl BucketStore {
    /// Opens the head in `dir` and the bucket; queries see the blocks cached from the last run at
    /// once, and the bucket's current list after the first refresh (done here unless the bucket
    /// is unreachable: then the background thread keeps trying).
    pub fn open(
        dir: impl Into<PathBuf>,
        bucket: Bucket,
        config: BucketConfig,
        store: StoreConfig,
        max_profile_bytes: usize,
    ) -> Result<BucketStore, StoreError> {
        let dir = dir.into();
        let root = dir.join("bucket");
        let (outbox, cache, staging) = (
            root.join("outbox"),
            root.join("cache"),
            root.join("staging"),
        );
        for d in [&outbox, &cache, &staging] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        // A compaction interrupted by a crash left at most a partial output here: never uploaded.
        clear_dir(&staging)?;
        let server = server_id(&root)?;
        let local = LocalStore::open_as(&dir, store.clone(), max_profile_bytes, Role::BucketHead)?;
        let records = load_records(&cache);
        let inner = Arc::new(Inner {
            local,
            bucket,
            server,
            outbox,
            cache,
            staging,
            config,
            store,
            records: Mutex::new(records),
            work: Mutex::new(()),
        });
        {
            let _w = lock(&inner.work);
            inner.apply_view(None, 0)?;
            // Upload what an earlier run left and read the list; the head is flushed by the
            // background thread (at open it is just what the WAL replay found).
            if let Err(e) = inner.upload().and_then(|()| inner.refresh()) {
                tracing::warn!(error = %e, "object store not reachable at start; serving the cached view and retrying");
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        let weak = Arc::downgrade(&inner);
        let tick = inner.config.sync_interval();
        let maintain_every = inner.store.maintenance_interval();
        let handle = std::thread::Builder::new()
            .name("kiln-bucket-sync".into())
            .spawn(move || {
                let mut last_maintenance = Instant::now();
                // Consecutive failed rounds: an outage is logged when it starts, then once a
                // minute or so, and when it ends — not every round.
                let mut failing = 0u64;
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                    let Some(inner) = weak.upgrade() else { break };
                    let _w = lock(&inner.work);
                    match inner.sync() {
                        Err(e) => {
                            if failing.is_multiple_of(60) {
                                tracing::warn!(error = %e, failed_rounds = failing + 1, "bucket sync failed; uploads wait in the outbox and are retried");
                            }
                            failing += 1;
                        }
                        Ok(()) if failing > 0 => {
                            tracing::info!(failed_rounds = failing, "bucket sync works again");
                            failing = 0;
                        }
                        Ok(()) => {}
                    }
                    if failing == 0
                        && let Err(e) = inner.apply_view(None, PREFETCH_PER_ROUND)
                    {
                        tracing::warn!(error = %e, "prefetching bucket blocks failed; will retry");
                    }
                    if last_maintenance.elapsed() >= maintain_every {
                        last_maintenance = Instant::now();
                        if let Err(e) = inner.maintain(time::now_nanos())
                            && failing == 0
                        {
                            tracing::warn!(error = %e, "bucket maintenance failed; will retry");
                        }
                    }
                }
            })
            .map_err(io_err(&dir))?;
        Ok(BucketStore {
            inner,
            background: Mutex::new(Some((tx, handle))),
        })
    }
}

impl Drop for BucketStore {
    fn drop(&mut self) {
        if let Some((tx, handle)) = lock(&self.background).take() {
            let _ = tx.send(());
            if handle.join().is_err() {
                tracing::error!("bucket sync thread panicked");
            }
        }
    }
}

impl Inner {
    /// Flush the head, upload the backlog, refresh the block list. Caller holds `work`.
    fn sync(&self) -> Result<(), StoreError> {
        self.local.flush_head()?;
        let uploaded = self.upload();
        let refreshed = self.refresh();
        uploaded.and(refreshed)
    }

    /// Moves flushed blocks into the outbox, then uploads the outbox oldest first. Stops at the
    /// first failure (the rest stay for the next round). Caller holds `work`.
    fn upload(&self) -> Result<(), StoreError> {
        for p in self.local.pending_blocks() {
            self.to_outbox(&p)?;
        }
        for o in self.outgoing() {
            let started = Instant::now();
            let body = fs::read(&o.path).map_err(io_err(&o.path))?;
            self.bucket
                .put(&layout::block_key(&o.record.key), Bytes::from(body))?;
            let json = serde_json::to_vec(&o.record).unwrap_or_default();
            match self
                .bucket
                .create(&layout::meta_key(&o.record.key), Bytes::from(json))
            {
                // Uploaded before a crash: the same key holds the same record.
                Ok(()) | Err(BucketError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let cached = self.cache_path(&o.record.key);
            fs::rename(&o.path, &cached).map_err(io_err(&o.path))?;
            let sidecar = o.path.with_extension("json");
            fs::remove_file(&sidecar).map_err(io_err(&sidecar))?;
            super::block::sync_dir(&self.outbox)?;
            tracing::info!(
                key = o.record.key,
                bytes = o.record.size,
                profiles = o.record.profiles,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "uploaded block"
            );
            lock(&self.records).insert(o.record.key.clone(), o.record);
        }
        Ok(())
    }

    /// Names a flushed block and moves it into the outbox: its record (sidecar) first, then the
    /// block, so the outbox never holds a block it cannot describe.
    fn to_outbox(&self, p: &PendingBlock) -> Result<(), StoreError> {
        let key = layout::new_key(time::now_nanos(), &self.server, &format!("b{}", p.id));
        let record = BlockRecord {
            key: key.clone(),
            partition_start: p.partition_start,
            min_time: p.min_time,
            max_time: p.max_time,
            size: p.size,
            profiles: p.profiles,
            covers: Vec::new(),
            level: 0,
            partition_nanos: block::PARTITION_NANOS,
        };
        let block = self.outbox.join(format!("{key}.blk"));
        let sidecar = block.with_extension("json");
        let json = serde_json::to_vec(&record).unwrap_or_default();
        fs::write(&sidecar, json)
            .and_then(|()| fs::File::open(&sidecar)?.sync_all())
            .map_err(io_err(&sidecar))?;
        self.local.hand_over(p.id, &key, &block)
    }

    /// The outbox, oldest first. Sidecars without a block (a crash between the two steps of
    /// [`Inner::to_outbox`]) are removed.
    fn outgoing(&self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.outbox) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let block = path.with_extension("blk");
            let record = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<BlockRecord>(&b).ok());
            match record {
                Some(record) if block.exists() => out.push(Outgoing {
                    record,
                    path: block,
                }),
                _ => {
                    tracing::info!(path = %path.display(), "removing an outbox entry without its block");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        out.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        out
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.cache.join(format!("{key}.blk"))
    }

    /// Re-reads the block list: `index.json`, then records newer than it. Caller holds `work`.
    fn refresh(&self) -> Result<(), StoreError> {
        let index: layout::Index = match self.bucket.get(layout::INDEX) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Bucket(format!("{}: {e}", layout::INDEX)))?,
            Err(BucketError::NotFound(_)) => layout::Index::default(),
            Err(e) => return Err(e.into()),
        };
        let after = layout::new_key(index.built_nanos.saturating_sub(LIST_SKEW_NANOS), "", "");
        let listed = self.bucket.list(layout::META, Some(&after))?;
        let known = lock(&self.records).clone();
        let mut next: BTreeMap<String, BlockRecord> = index
            .records
            .into_iter()
            .filter(|r| r.key < after)
            .map(|r| (r.key.clone(), r))
            .collect();
        let mut gets = 0;
        for path in &listed {
            let Some(key) = layout::key_of_meta(path) else {
                continue;
            };
            if let Some(r) = known.get(key) {
                next.insert(key.to_owned(), r.clone());
                continue;
            }
            if gets >= MAX_META_GETS_PER_REFRESH {
                break;
            }
            gets += 1;
            match self.bucket.get(path) {
                Ok(b) => match serde_json::from_slice::<BlockRecord>(&b) {
                    Ok(r) => {
                        next.insert(r.key.clone(), r);
                    }
                    Err(e) => {
                        tracing::error!(key = path, error = %e, "ignoring a malformed block record")
                    }
                },
                // Deleted since the listing.
                Err(BucketError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        *lock(&self.records) = next;
        self.save_records();
        self.apply_view(None, 0)
    }

    fn save_records(&self) {
        let records: Vec<BlockRecord> = lock(&self.records).values().cloned().collect();
        let path = self.cache.join("records.json");
        let tmp = self.cache.join("records.json.tmp");
        let written = serde_json::to_vec(&records)
            .map_err(std::io::Error::other)
            .and_then(|b| fs::write(&tmp, b))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not save the block list for the next start");
        }
    }

    /// Makes what the engine reads match the visible records: downloads those missing from the
    /// cache that `need`'s range covers (all of them, or an error), and up to `prefetch` others
    /// (newest first, while they fit in `cache_bytes`),
    /// evicts what is no longer visible or does not fit, and adds the outbox. Caller holds `work`.
    fn apply_view(&self, need: Option<TimeRange>, mut prefetch: usize) -> Result<(), StoreError> {
        let records = lock(&self.records).clone();
        let mut visible: Vec<BlockRecord> =
            layout::visible(&records).into_iter().cloned().collect();
        // Newest first: the cache keeps what queries read most.
        visible.sort_by(|a, b| b.max_time.cmp(&a.max_time).then(b.key.cmp(&a.key)));
        let needed = |r: &BlockRecord| {
            need.is_some_and(|range| r.min_time <= range.until && range.from <= r.max_time)
        };
        let budget = self.config.cache_bytes;
        let mut used = 0u64;
        let mut want: BTreeMap<String, PathBuf> = BTreeMap::new();
        for r in &visible {
            let path = self.cache_path(&r.key);
            let fits = used + r.size <= budget;
            if !fits && !needed(r) {
                continue;
            }
            if !path.exists() {
                if !fits {
                    return Err(StoreError::CacheTooSmall(format!(
                        "the query's range needs more than the block cache's {budget} bytes; narrow the range or raise --storage-cache-bytes"
                    )));
                }
                // A query fetches what it reads; the rest comes a few blocks per sync round, so
                // neither a start nor a refresh waits for a whole bucket to download.
                if !needed(r) {
                    if prefetch == 0 {
                        continue;
                    }
                    prefetch -= 1;
                }
                if let Err(e) = self.download(r, &path) {
                    if needed(r) {
                        return Err(e);
                    }
                    tracing::warn!(key = r.key, error = %e, "could not download block; will retry");
                    continue;
                }
            }
            used += r.size;
            want.insert(r.key.clone(), path);
        }
        // Blocks of this server not uploaded yet, unless a compaction elsewhere already covers
        // them (they were uploaded before a crash and compacted since).
        let (covered, _) = layout::resolve(&records);
        for o in self.outgoing() {
            if !covered.contains(o.record.key.as_str()) && !want.contains_key(&o.record.key) {
                want.insert(o.record.key, o.path);
            }
        }
        for failed in self.local.set_bucket_blocks(&want) {
            let _ = fs::remove_file(self.cache_path(&failed));
        }
        // Evict cached files no longer wanted (an open reader keeps its handle).
        if let Ok(entries) = fs::read_dir(&self.cache) {
            for e in entries.flatten() {
                let path = e.path();
                let Some(key) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".blk"))
                else {
                    continue;
                };
                if !want.contains_key(key) {
                    tracing::debug!(key, "evicting block from the cache");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    fn download(&self, r: &BlockRecord, to: &Path) -> Result<(), StoreError> {
        let body = self.bucket.get(&layout::block_key(&r.key))?;
        let tmp = to.with_extension("tmp");
        fs::write(&tmp, &body)
            .and_then(|()| fs::rename(&tmp, to))
            .map_err(io_err(to))
    }

    /// Compaction, then retention and garbage collection, then a new index. Caller holds `work`.
    fn maintain(&self, now: i64) -> Result<(), StoreError> {
        self.refresh()?;
        // Retention first, as in the local engine: it drops the oldest hours before they are
        // rolled up into a day.
        let expired = self.expire(now);
        let compacted = self.compact(now);
        self.apply_view(None, 0)?;
        compacted.and(expired)
    }

    /// Merges blocks of each open hour on whichever server holds the partition's lease, by
    /// level: uploaded blocks (level 0) as soon as there are two, compacted ones once
    /// [`FAN_IN`] of a level are there (into the next level), smallest first up to
    /// `max_block_bytes` — so a big compacted block is not rewritten for every new small one.
    /// The blocks of a day's closed hours (as of `now`) are rolled up into one block of the day
    /// instead, as the local engine does (`local::rollup_day`): whatever their level, as soon as
    /// there are two, so a query over days reads a few blocks, not one per hour.
    fn compact(&self, now: i64) -> Result<(), StoreError> {
        let records = lock(&self.records).clone();
        // (partition or day, level or `ROLLUP`) → records.
        const ROLLUP: u32 = u32::MAX;
        let mut groups: BTreeMap<(i64, u32), Vec<BlockRecord>> = BTreeMap::new();
        for r in layout::visible(&records) {
            let key = match local::rollup_day(r.partition_start, r.partition_nanos, now) {
                Some(day) => (day, ROLLUP),
                None => (r.partition_start, r.level),
            };
            groups.entry(key).or_default().push(r.clone());
        }
        let mut leased: BTreeSet<(i64, bool)> = BTreeSet::new();
        for ((partition, level), mut group) in groups {
            let rollup = level == ROLLUP;
            group.sort_by_key(|r| r.size);
            let mut take: Vec<BlockRecord> = Vec::new();
            let mut total = 0;
            for r in group {
                if total + r.size > self.store.max_block_bytes && !take.is_empty() {
                    break;
                }
                total += r.size;
                take.push(r);
            }
            let fan_in = if level == 0 || rollup { 2 } else { FAN_IN };
            // One compaction per partition per pass: the next level waits for the next pass.
            if take.len() < fan_in || !leased.insert((partition, rollup)) {
                continue;
            }
            let lease_nanos = self.config.lease_nanos();
            // A day's rollup and an hour's compaction never take the same blocks as of one `now`;
            // servers whose clocks disagree might, and then the later commit is rejected by
            // `layout::resolve` (its inputs keep counting once).
            let name = if rollup {
                format!("compact-day-{partition}")
            } else {
                format!("compact-{partition}")
            };
            let Some(mut lease) = lease::acquire(
                &self.bucket,
                &name,
                &self.server,
                // Leases run on the wall clock, not on the pass's `now`: an earlier compaction of
                // this pass may have taken longer than a whole lease.
                time::now_nanos(),
                lease_nanos,
            )?
            else {
                continue;
            };
            // Another server may have compacted these blocks between this pass's listing and
            // this lease (it held the lease, committed, released it): re-read the records under
            // the lease, and leave the group if any input is no longer visible. Without this, a
            // server that listed before the other's commit compacted the same blocks again.
            let current = match self.refresh() {
                Ok(()) => lock(&self.records).clone(),
                Err(e) => {
                    lease::release(&self.bucket, lease);
                    return Err(e);
                }
            };
            let visible: BTreeSet<&str> = layout::visible(&current)
                .into_iter()
                .map(|r| r.key.as_str())
                .collect();
            if take.iter().any(|r| !visible.contains(r.key.as_str())) {
                lease::release(&self.bucket, lease);
                continue;
            }
            // The lease is renewed while the merge runs, however long it takes; the merge stops
            // (and commits nothing) once a renewal finds it lost.
            let result = lease::hold(&self.bucket, &mut lease, time::now_nanos, |held| {
                self.compact_group(&take, &current, rollup, held)
            });
            lease::release(&self.bucket, lease);
            result?;
        }
        Ok(())
    }

    /// Renews `held` now (see [`lease::renew`]); an error if it was lost, so the caller drops
    /// its work before committing anything.
    fn keep_lease(&self, held: &lease::Held<'_>, doing: &str) -> Result<(), StoreError> {
        if held.renew_now()? {
            return Ok(());
        }
        lost_lease(doing)
    }

    /// An error if the renewal thread found `held` lost: checked between the steps of long work,
    /// so it stops within a renewal period of losing the lease.
    fn still_held(&self, held: &lease::Held<'_>, doing: &str) -> Result<(), StoreError> {
        if held.lost() {
            return lost_lease(doing);
        }
        Ok(())
    }

    fn compact_group(
        &self,
        inputs: &[BlockRecord],
        records: &BTreeMap<String, BlockRecord>,
        rollup: bool,
        held: &lease::Held<'_>,
    ) -> Result<(), StoreError> {
        let result = self.compact_group_held(inputs, records, rollup, held);
        // A merge stopped half-way, or an output whose lease was lost before the upload.
        if result.is_err() {
            let _ = clear_dir(&self.staging);
        }
        result
    }

    fn compact_group_held(
        &self,
        inputs: &[BlockRecord],
        records: &BTreeMap<String, BlockRecord>,
        rollup: bool,
        held: &lease::Held<'_>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        // Inputs must be readable here: fetch those the cache dropped.
        let mut want = BTreeMap::new();
        for r in inputs {
            let path = self.cache_path(&r.key);
            if !path.exists() {
                self.still_held(held, "compaction download")?;
                self.download(r, &path)?;
            }
            want.insert(r.key.clone(), path);
        }
        let keys: Vec<String> = inputs.iter().map(|r| r.key.clone()).collect();
        // Make sure the engine has them open (a download above, or an outbox path).
        {
            let mut all = self.current_view();
            all.extend(want);
            self.local.set_bucket_blocks(&all);
        }
        let merged = self
            .local
            .merge_bucket_blocks(&keys, &self.staging, rollup, &|| held.lost())?;
        self.still_held(held, "compaction merge")?;
        let Some((staged, size)) = merged else {
            return Ok(());
        };
        compaction_delay_for_tests(held);
        // The renewal thread kept the lease through the merge; prove it before the upload.
        self.keep_lease(held, "compaction")?;
        let mut covers: BTreeSet<String> = keys.iter().cloned().collect();
        for r in inputs {
            covers.extend(
                records
                    .get(&r.key)
                    .map(|r| r.covers.clone())
                    .unwrap_or_default(),
            );
        }
        let record = BlockRecord {
            key: layout::new_key(time::now_nanos(), &self.server, "c"),
            partition_start: if rollup {
                block::rollup_of(inputs[0].partition_start)
            } else {
                inputs[0].partition_start
            },
            min_time: inputs.iter().map(|r| r.min_time).min().unwrap_or(0),
            max_time: inputs.iter().map(|r| r.max_time).max().unwrap_or(0),
            size,
            profiles: inputs.iter().map(|r| r.profiles).sum(),
            covers: covers.into_iter().collect(),
            level: inputs.iter().map(|r| r.level).max().unwrap_or(0) + 1,
            partition_nanos: if rollup {
                block::ROLLUP_NANOS
            } else {
                block::PARTITION_NANOS
            },
        };
        let body = fs::read(&staged).map_err(io_err(&staged))?;
        self.bucket
            .put(&layout::block_key(&record.key), Bytes::from(body))?;
        crash_point("compact-before-commit");
        // The ownership check right before the commit: a conditional create that fails if another
        // server took the lease over while this one uploaded (its output block is then garbage,
        // collected as an orphan). Afterwards a full lease is left for the one small PUT below.
        self.keep_lease(held, "compaction commit")?;
        // The commit: from here on readers show this block instead of its inputs.
        self.bucket.create(
            &layout::meta_key(&record.key),
            Bytes::from(serde_json::to_vec(&record).unwrap_or_default()),
        )?;
        crash_point("compact-after-commit");
        let cached = self.cache_path(&record.key);
        fs::rename(&staged, &cached).map_err(io_err(&staged))?;
        tracing::info!(
            key = record.key,
            level = record.level,
            rollup,
            inputs = inputs.len(),
            input_bytes = inputs.iter().map(|r| r.size).sum::<u64>(),
            output_bytes = size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted bucket blocks"
        );
        lock(&self.records).insert(record.key.clone(), record);
        self.apply_view(None, 0)
    }

    /// The engine's current bucket blocks (key → file), outbox included.
    fn current_view(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&self.cache) {
            for e in entries.flatten() {
                let p = e.path();
                if let Some(k) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".blk"))
                {
                    out.insert(k.to_owned(), p.clone());
                }
            }
        }
        for o in self.outgoing() {
            out.insert(o.record.key, o.path);
        }
        out
    }

    /// Retention by age and size over the whole bucket, deletion of covered blocks whose grace
    /// period is over, and a fresh `index.json`: on the server holding the `maintenance` lease.
    fn expire(&self, now: i64) -> Result<(), StoreError> {
        let Some(lease) = lease::acquire(
            &self.bucket,
            "maintenance",
            &self.server,
            // The pass's compactions ran since `now` (retention's reference time).
            time::now_nanos(),
            self.config.lease_nanos(),
        )?
        else {
            return Ok(());
        };
        let mut lease = lease;
        let result = lease::hold(&self.bucket, &mut lease, time::now_nanos, |held| {
            self.expire_locked(now, held)
        });
        lease::release(&self.bucket, lease);
        result
    }

    fn expire_locked(&self, now: i64, held: &lease::Held<'_>) -> Result<(), StoreError> {
        let records = lock(&self.records).clone();
        let mut visible: Vec<&BlockRecord> = layout::visible(&records);
        visible.sort_by_key(|r| (r.max_time, r.key.clone()));
        let mut doomed: Vec<(String, &str)> = Vec::new();
        let cutoff = self
            .store
            .retention_age()
            .map(|a| now.saturating_sub(i64::try_from(a.as_nanos()).unwrap_or(i64::MAX)));
        let mut kept = Vec::new();
        for r in visible {
            match cutoff {
                Some(c) if r.max_time < c => doomed.push((r.key.clone(), "age")),
                _ => kept.push(r),
            }
        }
        if self.store.retention_bytes > 0 {
            let mut total = self.local.local_usage().0 + kept.iter().map(|r| r.size).sum::<u64>();
            for r in kept {
                if total <= self.store.retention_bytes {
                    break;
                }
                total -= r.size;
                doomed.push((r.key.clone(), "size"));
            }
        }
        // A deleted block takes what it covers along.
        let mut gone: BTreeSet<String> = BTreeSet::new();
        for (key, why) in &doomed {
            tracing::info!(key, reason = why, "retention: deleting bucket block");
            gone.insert(key.clone());
            if let Some(r) = records.get(key) {
                gone.extend(
                    r.covers
                        .iter()
                        .filter(|k| records.contains_key(*k))
                        .cloned(),
                );
            }
        }
        let grace = i64::try_from(self.config.grace().as_nanos()).unwrap_or(i64::MAX);
        gone.extend(layout::collectable(&records, now.saturating_sub(grace)));
        // Deleting and rewriting the index must not race a successor (a stale index would list
        // records deleted since): prove the lease is still ours first.
        self.keep_lease(held, "retention")?;
        for key in &gone {
            // Each deletion is decided already; stopping between them (lease lost) only leaves
            // work for the successor.
            self.still_held(held, "retention")?;
            // Record first: once it is gone no reader looks for the block.
            self.bucket.delete(&layout::meta_key(key))?;
            crash_point("retire-after-record");
            self.bucket.delete(&layout::block_key(key))?;
            lock(&self.records).remove(key);
        }
        self.collect_orphans(grace)?;
        // The index lists what exists now; a successor may have changed that.
        self.keep_lease(held, "index rewrite")?;
        let index = layout::Index {
            built_nanos: now,
            records: lock(&self.records).values().cloned().collect(),
        };
        self.bucket.put(
            layout::INDEX,
            Bytes::from(serde_json::to_vec(&index).unwrap_or_default()),
        )?;
        self.save_records();
        Ok(())
    }

    /// Deletes block objects that have no record and are older than the grace period: the output
    /// of a compaction that died (or lost its lease) before its commit, or a retired block whose
    /// record was deleted just before a crash. Young ones are left alone — an upload in progress
    /// writes its block before its record — and each candidate's record is looked up once more
    /// (this server's list may lag). At most [`MAX_ORPHANS_PER_PASS`] per pass.
    fn collect_orphans(&self, grace_nanos: i64) -> Result<(), StoreError> {
        let known = lock(&self.records).clone();
        let mut deleted = 0;
        for (path, modified) in self.bucket.list_with_times(layout::BLOCKS)? {
            let Some(key) = layout::key_of_block(&path) else {
                continue;
            };
            // The object store's clock stamped it; the grace period absorbs skew with ours.
            let age = time::now_nanos().saturating_sub(modified);
            if known.contains_key(key) || age < grace_nanos {
                continue;
            }
            if deleted >= MAX_ORPHANS_PER_PASS {
                break;
            }
            match self.bucket.get(&layout::meta_key(key)) {
                Err(BucketError::NotFound(_)) => {}
                Ok(_) => continue,
                Err(e) => return Err(e.into()),
            }
            tracing::info!(
                key,
                age_secs = age / 1_000_000_000,
                "deleting an orphaned block (no record: a crashed compaction or retirement)"
            );
            self.bucket.delete(&path)?;
            deleted += 1;
        }
        Ok(())
    }

    /// Fetches the blocks a read over `range` needs (if any are not cached).
    fn ensure(&self, range: TimeRange) -> Result<(), StoreError> {
        let missing = {
            let records = lock(&self.records);
            layout::visible(&records).iter().any(|r| {
                r.min_time <= range.until
                    && range.from <= r.max_time
                    && !self.cache_path(&r.key).exists()
            })
        };
        if !missing {
            return Ok(());
        }
        let _w = lock(&self.work);
        self.apply_view(Some(range), 0)
    }
}

impl Store for BucketStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        self.inner.local.append(profiles)
    }

    fn append_decompressed(
        &self,
        profiles: Vec<NewProfile>,
        decompressed: Vec<Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        self.inner.local.append_decompressed(profiles, decompressed)
    }

    fn label_names(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.ensure_logged(range);
        self.inner.local.label_names(selector, range)
    }

    fn label_values(&self, name: &str, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.ensure_logged(range);
        self.inner.local.label_values(name, selector, range)
    }

    fn profile_types(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        self.ensure_logged(range);
        self.inner.local.profile_types(selector, range)
    }

    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        self.inner.ensure(req.range)?;
        self.inner.local.read(req, visit)
    }

    fn read_merged(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(MergedProfile),
    ) -> Result<usize, StoreError> {
        self.inner.ensure(req.range)?;
        self.inner.local.read_merged(req, visit)
    }

    fn read_scope(&self, req: ReadRequest<'_>) -> Result<super::ReadScope, StoreError> {
        // The bucket's blocks are read through the engine's cache, as a read would.
        self.inner.ensure(req.range)?;
        self.inner.local.read_scope(req)
    }

    fn stats(&self) -> StoreStats {
        let inner = &self.inner;
        let mut s = inner.local.stats();
        let (local_bytes, local_profiles) = inner.local.local_usage();
        let records = lock(&inner.records).clone();
        let visible = layout::visible(&records);
        let outgoing: Vec<Outgoing> = inner
            .outgoing()
            .into_iter()
            .filter(|o| !records.contains_key(&o.record.key))
            .collect();
        s.bytes = local_bytes
            + visible.iter().map(|r| r.size).sum::<u64>()
            + outgoing.iter().map(|o| o.record.size).sum::<u64>();
        s.profiles = local_profiles
            + visible.iter().map(|r| r.profiles).sum::<u64>()
            + outgoing.iter().map(|o| o.record.profiles).sum::<u64>();
        s.blocks = (visible.len() + outgoing.len()) as u64;
        s.upload_backlog_blocks = outgoing.len() as u64;
        s.upload_backlog_bytes = outgoing.iter().map(|o| o.record.size).sum();
        s.bucket_request_errors = inner.bucket.requests.errors.load(Ordering::Relaxed);
        s.bucket_requests = inner.bucket.requests.snapshot();
        s
    }

    /// Flushes the head, uploads it and refreshes the block list: afterwards every server that
    /// refreshes sees it.
    fn flush(&self) -> Result<(), StoreError> {
        let _w = lock(&self.inner.work);
        self.inner.sync()
    }

    fn maintain(&self, now_nanos: i64) -> Result<(), StoreError> {
        let _w = lock(&self.inner.work);
        self.inner.maintain(now_nanos)
    }
}

impl BucketStore {
    fn ensure_logged(&self, range: TimeRange) {
        if let Err(e) = self.inner.ensure(range) {
            tracing::warn!(error = %e, "listing from the cached blocks only");
        }
    }
}

/// Stops the process right here when `KILN_BUCKET_CRASH_AT` names this point: how the tests put
/// a `kill -9` exactly between two object-store writes (nothing after this runs: no destructor,
/// no flush, no lease release). Unset in production; the lookup costs nothing next to a PUT.
fn crash_point(name: &str) {
    if std::env::var("KILN_BUCKET_CRASH_AT").is_ok_and(|v| v == name) {
        tracing::error!(
            point = name,
            "KILN_BUCKET_CRASH_AT: killing this process here"
        );
        // SIGKILL ourselves, like `kill -9`: the kernel ends us with nothing else run.
        // SAFETY: getpid and kill have no preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

fn lost_lease(doing: &str) -> Result<(), StoreError> {
    tracing::warn!(
        doing,
        "lost the bucket lease (it expired and another server took it); dropping this work"
    );
    Err(StoreError::Bucket(format!(
        "{doing}: lost the lease to another server; nothing committed"
    )))
}

/// Makes each compaction take `KILN_BUCKET_COMPACT_DELAY_MS` longer, after its merge and before
/// its upload, while the lease is held and renewed: how the tests stretch one merge past its
/// lease. Returns early once the lease is lost, as a real merge does. Unset in production.
fn compaction_delay_for_tests(held: &lease::Held<'_>) {
    let Some(ms) = std::env::var("KILN_BUCKET_COMPACT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(
        ms,
        "KILN_BUCKET_COMPACT_DELAY_MS: stretching this compaction"
    );
    let until = Instant::now() + std::time::Duration::from_millis(ms);
    while Instant::now() < until && !held.lost() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// This server's id, made once and kept: it names its blocks in the bucket.
fn server_id(root: &Path) -> Result<String, StoreError> {
    let path = root.join("server-id");
    if let Ok(id) = fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(id);
        }
    }
    let id = format!("{:x}{:x}", time::now_nanos(), std::process::id());
    fs::write(&path, &id).map_err(io_err(&path))?;
    Ok(id)
}

/// The block list saved by the last refresh, so a restart serves the cache before the bucket
/// answers.
fn load_records(cache: &Path) -> BTreeMap<String, BlockRecord> {
    fs::read(cache.join("records.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<BlockRecord>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect()
}

fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
