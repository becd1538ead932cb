//! Kiln's symbolizer: (build ID, file offset) -> function, file, line and inlined frames.
//!
//! API CONTRACT (the storage server codes against this; the implementation is being written):

use std::path::PathBuf;

/// A GNU build ID, lowercase hex, 2..=128 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);

impl BuildId {
    /// Validates and normalizes (lowercases) a hex build ID.
    pub fn parse(s: &str) -> Result<BuildId, Error> {
        let ok = (2..=128).contains(&s.len())
            && s.len() % 2 == 0
            && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(Error::BadBuildId(s.to_owned()));
        }
        Ok(BuildId(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One frame at an address; an address yields several when functions were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Demangled function name.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for frames inlined into the next (outer) one.
    pub inlined: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("not a build ID (expected 2 to 128 hex digits): {0:?}")]
    BadBuildId(String),
    #[error("no debuginfo stored for build ID {0}")]
    Missing(String),
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("uploaded file is not an ELF object: {0}")]
    NotElf(String),
    #[error("uploaded ELF has build ID {actual:?}, expected {expected}")]
    WrongBuildId {
        expected: String,
        actual: Option<String>,
    },
    #[error("symbolization failed: {0}")]
    Symbolize(String),
    #[error("debuginfo store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// ELF files stored on disk by build ID (`<root>/<id[0..2]>/<id[2..]>.elf`).
pub struct DebugInfoStore {
    #[allow(dead_code)]
    root: PathBuf,
}

impl DebugInfoStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<DebugInfoStore, Error> {
        let _ = root;
        todo!()
    }
    pub fn contains(&self, _id: &BuildId) -> bool {
        todo!()
    }
    /// Streams an (already decompressed) ELF into the store; atomically visible once complete.
    /// Fails (storing nothing) above `max_bytes`, on non-ELF input, or on a build ID mismatch.
    pub fn insert_from_reader(
        &self,
        _id: &BuildId,
        _reader: impl std::io::Read,
        _max_bytes: u64,
    ) -> Result<(), Error> {
        todo!()
    }
}

/// Symbolizes addresses in stored ELF files, with a bounded cache.
pub struct Symbolizer {}

impl Symbolizer {
    pub fn new(_store: std::sync::Arc<DebugInfoStore>, _cache_entries: usize) -> Symbolizer {
        todo!()
    }
    /// For each file offset in the ELF with build ID `id`: its frames, innermost (inlined) first, or
    /// `None` when no symbol covers it. `Err(Error::Missing)` when no debuginfo is stored.
    pub fn symbolize(
        &self,
        _id: &BuildId,
        _file_offsets: &[u64],
    ) -> Result<Vec<Option<Vec<Frame>>>, Error> {
        todo!()
    }
    /// Forgets cached results for `id` (new debuginfo arrived).
    pub fn invalidate(&self, _id: &BuildId) {
        todo!()
    }
}
