//! The admission pipeline as a unit (`ingest::admit`), as both ingest paths drive it: any bytes as
//! a request body (gzipped or not) holding one pprof profile (gzipped or not), with small limits so
//! that the budget, the split bounds and the time window are all reached. Never a panic; when the
//! request is admitted, every stored profile is valid, inside the window, with non-negative values,
//! and the parts of a split profile add up to the profile that was sent; the budget is never
//! overdrawn.
#![no_main]

use std::time::Duration;

use kiln_proto::codec::maybe_gunzip;
use kiln_proto::pprof::Profile;
use kiln_storage_server::Limits;
use kiln_storage_server::ingest::admit::{Admission, Source, Window};
use kiln_storage_server::ingest::series::MAX_SPLIT_SERIES;
use kiln_storage_server::ingest::{validate_labels, validate_profile};
use kiln_storage_server::tenant::Tenant;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NOW: i64 = 1_800_000_000_000_000_000;

/// Per sample type, the sum of the values of a profile's samples (wrapping: compared only when
/// the pipeline admitted the profile, i.e. found no overflow).
fn totals(p: &Profile) -> Vec<i64> {
    let mut t = vec![0i64; p.sample_type.len()];
    for s in &p.sample {
        for (x, v) in t.iter_mut().zip(&s.value) {
            *x = x.wrapping_add(*v);
        }
    }
    t
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_decompressed_bytes: 256 << 10,
        max_samples_per_profile: 4096,
        max_stack_depth: 64,
        ..Limits::default()
    };
    let window = Window::new(
        NOW,
        (flags & 2 == 0).then_some(Duration::from_secs(3600)),
        Duration::from_secs(600),
    );
    let tenant = Tenant::parse("fuzz").expect("tenant");
    let mut admission = Admission::new(&limits, &tenant, window);
    let labeler = |_: &[String], lifted: &[(String, String)]| {
        let mut pairs = vec![("__name__".to_owned(), "process_cpu".to_owned())];
        pairs.extend(lifted.iter().cloned());
        validate_labels(pairs, &limits)
    };
    let src = Source {
        labeler: &labeler,
        fallback_time: NOW,
    };
    let body = match admission.body(rest, flags & 1 == 1, flags & 4 == 4) {
        Ok(b) => b.into_owned(),
        Err(_) => return,
    };
    let sent = body.clone();
    let result = admission.pprof(body, &src);
    let budget = admission.budget();
    assert!(budget.inflated() <= limits.max_decompressed_bytes);
    assert!(budget.split_bytes() <= limits.max_decompressed_bytes);
    if result.is_err() {
        return;
    }
    let admitted = admission.finish();
    assert!(!admitted.is_empty());
    assert!(admitted.len() <= MAX_SPLIT_SERIES);
    let original = Profile::decode(
        maybe_gunzip(&sent, usize::MAX)
            .expect("admitted, so it inflates")
            .as_ref(),
    )
    .expect("admitted, so it decodes");
    let mut sum = vec![0i64; original.sample_type.len()];
    let mut samples = 0;
    for a in &admitted {
        window
            .check(a.profile.time_nanos)
            .expect("admitted time is in the window");
        let raw = maybe_gunzip(&a.profile.pprof, usize::MAX).expect("stored pprof inflates");
        let p = Profile::decode(raw.as_ref()).expect("stored pprof decodes");
        let types = validate_profile(&p, &limits).expect("stored pprof is valid");
        assert_eq!(types, a.profile.profile_types);
        assert_eq!(p.sample.len(), a.samples);
        assert!(p.sample.iter().all(|s| s.value.iter().all(|&v| v >= 0)));
        for (x, t) in sum.iter_mut().zip(totals(&p)) {
            *x = x.checked_add(t).expect("admitted totals do not overflow");
        }
        samples += a.samples;
    }
    assert_eq!(samples, original.sample.len());
    assert_eq!(sum, totals(&original));
});
