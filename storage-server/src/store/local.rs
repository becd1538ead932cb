//! [`LocalStore`]: profiles in append-only segment files under one directory, indexed in memory.
//!
//! Appends go to the active segment and are fsync'd before `append` returns. On open every segment
//! is scanned to rebuild the index; a torn or corrupt tail of the newest segment is cut off so that
//! new records follow the last good one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kiln_proto::pprof::Profile;
use prost::Message;

use super::segment::{self, FRAME_HEADER_LEN, FrameError, SEGMENT_MAGIC};
use super::{Labels, NewProfile, ReadRequest, Store, StoreError, StoreStats, StoredProfile};
use crate::config::StoreConfig;
use crate::query::selector::Selector;
use crate::query::time::TimeRange;

/// Where one record lives.
#[derive(Clone, Debug)]
struct Entry {
    time_nanos: i64,
    segment: u64,
    offset: u64,
    len: u32,
    profile_types: Arc<[String]>,
}

struct Series {
    labels: Arc<Labels>,
    entries: Vec<Entry>,
}

#[derive(Default)]
struct Index {
    series: Vec<Series>,
    by_labels: HashMap<Arc<Labels>, usize>,
    /// Interned profile-type lists: most records share one of a handful.
    type_sets: HashSet<Arc<[String]>>,
    profiles: u64,
}

impl Index {
    fn add(&mut self, labels: Labels, mut entry: Entry) {
        entry.profile_types = match self.type_sets.get(&entry.profile_types) {
            Some(t) => t.clone(),
            None => {
                self.type_sets.insert(entry.profile_types.clone());
                entry.profile_types
            }
        };
        let i = match self.by_labels.get(&labels) {
            Some(&i) => i,
            None => {
                let labels = Arc::new(labels);
                self.series.push(Series {
                    labels: labels.clone(),
                    entries: Vec::new(),
                });
                self.by_labels.insert(labels, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        self.series[i].entries.push(entry);
        self.profiles += 1;
    }

    /// Selected series that have at least one profile in range.
    fn selected<'a>(
        &'a self,
        selector: &'a Selector,
        range: TimeRange,
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| {
            selector.matches(&s.labels) && s.entries.iter().any(|e| range.contains(e.time_nanos))
        })
    }
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: File,
    len: u64,
    opened: Instant,
}

pub struct LocalStore {
    dir: PathBuf,
    config: StoreConfig,
    /// Decompressed size limit when reading a record back.
    max_profile_bytes: usize,
    index: RwLock<Index>,
    /// Serializes appends; held across write + fsync + index update.
    active: Mutex<Active>,
    /// Read handles, by segment id (the active one included).
    readers: RwLock<HashMap<u64, Arc<File>>>,
    /// Bytes in sealed segments (the active one's length is in `active`).
    sealed_bytes: Mutex<u64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalStore {
    /// Opens (creating) the store in `dir`, rebuilding the index from every segment.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: StoreConfig,
        max_profile_bytes: usize,
    ) -> Result<LocalStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_segment_name)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut index = Index::default();
        let mut readers = HashMap::new();
        let mut sealed_bytes = 0;
        let mut active = None;
        for (i, &id) in ids.iter().enumerate() {
            let path = segment::segment_path(&dir, id);
            let scan = segment::scan(&path).map_err(io_err(&path))?;
            let last = i + 1 == ids.len();
            if let Some(why) = &scan.stopped {
                if last {
                    tracing::warn!(
                        segment = %path.display(),
                        kept_bytes = scan.good_len,
                        dropped_bytes = scan.file_len - scan.good_len,
                        "{why}; truncating the segment after its last good record"
                    );
                } else {
                    tracing::warn!(
                        segment = %path.display(),
                        "{why}; ignoring the rest of this sealed segment"
                    );
                }
            }
            for r in scan.records {
                let labels = r.header.labels();
                index.add(
                    labels,
                    Entry {
                        time_nanos: r.header.time_nanos,
                        segment: id,
                        offset: r.offset,
                        len: r.len,
                        profile_types: r.header.profile_types.into(),
                    },
                );
            }
            let file = File::open(&path).map_err(io_err(&path))?;
            readers.insert(id, Arc::new(file));
            if last && scan.good_len >= SEGMENT_MAGIC.len() as u64 {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                if scan.good_len != scan.file_len {
                    file.set_len(scan.good_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                }
                active = Some(Active {
                    id,
                    file,
                    len: scan.good_len,
                    opened: Instant::now(),
                });
            } else {
                sealed_bytes += scan.file_len;
            }
        }
        let active = match active {
            Some(a) => a,
            // No segment yet, or the newest one is unusable (bad magic): start a fresh one.
            None => {
                let id = ids.last().map_or(1, |id| id + 1);
                let a = create_segment(&dir, id)?;
                let reader = File::open(segment::segment_path(&dir, id)).map_err(io_err(&dir))?;
                readers.insert(id, Arc::new(reader));
                a
            }
        };
        tracing::info!(
            dir = %dir.display(),
            segments = readers.len(),
            series = index.series.len(),
            profiles = index.profiles,
            "store opened"
        );
        Ok(LocalStore {
            dir,
            config,
            max_profile_bytes,
            index: RwLock::new(index),
            active: Mutex::new(active),
            readers: RwLock::new(readers),
            sealed_bytes: Mutex::new(sealed_bytes),
        })
    }

