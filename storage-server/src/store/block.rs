//! Immutable, time-partitioned blocks: the long-term home of profiles once they leave the WAL.
//!
//! A block holds the profiles of one time partition (one hour of profile time, or a UTC day for a
//! rollup that compaction made of a day's closed hours) as columns instead of pprof blobs:
//! - a **symbol table** shared by all its series: strings, functions, mappings, locations and
//!   sample-label sets, each stored once however many profiles use it;
//! - a **stacks table**: stack id → location ids, each distinct stack stored once;
//! - per series, a **profiles** section (time, sample types, period… of each profile) and a
//!   **rows** section (stack id deltas, values column by column, label set ids), plus its rows
//!   summed by stack (a **totals** section; in a rollup also one per hour, `hour_totals`).
//!
//! Every section is zstd-compressed and CRC'd on its own, so a read decompresses the symbol and
//! stack tables plus only the series it selects. The file ends with a footer: the [`BlockMeta`]
//! (series labels, time bounds, section offsets, provenance), its length, its CRC and a magic.
//! A block is written once, to a temporary name, fsync'd and renamed: it is either complete or
//! absent, never modified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_proto::pprof::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use kiln_proto::push::LabelPair;
use prost::Message;

use super::{Labels, StoreError, io_err};
use crate::query::merge::FxBuild;

pub const BLOCK_MAGIC: &[u8; 8] = b"KILNBLK1";
/// Length of the fixed trailer: meta length (u64), meta CRC (u32), magic.
const TRAILER_LEN: u64 = 8 + 4 + 8;
/// Blocks are written once in the background, so a slower, tighter level pays off.
const ZSTD_LEVEL: i32 = 9;
/// One time partition: blocks never straddle an hour of profile time…
pub const PARTITION_NANOS: i64 = 3600 * 1_000_000_000;
/// …except rollups: compaction merges the closed hours of a day into blocks of that day, so a
/// query over days opens a few blocks instead of one per hour (every block costs a fixed amount
/// to merge: its stack trie and symbols are walked once per read). A rollup carries each series'
/// sums per hour as well ([`SeriesMeta::hour_totals`]), so a range that cuts a day stays exact
/// without reading the rows of the hours it covers whole.
pub const ROLLUP_NANOS: i64 = 24 * PARTITION_NANOS;

/// Where a compressed section lives in the block file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SectionRef {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint64, tag = "2")]
    pub len: u64,
    #[prost(uint32, tag = "3")]
    pub crc: u32,
    /// Decompressed length, checked against the read limit before inflating.
    #[prost(uint64, tag = "4")]
    pub raw_len: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SeriesMeta {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(int64, tag = "2")]
    pub min_time: i64,
    #[prost(int64, tag = "3")]
    pub max_time: i64,
    #[prost(uint64, tag = "4")]
    pub profiles: u64,
    #[prost(uint64, tag = "5")]
    pub rows: u64,
    /// Union of the `type:unit` profile types of the series' profiles in this block.
    #[prost(string, repeated, tag = "6")]
    pub profile_types: Vec<String>,
    #[prost(message, optional, tag = "7")]
    pub profiles_section: Option<SectionRef>,
    #[prost(message, optional, tag = "8")]
    pub rows_section: Option<SectionRef>,
    /// The series' rows summed by stack id, per profile type ([`SeriesTotals`]): what a merged
    /// flame graph over the series' whole span in this block reads instead of every row. Absent in
    /// blocks written before it existed (format-compatible: those are merged from their rows).
    #[prost(message, optional, tag = "9")]
    pub totals_section: Option<SectionRef>,
    /// In a rollup (a block of [`ROLLUP_NANOS`]), the series' rows summed by stack id per hour of
    /// profile time, oldest first: what a range that covers some of the day's hours whole reads
    /// instead of their rows. Empty in hourly blocks (their `totals_section` is that hour's).
    #[prost(message, repeated, tag = "10")]
    pub hour_totals: Vec<HourTotalsRef>,
}

/// One hour's sums of a series in a rollup: a [`SeriesTotals`] section, with the time span of the
/// profiles it sums (a range covering `min_time..=max_time` covers every one of them).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HourTotalsRef {
    #[prost(int64, tag = "1")]
    pub min_time: i64,
    #[prost(int64, tag = "2")]
    pub max_time: i64,
    #[prost(uint64, tag = "3")]
    pub profiles: u64,
    #[prost(message, optional, tag = "4")]
    pub section: Option<SectionRef>,
}

impl SeriesMeta {
    pub fn labels(&self) -> Labels {
        Labels::new(
            self.labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
        )
    }
}

/// The block footer: everything needed to decide what to read, and where the block came from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockMeta {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub partition_start: i64,
    #[prost(int64, tag = "3")]
    pub min_time: i64,
    #[prost(int64, tag = "4")]
    pub max_time: i64,
    /// Blocks written by one head flush share a flush id; `flush_parts` says how many there are,
    /// so a start-up after a crash mid-flush can tell a complete flush from a partial one.
    #[prost(uint64, tag = "5")]
    pub flush_id: u64,
    #[prost(uint32, tag = "6")]
    pub flush_parts: u32,
    /// WAL segments whose records this block (with its flush siblings) holds.
    #[prost(uint64, repeated, tag = "7")]
    pub sources: Vec<u64>,
    /// Blocks this one was compacted from (deleted once this one is durable).
    #[prost(uint64, repeated, tag = "8")]
    pub replaces: Vec<u64>,
    #[prost(message, optional, tag = "9")]
    pub symbols: Option<SectionRef>,
    #[prost(message, optional, tag = "10")]
    pub stacks: Option<SectionRef>,
    #[prost(message, repeated, tag = "11")]
    pub series: Vec<SeriesMeta>,
    #[prost(uint64, tag = "12")]
    pub rows: u64,
    #[prost(uint64, tag = "13")]
    pub profiles: u64,
    /// Length of the partition starting at `partition_start`: 0 (blocks written before rollups
    /// existed) or [`PARTITION_NANOS`] for an hour, [`ROLLUP_NANOS`] for a rollup.
    #[prost(int64, tag = "14")]
    pub partition_nanos: i64,
}

impl BlockMeta {
    /// The length of the block's partition (see [`BlockMeta::partition_nanos`]).
    pub fn partition_len(&self) -> i64 {
        if self.partition_nanos > 0 {
            self.partition_nanos
        } else {
            PARTITION_NANOS
        }
    }

