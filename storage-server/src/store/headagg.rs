//! The head's pre-merged form: what a merged flame graph over profiles still in the WAL needs,
//! kept up to date as profiles arrive, so such a query sums a few maps instead of decoding every
//! stored pprof.
//!
//! Every appended profile is decoded once (after its fsync, before the append returns) and folded
//! into:
//! - one [`TableBuilder`] for the whole head: symbols and stacks deduplicated across all series;
//! - per series and per [`BUCKET_NANOS`] of profile time, a [`Part`]: per `type:unit` sample type,
//!   the values summed by head stack id, and how many profiles have that type.
//!
//! A read ([`super::Store::read_merged`]) uses a part only when the query range covers every
//! profile in it and every profile of that series and bucket was folded in ([`Part::complete`]);
//! the rest of the selection is read exactly from the WAL as before. Sample labels are not kept
//! here: reads that filter on them (span profiles) use [`super::Store::read`], which never comes
//! here.
//!
//! **Flush.** When sealed segments move into blocks, their profiles (decoded for the blocks
//! anyway) are looked up in the tables without changing them ([`HeadAgg::delta`], under the
//! state's read lock) and subtracted from their parts when the head index drops them
//! ([`HeadAgg::apply`], under the write lock), so the head's sums always cover exactly the
//! head's records. Integer sums make the subtraction exact.
//!
//! **Memory** is bounded by [`MAX_BYTES`] (tables plus sums, estimated): a profile that would
//! fold in beyond it is not folded, and its part is marked incomplete (its sums dropped) so reads
//! of that series and bucket take the exact path until the part empties at a flush. When the
//! tables hold much more than the parts still use (stacks of flushed profiles), they are rebuilt
//! with only the live stacks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kiln_proto::pprof::Profile;

use super::Labels;
use super::block::{TableBuilder, sample_type_names};
use super::stacks::{MergedStacks, StackShape, StackTrie};
use crate::query::merge::FxBuild;
use crate::query::time::TimeRange;

/// Width of a part's time bucket: a query range that cuts through a bucket reads that bucket's
/// profiles exactly, so narrower buckets make short ranges cheaper and cost more memory.
pub const BUCKET_NANOS: i64 = 600 * 1_000_000_000;

/// Bytes the head's aggregate may hold (estimated): beyond it, profiles are read exactly.
pub const MAX_BYTES: usize = 512 << 20;

/// Estimated bytes of one summed (stack, value) entry in a hash map.
const ENTRY_BYTES: usize = 24;

pub fn bucket_of(time_nanos: i64) -> i64 {
    time_nanos.div_euclid(BUCKET_NANOS)
}

/// One sample type's sums in a part.
#[derive(Default)]
struct TypeSums {
    profiles: u64,
    sums: HashMap<u32, i64, FxBuild>,
}

/// The folded profiles of one series in one time bucket.
struct Part {
    min_time: i64,
    max_time: i64,
    /// Profiles folded in.
    entries: u64,
    /// Every head profile of this series and bucket is folded in; once false (over the memory
    /// bound) the sums are dropped and stay unused until the part empties.
    complete: bool,
    types: BTreeMap<String, TypeSums>,
}

impl Part {
    fn new() -> Part {
        Part {
            min_time: i64::MAX,
            max_time: i64::MIN,
            entries: 0,
            complete: true,
            types: BTreeMap::new(),
        }
    }

    fn sum_entries(&self) -> usize {
        self.types.values().map(|t| t.sums.len()).sum()
    }
}

/// What a flush takes out of the head, in head stack ids: per (series, bucket), per type.
#[derive(Default)]
pub struct Delta {
    parts: HashMap<(Arc<Labels>, i64), DeltaPart>,
}

#[derive(Default)]
struct DeltaPart {
    entries: u64,
    types: BTreeMap<String, TypeSums>,
}

