//! Kiln's wire types, shared by every stage that speaks them.
//!
//! * [`pprof`]: Google's `profile.proto` (what agents build, the server stores and `go tool pprof` reads).
//! * [`push`]: Pyroscope's `push.v1` API (how agents, and Pyroscope's own SDKs, ship profiles).
//! * [`querier`]: Pyroscope's `querier.v1` query API (what Grafana's Pyroscope datasource calls).
//! * [`builder`]: an interning builder that makes a well-formed [`pprof::Profile`].
//! * [`codec`]: gzip-aware encode/decode with a decompressed-size limit.
//!
//! The messages are written out with `prost` derives rather than generated from `.proto` files so that
//! building Kiln needs no `protoc`; field numbers follow the upstream files exactly.

pub mod builder;
pub mod codec;
pub mod pprof;
pub mod push;
pub mod querier;

pub use builder::ProfileBuilder;
pub use codec::{CodecError, decode_profile, encode_profile_gzip, maybe_gunzip};
