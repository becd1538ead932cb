//! Build IDs of mapped ELF files: opening a mapping's file through the door to process files
//! (process_files.rs), reading its identity with [`kiln_buildid`] (only the headers and notes are
//! read, not the whole file), and a cache per (device, inode) so a shared library is read once
//! however many processes map it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::read::ReadCache;

use crate::process_files::{self, DoorError, ProcessRoot, RegularFile};

/// Largest mapped object file opened (for its build ID, unwind tables, upload): far above real
/// binaries with debug info, far below what a sparse file can claim.
pub const MAX_OBJECT_BYTES: u64 = 16 << 30;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildIdError {
    #[error(transparent)]
    Open(#[from] DoorError),
    #[error("{path} is inode {found}, but the mapping is inode {expected} (replaced on disk?)")]
    InodeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot read an ELF build ID from {path}: {source}")]
    Parse {
        path: PathBuf,
        source: object::read::Error,
    },
}

impl BuildIdError {
    /// The agent may not open the file (or the process's root): a missing capability
    /// (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) rather than a file without a build ID.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            BuildIdError::Open(DoorError::Open { source, .. } | DoorError::Root { source, .. }) => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// A GNU build ID (the bytes of the `NT_GNU_BUILD_ID` note; usually 20, never empty).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(Box<[u8]>);

impl BuildId {
    /// `None` for an empty note, which identifies nothing.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty()).then(|| BuildId(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, as the server's debuginfo API and pprof mappings spell it.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({})", self.to_hex())
    }
}

/// Identity of a file as `/proc/PID/maps` reports it: device (major, minor) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
}

/// Where a process maps a file, enough to open that file from outside the process's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile<'a> {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The path as the process sees it (inside its mount namespace).
    pub path: &'a Path,
    pub inode: u64,
}

/// An object file seen mapped by a live process: its build ID and where to open it. This is what
/// the aggregator hands to the debuginfo uploader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub build_id: BuildId,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The path as the process sees it.
    pub path: PathBuf,
    pub inode: u64,
}

impl ObjectRef {
    pub fn mapped(&self) -> MappedFile<'_> {
        MappedFile {
            pid: self.pid,
            start: self.start,
            end: self.end,
            path: &self.path,
            inode: self.inode,
        }
    }
}

/// Opens the file behind a mapping, through the door to process files (regular files of at most
/// [`MAX_OBJECT_BYTES`] only). `/proc/PID/map_files/<start>-<end>` is the mapped file itself (right
/// even if the path was replaced since, and across mount namespaces) but needs privileges; the
/// path inside the process's root is the fallback, accepted only if its inode is still the mapped
/// one.
pub fn open_mapped_file(m: &MappedFile<'_>) -> Result<RegularFile, BuildIdError> {
    match process_files::open_mapped(m.pid, m.start, m.end, MAX_OBJECT_BYTES) {
        Ok(f) => return Ok(f),
        // The mapped file itself is not one we read: its path would name the same thing.
        Err(e) if e.refusal().is_some() => return Err(e.into()),
        // No map_files without CAP_SYS_ADMIN (or the mapping is gone): try the path.
        Err(_) => {}
    }
    let f = ProcessRoot::of_process(m.pid)?.open_file(m.path, MAX_OBJECT_BYTES)?;
    if f.inode() != m.inode {
        return Err(BuildIdError::InodeMismatch {
            path: f.shown_path().to_owned(),
            expected: m.inode,
            found: f.inode(),
        });
    }
    Ok(f)
}