/// See the module docs.
#[derive(Default)]
pub struct HeadAgg {
    tables: TableBuilder,
    /// The trie of the tables' stacks, grown as stacks arrive so a query need not build it.
    trie: StackTrie,
    /// Bumped whenever `tables` are replaced (their ids change).
    generation: u64,
    /// The last [`StackShape`] handed to a read, as (generation, stacks): reads reuse it until
    /// the tables change.
    shape: Mutex<Option<(u64, usize, Arc<StackShape>)>>,
    parts: HashMap<Arc<Labels>, BTreeMap<i64, Part>>,
    /// Summed entries over all parts (for the memory estimate).
    sum_entries: usize,
}

impl HeadAgg {
    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        let shape = self
            .shape
            .lock()
            .map_or(0, |s| s.as_ref().map_or(0, |s| s.2.bytes()));
        self.tables.bytes() + self.trie.bytes() + shape + self.sum_entries * ENTRY_BYTES
    }

    /// Folds profile `p` of series `labels` at `time_nanos` in; `None` (it could not be decoded,
    /// or was not, being over the bound) marks its part incomplete. Returns whether it was folded.
    pub fn add(&mut self, labels: &Arc<Labels>, time_nanos: i64, p: Option<&Profile>) -> bool {
        let over = self.bytes() >= MAX_BYTES;
        let part = self
            .parts
            .entry(labels.clone())
            .or_default()
            .entry(bucket_of(time_nanos))
            .or_insert_with(Part::new);
        let p = match p {
            Some(p) if part.complete && !over => p,
            _ => {
                if part.complete {
                    part.complete = false;
                    self.sum_entries -= part.sum_entries();
                    part.types.clear();
                }
                return false;
            }
        };
        part.min_time = part.min_time.min(time_nanos);
        part.max_time = part.max_time.max(time_nanos);
        part.entries += 1;
        let ids = self.tables.map_profile(p);
        let names = sample_type_names(p);
        let mut scratch = Vec::new();
        let stacks: Vec<u32> = p
            .sample
            .iter()
            .map(|s| self.tables.sample_stack(&ids, s, &mut scratch))
            .collect();
        self.trie.extend(self.tables.tables());
        for (col, name) in names.into_iter().enumerate() {
            let Some(name) = name else { continue };
            let t = part.types.entry(name).or_default();
            t.profiles += 1;
            for (s, &stack) in p.sample.iter().zip(&stacks) {
                let v = s.value.get(col).copied().unwrap_or(0);
                let before = t.sums.len();
                let e = t.sums.entry(stack).or_insert(0);
                *e = e.saturating_add(v);
                self.sum_entries += t.sums.len() - before;
            }
        }
        true
    }

    /// Adds what profile `p` (folded in earlier by [`HeadAgg::add`]) contributed to its part into
    /// `delta`, without changing anything.
    pub fn delta(&self, labels: &Arc<Labels>, time_nanos: i64, p: &Profile, delta: &mut Delta) {
        let ids = self.tables.find_profile(p);
        let mut scratch = Vec::new();
        let stacks: Vec<Option<u32>> = p
            .sample
            .iter()
            .map(|s| self.tables.find_stack(&ids, s, &mut scratch))
            .collect();
        let d = delta
            .parts
            .entry((labels.clone(), bucket_of(time_nanos)))
            .or_default();
        d.entries += 1;
        for (col, name) in sample_type_names(p).into_iter().enumerate() {
            let Some(name) = name else { continue };
            let t = d.types.entry(name).or_default();
            t.profiles += 1;
            for (s, stack) in p.sample.iter().zip(&stacks) {
                // Every stack of a folded profile is in the tables; be total anyway.
                let Some(stack) = stack else { continue };
                let e = t.sums.entry(*stack).or_insert(0);
                *e = e.saturating_add(s.value.get(col).copied().unwrap_or(0));
            }
        }
    }

    /// Takes `delta` out, then resets each part's time span from `remaining` (the folded head
    /// records left: series, time) and drops parts with nothing left.
    pub fn apply<'a>(
        &mut self,
        delta: Delta,
        remaining: impl Iterator<Item = (&'a Arc<Labels>, i64, bool)>,
    ) {
        for ((labels, bucket), d) in delta.parts {
            let Some(part) = self.parts.get_mut(&labels).and_then(|b| b.get_mut(&bucket)) else {
                continue;
            };
            part.entries = part.entries.saturating_sub(d.entries);
            if !part.complete {
                continue;
            }
            for (name, dt) in d.types {
                let Some(t) = part.types.get_mut(&name) else {
                    continue;
                };
                t.profiles = t.profiles.saturating_sub(dt.profiles);
                for (stack, v) in dt.sums {
                    if let Some(e) = t.sums.get_mut(&stack) {
                        *e = e.saturating_sub(v);
                        if *e == 0 {
                            t.sums.remove(&stack);
                            self.sum_entries -= 1;
                        }
                    }
                }
            }
        }
        // Spans from what is left; parts with no record left go, complete or not.
        let mut spans: HashMap<(&Labels, i64), (i64, i64, u64)> = HashMap::new();
        for (labels, time, _) in remaining {
            let s =
                spans
                    .entry((labels.as_ref(), bucket_of(time)))
                    .or_insert((i64::MAX, i64::MIN, 0));
            s.0 = s.0.min(time);
            s.1 = s.1.max(time);
            s.2 += 1;
        }
        let mut removed = 0;
        for (labels, buckets) in &mut self.parts {
            buckets.retain(
                |bucket, part| match spans.get(&(labels.as_ref(), *bucket)) {
                    Some(&(lo, hi, _)) => {
                        part.min_time = lo;
                        part.max_time = hi;
                        true
                    }
                    None => {
                        removed += part.sum_entries();
                        false
                    }
                },
            );
        }
        self.sum_entries -= removed;
        self.parts.retain(|_, b| !b.is_empty());
        self.compact_tables();
    }

    /// Rebuilds the tables with only the stacks parts still use, when they are mostly dead.
    fn compact_tables(&mut self) {
        if self.sum_entries == 0 {
            if self.tables.stacks() > 0 {
                self.tables = TableBuilder::new();
                self.trie = StackTrie::new();
                self.generation += 1;
            }
            return;
        }
        // Live stacks are at most the summed entries; rebuild when the tables hold far more.
        if self.tables.stacks() <= 2 * self.sum_entries + 1024 {
            return;
        }
        let mut fresh = TableBuilder::new();
        let mut stacks: HashMap<u32, u32, FxBuild> = HashMap::default();
        let mut locations: HashMap<u32, u32, FxBuild> = HashMap::default();
        for buckets in self.parts.values_mut() {
            for part in buckets.values_mut() {
                for t in part.types.values_mut() {
                    let old = std::mem::take(&mut t.sums);
                    t.sums.reserve(old.len());
                    for (stack, v) in old {
                        let new = *stacks.entry(stack).or_insert_with(|| {
                            fresh.import_stack(self.tables.tables(), stack, &mut locations)
                        });
                        t.sums.insert(new, v);
                    }
                }
            }
        }
        self.tables = fresh;
        self.trie = StackTrie::new();
        self.trie.extend(self.tables.tables());
        self.generation += 1;
    }

    /// The buckets of series `labels` whose part a read over `range` can use: complete, and
    /// every profile in it inside the range.
    pub fn usable(&self, labels: &Labels, range: TimeRange) -> Vec<i64> {
        self.parts.get(labels).map_or_else(Vec::new, |b| {
            b.iter()
                .filter(|(_, p)| {
                    p.complete
                        && p.entries > 0
                        && range.from <= p.min_time
                        && p.max_time <= range.until
                })
                .map(|(&k, _)| k)
                .collect()
        })
    }

    /// Adds the `profile_type` sums of (`labels`, `bucket`) into `acc` (by head stack id);
    /// returns how many profiles have that type.
    pub fn add_to(
        &self,
        labels: &Labels,
        bucket: i64,
        profile_type: &str,
        acc: &mut Vec<i64>,
    ) -> usize {
        let Some(t) = self
            .parts
            .get(labels)
            .and_then(|b| b.get(&bucket))
            .and_then(|p| p.types.get(profile_type))
        else {
            return 0;
        };
        if acc.len() < self.tables.stacks() {
            acc.resize(self.tables.stacks(), 0);
        }
        for (&stack, &v) in &t.sums {
            if let Some(e) = acc.get_mut(stack as usize) {
                *e = e.saturating_add(v);
            }
        }
        t.profiles as usize
    }

    /// The sums in `acc` (by head stack id) on the head's stack trie.
    pub fn merged_stacks(&self, profile_type: &str, acc: &[i64]) -> MergedStacks {
        let stacks = self.trie.stacks();
        let mut cached = self.shape.lock().unwrap_or_else(|e| e.into_inner());
        let shape = match &*cached {
            Some((g, n, shape)) if *g == self.generation && *n == stacks => shape.clone(),
            _ => {
                let trie = self.trie.frozen_copy();
                let shape = Arc::new(StackShape::new(
                    self.tables.tables().symbols_profile(),
                    trie,
                ));
                *cached = Some((self.generation, stacks, shape.clone()));
                shape
            }
        };
        MergedStacks {
            self_values: shape.trie.node_values(acc),
            shape,
            profile_type: profile_type.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ProfileBuilder;

    fn profile(stacks: &[(&[&str], i64)]) -> Profile {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        let mut locs: HashMap<String, u64> = HashMap::new();
        for (frames, v) in stacks {
            let ids: Vec<u64> = frames
                .iter()
                .map(|f| {
                    if let Some(&l) = locs.get(*f) {
                        return l;
                    }
                    let func = b.function(f, "x.c");
                    let l = b.symbolized_location(0, locs.len() as u64 + 1, &[(func, 1)]);
                    locs.insert((*f).to_owned(), l);
                    l
                })
                .collect();
            b.add_sample(&ids, &[*v, *v * 10], &[]);
        }
        b.finish()
    }

    fn sums(agg: &HeadAgg, labels: &Labels, bucket: i64) -> (usize, i64) {
        let mut acc = Vec::new();
        let n = agg.add_to(labels, bucket, "cpu:nanoseconds", &mut acc);
        (n, acc.iter().sum())
    }

    /// Folding in and taking out leaves exactly what remains, and the tables shrink back.
    #[test]
    fn flush_takes_out_exactly_what_it_flushed() {
        let labels = Arc::new(Labels::new(vec![("pod".into(), "a".into())]));
        let p1 = profile(&[(&["leaf", "main"], 3), (&["main"], 1)]);
        let p2 = profile(&[(&["other", "main"], 5)]);
        let mut agg = HeadAgg::default();
        assert!(agg.add(&labels, 10, Some(&p1)));
        assert!(agg.add(&labels, 20, Some(&p2)));
        assert_eq!(sums(&agg, &labels, 0), (2, 90));
        assert_eq!(
            agg.usable(&labels, TimeRange { from: 0, until: 30 }),
            vec![0]
        );
        assert!(
            agg.usable(
                &labels,
                TimeRange {
                    from: 15,
                    until: 30
                }
            )
            .is_empty()
        );

        let mut delta = Delta::default();
        agg.delta(&labels, 10, &p1, &mut delta);
        agg.apply(delta, [(&labels, 20, true)].into_iter());
        assert_eq!(sums(&agg, &labels, 0), (1, 50));
        // The span is now p2's alone.
        assert_eq!(
            agg.usable(
                &labels,
                TimeRange {
                    from: 15,
                    until: 30
                }
            ),
            vec![0]
        );

        let mut delta = Delta::default();
        agg.delta(&labels, 20, &p2, &mut delta);
        agg.apply(delta, std::iter::empty());
        assert_eq!(sums(&agg, &labels, 0), (0, 0));
        assert_eq!(agg.bytes(), HeadAgg::default().bytes());
    }

    /// A profile not folded in (over the bound, or undecodable) keeps its part from being used.
    #[test]
    fn an_unfolded_profile_makes_its_part_unusable() {
        let labels = Arc::new(Labels::new(vec![("pod".into(), "a".into())]));
        let p1 = profile(&[(&["main"], 3)]);
        let mut agg = HeadAgg::default();
        assert!(agg.add(&labels, 10, Some(&p1)));
        assert!(!agg.add(&labels, 20, None));
        assert!(agg.usable(&labels, TimeRange::ALL).is_empty());
        // Another bucket is unaffected.
        assert!(agg.add(&labels, BUCKET_NANOS + 1, Some(&p1)));
        assert_eq!(agg.usable(&labels, TimeRange::ALL), vec![1]);
    }
}
