//! Pyroscope SDKs send tags as pprof *sample* labels (all tags from `pyroscope-io` 0.8, dynamic
//! `tag_wrapper` tags from 1.x). Pyroscope turns them into series labels so they can be selected
//! and listed; so do we: a profile is split into one profile per distinct set of such labels.
//!
//! Splitting multiplies the profile's tables (every part carries all of them), so a small upload
//! with many distinct labels could ask for a huge output. [`split`] therefore counts the parts and
//! their encoded size first, refuses before building anything when the caller's bounds would be
//! exceeded, and then writes each part straight to its wire bytes (no `Profile` is cloned).

use std::collections::HashMap;

use kiln_proto::pprof::{Label, Profile};
use prost::Message;

/// Sample labels that stay on samples: per-request IDs would make a series per request.
const KEPT_ON_SAMPLES: &[&str] = &["span_id", "span_name", "trace_id", "profile_id"];

/// Most series one request may be split into (the admission budget holds it per request).
pub const MAX_SPLIT_SERIES: usize = 1024;

/// Why a profile cannot be split within the caller's bounds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error(
        "profile has more than {0} distinct sample label sets (each becomes a series; a request \
         may make at most {MAX_SPLIT_SERIES})"
    )]
    TooManySeries(usize),
    #[error(
        "splitting the profile by its {parts} distinct sample label sets would make {need} bytes \
         (each part carries the profile's {tables}-byte tables), more than the {left} bytes left \
         in the request's budget"
    )]
    TooLarge {
        parts: usize,
        tables: usize,
        need: usize,
        left: usize,
    },
}

/// One part of a split profile: the labels lifted off its samples, and its encoded pprof.
#[derive(Debug)]
pub struct Part {
    pub labels: Vec<(String, String)>,
    /// The part as an encoded `Profile`: the original tables followed by its samples.
    pub pprof: Vec<u8>,
    pub samples: usize,
}

fn liftable(p: &Profile, l: &Label) -> Option<(String, String)> {
    if l.str == 0 {
        return None; // numeric label (e.g. bytes): stays on the sample
    }
    let key = str_at(p, l.key)?;
    let value = str_at(p, l.str)?;
    lifts(key, value).then(|| (key.to_owned(), value.to_owned()))
}

/// Whether a string sample label `key`=`value` becomes a series label (shared with the scanner,
/// which must agree with [`split`] on which profiles stay whole).
pub(super) fn lifts(key: &str, value: &str) -> bool {
    let valid = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    valid && !key.starts_with("__") && !value.is_empty() && !KEPT_ON_SAMPLES.contains(&key)
}

fn str_at(p: &Profile, i: i64) -> Option<&str> {
    usize::try_from(i)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .map(String::as_str)
}

/// What [`split`] made of a profile.
#[derive(Debug)]
pub enum Split {
    /// No sample has a liftable label (the common case, e.g. the agent's profiles): store as is.
    Whole(Box<Profile>),
    Parts(Vec<Part>),
}

/// Splits `profile` by its liftable sample labels into at most `max_parts` parts of at most
/// `max_bytes` encoded bytes in all. Both bounds are checked before any part is built, so a
/// refused profile costs only the grouping of its samples.
pub fn split(profile: Profile, max_parts: usize, max_bytes: usize) -> Result<Split, SplitError> {
    let any = profile
        .sample
        .iter()
        .any(|s| s.label.iter().any(|l| liftable(&profile, l).is_some()));
    if !any {
        return Ok(Split::Whole(Box::new(profile)));
    }
    let mut template = profile;
    let mut samples = std::mem::take(&mut template.sample);

    // Pass 1: each sample's group, and each group's sample count and encoded sample bytes.
    let mut groups: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(samples.len());
    let mut sizes: Vec<(usize, usize)> = Vec::new(); // (samples, bytes) per group
    for sample in &mut samples {
        let mut lifted = Vec::new();
        sample.label.retain(|l| match liftable(&template, l) {
            Some(pair) => {
                lifted.push(pair);
                false
            }
            None => true,
        });
        lifted.sort();
        // A repeated key keeps its last value, as series labels do.
        lifted.reverse();
        lifted.dedup_by(|a, b| a.0 == b.0);
        lifted.reverse();
        let next = groups.len();
        let i = *groups.entry(lifted).or_insert(next);
        if i == next {
            if next == max_parts {
                return Err(SplitError::TooManySeries(max_parts));
            }
            sizes.push((0, 0));
        }
        sizes[i].0 += 1;
        sizes[i].1 += prost::encoding::message::encoded_len(2, sample);
        group_of.push(i);
    }
    let tables = template.encoded_len();
    let need = sizes
        .iter()
        .fold(tables.saturating_mul(sizes.len()), |n, s| {
            n.saturating_add(s.1)
        });
    if need > max_bytes {
        return Err(SplitError::TooLarge {
            parts: sizes.len(),
            tables,
            need,
            left: max_bytes,
        });
    }

    // Pass 2: the parts' bytes, the tables then the samples (protobuf fields may come in any order).
    let head = template.encode_to_vec();
    drop(template);
    let mut labels: Vec<(usize, Vec<(String, String)>)> =
        groups.into_iter().map(|(l, i)| (i, l)).collect();
    labels.sort_unstable_by_key(|(i, _)| *i);
    let mut parts: Vec<Part> = labels
        .into_iter()
        .zip(&sizes)
        .map(|((_, labels), &(samples, bytes))| {
            let mut pprof = Vec::with_capacity(head.len() + bytes);
            pprof.extend_from_slice(&head);
            Part {
                labels,
                pprof,
                samples,
            }
        })
        .collect();
    for (sample, i) in samples.into_iter().zip(group_of) {
        prost::encoding::message::encode(2, &sample, &mut parts[i].pprof);
    }
    Ok(Split::Parts(parts))
}

