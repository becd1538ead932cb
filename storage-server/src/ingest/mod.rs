//! Ingest: one module per wire format, each turning requests into validated [`NewProfile`]s.
//!
//! [`NewProfile`]: crate::store::NewProfile

pub mod push;
mod validate;

pub use validate::{ProfileError, validate_labels, validate_profile};
