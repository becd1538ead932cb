//! Checks shared by every ingest format: series labels and pprof structure, so that nothing stored
//! can later trip a query.

use std::collections::HashSet;

use kiln_proto::pprof::Profile;

use crate::config::Limits;
use crate::store::Labels;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("series has no __name__ label (e.g. __name__=\"process_cpu\")")]
    MissingName,
    #[error("series has {count} labels, more than the limit of {limit}")]
    TooMany { count: usize, limit: usize },
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_.]*")]
    BadName(String),
    #[error("label name {name:?}… is longer than {limit} bytes")]
    NameTooLong { name: String, limit: usize },
    #[error("value of label {name:?} is longer than {limit} bytes")]
    ValueTooLong { name: String, limit: usize },
    #[error("label {0:?} appears more than once")]
    Duplicate(String),
    #[error(
        "label {0:?} is reserved: the server sets it (the tenant comes from the X-Scope-OrgID header)"
    )]
    Reserved(String),
}

/// Validates a series' labels and normalizes them: empty values are dropped (an empty value means
/// "absent", as in Prometheus) and `service_name` defaults to `unknown`.
pub fn validate_labels(
    pairs: impl IntoIterator<Item = (String, String)>,
    limits: &Limits,
) -> Result<Labels, LabelError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (name, value) in pairs {
        if name.len() > limits.max_label_name_len {
            let mut cut = limits.max_label_name_len.min(64);
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(LabelError::NameTooLong {
                name: name[..cut].to_owned(),
                limit: limits.max_label_name_len,
            });
        }
        if !valid_label_name(&name) {
            return Err(LabelError::BadName(name));
        }
        if name == crate::tenant::TENANT_LABEL {
            return Err(LabelError::Reserved(name));
        }
        if value.len() > limits.max_label_value_len {
            return Err(LabelError::ValueTooLong {
                name,
                limit: limits.max_label_value_len,
            });
        }
        if !seen.insert(name.clone()) {
            return Err(LabelError::Duplicate(name));
        }
        if !value.is_empty() {
            out.push((name, value));
        }
    }
    if !out.iter().any(|(k, _)| k == "__name__") {
        return Err(LabelError::MissingName);
    }
    if !out.iter().any(|(k, _)| k == "service_name") {
        out.push(("service_name".to_owned(), "unknown".to_owned()));
    }
    if out.len() > limits.max_labels_per_series {
        return Err(LabelError::TooMany {
            count: out.len(),
            limit: limits.max_labels_per_series,
        });
    }
    Ok(Labels::new(out))
}

fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The largest total of one sample type in one profile. Far above any real one (104 days of CPU
/// in nanoseconds, 9 PB allocated), low enough that sums over many profiles stay far from
/// overflowing i64, and exact as a JSON number in JavaScript.
pub const MAX_TOTAL: i64 = 1 << 53;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("profile has no sample types")]
    NoSampleTypes,
    #[error("profile has a sample type with an empty name")]
    EmptySampleType,
    #[error("profile has {count} samples, more than the limit of {limit}")]
    TooManySamples { count: usize, limit: usize },
    #[error("sample {index} has {got} values but the profile has {want} sample types")]
    ValueCount {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("sample {index} has a stack of {depth} frames, more than the limit of {limit}")]
    StackTooDeep {
        index: usize,
        depth: usize,
        limit: usize,
    },
    #[error("sample {index} references unknown location id {id}")]
    UnknownLocation { index: usize, id: u64 },
    #[error("location {location} references unknown mapping id {id}")]
    UnknownMapping { location: u64, id: u64 },
    #[error("location {location} references unknown function id {id}")]
    UnknownFunction { location: u64, id: u64 },
    #[error("{field} is string index {index}, outside the string table of {len} strings")]
    BadString {
        field: String,
        index: i64,
        len: usize,
    },
    #[error("sample {index} has a negative {sample_type} value {value}: values must be >= 0")]
    NegativeValue {
        index: usize,
        sample_type: String,
        value: i64,
    },
    #[error(
        "the profile's {sample_type} values add up to more than {MAX_TOTAL} (2^53, the largest \
         total kept exact everywhere, including in a browser)"
    )]
    TotalOverflow { sample_type: String },
}