/// `series` with `extra` added; a name in both takes `extra`'s value (the more specific one).
pub fn merge_labels(
    series: impl IntoIterator<Item = (String, String)>,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = series
        .into_iter()
        .filter(|(k, _)| !extra.iter().any(|(ek, _)| ek == k))
        .collect();
    out.extend(extra.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ProfileBuilder;

    #[test]
    fn splits_by_string_labels_only() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        b.add_sample(&[l], &[1], &[]);
        b.add_sample(&[l], &[2], &[("env", "a"), ("span_id", "1")]);
        b.add_sample(&[l], &[3], &[("env", "a"), ("bad key", "x")]);
        b.add_sample(&[l], &[4], &[("env", "b"), ("__x", "y")]);
        let p = b.finish();
        let Split::Parts(mut parts) = split(p.clone(), MAX_SPLIT_SERIES, usize::MAX).unwrap()
        else {
            panic!("not split")
        };
        parts.sort_by(|a, b| a.labels.cmp(&b.labels));
        let summary: Vec<_> = parts
            .iter()
            .map(|part| {
                let decoded = Profile::decode(part.pprof.as_slice()).unwrap();
                // Every part keeps the original tables.
                assert_eq!(decoded.string_table, p.string_table);
                assert_eq!(decoded.location, p.location);
                assert_eq!(part.samples, decoded.sample.len());
                (
                    part.labels.clone(),
                    decoded
                        .sample
                        .iter()
                        .map(|s| s.value[0])
                        .collect::<Vec<_>>(),
                    decoded.sample.iter().map(|s| s.label.len()).sum::<usize>(),
                )
            })
            .collect();
        let env = |v: &str| vec![("env".to_owned(), v.to_owned())];
        assert_eq!(
            summary,
            vec![
                (vec![], vec![1], 0),
                (env("a"), vec![2, 3], 2),
                (env("b"), vec![4], 1),
            ]
        );
    }

    #[test]
    fn unlabelled_profile_untouched() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        b.add_sample(&[l], &[1], &[("span_id", "7")]);
        assert!(matches!(split(b.finish(), 1, 0).unwrap(), Split::Whole(_)));
    }

    #[test]
    fn bounds_checked_before_building() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        for i in 0..=MAX_SPLIT_SERIES {
            b.add_sample(&[l], &[1], &[("req", &i.to_string())]);
        }
        let p = b.finish();
        assert_eq!(
            split(p.clone(), MAX_SPLIT_SERIES, usize::MAX).unwrap_err(),
            SplitError::TooManySeries(MAX_SPLIT_SERIES)
        );
        // The bytes bound counts every part's copy of the tables.
        let mut tables = p.clone();
        tables.sample.clear();
        let size = tables.encoded_len();
        let err = split(p.clone(), usize::MAX, size * 3).unwrap_err();
        assert!(
            matches!(err, SplitError::TooLarge { parts, tables, need, left }
                if parts == MAX_SPLIT_SERIES + 1 && tables == size && need > size * parts
                    && left == size * 3),
            "{err:?}"
        );
        // Exactly enough is enough.
        let Split::Parts(parts) = split(p.clone(), usize::MAX, usize::MAX).unwrap() else {
            panic!("not split")
        };
        let total: usize = parts.iter().map(|p| p.pprof.len()).sum();
        assert!(matches!(
            split(p.clone(), usize::MAX, total),
            Ok(Split::Parts(_))
        ));
        assert!(split(p, usize::MAX, total - 1).is_err());
    }

    #[test]
    fn merge_prefers_extra() {
        let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            merge_labels(vec![s("a", "1"), s("b", "2")], &[s("b", "3"), s("c", "4")]),
            vec![s("a", "1"), s("b", "3"), s("c", "4")]
        );
    }
}
