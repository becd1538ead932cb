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
pub use store::DebugInfoStore;
pub use symbolize::{
    Frame, Frames, Symbolizer, SymbolizerOptions, SymbolizerStats, Unsymbolized, has_symbols,
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
    #[error("symbolization failed: {0}")]
    Symbolize(String),
    #[error("debuginfo store I/O: {0}")]
    Io(#[from] std::io::Error),
}