    /// Whether this is a rollup (a day's closed hours merged by compaction).
    pub fn is_rollup(&self) -> bool {
        self.partition_len() > PARTITION_NANOS
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct LabelSet {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
}

/// Deduplicated symbols; ids inside (string, function, mapping) are block-wide, 1-based for
/// functions/mappings/locations (0 = none), as in pprof.
#[derive(Clone, PartialEq, prost::Message)]
struct Symbols {
    #[prost(string, repeated, tag = "1")]
    strings: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    functions: Vec<Function>,
    #[prost(message, repeated, tag = "3")]
    mappings: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    locations: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    label_sets: Vec<LabelSet>,
}

/// Stack id `i` is `locations[sum(lengths[..i])..][..lengths[i]]`, leaf first.
#[derive(Clone, PartialEq, prost::Message)]
struct Stacks {
    #[prost(uint32, repeated, tag = "1")]
    lengths: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    locations: Vec<u32>,
}

/// A profile's own fields (string ids are block-wide); its samples are `rows` rows of the series.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfileMeta {
    #[prost(int64, tag = "1")]
    pub time_nanos: i64,
    #[prost(int64, tag = "2")]
    duration_nanos: i64,
    #[prost(int64, tag = "3")]
    period: i64,
    #[prost(message, optional, tag = "4")]
    period_type: Option<ValueType>,
    #[prost(message, repeated, tag = "5")]
    sample_types: Vec<ValueType>,
    #[prost(int64, tag = "6")]
    default_sample_type: i64,
    #[prost(int64, tag = "7")]
    drop_frames: i64,
    #[prost(int64, tag = "8")]
    keep_frames: i64,
    #[prost(int64, repeated, tag = "9")]
    comments: Vec<i64>,
    #[prost(string, repeated, tag = "10")]
    pub profile_types: Vec<String>,
    #[prost(uint32, tag = "11")]
    rows: u32,
    /// The pprof's own `time_nanos` (the store's time is `time_nanos`).
    #[prost(int64, tag = "12")]
    pprof_time_nanos: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SeriesProfiles {
    #[prost(message, repeated, tag = "1")]
    pub profiles: Vec<ProfileMeta>,
}

/// Rows of all profiles of a series, profile after profile. Within a profile rows are sorted by
/// stack id and the ids delta-encoded; values are column-major (all rows' first value, then all
/// second values…): both make long runs of small, repeating numbers that zstd squeezes well.
#[derive(Clone, PartialEq, prost::Message)]
struct SeriesRows {
    #[prost(uint32, repeated, tag = "1")]
    stack_deltas: Vec<u32>,
    #[prost(sint64, repeated, tag = "2")]
    values: Vec<i64>,
    #[prost(uint32, repeated, tag = "3")]
    label_sets: Vec<u32>,
}

/// A series' rows in one block summed by stack id, one entry per `type:unit` sample type.
#[derive(Clone, PartialEq, prost::Message)]
struct SeriesTotals {
    #[prost(message, repeated, tag = "1")]
    types: Vec<TypeTotals>,
}

/// The sums of one sample type: stack ids ascending, delta-encoded, with their summed values
/// (zero sums left out).
#[derive(Clone, PartialEq, prost::Message)]
struct TypeTotals {
    #[prost(string, tag = "1")]
    profile_type: String,
    /// Profiles of the series that have this sample type.
    #[prost(uint64, tag = "2")]
    profiles: u64,
    #[prost(uint32, repeated, tag = "3")]
    stack_deltas: Vec<u32>,
    #[prost(sint64, repeated, tag = "4")]
    values: Vec<i64>,
}

pub fn partition_of(time_nanos: i64) -> i64 {
    time_nanos.div_euclid(PARTITION_NANOS) * PARTITION_NANOS
}

/// The start of the rollup partition (UTC day) holding `time_nanos`.
pub fn rollup_of(time_nanos: i64) -> i64 {
    time_nanos.div_euclid(ROLLUP_NANOS) * ROLLUP_NANOS
}

pub fn block_path(dir: &Path, partition_start: i64, id: u64) -> PathBuf {
    // Partition first so a directory listing reads oldest first; the offset keeps names positive.
    let p = (partition_start / 1_000_000_000).wrapping_add(1 << 40);
    dir.join(format!("{p:016}-{id:020}.blk"))
}

pub fn is_block_name(name: &str) -> bool {
    name.ends_with(".blk")
}

/// The partition start (nanoseconds) and id in a file name made by [`block_path`].
pub fn parse_block_name(name: &str) -> Option<(i64, u64)> {
    let (p, id) = name.strip_suffix(".blk")?.split_once('-')?;
    let p: i64 = p.parse().ok()?;
    let secs = p.wrapping_sub(1 << 40);
    Some((secs.checked_mul(1_000_000_000)?, id.parse().ok()?))
}

fn block_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Block {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Deletes a temporary file when dropped, unless disarmed: a write that fails halfway (a full
/// disk, say) leaves nothing behind for a restart to clean up.
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// The file has been renamed into place.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove temporary block");
        }
    }
}

#[derive(Default)]
struct SeriesBuild {
    profiles: Vec<ProfileMeta>,
    rows: SeriesRows,
    min_time: i64,
    max_time: i64,
    types: BTreeSet<String>,
    /// Per `type:unit` sample type: profiles having it, and its values summed by stack id.
    totals: TotalsBuild,
    /// In a rollup, the same per hour: (min time, max time, profiles, sums) by hour start.
    hours: BTreeMap<i64, (i64, i64, u64, TotalsBuild)>,
}

/// Per `type:unit` sample type: profiles having it, and its values summed by stack id.
type TotalsBuild = BTreeMap<String, (u64, HashMap<u32, i64, FxBuild>)>;

/// Adds one profile's rows (stack id, values by sample type column) to `totals`.
fn add_totals(totals: &mut TotalsBuild, names: &[Option<String>], rows: &[(u32, u32, &Sample)]) {
    for (col, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        let (profiles, sums) = totals.entry(name.clone()).or_default();
        *profiles += 1;
        for (stack_id, _, sample) in rows {
            let v = sample.value.get(col).copied().unwrap_or(0);
            let e = sums.entry(*stack_id).or_insert(0);
            *e = e.saturating_add(v);
        }
    }
}

/// `totals` in their stored form: stack ids ascending, delta-encoded, zero sums left out.
fn encode_totals(totals: TotalsBuild) -> SeriesTotals {
    SeriesTotals {
        types: totals
            .into_iter()
            .map(|(profile_type, (profiles, sums))| {
                let mut sums: Vec<(u32, i64)> = sums.into_iter().filter(|&(_, v)| v != 0).collect();
                sums.sort_unstable();
                let mut prev = 0;
                TypeTotals {
                    profile_type,
                    profiles,
                    stack_deltas: sums
                        .iter()
                        .map(|&(id, _)| {
                            let d = id - prev;
                            prev = id;
                            d
                        })
                        .collect(),
                    values: sums.iter().map(|&(_, v)| v).collect(),
                }
            })
            .collect(),
    }
}

type FunctionKey = (u32, u32, u32, i64);
type MappingKey = (u64, u64, u64, u32, u32, [bool; 4]);
type LocationKey = (u32, u64, Vec<(u32, i64)>, bool);

/// Deduplicated symbol and stack tables under construction, with table-wide ids as in
/// [`Tables`]: what a block's [`BlockBuilder`] fills, and what the head's aggregate (in
/// `super::local`) keeps so a query merges each distinct stack once instead of every stored row.
pub struct TableBuilder {
    tables: Tables,
    string_ids: HashMap<String, u32, FxBuild>,
    function_ids: HashMap<FunctionKey, u32, FxBuild>,
    mapping_ids: HashMap<MappingKey, u32, FxBuild>,
    location_ids: HashMap<LocationKey, u32, FxBuild>,
    label_set_ids: HashMap<Vec<Label>, u32, FxBuild>,
    stack_ids: HashMap<Vec<u32>, u32, FxBuild>,
    /// Bytes held, roughly (strings, symbols, stacks and their maps): what bounds the head's use.
    bytes: usize,
}

/// One profile's ids mapped into a [`TableBuilder`] (strings filled on first use).
pub struct ProfileIds {
    strings: Vec<Option<u32>>,
    locations: LocationIds,
}

/// A profile's location ids → table location ids. Every frame of every sample goes through it,
/// so ids that are compact (pprof writers number locations 1, 2, 3, …) index an array; sparse
/// ones (any `u64` is a valid id) use a map.
enum LocationIds {
    Dense(Vec<u32>),
    Sparse(HashMap<u64, u32, FxBuild>),
}

impl LocationIds {
    /// Marks an id absent in [`LocationIds::Dense`].
    const NONE: u32 = u32::MAX;

    /// A map for the location ids of `p`.
    fn for_profile(p: &Profile) -> LocationIds {
        let max = p.location.iter().map(|l| l.id).max().unwrap_or(0);
        if max <= 2 * p.location.len() as u64 + 1024 {
            LocationIds::Dense(vec![Self::NONE; max as usize + 1])
        } else {
            LocationIds::Sparse(HashMap::with_capacity_and_hasher(
                p.location.len(),
                FxBuild::default(),
            ))
        }
    }

    fn insert(&mut self, id: u64, to: u32) {
        match self {
            LocationIds::Dense(v) => {
                if let Some(slot) = usize::try_from(id).ok().and_then(|i| v.get_mut(i)) {
                    *slot = to;
                }
            }
            LocationIds::Sparse(m) => {
                m.insert(id, to);
            }
        }
    }

