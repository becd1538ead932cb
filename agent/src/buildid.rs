//! GNU build IDs of mapped ELF files: opening a mapping's file the way containers allow, reading the
//! note with `object` (only the headers and notes are read, not the whole file), and a cache per
//! (device, inode) so a shared library is read once however many processes map it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::Object;
use object::read::ReadCache;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildIdError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// Opens the file behind a mapping. `/proc/PID/map_files/<start>-<end>` is the mapped file itself
/// (right even if the path was replaced since, and across mount namespaces) but needs privileges;
/// `/proc/PID/root/<path>` is the fallback, accepted only if its inode is still the mapped one.
pub fn open_mapped_file(m: &MappedFile<'_>) -> Result<(File, PathBuf), BuildIdError> {
    let map_files = PathBuf::from(format!(
        "/proc/{}/map_files/{:x}-{:x}",
        m.pid, m.start, m.end
    ));
    if let Ok(f) = File::open(&map_files) {
        return Ok((f, map_files));
    }
    let rooted = Path::new("/proc")
        .join(m.pid.to_string())
        .join("root")
        .join(m.path.strip_prefix("/").unwrap_or(m.path));
    let f = File::open(&rooted).map_err(|source| BuildIdError::Open {
        path: rooted.clone(),
        source,
    })?;
    let found = f
        .metadata()
        .map_err(|source| BuildIdError::Open {
            path: rooted.clone(),
            source,
        })?
        .ino();
    if found != m.inode {
        return Err(BuildIdError::InodeMismatch {
            path: rooted,
            expected: m.inode,
            found,
        });
    }
    Ok((f, rooted))
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

/// The identity of an ELF file: its GNU build ID note, or for a Go binary without one (what
/// `go build` makes by default), the key of its Go build ID ([`go_build_id_key`]). The server
/// (`kiln_symbolizer::read_build_id`) identifies uploaded files the same way.
pub fn elf_build_id<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
) -> object::read::Result<Option<Vec<u8>>> {
    if let Some(id) = obj.build_id()? {
        return Ok(Some(id.to_vec()));
    }
    use object::ObjectSection;
    let Some(section) = obj.section_by_name(".note.go.buildid") else {
        return Ok(None);
    };
    Ok(section
        .data()
        .ok()
        .and_then(go_note_desc)
        .and_then(go_build_id_key))
}

/// The descriptor of the Go build ID note (`name "Go", type 4`) in a note section's bytes.
fn go_note_desc(data: &[u8]) -> Option<&[u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (namesz, descsz, kind) = (word(0)?, word(4)?, word(8)?);
    let name = data.get(12..12 + namesz)?;
    let desc_at = 12 + namesz.div_ceil(4) * 4;
    (kind == 4 && name.split(|&b| b == 0).next().unwrap_or(name) == b"Go")
        .then(|| data.get(desc_at..desc_at + descsz))
        .flatten()
}

/// A Go build ID (`actionID/contentID/...`, each part 20 characters of URL-safe base64) as build-ID
/// bytes: the parts decoded and concatenated (60 bytes for the usual four parts), which fits the
/// server's 64-byte limit where the 83-character text would not. A build ID set by hand
/// (`-ldflags=-buildid=…`) that is not such base64 is used as it is when it fits. Keep in step with
/// `kiln_symbolizer`'s copy.
pub fn go_build_id_key(text: &[u8]) -> Option<Vec<u8>> {
    const MAX: usize = 64;
    let decoded: Option<Vec<u8>> =
        text.split(|&b| b == b'/')
            .try_fold(Vec::new(), |mut out, part| {
                let mut bits = 0u32;
                let mut nbits = 0;
                if part.is_empty() {
                    return None;
                }
                for &c in part {
                    let v = match c {
                        b'A'..=b'Z' => c - b'A',
                        b'a'..=b'z' => c - b'a' + 26,
                        b'0'..=b'9' => c - b'0' + 52,
                        b'-' => 62,
                        b'_' => 63,
                        _ => return None,
                    };
                    bits = (bits << 6) | u32::from(v);
                    nbits += 6;
                    if nbits >= 8 {
                        nbits -= 8;
                        out.push((bits >> nbits) as u8);
                        bits &= (1 << nbits) - 1;
                    }
                }
                Some(out)
            });
    match decoded {
        Some(d) if !d.is_empty() && d.len() <= MAX => Some(d),
        _ => (!text.is_empty() && text.len() <= MAX).then(|| text.to_vec()),
    }
}

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
        let (file, path) = open_mapped_file(mapped)?;
        let build_id = read_build_id(&file, &path)?;
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

    /// What `go tool buildid` printed for a Go 1.19 binary, and Python's base64.urlsafe_b64decode of
    /// its parts (the symbolizer's test holds the same pair).
    const GO_BUILD_ID: &str =
        "Ad0J6Hz157EFL3eqdkRs/dScsOUuoblHehDJRZyHR/SOIJI7yfYpblAaVm6ovj/n0KpKmdHao53dm-CantW";
    const GO_KEY_HEX: &str = "01dd09e87cf5e7b1052f77aa76446c75272c394ba86e51de8432516721d148e20923bc9f6296e501a566ea8be39f42a92a67476a8e77766f826a7b56";

    #[test]
    fn go_build_id_becomes_its_decoded_bytes() {
        let key = go_build_id_key(GO_BUILD_ID.as_bytes()).unwrap();
        assert_eq!(hex::encode(&key), GO_KEY_HEX);
        // Not base64 (set by hand): the text itself, if it fits; too long: nothing.
        assert_eq!(go_build_id_key(b"v1.2+x").unwrap(), b"v1.2+x");
        assert_eq!(go_build_id_key(&[b'+'; 65]), None);
        assert_eq!(go_build_id_key(b""), None);
    }

    #[test]
    fn go_note_is_found_by_name_and_type() {
        let mut note = Vec::new();
        for w in [4u32, GO_BUILD_ID.len() as u32, 4] {
            note.extend_from_slice(&w.to_le_bytes());
        }
        note.extend_from_slice(b"Go\0\0");
        note.extend_from_slice(GO_BUILD_ID.as_bytes());
        assert_eq!(go_note_desc(&note), Some(GO_BUILD_ID.as_bytes()));
        note[8] = 3; // another note type
        assert_eq!(go_note_desc(&note), None);
        assert_eq!(go_note_desc(&note[..10]), None);
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
