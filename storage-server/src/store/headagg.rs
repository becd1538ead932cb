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

use kiln_proto::pprof::{Function, Location, Mapping, Profile, ValueType};
use prost::Message;

use super::Labels;
use super::block::{TableBuilder, sample_type_names};
use super::stacks::{MergedStacks, StackShape, StackTrie};
use crate::ingest::scan;
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

/// A pprof `Profile` without its samples: the same fields and tags, minus field 2 (`sample`),
/// which prost then skips as unknown. What [`HeadAgg::fold`] needs to map a profile's symbols.
#[derive(Clone, PartialEq, prost::Message)]
struct ProfileTables {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

impl ProfileTables {
    fn into_profile(self) -> Profile {
        Profile {
            sample_type: self.sample_type,
            mapping: self.mapping,
            location: self.location,
            function: self.function,
            string_table: self.string_table,
            ..Profile::default()
        }
    }
}

/// A pprof `Sample`'s location ids (field 1) and values (field 2), packed or not, read into
/// reused buffers; other fields (labels) are skipped. `None` where prost would fail on those
/// fields (wrong wire type, a varint past 64 bits, a length past the end).
fn read_sample(mut m: &[u8], locations: &mut Vec<u64>, values: &mut Vec<i64>) -> Option<()> {
    locations.clear();
    values.clear();
    while !m.is_empty() {
        let key = varint(&mut m)?;
        match (key >> 3, key & 7) {
            (1, 0) => locations.push(varint(&mut m)?),
            (2, 0) => values.push(varint(&mut m)? as i64),
            (1, 2) => {
                let mut packed = delimited(&mut m)?;
                while !packed.is_empty() {
                    locations.push(varint(&mut packed)?);
                }
            }
            (2, 2) => {
                let mut packed = delimited(&mut m)?;
                while !packed.is_empty() {
                    values.push(varint(&mut packed)? as i64);
                }
            }
            (1 | 2, _) => return None,
            (_, wire_type) => skip(wire_type, &mut m)?,
        }
    }
    Some(())
}

/// One profile mapped into the head's tables: per sample its stack id and its values (row-major,
/// one per sample type).
struct Folded {
    names: Vec<Option<String>>,
    stacks: Vec<u32>,
    values: Vec<i64>,
}

// The protobuf wire primitives are the push scanner's (ingest/scan.rs), with its checks; a
// failure of any of them means "not folded" here.

/// A protobuf varint, as prost reads it.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    scan::varint(buf).ok()
}

/// A length-delimited field's bytes.
fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    scan::delimited(buf).ok()
}

/// Skips a field of `wire_type` (groups, which pprof never uses, are refused).
fn skip(wire_type: u64, buf: &mut &[u8]) -> Option<()> {
    scan::skip(u8::try_from(wire_type).ok()?, buf).ok()
}

