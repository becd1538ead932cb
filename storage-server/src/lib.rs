//! Kiln storage server (being built).