    #[inline]
    fn get(&self, id: u64) -> Option<u32> {
        match self {
            LocationIds::Dense(v) => usize::try_from(id)
                .ok()
                .and_then(|i| v.get(i))
                .copied()
                .filter(|&t| t != Self::NONE),
            LocationIds::Sparse(m) => m.get(&id).copied(),
        }
    }
}

impl Default for TableBuilder {
    fn default() -> Self {
        TableBuilder::new()
    }
}

impl TableBuilder {
    pub fn new() -> TableBuilder {
        let mut t = TableBuilder {
            tables: Tables {
                symbols: Symbols::default(),
                stack_starts: vec![0],
                stack_locations: Vec::new(),
            },
            string_ids: HashMap::default(),
            function_ids: HashMap::default(),
            mapping_ids: HashMap::default(),
            location_ids: HashMap::default(),
            label_set_ids: HashMap::default(),
            stack_ids: HashMap::default(),
            bytes: 0,
        };
        // pprof (and every reader) expects string 0 to be "".
        t.string("");
        t
    }

    /// The tables built so far (stack ids `0..stacks()`).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn string(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.tables.symbols.strings.len() as u32;
        self.tables.symbols.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        self.bytes += 2 * s.len() + 64;
        id
    }

    /// Maps the functions, mappings and locations of `p` into the tables.
    pub fn map_profile(&mut self, p: &Profile) -> ProfileIds {
        let mut ids = ProfileIds {
            strings: vec![None; p.string_table.len()],
            locations: LocationIds::for_profile(p),
        };
        let mut fmap: HashMap<u64, u32, FxBuild> =
            HashMap::with_capacity_and_hasher(p.function.len(), FxBuild::default());
        for f in &p.function {
            let key = (
                self.profile_string(&mut ids, p, f.name),
                self.profile_string(&mut ids, p, f.system_name),
                self.profile_string(&mut ids, p, f.filename),
                f.start_line,
            );
            fmap.insert(f.id, self.function(key));
        }
        let mut mmap: HashMap<u64, u32, FxBuild> =
            HashMap::with_capacity_and_hasher(p.mapping.len(), FxBuild::default());
        for m in &p.mapping {
            let key = (
                m.memory_start,
                m.memory_limit,
                m.file_offset,
                self.profile_string(&mut ids, p, m.filename),
                self.profile_string(&mut ids, p, m.build_id),
                [
                    m.has_functions,
                    m.has_filenames,
                    m.has_line_numbers,
                    m.has_inline_frames,
                ],
            );
            mmap.insert(m.id, self.mapping(key));
        }
        for l in &p.location {
            let key: LocationKey = (
                mmap.get(&l.mapping_id).copied().unwrap_or(0),
                l.address,
                l.line
                    .iter()
                    .map(|ln| (fmap.get(&ln.function_id).copied().unwrap_or(0), ln.line))
                    .collect(),
                l.is_folded,
            );
            let id = self.location(key);
            ids.locations.insert(l.id, id);
        }
        ids
    }

    /// The table id of string `i` of `p` (0 for an index out of range).
    pub fn profile_string(&mut self, ids: &mut ProfileIds, p: &Profile, i: i64) -> u32 {
        let Ok(idx) = usize::try_from(i) else {
            return 0;
        };
        match ids.strings.get(idx) {
            Some(Some(id)) => *id,
            Some(None) => {
                let id = self.string(&p.string_table[idx]);
                ids.strings[idx] = Some(id);
                id
            }
            None => 0,
        }
    }

    /// The stack id of `sample` (of the profile `ids` maps); `scratch` is reused between calls.
    pub fn sample_stack(
        &mut self,
        ids: &ProfileIds,
        sample: &Sample,
        scratch: &mut Vec<u32>,
    ) -> u32 {
        self.stack_of(ids, &sample.location_id, scratch)
    }

    /// The stack id of a sample with pprof location ids `location_ids` (leaf first) of the
    /// profile `ids` maps: [`TableBuilder::sample_stack`] for samples not decoded into a
    /// [`Sample`].
    pub fn stack_of(
        &mut self,
        ids: &ProfileIds,
        location_ids: &[u64],
        scratch: &mut Vec<u32>,
    ) -> u32 {
        scratch.clear();
        for loc in location_ids {
            let id = match ids.locations.get(*loc) {
                Some(id) => id,
                // A dangling id (ingest validates, but be total): an empty location keeps depth.
                None => self.location((0, 0, Vec::new(), false)),
            };
            scratch.push(id);
        }
        self.stack(scratch)
    }

    /// Like [`TableBuilder::map_profile`] without adding anything: the locations of `p` already
    /// in the tables (others are left out of the map).
    pub fn find_profile(&self, p: &Profile) -> ProfileIds {
        let mut ids = ProfileIds {
            strings: Vec::new(),
            locations: LocationIds::for_profile(p),
        };
        let s = |i: i64| -> Option<u32> {
            let s = usize::try_from(i)
                .ok()
                .and_then(|i| p.string_table.get(i))?;
            self.string_ids.get(s.as_str()).copied()
        };
        let mut fmap: HashMap<u64, u32, FxBuild> = HashMap::default();
        for f in &p.function {
            let key = (s(f.name), s(f.system_name), s(f.filename));
            if let (Some(a), Some(b), Some(c)) = key
                && let Some(&id) = self.function_ids.get(&(a, b, c, f.start_line))
            {
                fmap.insert(f.id, id);
            }
        }
        let mut mmap: HashMap<u64, u32, FxBuild> = HashMap::default();
        for m in &p.mapping {
            if let (Some(file), Some(build)) = (s(m.filename), s(m.build_id)) {
                let key = (
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    file,
                    build,
                    [
                        m.has_functions,
                        m.has_filenames,
                        m.has_line_numbers,
                        m.has_inline_frames,
                    ],
                );
                if let Some(&id) = self.mapping_ids.get(&key) {
                    mmap.insert(m.id, id);
                }
            }
        }
        for l in &p.location {
            let key: LocationKey = (
                mmap.get(&l.mapping_id).copied().unwrap_or(0),
                l.address,
                l.line
                    .iter()
                    .map(|ln| (fmap.get(&ln.function_id).copied().unwrap_or(0), ln.line))
                    .collect(),
                l.is_folded,
            );
            if let Some(&id) = self.location_ids.get(&key) {
                ids.locations.insert(l.id, id);
            }
        }
        ids
    }

    /// Like [`TableBuilder::sample_stack`] without adding anything: `None` when the stack is not
    /// in the tables.
    pub fn find_stack(
        &self,
        ids: &ProfileIds,
        sample: &Sample,
        scratch: &mut Vec<u32>,
    ) -> Option<u32> {
        scratch.clear();
        for loc in &sample.location_id {
            let id = match ids.locations.get(*loc) {
                Some(id) => id,
                None => *self.location_ids.get(&(0, 0, Vec::new(), false))?,
            };
            scratch.push(id);
        }
        self.stack_ids.get(scratch.as_slice()).copied()
    }

    fn function(&mut self, key: FunctionKey) -> u32 {
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        self.tables.symbols.functions.push(Function {
            id: 0,
            name: i64::from(key.0),
            system_name: i64::from(key.1),
            filename: i64::from(key.2),
            start_line: key.3,
        });
        let id = self.tables.symbols.functions.len() as u32;
        self.function_ids.insert(key, id);
        self.bytes += 96;
        id
    }

    fn mapping(&mut self, key: MappingKey) -> u32 {
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        self.tables.symbols.mappings.push(Mapping {
            id: 0,
            memory_start: key.0,
            memory_limit: key.1,
            file_offset: key.2,
            filename: i64::from(key.3),
            build_id: i64::from(key.4),
            has_functions: key.5[0],
            has_filenames: key.5[1],
            has_line_numbers: key.5[2],
            has_inline_frames: key.5[3],
        });
        let id = self.tables.symbols.mappings.len() as u32;
        self.mapping_ids.insert(key, id);
        self.bytes += 160;
        id
    }

    fn location(&mut self, key: LocationKey) -> u32 {
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        self.tables.symbols.locations.push(Location {
            id: 0,
            mapping_id: u64::from(key.0),
            address: key.1,
            line: key
                .2
                .iter()
                .map(|&(f, line)| Line {
                    function_id: u64::from(f),
                    line,
                })
                .collect(),
            is_folded: key.3,
        });
        let id = self.tables.symbols.locations.len() as u32;
        self.bytes += 160 + 48 * key.2.len();
        self.location_ids.insert(key, id);
        id
    }

