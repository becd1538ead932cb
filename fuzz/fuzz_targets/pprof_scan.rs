//! The push fast path's pprof scanner against the full path (prost decode, `validate_profile`,
//! split by sample labels) on any bytes: whatever the scanner accepts, the full path accepts with
//! the same sample types, time and sample count; whatever the full path stores whole, the scanner
//! accepts (unless it contains protobuf groups, which the scanner leaves to prost); and the scanner
//! reports no wire error where prost decodes.
#![no_main]

use kiln_proto::pprof::Profile;
use kiln_storage_server::Limits;
use kiln_storage_server::ingest::scan::{Fallback, Scanned, scan_profile};
use kiln_storage_server::ingest::{series, validate_profile};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn full_path(raw: &[u8], limits: &Limits) -> Result<Scanned, Fallback> {
    let p = Profile::decode(raw).map_err(|_| Fallback::Wire)?;
    let profile_types = validate_profile(&p, limits).map_err(|_| Fallback::Invalid)?;
    let (time_nanos, samples) = (p.time_nanos, p.sample.len());
    let type_names = p
        .sample_type
        .iter()
        .map(|st| p.str(st.r#type).to_owned())
        .collect();
    match series::split(p, usize::MAX, usize::MAX) {
        Ok(series::Split::Whole(_)) => Ok(Scanned {
            profile_types,
            type_names,
            time_nanos,
            samples,
        }),
        _ => Err(Fallback::Split),
    }
}

fn check(raw: &[u8], limits: &Limits) {
    let got = scan_profile(raw, limits);
    let want = full_path(raw, limits);
    match (&got, &want) {
        (Ok(g), Ok(w)) => assert_eq!(g, w),
        (Err(Fallback::Unsupported), _) => {}
        (Err(Fallback::Wire), Err(Fallback::Wire))
        | (Err(Fallback::Invalid | Fallback::Split), Err(_)) => {}
        _ => panic!("scanner {got:?}, full path {want:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    // Small limits, so that sample-count and stack-depth checks are reached too.
    check(
        data,
        &Limits {
            max_samples_per_profile: 4,
            max_stack_depth: 3,
            ..Limits::default()
        },
    );
});