    /// Starts a new segment when the active one is full or old.
    fn maybe_rotate(&self, active: &mut Active) -> Result<(), StoreError> {
        let full = active.len >= self.config.max_segment_bytes;
        let old = active.opened.elapsed() >= self.config.max_segment_age();
        if !(full || old) || active.len <= SEGMENT_MAGIC.len() as u64 {
            return Ok(());
        }
        let next = create_segment(&self.dir, active.id + 1)?;
        let path = segment::segment_path(&self.dir, next.id);
        let reader = File::open(&path).map_err(io_err(&path))?;
        write_lock(&self.readers).insert(next.id, Arc::new(reader));
        *lock(&self.sealed_bytes) += active.len;
        tracing::info!(segment = next.id, "rotated to a new segment");
        *active = next;
        Ok(())
    }

    fn read_entry(&self, entry: &Entry) -> Result<Profile, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            segment: entry.segment,
            offset: entry.offset,
            reason,
        };
        let file = read_lock(&self.readers)
            .get(&entry.segment)
            .cloned()
            .ok_or_else(|| corrupt("segment file is not open".into()))?;
        let mut buf = vec![0u8; FRAME_HEADER_LEN as usize + entry.len as usize];
        let path = segment::segment_path(&self.dir, entry.segment);
        file.read_exact_at(&mut buf, entry.offset)
            .map_err(io_err(&path))?;
        let (fh, payload) = buf.split_at(FRAME_HEADER_LEN as usize);
        let mut header = [0u8; 8];
        header.copy_from_slice(fh);
        let decoded = segment::verify_frame(header, payload)
            .and_then(|()| segment::split_payload(payload))
            .and_then(|(_, body)| segment::decompress(body, self.max_profile_bytes));
        let raw = match decoded {
            Ok(raw) => raw,
            Err(FrameError::Truncated) => return Err(corrupt("truncated".into())),
            Err(FrameError::Corrupt(why)) => return Err(corrupt(why)),
            Err(FrameError::Io(e)) => return Err(io_err(&path)(e)),
        };
        Profile::decode(raw.as_slice()).map_err(|e| corrupt(format!("bad pprof: {e}")))
    }
}

fn create_segment(dir: &Path, id: u64) -> Result<Active, StoreError> {
    let path = segment::segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    // The new directory entry must be durable too, or a crash could lose the whole file.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(Active {
        id,
        file,
        len: SEGMENT_MAGIC.len() as u64,
        opened: Instant::now(),
    })
}

