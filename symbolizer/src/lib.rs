//! Kiln's symbolizer: (build ID, file offset) -> function, file, line and inlined frames.
//!
//! - [`DebugInfoStore`] keeps uploaded ELF files by build ID on disk, verified and written
//!   atomically.
//! - [`Symbolizer`] turns file offsets in those files into frames (demangled names, files, lines,
//!   inlined calls) with blazesym, caching results per (build ID, offset).

mod build_id;
mod cache;
mod store;
mod symbolize;

pub use build_id::{BuildId, read_build_id};
pub use store::{
    Contents, DebugInfoStore, FileKind, MAX_UNCOVERED_BYTES, MAX_ZERO_RUN, Stored, StoredFile,
    contents,
};
pub use symbolize::{
    Files, Frame, Frames, Symbolizer, SymbolizerOptions, SymbolizerStats, Unsymbolized, has_symbols,
};

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
    /// The file is mostly padding (long zero runs, bytes outside every section and segment).
    #[error("upload is padded, not debuginfo: {0}")]
    Padding(String),
    /// A different file is stored for the build ID and the upload does not carry more.
    #[error("{0}")]
    Conflict(String),
    #[error("symbolization failed: {0}")]
    Symbolize(String),
    #[error("debuginfo store I/O: {0}")]
    Io(#[from] std::io::Error),
}
