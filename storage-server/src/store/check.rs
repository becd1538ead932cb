//! An offline, read-only inspection of a store directory: what `kiln check` prints.
//!
//! It reads every WAL segment with the same scan start-up uses, and every block's footer and
//! sections (inflating and decoding each, as a read would), and reports each damaged record,
//! section and file with the profiles it costs. It changes nothing: the caller makes sure no
//! server is using the directory (see [`crate::dirlock`]).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::block;
use super::local::QUARANTINE_DIR;
use super::segment::{self, Damage};
use super::{Labels, StoreError, io_err};

/// Largest decompressed section inflated while checking (as when reading).
const MAX_SECTION_BYTES: usize = 1 << 31;

/// One WAL segment's state.
#[derive(Debug)]
pub struct SegmentReport {
    pub path: PathBuf,
    /// Records that read back intact.
    pub records: usize,
    /// Whether the file starts with a known magic (its records are found by their frames either
    /// way).
    pub magic_ok: bool,
    /// Damaged stretches between good records (each at least one record).
    pub damaged: Vec<Damage>,
    /// What follows the last good record: a torn append after a crash, or damage to the last
    /// record(s). Start-up cuts it off the newest segment.
    pub tail: Option<Damage>,
}

impl SegmentReport {
    pub fn is_clean(&self) -> bool {
        self.magic_ok && self.damaged.is_empty() && self.tail.is_none()
    }
}

/// A series of a block whose sections are unreadable.
#[derive(Debug)]
pub struct SeriesDamage {
    pub labels: Labels,
    pub profiles: u64,
    pub reason: String,
}

/// What is wrong with a block.
#[derive(Debug)]
pub enum BlockProblem {
    /// The footer is unreadable: nothing in the block can be found (all of it is lost; how many
    /// profiles that is, [`block::count_without_footer`] finds out).
    Footer {
        reason: String,
        lost: block::LostCount,
    },
    /// The shared symbol or stack table is unreadable: every profile of the block is lost.
    Tables(String),
    /// Only these series are unreadable; the others read back intact.
    Series(Vec<SeriesDamage>),
}

/// One block's state.
#[derive(Debug)]
pub struct BlockReport {
    pub path: PathBuf,
    /// Profiles the footer says the block holds (when the footer is unreadable: as counted by
    /// [`block::count_without_footer`], 0 when unknown).
    pub profiles: u64,
    /// Whether the block starts with its magic (a damaged one costs nothing: reported only).
    pub magic_ok: bool,
    /// Whether the file lies in `blocks/quarantine/` (set aside by an earlier start-up).
    pub set_aside: bool,
    pub problem: Option<BlockProblem>,
}

impl BlockReport {
    /// Profiles known lost in this block.
    pub fn profiles_lost(&self) -> u64 {
        match &self.problem {
            None => 0,
            Some(BlockProblem::Footer { lost, .. }) => lost.profiles(),
            Some(BlockProblem::Tables(_)) => self.profiles,
            Some(BlockProblem::Series(s)) => s.iter().map(|s| s.profiles).sum(),
        }
    }
}

