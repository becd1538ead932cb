//! The admission pipeline every ingest path goes through: the push API and `/ingest` only parse
//! their envelope (protobuf/JSON, query string, multipart form) and hand each profile here.
//!
//! For each profile, in order: decompress within the request's [`Budget`], scan (fast path) or
//! decode and validate every index and value, resolve its time and check it against the accepted
//! [`Window`], split it by sample labels (bounded by the same budget), and label it for its tenant.
//! Anything wrong fails the whole request, so nothing of a bad request is stored.
//!
//! The budget is per request, not per profile: a small body that inflates, or that splits into
//! many series, can make at most [`Limits::max_decompressed_bytes`] of decompressed input and as
//! much again of split output, and at most [`MAX_SPLIT_SERIES`] series by splitting.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use kiln_proto::codec::{self, CodecError};
use kiln_proto::pprof::Profile;
use prost::Message;

use super::scan;
use super::series::{self, MAX_SPLIT_SERIES, SplitError};
use super::validate::{LabelError, ProfileError, validate_profile};
use crate::config::Limits;
use crate::error::ApiError;
use crate::store::{Labels, NewProfile};
use crate::tenant::Tenant;

const NS_PER_SEC: i64 = 1_000_000_000;

/// A profile time below this (1971-01-01) is not a time: old pyspy, rbspy and pyroscope-rs send
/// none, or microseconds where nanoseconds belong. The request's own time is used instead.
const PLAUSIBLE_TIME_NANOS: i64 = 365 * 86_400 * NS_PER_SEC;

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "{what} exceeds the limit of {limit} decompressed bytes (the bodies and profiles of \
         one request count together)"
    )]
    TooLarge { what: &'static str, limit: usize },
    #[error("{what}: {err}")]
    Codec { what: &'static str, err: CodecError },
    #[error("profile is not valid pprof: {0}")]
    Protobuf(prost::DecodeError),
    #[error("profile: {0}")]
    Profile(ProfileError),
    #[error("{0}")]
    Window(#[from] OutsideWindow),
    #[error("{0}")]
    Split(#[from] SplitError),
    #[error("labels: {0}")]
    Labels(#[from] LabelError),
}

impl AdmitError {
    /// Whether the request is refused for its size (413) rather than its content (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            AdmitError::TooLarge { .. }
                | AdmitError::Codec {
                    err: CodecError::TooLarge { .. },
                    ..
                }
                | AdmitError::Split(_)
                | AdmitError::Profile(
                    ProfileError::TooManySamples { .. } | ProfileError::StackTooDeep { .. }
                )
        )
    }

    /// The `reason` label of the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            _ if self.is_too_large() => "too_large",
            AdmitError::Window(_) => "outside_window",
            AdmitError::Labels(_) => "bad_labels",
            AdmitError::Profile(
                ProfileError::NegativeValue { .. } | ProfileError::TotalOverflow { .. },
            ) => "bad_values",
            _ => "bad_profile",
        }
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        if e.is_too_large() {
            ApiError::PayloadTooLarge(e.to_string())
        } else {
            ApiError::BadRequest(e.to_string())
        }
    }
}

