//! Kiln agent (being built).
