//! Kiln's node agent: samples with eBPF, resolves mappings, aggregates into pprof per process and
//! window, and ships to the server (with debuginfo uploads for server-side symbolization).

pub mod alloc;
pub mod buildid;
pub mod capabilities;
pub mod config;
pub mod containers;
pub mod cputime;
pub mod debuginfo;
pub mod debuglink;
pub mod detector;
pub mod java;
pub mod kallsyms;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod perfmap;
pub mod process_files;
pub mod process_memory;
pub mod procmaps;
pub mod profile;
pub mod python;
mod run;
pub mod sampling;
pub mod ship;
pub mod ticks;
pub mod unwind;
pub mod vdso;

pub use run::{check_privileges, run};
