//! Pyroscope SDKs send tags as pprof *sample* labels (all tags from `pyroscope-io` 0.8, dynamic
//! `tag_wrapper` tags from 1.x). Pyroscope turns them into series labels so they can be selected
//! and listed; so do we: a profile is split into one profile per distinct set of such labels.

use std::collections::HashMap;

use kiln_proto::pprof::{Label, Profile};
use prost::Message;

/// Sample labels that stay on samples: per-request IDs would make a series per request.
const KEPT_ON_SAMPLES: &[&str] = &["span_id", "span_name", "trace_id", "profile_id"];

/// Most series one profile may be split into.
pub const MAX_SPLIT_SERIES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "profile has more than {0} distinct sample label sets (each becomes a series; the bound is \
     {MAX_SPLIT_SERIES} and shrinks for large profiles, each part carrying the profile's tables)"
)]
pub struct TooManySeries(pub usize);

/// One part of a split profile: the labels lifted off its samples, and the samples.
#[derive(Debug)]
pub struct Part {
    pub labels: Vec<(String, String)>,
    pub profile: Profile,
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

/// Splits `profile` by its liftable sample labels.
///
/// Every part carries a copy of the profile's tables, so the number of parts is bounded by
/// `max_bytes` divided by the size of those tables, as well as by [`MAX_SPLIT_SERIES`].
pub fn split(profile: Profile, max_bytes: usize) -> Result<Split, TooManySeries> {
    let any = profile
        .sample
        .iter()
        .any(|s| s.label.iter().any(|l| liftable(&profile, l).is_some()));
    if !any {
        return Ok(Split::Whole(Box::new(profile)));
    }
    let mut groups: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut template = profile;
    let samples = std::mem::take(&mut template.sample);
    let max_parts = (max_bytes / template.encoded_len().max(1)).clamp(1, MAX_SPLIT_SERIES);
    for mut sample in samples {
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
        let i = match groups.get(&lifted) {
            Some(&i) => i,
            None => {
                if parts.len() == max_parts {
                    return Err(TooManySeries(max_parts));
                }
                parts.push(Part {
                    labels: lifted.clone(),
                    profile: template.clone(),
                });
                groups.insert(lifted, parts.len() - 1);
                parts.len() - 1
            }
        };
        parts[i].profile.sample.push(sample);
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
        let Split::Parts(mut parts) = split(p, usize::MAX).unwrap() else {
            panic!("not split")
        };
        parts.sort_by(|a, b| a.labels.cmp(&b.labels));
        let summary: Vec<_> = parts
            .iter()
            .map(|p| {
                (
                    p.labels.clone(),
                    p.profile
                        .sample
                        .iter()
                        .map(|s| s.value[0])
                        .collect::<Vec<_>>(),
                    p.profile
                        .sample
                        .iter()
                        .map(|s| s.label.len())
                        .sum::<usize>(),
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
        assert!(matches!(
            split(b.finish(), usize::MAX).unwrap(),
            Split::Whole(_)
        ));
    }

    #[test]
    fn too_many_series() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("f", "");
        let l = b.symbolized_location(0, 0, &[(f, 0)]);
        for i in 0..=MAX_SPLIT_SERIES {
            b.add_sample(&[l], &[1], &[("req", &i.to_string())]);
        }
        let p = b.finish();
        assert_eq!(
            split(p.clone(), usize::MAX).unwrap_err(),
            TooManySeries(MAX_SPLIT_SERIES)
        );
        // Large tables shrink the bound.
        let mut tables = p.clone();
        tables.sample.clear();
        let size = tables.encoded_len();
        assert_eq!(split(p, size * 3).unwrap_err(), TooManySeries(3));
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