/// `Content-Encoding` of an ingest body: gzip or none, the same on every path.
pub fn gzip_encoded(headers: &HeaderMap) -> Result<bool, UnsupportedEncoding> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let raw = v.to_str().unwrap_or("");
    match raw.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Ok(true),
        "" | "identity" => Ok(false),
        _ => Err(UnsupportedEncoding(raw.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported Content-Encoding {0:?}: use gzip or none")]
pub struct UnsupportedEncoding(pub String);

/// What one request may make: decompressed bytes, split output bytes, series made by splitting.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    inflated: usize,
    split_bytes: usize,
    split_series: usize,
}

impl Budget {
    pub fn new(limits: &Limits) -> Budget {
        Budget {
            limit: limits.max_decompressed_bytes,
            inflated: 0,
            split_bytes: 0,
            split_series: 0,
        }
    }

    /// Bytes decompressed so far (bodies and profiles).
    pub fn inflated(&self) -> usize {
        self.inflated
    }

    /// Bytes of split profiles made so far.
    pub fn split_bytes(&self) -> usize {
        self.split_bytes
    }

    /// Inflates `data` when it is gzip (by its magic bytes, or always when `gzip` says so),
    /// charging the output to the budget.
    fn inflate<'a>(
        &mut self,
        data: &'a [u8],
        gzip: bool,
        what: &'static str,
    ) -> Result<Cow<'a, [u8]>, AdmitError> {
        if !gzip && !codec::is_gzip(data) {
            return Ok(Cow::Borrowed(data));
        }
        let left = self.limit - self.inflated;
        let out = codec::gunzip_limited(data, left).map_err(|err| match err {
            CodecError::TooLarge { .. } => AdmitError::TooLarge {
                what,
                limit: self.limit,
            },
            err => AdmitError::Codec { what, err },
        })?;
        self.inflated += out.len();
        Ok(Cow::Owned(out))
    }
}

/// The accepted profile times: `[now − retention, now + skew]` (no lower bound without age
/// retention). A profile outside would be deleted at once, or never expire.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    now: i64,
    retention: Option<Duration>,
    skew: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutsideWindow {
    #[error(
        "profile time {time} (Unix ns) is {age_secs} s in the past, older than the retention of \
         {retention_secs} s: the accepted window is [now - {retention_secs} s, now + {skew_secs} s]"
    )]
    TooOld {
        time: i64,
        age_secs: i64,
        retention_secs: u64,
        skew_secs: u64,
    },
    #[error(
        "profile time {time} (Unix ns) is {ahead_secs} s in the future, more than the allowed \
         clock skew of {skew_secs} s: the accepted window ends at now + {skew_secs} s"
    )]
    InFuture {
        time: i64,
        ahead_secs: i64,
        skew_secs: u64,
    },
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Window {
    /// The window of a server configured with `config`, at `now` (Unix ns).
    pub fn for_config(config: &crate::ServerConfig, now: i64) -> Window {
        Window::new(
            now,
            config.store.retention_age(),
            Duration::from_secs(config.limits.max_future_skew_secs),
        )
    }

    pub fn new(now: i64, retention: Option<Duration>, skew: Duration) -> Window {
        Window {
            now,
            retention,
            skew,
        }
    }

    pub fn now(&self) -> i64 {
        self.now
    }

    pub fn check(&self, time: i64) -> Result<(), OutsideWindow> {
        let skew_secs = self.skew.as_secs();
        if let Some(retention) = self.retention
            && time < self.now.saturating_sub(nanos(retention))
        {
            return Err(OutsideWindow::TooOld {
                time,
                age_secs: self.now.saturating_sub(time) / NS_PER_SEC,
                retention_secs: retention.as_secs(),
                skew_secs,
            });
        }
        if time > self.now.saturating_add(nanos(self.skew)) {
            return Err(OutsideWindow::InFuture {
                time,
                ahead_secs: time.saturating_sub(self.now) / NS_PER_SEC,
                skew_secs,
            });
        }
        Ok(())
    }
}

/// Makes a profile's series labels from its sample types' names and the labels lifted off its
/// samples by splitting (empty for a whole profile). Each path has its own naming rules.
pub type Labeler<'l> = dyn Fn(&[String], &[(String, String)]) -> Result<Labels, LabelError> + 'l;

/// Where a profile came from: how to label it, and the time to use when it carries none.
pub struct Source<'l> {
    pub labeler: &'l Labeler<'l>,
    pub fallback_time: i64,
}

/// One admitted profile and its sample count.
#[derive(Debug)]
pub struct Admitted {
    pub profile: NewProfile,
    pub samples: usize,
    /// `profile.pprof` inflated, when it was sent gzipped and stored as sent: handed to the store
    /// ([`crate::store::Store::append_decompressed`]) so it need not inflate it again. At most
    /// the request's decompression budget in all.
    pub decompressed: Option<Vec<u8>>,
}