/// Reads the GNU build ID of an open file; `Ok(None)` when it is not an object file or has no note.
pub fn read_build_id(file: &File, path: &Path) -> Result<Option<BuildId>, BuildIdError> {
    // ReadCache reads only the ranges `object` asks for: headers, section table, notes.
    let cache = ReadCache::new(file);
    let obj = match object::File::parse(&cache) {
        Ok(obj) => obj,
        // Not ELF (or anything `object` knows): nothing to identify, not an error worth reporting.
        Err(_) => return Ok(None),
    };
    match elf_build_id(&obj) {
        Ok(id) => Ok(id.and_then(|b| BuildId::new(&b))),
        Err(source) => Err(BuildIdError::Parse {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The identity of an ELF file (GNU build ID, else Go build ID key), read as the server reads it:
/// both use [`kiln_buildid::elf_build_id`].
pub use kiln_buildid::elf_build_id;

/// Build IDs by file identity, bounded. Files without a build ID are remembered too (as `None`) so
/// they are not reopened; failures to open are not, since they are often transient (process exited).
pub struct BuildIdCache {
    entries: HashMap<FileId, Option<BuildId>>,
    capacity: usize,
}

impl BuildIdCache {
    pub fn new(capacity: usize) -> Self {
        BuildIdCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The build ID of the file behind `mapped`, reading it on first sight of `id`.
    ///
    /// (device, inode) pairs can be reused after a file is deleted; the cache accepts that small risk
    /// rather than stat'ing every file on every lookup.
    pub fn get(
        &mut self,
        id: FileId,
        mapped: &MappedFile<'_>,
    ) -> Result<Option<BuildId>, BuildIdError> {
        if let Some(hit) = self.entries.get(&id) {
            return Ok(hit.clone());
        }
        let file = open_mapped_file(mapped)?;
        let build_id = read_build_id(file.file(), file.shown_path())?;
        if self.entries.len() >= self.capacity {
            // Rare (tens of thousands of distinct files): start over rather than track recency on
            // every hit.
            tracing::debug!(capacity = self.capacity, "build ID cache full; clearing it");
            self.entries.clear();
        }
        self.entries.insert(id, build_id.clone());
        Ok(build_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object::Object;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_refused_open_is_told_apart_from_a_missing_file() {
        let open = |kind: std::io::ErrorKind| {
            BuildIdError::Open(DoorError::Open {
                root: "/proc/1/root".into(),
                path: "/usr/bin/x".into(),
                source: kind.into(),
            })
        };
        assert!(open(std::io::ErrorKind::PermissionDenied).is_permission_denied());
        assert!(!open(std::io::ErrorKind::NotFound).is_permission_denied());
        let root = BuildIdError::Open(DoorError::Root {
            root: "/proc/1/root".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
        assert!(root.is_permission_denied());
    }

    #[test]
    fn reads_the_test_binarys_own_build_id() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let expected = object::File::parse(&*exe)
            .unwrap()
            .build_id()
            .unwrap()
            .expect("rustc links with a build ID on Linux");
        let f = File::open("/proc/self/exe").unwrap();
        let got = read_build_id(&f, Path::new("/proc/self/exe"))
            .unwrap()
            .unwrap();
        assert_eq!(got.as_bytes(), expected);
        assert_eq!(got.to_hex(), hex::encode(expected));
    }

    #[test]
    fn non_elf_has_no_build_id() {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, b"#!/bin/sh\necho not elf\n").unwrap();
        let f = File::open(t.path()).unwrap();
        assert_eq!(read_build_id(&f, t.path()).unwrap(), None);
        assert_eq!(BuildId::new(&[]), None);
    }

    #[test]
    fn cache_reads_once_per_file_and_checks_inodes() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let pid = std::process::id();
        let mapped = MappedFile {
            pid,
            // No such mapping: forces the /proc/PID/root fallback.
            start: 1,
            end: 2,
            path: &exe,
            inode: meta.ino(),
        };
        let id = FileId {
            major: 0,
            minor: 0,
            inode: meta.ino(),
        };
        let mut cache = BuildIdCache::new(8);
        let first = cache.get(id, &mapped).unwrap().unwrap();
        assert_eq!(cache.len(), 1);
        // A second lookup is served from the cache even though the mapping no longer opens.
        let gone = MappedFile {
            path: Path::new("/nonexistent"),
            ..mapped.clone()
        };
        assert_eq!(cache.get(id, &gone).unwrap(), Some(first));

        let wrong = MappedFile {
            inode: meta.ino() + 1,
            ..mapped
        };
        assert!(matches!(
            open_mapped_file(&wrong),
            Err(BuildIdError::InodeMismatch { .. })
        ));
    }
}
