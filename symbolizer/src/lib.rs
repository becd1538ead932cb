//! Kiln's symbolizer: (build ID, file offset) -> function, file, line and inlined frames.
//!
//! API CONTRACT (the storage server codes against this; the implementation is being written):

mod build_id;
mod store;

pub use build_id::{BuildId, read_build_id};
pub use store::DebugInfoStore;

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
