//! Ingest: one module per wire format, each turning requests into validated [`NewProfile`]s.
//!
//! [`NewProfile`]: crate::store::NewProfile

pub mod admit;
pub mod folded;
pub mod legacy;
pub mod multipart;
pub mod name;
pub mod push;
pub mod rate;
pub mod scan;
pub mod series;
mod validate;

pub use validate::{ProfileError, validate_labels, validate_profile};