// A poisoned lock means a thread panicked mid-update of plain data; the data is still usable
// (appends roll back on failure), so recover the guard rather than propagate a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store for LocalStore {
    fn append(&self, profiles: Vec<NewProfile>) -> Result<(), StoreError> {
        if profiles.is_empty() {
            return Ok(());
        }
        let frames = profiles
            .iter()
            .map(segment::encode_record)
            .collect::<Result<Vec<_>, _>>()?;
        let mut active = lock(&self.active);
        self.maybe_rotate(&mut active)?;
        let path = segment::segment_path(&self.dir, active.id);
        let start = active.len;
        let mut buf = Vec::with_capacity(frames.iter().map(Vec::len).sum());
        let mut offsets = Vec::with_capacity(frames.len());
        for f in &frames {
            offsets.push(start + buf.len() as u64);
            buf.extend_from_slice(f);
        }
        // Positional write at our own idea of the end, so a failed earlier attempt that left bytes
        // behind is simply overwritten.
        let written = active
            .file
            .write_all_at(&buf, start)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            // Roll back so a later append does not leave a gap of garbage.
            let _ = active.file.set_len(start);
            return Err(io_err(&path)(e));
        }
        active.len = start + buf.len() as u64;
        let segment = active.id;
        let mut index = write_lock(&self.index);
        for ((p, offset), frame) in profiles.into_iter().zip(offsets).zip(&frames) {
            index.add(
                p.labels,
                Entry {
                    time_nanos: p.time_nanos,
                    segment,
                    offset,
                    len: (frame.len() as u64 - FRAME_HEADER_LEN) as u32,
                    profile_types: p.profile_types.into(),
                },
            );
        }
        Ok(())
    }

    fn label_names(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        let index = read_lock(&self.index);
        let names: BTreeSet<&str> = index
            .selected(selector, range)
            .flat_map(|s| s.labels.iter().map(|(k, _)| k))
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    fn label_values(&self, name: &str, selector: &Selector, range: TimeRange) -> Vec<String> {
        let index = read_lock(&self.index);
        let values: BTreeSet<&str> = index
            .selected(selector, range)
            .filter_map(|s| s.labels.get(name))
            .collect();
        values.into_iter().map(str::to_owned).collect()
    }

    fn profile_types(&self, selector: &Selector, range: TimeRange) -> Vec<String> {
        let index = read_lock(&self.index);
        let types: BTreeSet<&str> = index
            .series
            .iter()
            .filter(|s| selector.matches(&s.labels))
            .flat_map(|s| s.entries.iter())
            .filter(|e| range.contains(e.time_nanos))
            .flat_map(|e| e.profile_types.iter().map(String::as_str))
            .collect();
        types.into_iter().map(str::to_owned).collect()
    }

    fn read(
        &self,
        req: ReadRequest<'_>,
        visit: &mut dyn FnMut(StoredProfile),
    ) -> Result<usize, StoreError> {
        // Collect locations under the lock, read files without it so appends are not blocked.
        let wanted: Vec<(Arc<Labels>, Entry)> = {
            let index = read_lock(&self.index);
            index
                .series
                .iter()
                .filter(|s| req.selector.matches(&s.labels))
                .flat_map(|s| {
                    s.entries
                        .iter()
                        .filter(|e| req.range.contains(e.time_nanos))
                        .filter(|e| {
                            req.profile_type
                                .is_none_or(|t| e.profile_types.iter().any(|p| p == t))
                        })
                        .map(|e| (s.labels.clone(), e.clone()))
                })
                .collect()
        };
        let mut n = 0;
        for (labels, entry) in wanted {
            match self.read_entry(&entry) {
                Ok(profile) => {
                    n += 1;
                    visit(StoredProfile {
                        labels,
                        time_nanos: entry.time_nanos,
                        profile,
                    });
                }
                // One damaged record must not make every query over it fail.
                Err(e) => tracing::error!(error = %e, "skipping unreadable profile"),
            }
        }
        Ok(n)
    }

    fn stats(&self) -> StoreStats {
        let active_len = lock(&self.active).len;
        let index = read_lock(&self.index);
        StoreStats {
            bytes: *lock(&self.sealed_bytes) + active_len,
            segments: read_lock(&self.readers).len() as u64,
            series: index.series.len() as u64,
            profiles: index.profiles,
        }
    }
}