    fn stack(&mut self, locations: &[u32]) -> u32 {
        if let Some(&id) = self.stack_ids.get(locations) {
            return id;
        }
        let id = self.stacks() as u32;
        self.tables.stack_locations.extend_from_slice(locations);
        self.tables
            .stack_starts
            .push(self.tables.stack_locations.len());
        self.stack_ids.insert(locations.to_vec(), id);
        self.bytes += 64 + 8 * locations.len();
        id
    }

    fn label_set(&mut self, labels: Vec<Label>) -> u32 {
        if let Some(&id) = self.label_set_ids.get(&labels) {
            return id;
        }
        self.tables.symbols.label_sets.push(LabelSet {
            labels: labels.clone(),
        });
        let id = self.tables.symbols.label_sets.len() as u32;
        self.bytes += 64 + 64 * labels.len();
        self.label_set_ids.insert(labels, id);
        id
    }

    /// How many distinct stacks the tables hold.
    pub fn stacks(&self) -> usize {
        self.tables.stacks()
    }

    /// Stack `id` of `from` in these tables (its locations, mappings, functions and strings
    /// copied by value): how the head's aggregate moves what it keeps into fresh tables after a
    /// flush. `memo` maps `from`'s location ids already copied.
    pub fn import_stack(
        &mut self,
        from: &Tables,
        id: u32,
        memo: &mut HashMap<u32, u32, FxBuild>,
    ) -> u32 {
        let mut locs = Vec::with_capacity(from.stack(id).len());
        for &l in from.stack(id) {
            let new = match memo.get(&l) {
                Some(&n) => n,
                None => {
                    let n = self.import_location(from, l);
                    memo.insert(l, n);
                    n
                }
            };
            locs.push(new);
        }
        self.stack(&locs)
    }

    fn import_location(&mut self, from: &Tables, id: u32) -> u32 {
        let l = id
            .checked_sub(1)
            .and_then(|i| from.symbols.locations.get(i as usize))
            .cloned()
            .unwrap_or_default();
        let mapping = match usize::try_from(l.mapping_id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| from.symbols.mappings.get(i))
        {
            Some(m) => {
                let key = (
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    self.string(from.str(m.filename)),
                    self.string(from.str(m.build_id)),
                    [
                        m.has_functions,
                        m.has_filenames,
                        m.has_line_numbers,
                        m.has_inline_frames,
                    ],
                );
                self.mapping(key)
            }
            None => 0,
        };
        let lines = l
            .line
            .iter()
            .map(|ln| {
                let f = match usize::try_from(ln.function_id)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| from.symbols.functions.get(i))
                {
                    Some(f) => {
                        let key = (
                            self.string(from.str(f.name)),
                            self.string(from.str(f.system_name)),
                            self.string(from.str(f.filename)),
                            f.start_line,
                        );
                        self.function(key)
                    }
                    None => 0,
                };
                (f, ln.line)
            })
            .collect();
        self.location((mapping, l.address, lines, l.is_folded))
    }

    /// The tables as a block stores them.
    fn into_sections(self) -> (Symbols, Stacks) {
        let lengths = self
            .tables
            .stack_starts
            .windows(2)
            .map(|w| (w[1] - w[0]) as u32)
            .collect();
        (
            self.tables.symbols,
            Stacks {
                lengths,
                locations: self.tables.stack_locations,
            },
        )
    }
}