/// `admitted` split for [`crate::store::Store::append_decompressed`].
pub fn for_store(admitted: Vec<Admitted>) -> (Vec<NewProfile>, Vec<Option<Vec<u8>>>) {
    admitted
        .into_iter()
        .map(|a| (a.profile, a.decompressed))
        .unzip()
}

/// One request going through admission.
pub struct Admission<'a> {
    limits: &'a Limits,
    tenant: &'a Tenant,
    window: Window,
    budget: Budget,
    out: Vec<Admitted>,
}

impl<'a> Admission<'a> {
    pub fn new(limits: &'a Limits, tenant: &'a Tenant, window: Window) -> Admission<'a> {
        Admission {
            limits,
            tenant,
            window,
            budget: Budget::new(limits),
            out: Vec::new(),
        }
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// A request body: inflated when its `Content-Encoding` says gzip, or (for bodies that are
    /// not protobuf, e.g. text) when `sniff` is set and it starts with gzip's magic bytes.
    pub fn body<'b>(
        &mut self,
        body: &'b [u8],
        gzip: bool,
        sniff: bool,
    ) -> Result<Cow<'b, [u8]>, AdmitError> {
        if gzip || sniff {
            self.budget.inflate(body, gzip, "request body")
        } else {
            Ok(Cow::Borrowed(body))
        }
    }

    /// A pprof profile as sent (raw or gzipped, by magic bytes).
    pub fn pprof(&mut self, sent: Vec<u8>, src: &Source<'_>) -> Result<(), AdmitError> {
        let raw = self.budget.inflate(&sent, false, "profile")?;
        // Fast path: a valid profile that stays whole is scanned in place, not decoded.
        match scan::scan_profile(&raw, self.limits) {
            Ok(scanned) => {
                // Stored as sent: a gzipped profile goes into the WAL as is (the store reads gzip
                // back), sparing a second compression of what the client compressed. What it
                // inflated to goes along for the store's head aggregate.
                let decompressed = match raw {
                    Cow::Owned(raw) => Some(raw),
                    Cow::Borrowed(_) => None,
                };
                let time_nanos = self.time(scanned.time_nanos, src)?;
                let labels = (src.labeler)(&scanned.type_names, &[])?;
                self.out.push(Admitted {
                    profile: NewProfile {
                        labels: self.tenant.label(labels),
                        time_nanos,
                        profile_types: scanned.profile_types,
                        pprof: sent,
                    },
                    samples: scanned.samples,
                    decompressed,
                });
                return Ok(());
            }
            // Errors are reported, and profiles split, by the full decode below.
            Err(reason) => tracing::trace!(?reason, "profile takes the full decode"),
        }
        let profile = Profile::decode(raw.as_ref()).map_err(AdmitError::Protobuf)?;
        drop(raw);
        self.decoded(profile, Some(sent), src)
    }

    /// A profile built by the server from another format (e.g. folded text).
    pub fn profile(&mut self, profile: Profile, src: &Source<'_>) -> Result<(), AdmitError> {
        self.decoded(profile, None, src)
    }

    /// Validates, times, splits and labels a decoded profile; `sent` is its bytes as sent, stored
    /// when it stays whole.
    fn decoded(
        &mut self,
        profile: Profile,
        sent: Option<Vec<u8>>,
        src: &Source<'_>,
    ) -> Result<(), AdmitError> {
        let profile_types = validate_profile(&profile, self.limits).map_err(AdmitError::Profile)?;
        let type_names: Vec<String> = profile
            .sample_type
            .iter()
            .map(|st| profile.str(st.r#type).to_owned())
            .collect();
        let time_nanos = self.time(profile.time_nanos, src)?;
        let samples = profile.sample.len();
        let max_parts = MAX_SPLIT_SERIES - self.budget.split_series;
        let max_bytes = self.budget.limit - self.budget.split_bytes;
        match series::split(profile, max_parts, max_bytes)? {
            series::Split::Whole(profile) => {
                let labels = (src.labeler)(&type_names, &[])?;
                self.out.push(Admitted {
                    profile: NewProfile {
                        labels: self.tenant.label(labels),
                        time_nanos,
                        profile_types,
                        pprof: sent.unwrap_or_else(|| profile.encode_to_vec()),
                    },
                    samples,
                    decompressed: None,
                });
            }
            // Tags sent as sample labels become series labels, as in Pyroscope.
            series::Split::Parts(parts) => {
                self.budget.split_series += parts.len();
                self.budget.split_bytes += parts.iter().map(|p| p.pprof.len()).sum::<usize>();
                for part in parts {
                    let labels = (src.labeler)(&type_names, &part.labels)?;
                    self.out.push(Admitted {
                        profile: NewProfile {
                            labels: self.tenant.label(labels),
                            time_nanos,
                            profile_types: profile_types.clone(),
                            pprof: part.pprof,
                        },
                        samples: part.samples,
                        decompressed: None,
                    });
                }
            }
        }
        Ok(())
    }

    /// The profile's time (its own when plausible, else the source's) checked against the window.
    fn time(&self, sent: i64, src: &Source<'_>) -> Result<i64, AdmitError> {
        let time = if sent >= PLAUSIBLE_TIME_NANOS {
            sent
        } else {
            src.fallback_time
        };
        self.window.check(time)?;
        Ok(time)
    }

    /// The admitted profiles, in request order.
    pub fn finish(self) -> Vec<Admitted> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::validate_labels;
    use kiln_proto::ProfileBuilder;

    const NOW: i64 = 1_800_000_000 * NS_PER_SEC;

    fn window() -> Window {
        Window::new(
            NOW,
            Some(Duration::from_secs(3600)),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn window_edges() {
        let w = window();
        assert_eq!(w.check(NOW - 3600 * NS_PER_SEC), Ok(()));
        assert!(matches!(
            w.check(NOW - 3600 * NS_PER_SEC - 1),
            Err(OutsideWindow::TooOld { age_secs: 3600, .. })
        ));
        assert_eq!(w.check(NOW + 600 * NS_PER_SEC), Ok(()));
        assert!(matches!(
            w.check(NOW + 600 * NS_PER_SEC + 1),
            Err(OutsideWindow::InFuture {
                ahead_secs: 600,
                ..
            })
        ));
        assert!(w.check(i64::MAX).is_err() && w.check(i64::MIN).is_err());
        // Without age retention, nothing is too old.
        let forever = Window::new(NOW, None, Duration::from_secs(600));
        assert_eq!(forever.check(PLAUSIBLE_TIME_NANOS), Ok(()));
    }

    fn labeled(profile: &Profile, limits: &Limits, w: Window) -> Result<Vec<Admitted>, AdmitError> {
        let tenant = Tenant::default();
        let mut a = Admission::new(limits, &tenant, w);
        let labeler = |_: &[String], extra: &[(String, String)]| {
            let mut pairs = vec![("__name__".to_owned(), "process_cpu".to_owned())];
            pairs.extend(extra.iter().cloned());
            validate_labels(pairs, limits)
        };
        let src = Source {
            labeler: &labeler,
            fallback_time: w.now(),
        };
        a.pprof(codec::gzip(&profile.encode_to_vec()), &src)?;
        Ok(a.finish())
    }

    #[test]
    fn budget_spans_the_request() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        for i in 0..200 {
            b.add_sample(&[l], &[1], &[("req", &i.to_string())]);
        }
        let p = b.finish();
        let raw_len = p.encoded_len();
        let limits = Limits::default();
        let out = labeled(&p, &limits, window()).unwrap();
        assert_eq!(out.len(), 200);
        // Too little budget for the inflated profile: 413.
        let tight = Limits {
            max_decompressed_bytes: raw_len - 1,
            ..Limits::default()
        };
        let err = labeled(&p, &tight, window()).unwrap_err();
        assert!(matches!(err, AdmitError::TooLarge { .. }), "{err}");
        assert!(err.is_too_large());
        // Enough to inflate, not enough for 200 copies of the tables.
        let split = Limits {
            max_decompressed_bytes: raw_len * 3,
            ..Limits::default()
        };
        let err = labeled(&p, &split, window()).unwrap_err();
        assert!(
            matches!(err, AdmitError::Split(SplitError::TooLarge { .. })),
            "{err}"
        );
        assert!(err.is_too_large());
    }

    /// What the `admit` fuzz target asserts, over every truncation and many byte flips of a
    /// profile that is split: no panic, and whatever is admitted is valid and adds up to the input.
    #[test]
    fn corruptions_keep_invariants() {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        b.time(NOW, NS_PER_SEC);
        let f = b.function("f", "f.c");
        let l = b.symbolized_location(0, 0x10, &[(f, 1)]);
        b.add_sample(&[l], &[1, 10], &[("env", "a")]);
        b.add_sample(&[l], &[2, 20], &[("env", "b"), ("span_id", "9")]);
        b.add_sample(&[l], &[3, 30], &[]);
        let raw = b.finish().encode_to_vec();
        let limits = Limits::default();
        let check = |bytes: &[u8]| {
            let tenant = Tenant::default();
            let mut a = Admission::new(&limits, &tenant, window());
            let labeler = |_: &[String], extra: &[(String, String)]| {
                let mut pairs = vec![("__name__".to_owned(), "process_cpu".to_owned())];
                pairs.extend(extra.iter().cloned());
                validate_labels(pairs, &limits)
            };
            let src = Source {
                labeler: &labeler,
                fallback_time: NOW,
            };
            if a.pprof(bytes.to_vec(), &src).is_err() {
                return;
            }
            let original = Profile::decode(bytes).unwrap();
            let (mut samples, mut total) = (0, 0i64);
            for x in a.finish() {
                let p = Profile::decode(x.profile.pprof.as_slice()).unwrap();
                assert_eq!(
                    validate_profile(&p, &limits).unwrap(),
                    x.profile.profile_types
                );
                assert!(window().check(x.profile.time_nanos).is_ok());
                samples += p.sample.len();
                total += p
                    .sample
                    .iter()
                    .map(|s| s.value.iter().sum::<i64>())
                    .sum::<i64>();
            }
            assert_eq!(samples, original.sample.len());
            let want: i64 = original
                .sample
                .iter()
                .map(|s| s.value.iter().sum::<i64>())
                .sum();
            assert_eq!(total, want);
        };
        for len in 0..=raw.len() {
            check(&raw[..len]);
        }
        for i in 0..raw.len() {
            for mask in [0x01u8, 0x02, 0x08, 0x40, 0x80, 0xff] {
                let mut m = raw.clone();
                m[i] ^= mask;
                check(&m);
            }
        }
    }

    #[test]
    fn times_resolved_and_checked() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        b.add_sample(&[l], &[1], &[]);
        let mut p = b.finish();
        let limits = Limits::default();
        for (sent, want) in [
            (0, Some(NOW)),
            (5, Some(NOW)),
            (-5, Some(NOW)),
            (NOW - 10, Some(NOW - 10)),
            (NOW - 7200 * NS_PER_SEC, None),
            (NOW + 3600 * NS_PER_SEC, None),
        ] {
            p.time_nanos = sent;
            let got = labeled(&p, &limits, window());
            match want {
                Some(t) => assert_eq!(got.unwrap()[0].profile.time_nanos, t, "{sent}"),
                None => assert!(matches!(got, Err(AdmitError::Window(_))), "{sent}"),
            }
        }
    }
}