/// Calls `f` with the encoded bytes of every `sample` (field 2) of the encoded `Profile` `raw`,
/// in order, skipping the other fields. `None` when the wire format is broken (or uses groups)
/// or `f` fails.
fn for_each_sample(raw: &[u8], mut f: impl FnMut(&[u8]) -> Option<()>) -> Option<()> {
    let mut buf = raw;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        if key == (2 << 3) | 2 {
            f(delimited(&mut buf)?)?;
        } else {
            skip(key & 7, &mut buf)?;
        }
    }
    Some(())
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

    /// Folds the profile `raw` (an encoded, decompressed pprof) of series `labels` at
    /// `time_nanos` in; `None` (it could not be read, or was not, being over the bound) marks its
    /// part incomplete, as does a profile that does not parse. Returns whether it was folded.
    pub fn add(&mut self, labels: &Arc<Labels>, time_nanos: i64, raw: Option<&[u8]>) -> bool {
        let bucket = bucket_of(time_nanos);
        let wanted = self.bytes() < MAX_BYTES
            && self
                .parts
                .get(labels)
                .and_then(|b| b.get(&bucket))
                .is_none_or(|p| p.complete);
        let folded = match raw {
            Some(raw) if wanted => self.fold(raw),
            _ => None,
        };
        let part = self
            .parts
            .entry(labels.clone())
            .or_default()
            .entry(bucket)
            .or_insert_with(Part::new);
        let Some(folded) = folded else {
            if part.complete {
                part.complete = false;
                self.sum_entries -= part.sum_entries();
                part.types.clear();
            }
            return false;
        };
        part.min_time = part.min_time.min(time_nanos);
        part.max_time = part.max_time.max(time_nanos);
        part.entries += 1;
        let width = folded.names.len();
        for (col, name) in folded.names.into_iter().enumerate() {
            let Some(name) = name else { continue };
            let t = part.types.entry(name).or_default();
            t.profiles += 1;
            let values = folded.values.iter().skip(col).step_by(width.max(1));
            for (&stack, &v) in folded.stacks.iter().zip(values) {
                let before = t.sums.len();
                let e = t.sums.entry(stack).or_insert(0);
                *e = e.saturating_add(v);
                self.sum_entries += t.sums.len() - before;
            }
        }
        true
    }

    /// Maps the encoded pprof `raw` into the tables (and the trie): its stack id and values per
    /// sample. `None` when it does not parse (stacks interned before that stay, unused).
    ///
    /// The profile is not decoded into a prost `Profile`: its tables are (with the samples
    /// skipped as an unknown field), then each sample is read in place into reused buffers
    /// ([`read_sample`]), so a push does not allocate two `Vec`s per sample (issue 4: a push
    /// decoded every profile a second time for this).
    fn fold(&mut self, raw: &[u8]) -> Option<Folded> {
        let p = ProfileTables::decode(raw).ok()?.into_profile();
        let ids = self.tables.map_profile(&p);
        let names = sample_type_names(&p);
        let width = names.len();
        let mut stacks = Vec::new();
        let mut values = Vec::new();
        let mut scratch = Vec::new();
        let (mut locations, mut sample_values) = (Vec::new(), Vec::new());
        let walked = for_each_sample(raw, |bytes| {
            read_sample(bytes, &mut locations, &mut sample_values)?;
            stacks.push(self.tables.stack_of(&ids, &locations, &mut scratch));
            values.extend((0..width).map(|col| sample_values.get(col).copied().unwrap_or(0)));
            Some(())
        });
        self.trie.extend(self.tables.tables());
        walked?;
        Some(Folded {
            names,
            stacks,
            values,
        })
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
        assert!(agg.add(&labels, 10, Some(&p1.encode_to_vec())));
        assert!(agg.add(&labels, 20, Some(&p2.encode_to_vec())));
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

    /// What folding the decoded `p` sample by sample gives: stack ids in `tb`, values row-major.
    fn decoded_fold(tb: &mut TableBuilder, p: &Profile) -> (Vec<u32>, Vec<i64>) {
        let ids = tb.map_profile(p);
        let mut scratch = Vec::new();
        let stacks = p
            .sample
            .iter()
            .map(|s| tb.sample_stack(&ids, s, &mut scratch))
            .collect();
        let width = p.sample_type.len();
        let values = p
            .sample
            .iter()
            .flat_map(|s| (0..width).map(|c| s.value.get(c).copied().unwrap_or(0)))
            .collect();
        (stacks, values)
    }

    /// Folding a profile from its encoded bytes (samples read in place) interns the same symbols
    /// and stacks and sums the same values as a fold of the prost-decoded profile: the fixtures
    /// (one with sample labels), labels skipped, unpacked repeated fields, a missing value.
    #[test]
    fn encoded_fold_equals_decoded_fold() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pprof");
        let mut raws: Vec<Vec<u8>> = [
            "go-runtime-pprof-cpu.pb.gz",
            "pyroscope-nodejs-0.6.4-wall.pprof.gz",
        ]
        .iter()
        .map(|name| {
            let gz = std::fs::read(dir.join(name)).unwrap();
            kiln_proto::maybe_gunzip(&gz, 1 << 30).unwrap().into_owned()
        })
        .collect();
        let mut labelled = profile(&[(&["leaf", "main"], 3), (&["main"], 1), (&["x", "main"], 2)]);
        labelled.string_table.push("span_id".into());
        labelled.string_table.push("42".into());
        let n = labelled.string_table.len() as i64;
        labelled.sample[0].label.push(kiln_proto::pprof::Label {
            key: n - 2,
            str: n - 1,
            ..Default::default()
        });
        let mut raw = labelled.encode_to_vec();
        // One more sample, hand-encoded: unpacked location ids and values (prost reads both),
        // one value short (it counts as 0), with an unknown field.
        let mut sample = vec![0x08, 1, 0x08, 2, 0x10, 7, 0xf8, 0x01, 9];
        raw.push(0x12);
        raw.push(sample.len() as u8);
        raw.append(&mut sample);
        raws.push(raw);
        for raw in &raws {
            let p = Profile::decode(raw.as_slice()).unwrap();
            assert!(!p.sample.is_empty());
            let mut agg = HeadAgg::default();
            let folded = agg.fold(raw).unwrap();
            let mut tb = TableBuilder::new();
            let (stacks, values) = decoded_fold(&mut tb, &p);
            assert_eq!(folded.stacks, stacks);
            assert_eq!(folded.values, values);
            assert_eq!(folded.names, sample_type_names(&p));
            assert_eq!(agg.tables.stacks(), tb.stacks());
            for id in 0..tb.stacks() as u32 {
                assert_eq!(agg.tables.tables().stack(id), tb.tables().stack(id));
            }
            assert_eq!(
                agg.tables.tables().symbols_profile(),
                tb.tables().symbols_profile()
            );
            assert_eq!(agg.trie.stacks(), tb.stacks());
        }
        // Broken wire format: not folded, and its part is not used.
        let labels = Arc::new(Labels::new(vec![("pod".into(), "a".into())]));
        let mut agg = HeadAgg::default();
        let raw = &raws[2];
        assert!(!agg.add(&labels, 10, Some(&raw[..raw.len() - 3])));
        assert!(agg.usable(&labels, TimeRange::ALL).is_empty());
    }

    /// A profile not folded in (over the bound, or undecodable) keeps its part from being used.
    #[test]
    fn an_unfolded_profile_makes_its_part_unusable() {
        let labels = Arc::new(Labels::new(vec![("pod".into(), "a".into())]));
        let p1 = profile(&[(&["main"], 3)]);
        let mut agg = HeadAgg::default();
        assert!(agg.add(&labels, 10, Some(&p1.encode_to_vec())));
        assert!(!agg.add(&labels, 20, None));
        assert!(agg.usable(&labels, TimeRange::ALL).is_empty());
        // Another bucket is unaffected.
        assert!(agg.add(&labels, BUCKET_NANOS + 1, Some(&p1.encode_to_vec())));
        assert_eq!(agg.usable(&labels, TimeRange::ALL), vec![1]);
    }
}