/// The `type:unit` name of each sample type of `p`, `None` for a column that repeats an earlier
/// one (reads take the first column of a type, see [`Tables::value_index`]).
pub fn sample_type_names(p: &Profile) -> Vec<Option<String>> {
    let mut seen: Vec<Option<String>> = Vec::with_capacity(p.sample_type.len());
    for st in &p.sample_type {
        let name = format!("{}:{}", p.str(st.r#type), p.str(st.unit));
        let repeat = seen.iter().flatten().any(|n| *n == name);
        seen.push((!repeat).then_some(name));
    }
    seen
}

/// Accumulates profiles into one block's tables, deduplicating symbols and stacks as they come.
pub struct BlockBuilder {
    t: TableBuilder,
    series: BTreeMap<Labels, SeriesBuild>,
    min_time: i64,
    max_time: i64,
    rows: u64,
    profiles: u64,
    /// [`PARTITION_NANOS`], or [`ROLLUP_NANOS`] for a rollup ([`BlockBuilder::rollup`]).
    partition_nanos: i64,
}

impl Default for BlockBuilder {
    fn default() -> Self {
        BlockBuilder::new()
    }
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder {
            t: TableBuilder::new(),
            series: BTreeMap::new(),
            min_time: i64::MAX,
            max_time: i64::MIN,
            rows: 0,
            profiles: 0,
            partition_nanos: PARTITION_NANOS,
        }
    }

    /// A builder for a rollup: the profiles of one UTC day, with each series' sums per hour too.
    /// Every profile added must fall in the same day.
    pub fn rollup() -> BlockBuilder {
        BlockBuilder {
            partition_nanos: ROLLUP_NANOS,
            ..BlockBuilder::new()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.profiles == 0
    }

    /// Rough in-memory size, to decide when to stop merging.
    pub fn profiles(&self) -> u64 {
        self.profiles
    }

    /// Adds one profile of series `labels`, stored at `time_nanos`.
    pub fn add(&mut self, labels: &Labels, time_nanos: i64, profile_types: &[String], p: &Profile) {
        let mut ids = self.t.map_profile(p);
        let t = &mut self.t;
        let n = p.sample_type.len();
        let mut rows: Vec<(u32, u32, &Sample)> = Vec::with_capacity(p.sample.len());
        let mut stack = Vec::new();
        for sample in &p.sample {
            let stack_id = t.sample_stack(&ids, sample, &mut stack);
            let label_set = if sample.label.is_empty() {
                0
            } else {
                let set: Vec<Label> = sample
                    .label
                    .iter()
                    .map(|l| Label {
                        key: i64::from(t.profile_string(&mut ids, p, l.key)),
                        str: i64::from(t.profile_string(&mut ids, p, l.str)),
                        num: l.num,
                        num_unit: i64::from(t.profile_string(&mut ids, p, l.num_unit)),
                    })
                    .collect();
                t.label_set(set)
            };
            rows.push((stack_id, label_set, sample));
        }
        rows.sort_by_key(|r| (r.0, r.1));

        let mut s = |i: i64| i64::from(t.profile_string(&mut ids, p, i));
        let meta = ProfileMeta {
            time_nanos,
            duration_nanos: p.duration_nanos,
            period: p.period,
            period_type: p.period_type.map(|vt| ValueType {
                r#type: s(vt.r#type),
                unit: s(vt.unit),
            }),
            sample_types: p
                .sample_type
                .iter()
                .map(|vt| ValueType {
                    r#type: s(vt.r#type),
                    unit: s(vt.unit),
                })
                .collect(),
            default_sample_type: s(p.default_sample_type),
            drop_frames: s(p.drop_frames),
            keep_frames: s(p.keep_frames),
            comments: p.comment.iter().map(|&c| s(c)).collect(),
            profile_types: profile_types.to_vec(),
            rows: rows.len() as u32,
            pprof_time_nanos: p.time_nanos,
        };
        let series = self
            .series
            .entry(labels.clone())
            .or_insert_with(|| SeriesBuild {
                min_time: i64::MAX,
                max_time: i64::MIN,
                ..SeriesBuild::default()
            });
        let mut prev = 0;
        for (stack_id, label_set, _) in &rows {
            series.rows.stack_deltas.push(stack_id - prev);
            prev = *stack_id;
            series.rows.label_sets.push(*label_set);
        }
        for col in 0..n {
            for (_, _, sample) in &rows {
                series
                    .rows
                    .values
                    .push(sample.value.get(col).copied().unwrap_or(0));
            }
        }
        let names = sample_type_names(p);
        add_totals(&mut series.totals, &names, &rows);
        if self.partition_nanos > PARTITION_NANOS {
            let (min, max, profiles, totals) = series
                .hours
                .entry(partition_of(time_nanos))
                .or_insert_with(|| (i64::MAX, i64::MIN, 0, TotalsBuild::new()));
            *min = (*min).min(time_nanos);
            *max = (*max).max(time_nanos);
            *profiles += 1;
            add_totals(totals, &names, &rows);
        }
        series.min_time = series.min_time.min(time_nanos);
        series.max_time = series.max_time.max(time_nanos);
        series.types.extend(profile_types.iter().cloned());
        series.profiles.push(meta);
        self.min_time = self.min_time.min(time_nanos);
        self.max_time = self.max_time.max(time_nanos);
        self.rows += rows.len() as u64;
        self.profiles += 1;
    }
    /// Writes the block atomically (temp file, fsync, rename, fsync directory) and returns its
    /// footer and size.
    pub fn write(
        self,
        dir: &Path,
        provenance: Provenance,
    ) -> Result<(BlockMeta, PathBuf, u64), StoreError> {
        let partition_start = self.min_time.div_euclid(self.partition_nanos) * self.partition_nanos;
        let path = block_path(dir, partition_start, provenance.id);
        let tmp = path.with_extension("tmp");
        let mut w = SectionWriter {
            buf: Vec::with_capacity(1 << 20),
        };
        w.buf.extend_from_slice(BLOCK_MAGIC);
        let (symbols, stacks) = self.t.into_sections();
        let symbols = w.section(&symbols.encode_to_vec())?;
        let stacks = w.section(&stacks.encode_to_vec())?;
        let mut series = Vec::with_capacity(self.series.len());
        for (labels, s) in self.series {
            let profiles_section = w.section(
                &SeriesProfiles {
                    profiles: s.profiles.clone(),
                }
                .encode_to_vec(),
            )?;
            let rows_section = w.section(&s.rows.encode_to_vec())?;
            let totals_section = w.section(&encode_totals(s.totals).encode_to_vec())?;
            let mut hour_totals = Vec::with_capacity(s.hours.len());
            for (_, (min_time, max_time, profiles, totals)) in s.hours {
                hour_totals.push(HourTotalsRef {
                    min_time,
                    max_time,
                    profiles,
                    section: Some(w.section(&encode_totals(totals).encode_to_vec())?),
                });
            }
            series.push(SeriesMeta {
                labels: labels
                    .iter()
                    .map(|(name, value)| LabelPair {
                        name: name.to_owned(),
                        value: value.to_owned(),
                    })
                    .collect(),
                min_time: s.min_time,
                max_time: s.max_time,
                profiles: s.profiles.len() as u64,
                rows: s.rows.stack_deltas.len() as u64,
                profile_types: s.types.into_iter().collect(),
                profiles_section: Some(profiles_section),
                rows_section: Some(rows_section),
                totals_section: Some(totals_section),
                hour_totals,
            });
        }
        let meta = BlockMeta {
            id: provenance.id,
            partition_start,
            min_time: self.min_time,
            max_time: self.max_time,
            flush_id: provenance.flush_id,
            flush_parts: provenance.flush_parts,
            sources: provenance.sources,
            replaces: provenance.replaces,
            symbols: Some(symbols),
            stacks: Some(stacks),
            series,
            rows: self.rows,
            profiles: self.profiles,
            partition_nanos: self.partition_nanos,
        };
        let meta_bytes = meta.encode_to_vec();
        w.buf.extend_from_slice(&meta_bytes);
        w.buf
            .extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
        w.buf
            .extend_from_slice(&crc32fast::hash(&meta_bytes).to_le_bytes());
        w.buf.extend_from_slice(BLOCK_MAGIC);

        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let guard = TempFile(Some(tmp.clone()));
        file.write_all(&w.buf).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        guard.disarm();
        sync_dir(dir)?;
        Ok((meta, path, w.buf.len() as u64))
    }
}

/// Where a block comes from: recorded in its footer so start-up can finish or undo interrupted
/// flushes and compactions.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub id: u64,
    pub flush_id: u64,
    pub flush_parts: u32,
    pub sources: Vec<u64>,
    pub replaces: Vec<u64>,
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

struct SectionWriter {
    buf: Vec<u8>,
}

impl SectionWriter {
    fn section(&mut self, raw: &[u8]) -> Result<SectionRef, StoreError> {
        let z = zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(|source| StoreError::Io {
            path: "zstd".to_owned(),
            source,
        })?;
        let r = SectionRef {
            offset: self.buf.len() as u64,
            len: z.len() as u64,
            crc: crc32fast::hash(&z),
            raw_len: raw.len() as u64,
        };
        self.buf.extend_from_slice(&z);
        Ok(r)
    }
}

/// Reads a block's footer.
pub fn read_meta(path: &Path) -> Result<(BlockMeta, File, u64), StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if size < BLOCK_MAGIC.len() as u64 + TRAILER_LEN {
        return Err(block_err(path, "shorter than a block"));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN)
        .map_err(io_err(path))?;
    if &trailer[12..] != BLOCK_MAGIC {
        return Err(block_err(path, "bad trailer magic"));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&trailer[..8]);
    let meta_len = u64::from_le_bytes(len8);
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&trailer[8..12]);
    let crc = u32::from_le_bytes(crc4);
    if meta_len > size - TRAILER_LEN - BLOCK_MAGIC.len() as u64 {
        return Err(block_err(path, "implausible footer length"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, size - TRAILER_LEN - meta_len)
        .map_err(io_err(path))?;
    if crc32fast::hash(&meta) != crc {
        return Err(block_err(path, "footer CRC mismatch"));
    }
    let meta =
        BlockMeta::decode(meta.as_slice()).map_err(|e| block_err(path, format!("footer: {e}")))?;
    Ok((meta, file, size))
}

/// Whether the block starts with [`BLOCK_MAGIC`]. Nothing else is read from the leading bytes
/// (the footer and every section carry their own CRCs), so a damaged leading magic costs no
/// profile: it is reported (`kiln check`, a warning at start-up), not quarantined.
pub fn leading_magic_ok(file: &File, path: &Path) -> Result<bool, StoreError> {
    let mut head = [0u8; BLOCK_MAGIC.len()];
    file.read_exact_at(&mut head, 0).map_err(io_err(path))?;
    Ok(&head == BLOCK_MAGIC)
}

/// How many profiles a block whose footer is unreadable held, and how that was found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostCount {
    /// Counted in the block's own per-series profile tables, found without the footer.
    Counted(u64),
    /// The profile tables could not all be read: what the footer says, read without its CRC (an
    /// estimate: the damage may be in that very number).
    FromDamagedFooter(u64),
    /// Neither could be read.
    Unknown,
}

impl LostCount {
    /// The number to count as lost (0 when unknown).
    pub fn profiles(self) -> u64 {
        match self {
            LostCount::Counted(n) | LostCount::FromDamagedFooter(n) => n,
            LostCount::Unknown => 0,
        }
    }

    /// How the number was found, for logs and `kiln check`.
    pub fn how(self) -> &'static str {
        match self {
            LostCount::Counted(_) => "counted in its profile tables",
            LostCount::FromDamagedFooter(_) => "as its damaged footer says (unverified)",
            LostCount::Unknown => "unknown",
        }
    }
}

/// Most sections walked when counting a block without its footer (far above real blocks).
const MAX_SALVAGE_SECTIONS: usize = 1 << 22;