/// Checks that every reference in `p` resolves and sizes are within limits; returns its
/// `type:unit` profile types.
pub fn validate_profile(p: &Profile, limits: &Limits) -> Result<Vec<String>, ProfileError> {
    if p.sample_type.is_empty() {
        return Err(ProfileError::NoSampleTypes);
    }
    // Every string index, wherever it is, must resolve: the error names the field.
    let string = |i: i64, field: &dyn Fn() -> String| {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(String::as_str)
            .ok_or_else(|| ProfileError::BadString {
                field: field(),
                index: i,
                len: p.string_table.len(),
            })
    };
    let mut types = Vec::with_capacity(p.sample_type.len());
    for (n, st) in p.sample_type.iter().enumerate() {
        let ty = string(st.r#type, &|| format!("sample_type[{n}].type"))?;
        let unit = string(st.unit, &|| format!("sample_type[{n}].unit"))?;
        if ty.is_empty() {
            return Err(ProfileError::EmptySampleType);
        }
        types.push(format!("{ty}:{unit}"));
    }
    if let Some(pt) = &p.period_type {
        string(pt.r#type, &|| "period_type.type".to_owned())?;
        string(pt.unit, &|| "period_type.unit".to_owned())?;
    }
    for (n, &c) in p.comment.iter().enumerate() {
        string(c, &|| format!("comment[{n}]"))?;
    }
    string(p.default_sample_type, &|| "default_sample_type".to_owned())?;
    string(p.drop_frames, &|| "drop_frames".to_owned())?;
    string(p.keep_frames, &|| "keep_frames".to_owned())?;
    if p.sample.len() > limits.max_samples_per_profile {
        return Err(ProfileError::TooManySamples {
            count: p.sample.len(),
            limit: limits.max_samples_per_profile,
        });
    }
    let mappings = IdSet::new(p.mapping.iter().map(|m| m.id), p.mapping.len());
    let functions = IdSet::new(p.function.iter().map(|f| f.id), p.function.len());
    for f in &p.function {
        string(f.name, &|| format!("function (id {}).name", f.id))?;
        string(f.system_name, &|| {
            format!("function (id {}).system_name", f.id)
        })?;
        string(f.filename, &|| format!("function (id {}).filename", f.id))?;
    }
    for m in &p.mapping {
        string(m.filename, &|| format!("mapping (id {}).filename", m.id))?;
        string(m.build_id, &|| format!("mapping (id {}).build_id", m.id))?;
    }
    let locations = IdSet::new(p.location.iter().map(|l| l.id), p.location.len());
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(l.mapping_id) {
            return Err(ProfileError::UnknownMapping {
                location: l.id,
                id: l.mapping_id,
            });
        }
        if let Some(line) = l
            .line
            .iter()
            .find(|line| !functions.contains(line.function_id))
        {
            return Err(ProfileError::UnknownFunction {
                location: l.id,
                id: line.function_id,
            });
        }
    }
    // Totals per sample type: a negative value or an overflowing sum would corrupt every query
    // that adds this profile to others.
    let mut totals = vec![0i64; p.sample_type.len()];
    for (index, s) in p.sample.iter().enumerate() {
        if s.value.len() != p.sample_type.len() {
            return Err(ProfileError::ValueCount {
                index,
                got: s.value.len(),
                want: p.sample_type.len(),
            });
        }
        if s.location_id.len() > limits.max_stack_depth {
            return Err(ProfileError::StackTooDeep {
                index,
                depth: s.location_id.len(),
                limit: limits.max_stack_depth,
            });
        }
        if let Some(&id) = s.location_id.iter().find(|&&id| !locations.contains(id)) {
            return Err(ProfileError::UnknownLocation { index, id });
        }
        for (t, (&v, total)) in s.value.iter().zip(&mut totals).enumerate() {
            if v < 0 {
                return Err(ProfileError::NegativeValue {
                    index,
                    sample_type: types[t].clone(),
                    value: v,
                });
            }
            *total = total
                .checked_add(v)
                .filter(|&t| t <= MAX_TOTAL)
                .ok_or_else(|| ProfileError::TotalOverflow {
                    sample_type: types[t].clone(),
                })?;
        }
        for (n, l) in s.label.iter().enumerate() {
            string(l.key, &|| format!("sample[{index}].label[{n}].key"))?;
            string(l.str, &|| format!("sample[{index}].label[{n}].str"))?;
            string(l.num_unit, &|| {
                format!("sample[{index}].label[{n}].num_unit")
            })?;
        }
    }
    Ok(types)
}

/// A set of pprof ids. Every sample's every location id is looked up (millions per second at
/// ingest), so ids are kept in a bitmap: builders number them densely from 1, and a bitmap of a few
/// bits per id beats hashing each. Sparse ids (a bitmap would be huge) fall back to a hash set.
pub(super) enum IdSet {
    Dense(Vec<bool>),
    Sparse(HashSet<u64>),
}

impl IdSet {
    pub(super) fn new(ids: impl Iterator<Item = u64> + Clone, count: usize) -> IdSet {
        let max = ids.clone().max().unwrap_or(0);
        if max <= (count as u64).saturating_mul(4).saturating_add(1024) {
            let mut bits = vec![false; max as usize + 1];
            for id in ids {
                bits[id as usize] = true;
            }
            IdSet::Dense(bits)
        } else {
            IdSet::Sparse(ids.collect())
        }
    }

    #[inline]
    pub(super) fn contains(&self, id: u64) -> bool {
        match self {
            IdSet::Dense(bits) => usize::try_from(id)
                .ok()
                .and_then(|i| bits.get(i))
                .copied()
                .unwrap_or(false),
            IdSet::Sparse(set) => set.contains(&id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ProfileBuilder;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_normalized() {
        let l = validate_labels(
            pairs(&[("__name__", "process_cpu"), ("pod", ""), ("a.b", "x")]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(l.get("service_name"), Some("unknown"));
        assert_eq!(l.get("pod"), None);
        assert_eq!(l.get("a.b"), Some("x"));
    }

    #[test]
    fn labels_rejected() {
        let lim = Limits::default();
        assert_eq!(
            validate_labels(pairs(&[("service_name", "x")]), &lim),
            Err(LabelError::MissingName)
        );
        assert_eq!(
            validate_labels(pairs(&[("__name__", "x"), ("1a", "x")]), &lim),
            Err(LabelError::BadName("1a".into()))
        );
        assert_eq!(
            validate_labels(pairs(&[("__name__", "x"), ("__name__", "y")]), &lim),
            Err(LabelError::Duplicate("__name__".into()))
        );
        assert_eq!(
            validate_labels(pairs(&[("__name__", "x"), ("__tenant__", "other")]), &lim),
            Err(LabelError::Reserved("__tenant__".into()))
        );
        let many: Vec<_> = (0..40).map(|i| (format!("l{i}"), "v".to_owned())).collect();
        let mut many = many;
        many.push(("__name__".into(), "x".into()));
        assert!(matches!(
            validate_labels(many, &lim),
            Err(LabelError::TooMany { limit: 32, .. })
        ));
        let long = "v".repeat(lim.max_label_value_len + 1);
        assert!(matches!(
            validate_labels(pairs(&[("__name__", &long)]), &lim),
            Err(LabelError::ValueTooLong { .. })
        ));
    }

    #[test]
    fn profile_references_checked() {
        let lim = Limits::default();
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let f = b.function("main", "m.c");
        let l = b.symbolized_location(0, 1, &[(f, 1)]);
        b.add_sample(&[l], &[5], &[]);
        let p = b.finish();
        assert_eq!(validate_profile(&p, &lim).unwrap(), vec!["cpu:nanoseconds"]);

        let mut bad = p.clone();
        bad.sample[0].location_id.push(99);
        assert_eq!(
            validate_profile(&bad, &lim),
            Err(ProfileError::UnknownLocation { index: 0, id: 99 })
        );
        let mut bad = p.clone();
        bad.sample[0].value.push(1);
        assert!(matches!(
            validate_profile(&bad, &lim),
            Err(ProfileError::ValueCount { .. })
        ));
        let mut bad = p.clone();
        bad.location[0].line[0].function_id = 7;
        assert!(matches!(
            validate_profile(&bad, &lim),
            Err(ProfileError::UnknownFunction { .. })
        ));
        // Sparse ids (no dense bitmap) are checked all the same.
        let mut sparse = p.clone();
        sparse.location[0].id = 1 << 40;
        sparse.sample[0].location_id = vec![1 << 40];
        assert!(validate_profile(&sparse, &lim).is_ok());
        sparse.sample[0].location_id = vec![1];
        assert_eq!(
            validate_profile(&sparse, &lim),
            Err(ProfileError::UnknownLocation { index: 0, id: 1 })
        );
        let mut bad = p;
        bad.sample_type[0].unit = 1000;
        assert_eq!(
            validate_profile(&bad, &lim),
            Err(ProfileError::BadString {
                field: "sample_type[0].unit".into(),
                index: 1000,
                len: 5
            })
        );
    }
}
