//! Any bytes as a (maybe gzipped) pprof: decoding and validation must return, never panic, and
//! stay within the decompression limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = kiln_proto::decode_profile(data, 1 << 20) {
        let _ = kiln_storage_server::ingest::validate_profile(
            &profile,
            &kiln_storage_server::Limits::default(),
        );
        for s in &profile.sample {
            for l in &s.label {
                let _ = profile.str(l.key);
            }
        }
    }
});