/// Counts the profiles of a block whose footer is unreadable ([`read_meta`] failed), so that the
/// loss is counted rather than silent.
///
/// Without the footer nothing says where the sections are, but the layout does: after the leading
/// magic, the sections are zstd frames laid end to end, in a fixed order (symbols, stacks, then
/// per series its profiles and its rows), and the footer starts where the last frame ends. Each
/// zstd frame states its own length block by block, so the frames are walked from the start; the
/// profile tables (every other frame from the third) are inflated and their profiles counted.
/// When that fails too (the damage is not only in the footer), the footer's own count is used
/// without its CRC, if it still decodes.
pub fn count_without_footer(path: &Path, limit: usize) -> LostCount {
    let Ok(file) = File::open(path) else {
        return LostCount::Unknown;
    };
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return LostCount::Unknown;
    };
    let mut frames = Vec::new();
    let mut at = BLOCK_MAGIC.len() as u64;
    while frames.len() < MAX_SALVAGE_SECTIONS {
        let Some(len) = zstd_frame_len(&file, at, size) else {
            break;
        };
        frames.push((at, len));
        at += len;
    }
    // Per series: profiles, rows and (in blocks with per-stack sums) totals; older blocks have no
    // totals. Try the newer layout first.
    let count = |stride: usize| {
        (frames.len() >= 2 && (frames.len() - 2) % stride == 0)
            .then(|| {
                frames[2..]
                    .iter()
                    .step_by(stride)
                    .try_fold(0u64, |total, &(offset, len)| {
                        let mut z = vec![0u8; usize::try_from(len).ok()?];
                        file.read_exact_at(&mut z, offset).ok()?;
                        let mut raw = Vec::new();
                        let decoder = zstd::stream::read::Decoder::new(z.as_slice()).ok()?;
                        std::io::Read::read_to_end(
                            &mut std::io::Read::take(decoder, limit as u64 + 1),
                            &mut raw,
                        )
                        .ok()?;
                        if raw.len() > limit {
                            return None;
                        }
                        let p = SeriesProfiles::decode(raw.as_slice()).ok()?;
                        Some(total + p.profiles.len() as u64)
                    })
            })
            .flatten()
    };
    if let Some(n) = count(3).or_else(|| count(2)) {
        return LostCount::Counted(n);
    }
    footer_without_crc(&file, size)
        .map(|meta| {
            // Two statements of the count: if the damage made them disagree, the smaller.
            let by_series: u64 = meta.series.iter().map(|s| s.profiles).sum();
            LostCount::FromDamagedFooter(meta.profiles.min(by_series))
        })
        .unwrap_or(LostCount::Unknown)
}

/// The footer as its trailer places it, decoded without checking its CRC or the magics.
fn footer_without_crc(file: &File, size: u64) -> Option<BlockMeta> {
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, size.checked_sub(TRAILER_LEN)?)
        .ok()?;
    let meta_len = u64::from_le_bytes(trailer[..8].try_into().ok()?);
    if meta_len > size.checked_sub(TRAILER_LEN + BLOCK_MAGIC.len() as u64)? {
        return None;
    }
    let mut meta = vec![0u8; usize::try_from(meta_len).ok()?];
    file.read_exact_at(&mut meta, size - TRAILER_LEN - meta_len)
        .ok()?;
    BlockMeta::decode(meta.as_slice()).ok()
}

/// The length of the zstd frame at `at` (RFC 8878, section 3.1.1), read from its header and block
/// headers only; `None` when there is no sound frame there (the footer, or damage).
fn zstd_frame_len(file: &File, at: u64, size: u64) -> Option<u64> {
    const ZSTD_MAGIC: u32 = 0xFD2F_B528;
    let mut head = [0u8; 5];
    file.read_exact_at(&mut head, at).ok()?;
    if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != ZSTD_MAGIC {
        return None;
    }
    let descriptor = head[4];
    let single_segment = descriptor & 0x20 != 0;
    let checksum = descriptor & 0x04 != 0;
    let dict_id_bytes = [0u64, 1, 2, 4][usize::from(descriptor & 0x03)];
    let content_size_bytes = match descriptor >> 6 {
        0 => u64::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let window_bytes = u64::from(!single_segment);
    let mut pos = at + 5 + window_bytes + dict_id_bytes + content_size_bytes;
    loop {
        let mut b = [0u8; 3];
        file.read_exact_at(&mut b, pos).ok()?;
        let header = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let last = header & 1 != 0;
        let size_field = u64::from(header >> 3);
        let content = match (header >> 1) & 3 {
            0 | 2 => size_field, // raw, compressed
            1 => 1,              // RLE: one byte repeated
            _ => return None,    // reserved
        };
        pos = pos.checked_add(3 + content)?;
        if pos > size {
            return None;
        }
        if last {
            break;
        }
    }
    if checksum {
        pos += 4;
    }
    (pos <= size).then(|| pos - at)
}

/// Reads a section's compressed bytes and checks them against its CRC.
fn read_verified(
    file: &File,
    path: &Path,
    r: Option<&SectionRef>,
    limit: usize,
) -> Result<Vec<u8>, StoreError> {
    let r = r.ok_or_else(|| block_err(path, "missing section"))?;
    if r.raw_len > limit as u64 {
        return Err(block_err(
            path,
            format!("section inflates to {} bytes, over the limit", r.raw_len),
        ));
    }
    let mut z = vec![0u8; r.len as usize];
    file.read_exact_at(&mut z, r.offset).map_err(io_err(path))?;
    if crc32fast::hash(&z) != r.crc {
        return Err(block_err(
            path,
            format!("section at {} fails its CRC", r.offset),
        ));
    }
    Ok(z)
}

fn read_section(
    file: &File,
    path: &Path,
    r: Option<&SectionRef>,
    limit: usize,
) -> Result<Vec<u8>, StoreError> {
    let z = read_verified(file, path, r, limit)?;
    let raw_len = r.map_or(0, |r| r.raw_len as usize);
    zstd::bulk::decompress(&z, raw_len).map_err(|e| block_err(path, format!("zstd: {e}")))
}

/// What is damaged in a block, as found by [`verify`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Why the symbol or stack table is unreadable: then no profile of the block can be read.
    pub tables: Option<String>,
    /// Series (indices into the footer's `series`) with an unreadable section, and why.
    pub series: Vec<(usize, String)>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.tables.is_none() && self.series.is_empty()
    }
}

/// Checks every section of a block against its CRC (cheap: nothing is inflated), or with `deep`
/// also inflates and decodes each one exactly as a read would.
pub fn verify(file: &File, path: &Path, meta: &BlockMeta, limit: usize, deep: bool) -> Verdict {
    let mut verdict = Verdict::default();
    let tables = if deep {
        Tables::load(file, path, meta, limit).map(drop)
    } else {
        read_verified(file, path, meta.symbols.as_ref(), limit)
            .and_then(|_| read_verified(file, path, meta.stacks.as_ref(), limit))
            .map(drop)
    };
    if let Err(e) = tables {
        verdict.tables = Some(e.to_string());
    }
    for (i, s) in meta.series.iter().enumerate() {
        let series = if deep {
            SeriesData::load(file, path, s, limit)
                .and_then(|_| match s.totals_section {
                    Some(_) => load_series_totals(file, path, s, limit).map(drop),
                    None => Ok(()),
                })
                .and_then(|()| {
                    s.hour_totals
                        .iter()
                        .try_for_each(|h| load_hour_totals(file, path, h, limit).map(drop))
                })
        } else {
            read_verified(file, path, s.profiles_section.as_ref(), limit)
                .and_then(|_| read_verified(file, path, s.rows_section.as_ref(), limit))
                .and_then(|_| match &s.totals_section {
                    Some(t) => read_verified(file, path, Some(t), limit).map(drop),
                    None => Ok(()),
                })
                .and_then(|()| {
                    s.hour_totals.iter().try_for_each(|h| {
                        read_verified(file, path, h.section.as_ref(), limit).map(drop)
                    })
                })
        };
        if let Err(e) = series {
            verdict.series.push((i, e.to_string()));
        }
    }
    verdict
}

/// A block's symbol and stack tables, decompressed: what every profile read from it needs.
pub struct Tables {
    symbols: Symbols,
    stack_starts: Vec<usize>,
    stack_locations: Vec<u32>,
}