/// Everything found in a store directory.
#[derive(Debug, Default)]
pub struct Report {
    pub segments: Vec<SegmentReport>,
    pub blocks: Vec<BlockReport>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.segments.iter().all(SegmentReport::is_clean)
            && self
                .blocks
                .iter()
                .all(|b| b.problem.is_none() && b.magic_ok)
    }

    /// Profiles known lost: those of damaged block sections, plus one per damaged WAL stretch
    /// (each holds at least one record). A block with an unreadable footer adds what its profile
    /// tables count (or its damaged footer says), nothing when neither can be read.
    pub fn profiles_lost(&self) -> u64 {
        let wal: usize = self
            .segments
            .iter()
            .map(|s| s.damaged.len() + usize::from(s.tail.is_some()))
            .sum();
        wal as u64
            + self
                .blocks
                .iter()
                .map(BlockReport::profiles_lost)
                .sum::<u64>()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            let p = s.path.display();
            if !s.magic_ok {
                writeln!(
                    f,
                    "segment {p}: damaged magic (its {} records are still found by their frames)",
                    s.records
                )?;
            }
            for d in &s.damaged {
                writeln!(
                    f,
                    "segment {p}: damaged record(s) at offset {} ({} bytes, skipped; later records kept): {}",
                    d.offset, d.len, d.reason
                )?;
            }
            if let Some(d) = &s.tail {
                writeln!(
                    f,
                    "segment {p}: unreadable tail at offset {} ({} bytes; a torn append after a crash, or a damaged last record): {}",
                    d.offset, d.len, d.reason
                )?;
            }
        }
        for b in &self.blocks {
            let p = b.path.display();
            let aside = if b.set_aside { " (set aside)" } else { "" };
            if !b.magic_ok {
                writeln!(
                    f,
                    "block {p}{aside}: damaged leading magic (nothing lost: its footer and sections carry their own CRCs)"
                )?;
            }
            match &b.problem {
                None => {}
                Some(BlockProblem::Footer { reason, lost }) => writeln!(
                    f,
                    "block {p}{aside}: footer unreadable, all of its profiles are lost ({} profiles, {}): {reason}",
                    lost.profiles(),
                    lost.how()
                )?,
                Some(BlockProblem::Tables(why)) => writeln!(
                    f,
                    "block {p}{aside}: symbol/stack table unreadable, all {} profiles lost: {why}",
                    b.profiles
                )?,
                Some(BlockProblem::Series(series)) => {
                    for s in series {
                        writeln!(
                            f,
                            "block {p}{aside}: series {} unreadable ({} profiles lost): {}",
                            format_labels(&s.labels),
                            s.profiles,
                            s.reason
                        )?;
                    }
                }
            }
        }
        let bad_segments = self.segments.iter().filter(|s| !s.is_clean()).count();
        let bad_blocks = self
            .blocks
            .iter()
            .filter(|b| b.problem.is_some() || !b.magic_ok)
            .count();
        let records: usize = self.segments.iter().map(|s| s.records).sum();
        let profiles: u64 = self.blocks.iter().map(|b| b.profiles).sum();
        write!(
            f,
            "checked {} segments ({records} readable records) and {} blocks ({profiles} profiles): ",
            self.segments.len(),
            self.blocks.len(),
        )?;
        if self.is_clean() {
            writeln!(f, "no damage found")
        } else {
            writeln!(
                f,
                "damage in {bad_segments} segments and {bad_blocks} blocks, at least {} profiles lost",
                self.profiles_lost()
            )
        }
    }
}

fn format_labels(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Sorted paths of the entries of `dir` whose name `keep` accepts (none if `dir` is missing).
fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(dir))?;
        if e.file_name().to_str().is_some_and(&keep) && e.path().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Inspects the store in `dir` (what [`super::LocalStore::open`] takes: segments in `dir`,
/// blocks in `dir/blocks`) without changing anything.
pub fn check(dir: &Path) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for path in list(dir, |n| segment::parse_segment_name(n).is_some())? {
        let scan = segment::scan(&path).map_err(io_err(&path))?;
        report.segments.push(SegmentReport {
            path,
            records: scan.records.len(),
            magic_ok: scan.magic_ok,
            damaged: scan.damaged,
            tail: scan.tail,
        });
    }
    let blocks_dir = dir.join("blocks");
    let in_place = list(&blocks_dir, |n| {
        block::is_block_name(n) || n.ends_with(".corrupt")
    })?;
    let aside = list(&blocks_dir.join(QUARANTINE_DIR), |_| true)?;
    for (path, set_aside) in in_place
        .into_iter()
        .map(|p| {
            let aside = p.extension().is_some_and(|e| e == "corrupt");
            (p, aside)
        })
        .chain(aside.into_iter().map(|p| (p, true)))
    {
        report.blocks.push(check_block(path, set_aside));
    }
    Ok(report)
}

fn check_block(path: PathBuf, set_aside: bool) -> BlockReport {
    let (meta, file) = match block::read_meta(&path) {
        Ok((meta, file, _)) => (meta, file),
        Err(e) => {
            let lost = block::count_without_footer(&path, MAX_SECTION_BYTES);
            return BlockReport {
                path,
                profiles: lost.profiles(),
                magic_ok: true,
                set_aside,
                problem: Some(BlockProblem::Footer {
                    reason: e.to_string(),
                    lost,
                }),
            };
        }
    };
    // An unreadable leading magic is damage to report, not a reason to doubt the rest.
    let magic_ok = block::leading_magic_ok(&file, &path).unwrap_or(false);
    let verdict = block::verify(&file, &path, &meta, MAX_SECTION_BYTES, true);
    let problem = if let Some(why) = verdict.tables {
        Some(BlockProblem::Tables(why))
    } else if verdict.series.is_empty() {
        None
    } else {
        Some(BlockProblem::Series(
            verdict
                .series
                .into_iter()
                .filter_map(|(i, reason)| {
                    let s = meta.series.get(i)?;
                    Some(SeriesDamage {
                        labels: s.labels(),
                        profiles: s.profiles,
                        reason,
                    })
                })
                .collect(),
        ))
    };
    BlockReport {
        path,
        profiles: meta.profiles,
        magic_ok,
        set_aside,
        problem,
    }
}