impl Tables {
    pub fn load(
        file: &File,
        path: &Path,
        meta: &BlockMeta,
        limit: usize,
    ) -> Result<Tables, StoreError> {
        let symbols = read_section(file, path, meta.symbols.as_ref(), limit)?;
        let symbols = Symbols::decode(symbols.as_slice())
            .map_err(|e| block_err(path, format!("symbols: {e}")))?;
        let stacks = read_section(file, path, meta.stacks.as_ref(), limit)?;
        let stacks = Stacks::decode(stacks.as_slice())
            .map_err(|e| block_err(path, format!("stacks: {e}")))?;
        let mut stack_starts = Vec::with_capacity(stacks.lengths.len() + 1);
        let mut at = 0usize;
        stack_starts.push(0);
        for &l in &stacks.lengths {
            at += l as usize;
            stack_starts.push(at);
        }
        if at != stacks.locations.len() {
            return Err(block_err(path, "stack table lengths disagree"));
        }
        Ok(Tables {
            symbols,
            stack_starts,
            stack_locations: stacks.locations,
        })
    }

    fn str(&self, id: i64) -> &str {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.symbols.strings.get(i))
            .map_or("", String::as_str)
    }

    /// Which value column of a profile holds `profile_type` (`type:unit`).
    fn value_index(&self, meta: &ProfileMeta, profile_type: &str) -> Option<usize> {
        let (ty, unit) = profile_type.split_once(':')?;
        meta.sample_types
            .iter()
            .position(|vt| self.str(vt.r#type) == ty && self.str(vt.unit) == unit)
    }

    /// How many distinct stacks the block holds (stack ids are `0..stacks()`).
    pub fn stacks(&self) -> usize {
        self.stack_starts.len().saturating_sub(1)
    }

    /// Approximate bytes held (decoded).
    pub fn bytes(&self) -> usize {
        let s = &self.symbols;
        s.strings.iter().map(|x| x.len() + 24).sum::<usize>()
            + s.functions.len() * 40
            + s.mappings.len() * 80
            + s.locations
                .iter()
                .map(|l| 56 + 16 * l.line.len())
                .sum::<usize>()
            + s.label_sets.len() * 64
            + self.stack_starts.capacity() * 8
            + self.stack_locations.capacity() * 4
    }

    /// A pprof with the single sample type `profile_type` and one sample per stack with a non-zero
    /// value in `stacks` (indexed by block stack id: the summed value): what a merge of the
    /// profiles they came from would see.
    pub fn merged_profile(&self, profile_type: &str, stacks: &[i64]) -> Profile {
        let mut r = Rebuilder {
            t: self,
            p: Profile {
                string_table: vec![String::new()],
                ..Profile::default()
            },
            strings: HashMap::default(),
            functions: HashMap::default(),
            mappings: HashMap::default(),
            locations: HashMap::default(),
        };
        let (ty, unit) = profile_type.split_once(':').unwrap_or((profile_type, ""));
        r.p.string_table.push(ty.to_owned());
        r.p.string_table.push(unit.to_owned());
        r.p.sample_type = vec![ValueType { r#type: 1, unit: 2 }];
        // Root-first order: stacks sharing a prefix come together, so the tree merge
        // ([`crate::query::merge::Tree`]) looks up only the frames after the shared prefix.
        let mut ids: Vec<u32> = (0..stacks.len().min(self.stacks()) as u32)
            .filter(|&i| stacks[i as usize] != 0)
            .collect();
        ids.sort_unstable_by(|&a, &b| self.stack(a).iter().rev().cmp(self.stack(b).iter().rev()));
        r.p.sample.reserve(ids.len());
        for stack in ids {
            let location_id = self.stack(stack).iter().map(|&l| r.location(l)).collect();
            r.p.sample.push(Sample {
                location_id,
                value: vec![stacks[stack as usize]],
                label: Vec::new(),
            });
        }
        r.p
    }

    /// The table's symbols as a pprof without samples: location, function and mapping ids are
    /// the table's own (1-based), so a stack's location ids are valid in it as they are.
    pub fn symbols_profile(&self) -> Profile {
        let mut p = Profile {
            string_table: self.symbols.strings.clone(),
            function: self.symbols.functions.clone(),
            mapping: self.symbols.mappings.clone(),
            location: self.symbols.locations.clone(),
            ..Profile::default()
        };
        for (i, f) in p.function.iter_mut().enumerate() {
            f.id = i as u64 + 1;
        }
        for (i, m) in p.mapping.iter_mut().enumerate() {
            m.id = i as u64 + 1;
        }
        for (i, l) in p.location.iter_mut().enumerate() {
            l.id = i as u64 + 1;
        }
        p
    }

    /// Stack `id`'s location ids, leaf first (empty for an id past the table).
    pub fn stack(&self, id: u32) -> &[u32] {
        let i = id as usize;
        match (self.stack_starts.get(i), self.stack_starts.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.stack_locations[a..b],
            _ => &[],
        }
    }
}

/// A series' rows summed by stack id per profile type (its [`SeriesMeta::totals_section`]).
pub struct SeriesSums(SeriesTotals);

/// The series' pre-summed rows, or `None` for a block written before blocks carried them.
pub fn load_series_totals(
    file: &File,
    path: &Path,
    series: &SeriesMeta,
    limit: usize,
) -> Result<Option<SeriesSums>, StoreError> {
    let Some(r) = &series.totals_section else {
        return Ok(None);
    };
    load_totals(file, path, r, limit).map(Some)
}

/// The sums of one hour of a rollup's series (an entry of [`SeriesMeta::hour_totals`]).
pub fn load_hour_totals(
    file: &File,
    path: &Path,
    hour: &HourTotalsRef,
    limit: usize,
) -> Result<SeriesSums, StoreError> {
    let r = hour
        .section
        .as_ref()
        .ok_or_else(|| block_err(path, "hour totals without a section"))?;
    load_totals(file, path, r, limit)
}

fn load_totals(
    file: &File,
    path: &Path,
    r: &SectionRef,
    limit: usize,
) -> Result<SeriesSums, StoreError> {
    let raw = read_section(file, path, Some(r), limit)?;
    let totals = SeriesTotals::decode(raw.as_slice())
        .map_err(|e| block_err(path, format!("series totals: {e}")))?;
    if totals
        .types
        .iter()
        .any(|t| t.stack_deltas.len() != t.values.len())
    {
        return Err(block_err(path, "series totals: ids and values disagree"));
    }
    Ok(SeriesSums(totals))
}

impl SeriesSums {
    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.0
            .types
            .iter()
            .map(|t| t.profile_type.len() + 64 + t.stack_deltas.len() * 4 + t.values.len() * 8)
            .sum()
    }

    /// Adds the sums of `profile_type` into `acc` (indexed by stack id, grown to the block's
    /// stack count), as [`SeriesData::aggregate`] over all the series' profiles would; returns how
    /// many profiles have that type.
    pub fn add_to(&self, tables: &Tables, profile_type: &str, acc: &mut Vec<i64>) -> usize {
        if acc.len() < tables.stacks() {
            acc.resize(tables.stacks(), 0);
        }
        let Some(t) = self.0.types.iter().find(|t| t.profile_type == profile_type) else {
            return 0;
        };
        let mut stack = 0u32;
        for (&d, &v) in t.stack_deltas.iter().zip(&t.values) {
            stack = stack.wrapping_add(d);
            // A stack id past the table (a damaged block) is dropped, as a read drops it.
            if let Some(e) = acc.get_mut(stack as usize) {
                *e = e.saturating_add(v);
            }
        }
        t.profiles as usize
    }
}

/// One series' profiles and rows, decompressed.
pub struct SeriesData {
    pub profiles: Vec<ProfileMeta>,
    rows: SeriesRows,
}

/// Only the profile table of a series (cheap: no rows), for exact time checks.
pub fn load_series_profiles(
    file: &File,
    path: &Path,
    series: &SeriesMeta,
    limit: usize,
) -> Result<Vec<ProfileMeta>, StoreError> {
    let raw = read_section(file, path, series.profiles_section.as_ref(), limit)?;
    SeriesProfiles::decode(raw.as_slice())
        .map(|p| p.profiles)
        .map_err(|e| block_err(path, format!("series profiles: {e}")))
}

impl SeriesData {
    pub fn load(
        file: &File,
        path: &Path,
        series: &SeriesMeta,
        limit: usize,
    ) -> Result<SeriesData, StoreError> {
        let profiles = load_series_profiles(file, path, series, limit)?;
        let raw = read_section(file, path, series.rows_section.as_ref(), limit)?;
        // Its pre-summed copy is checked too (CRC only), so a damaged section of a series hides
        // that series from every read alike, merged or not.
        if series.totals_section.is_some() {
            read_verified(file, path, series.totals_section.as_ref(), limit)?;
        }
        for h in &series.hour_totals {
            read_verified(file, path, h.section.as_ref(), limit)?;
        }
        let rows = SeriesRows::decode(raw.as_slice())
            .map_err(|e| block_err(path, format!("series rows: {e}")))?;
        let want_rows: usize = profiles.iter().map(|p| p.rows as usize).sum();
        let want_values: usize = profiles
            .iter()
            .map(|p| p.rows as usize * p.sample_types.len())
            .sum();
        if rows.stack_deltas.len() != want_rows
            || rows.label_sets.len() != want_rows
            || rows.values.len() != want_values
        {
            return Err(block_err(path, "series rows disagree with its profiles"));
        }
        Ok(SeriesData { profiles, rows })
    }

    /// Adds the `profile_type` values of the profiles `keep` accepts into `acc` (indexed by stack
    /// id; grown to the block's stack count), without rebuilding any pprof; returns how many
    /// profiles had that type. Integer-only: this loop sees every stored row of the selection.
    pub fn aggregate(
        &self,
        tables: &Tables,
        mut keep: impl FnMut(&ProfileMeta) -> bool,
        profile_type: &str,
        acc: &mut Vec<i64>,
    ) -> usize {
        if acc.len() < tables.stacks() {
            acc.resize(tables.stacks(), 0);
        }
        let mut row = 0usize;
        let mut value = 0usize;
        let mut merged = 0;
        for meta in &self.profiles {
            let n = meta.rows as usize;
            let cols = meta.sample_types.len();
            if keep(meta)
                && let Some(col) = tables.value_index(meta, profile_type)
            {
                merged += 1;
                let deltas = &self.rows.stack_deltas[row..row + n];
                let values = &self.rows.values[value + col * n..value + (col + 1) * n];
                let mut stack = 0u32;
                for (&d, &v) in deltas.iter().zip(values) {
                    stack = stack.wrapping_add(d);
                    // A stack id past the table (a damaged block) is dropped, as a read drops it.
                    if let Some(e) = acc.get_mut(stack as usize) {
                        *e = e.saturating_add(v);
                    }
                }
            }
            row += n;
            value += n * cols;
        }
        merged
    }

    /// Rebuilds each profile as a pprof (with only the symbols it uses), calling `visit` for those
    /// `keep` accepts.
    pub fn for_each(
        &self,
        tables: &Tables,
        mut keep: impl FnMut(&ProfileMeta) -> bool,
        mut visit: impl FnMut(&ProfileMeta, Profile),
    ) {
        let mut row = 0usize;
        let mut value = 0usize;
        for meta in &self.profiles {
            let n = meta.rows as usize;
            let cols = meta.sample_types.len();
            if keep(meta) {
                let p = rebuild(
                    tables,
                    meta,
                    &self.rows.stack_deltas[row..row + n],
                    &self.rows.label_sets[row..row + n],
                    &self.rows.values[value..value + n * cols],
                );
                visit(meta, p);
            }
            row += n;
            value += n * cols;
        }
    }
}

/// Remaps block-wide ids to a fresh, dense id space for one pprof.
struct Rebuilder<'a> {
    t: &'a Tables,
    p: Profile,
    // Fx-hashed: a merged read looks up every frame of every distinct stack here.
    strings: HashMap<u32, i64, FxBuild>,
    functions: HashMap<u64, u64, FxBuild>,
    mappings: HashMap<u64, u64, FxBuild>,
    locations: HashMap<u32, u64, FxBuild>,
}

impl Rebuilder<'_> {
    fn string(&mut self, id: i64) -> i64 {
        let id = u32::try_from(id).unwrap_or(0);
        if id == 0 {
            return 0;
        }
        if let Some(&i) = self.strings.get(&id) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        let s = self
            .t
            .symbols
            .strings
            .get(id as usize)
            .cloned()
            .unwrap_or_default();
        self.p.string_table.push(s);
        self.strings.insert(id, i);
        i
    }

    fn function(&mut self, id: u64) -> u64 {
        if id == 0 {
            return 0;
        }
        if let Some(&i) = self.functions.get(&id) {
            return i;
        }
        let Some(f) = self.t.symbols.functions.get(id as usize - 1).cloned() else {
            return 0;
        };
        let new = self.p.function.len() as u64 + 1;
        let f = Function {
            id: new,
            name: self.string(f.name),
            system_name: self.string(f.system_name),
            filename: self.string(f.filename),
            start_line: f.start_line,
        };
        self.p.function.push(f);
        self.functions.insert(id, new);
        new
    }

    fn mapping(&mut self, id: u64) -> u64 {
        if id == 0 {
            return 0;
        }
        if let Some(&i) = self.mappings.get(&id) {
            return i;
        }
        let Some(m) = self.t.symbols.mappings.get(id as usize - 1).cloned() else {
            return 0;
        };
        let new = self.p.mapping.len() as u64 + 1;
        let m = Mapping {
            id: new,
            filename: self.string(m.filename),
            build_id: self.string(m.build_id),
            ..m
        };
        self.p.mapping.push(m);
        self.mappings.insert(id, new);
        new
    }

    fn location(&mut self, id: u32) -> u64 {
        if let Some(&i) = self.locations.get(&id) {
            return i;
        }
        let l = id
            .checked_sub(1)
            .and_then(|i| self.t.symbols.locations.get(i as usize))
            .cloned()
            .unwrap_or_default();
        let new = self.p.location.len() as u64 + 1;
        let l = Location {
            id: new,
            mapping_id: self.mapping(l.mapping_id),
            address: l.address,
            line: l
                .line
                .iter()
                .map(|ln| Line {
                    function_id: self.function(ln.function_id),
                    line: ln.line,
                })
                .collect(),
            is_folded: l.is_folded,
        };
        self.p.location.push(l);
        self.locations.insert(id, new);
        new
    }
}

fn rebuild(
    t: &Tables,
    meta: &ProfileMeta,
    deltas: &[u32],
    label_sets: &[u32],
    values: &[i64],
) -> Profile {
    let mut r = Rebuilder {
        t,
        p: Profile {
            string_table: vec![String::new()],
            ..Profile::default()
        },
        strings: HashMap::default(),
        functions: HashMap::default(),
        mappings: HashMap::default(),
        locations: HashMap::default(),
    };
    r.p.sample_type = meta
        .sample_types
        .iter()
        .map(|vt| ValueType {
            r#type: r.string(vt.r#type),
            unit: r.string(vt.unit),
        })
        .collect();
    r.p.period_type = meta.period_type.map(|vt| ValueType {
        r#type: r.string(vt.r#type),
        unit: r.string(vt.unit),
    });
    r.p.period = meta.period;
    r.p.time_nanos = meta.pprof_time_nanos;
    r.p.duration_nanos = meta.duration_nanos;
    r.p.default_sample_type = r.string(meta.default_sample_type);
    r.p.drop_frames = r.string(meta.drop_frames);
    r.p.keep_frames = r.string(meta.keep_frames);
    r.p.comment = meta.comments.iter().map(|&c| r.string(c)).collect();
    let n = deltas.len();
    let cols = meta.sample_types.len();
    let mut stack_id = 0u32;
    r.p.sample.reserve(n);
    for (i, (&d, &ls)) in deltas.iter().zip(label_sets).enumerate() {
        stack_id = stack_id.wrapping_add(d);
        let location_id = t.stack(stack_id).iter().map(|&l| r.location(l)).collect();
        let label = match ls
            .checked_sub(1)
            .and_then(|i| t.symbols.label_sets.get(i as usize))
        {
            Some(set) => set
                .labels
                .iter()
                .map(|l| Label {
                    key: r.string(l.key),
                    str: r.string(l.str),
                    num: l.num,
                    num_unit: r.string(l.num_unit),
                })
                .collect(),
            None => Vec::new(),
        };
        let value = (0..cols).map(|c| values[c * n + i]).collect();
        r.p.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }
    r.p
}
