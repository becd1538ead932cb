//! An interning builder for pprof profiles: strings, functions, mappings and locations are
//! deduplicated, ids are assigned densely from 1, and string 0 is `""` as the format requires.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// The hasher of the maps keyed by integers (ids, addresses). The agent interns every frame of
/// every sample here, and SipHash (std's default) was a tenth of its sampling thread on Node.js
/// stacks; foldhash is a few multiplies per key, randomly seeded per map. Strings keep std's
/// SipHash: they come from profiled programs and are interned once per window.
type Fast = foldhash::fast::RandomState;

use crate::pprof::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// Identifies a mapping for deduplication: where it sits and what file it is.
#[derive(Clone, PartialEq, Eq, Hash)]
struct MappingKey {
    start: u64,
    limit: u64,
    offset: u64,
    filename: i64,
    build_id: i64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum LocationKey {
    /// An address to be symbolized later, in a mapping.
    Raw { mapping: u64, address: u64 },
    /// An already-symbolized frame chain (innermost first).
    Symbolized {
        mapping: u64,
        address: u64,
        lines: Vec<(u64, i64)>,
    },
}

/// Builds a [`Profile`]. Samples with the same stack and labels are summed.
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64, Fast>,
    mappings: HashMap<MappingKey, u64, Fast>,
    locations: HashMap<LocationKey, u64, Fast>,
    /// Samples by stack and labels: the hash of the pair, then the indices of the samples with that
    /// hash (almost always one). Looked up by borrowed slices, so that a sample already present
    /// (most of them) costs no allocation.
    samples: HashMap<u64, Vec<usize>, foldhash::fast::FixedState>,
    sample_hasher: Fast,
}

impl ProfileBuilder {
    /// Starts a profile with the given `(type, unit)` sample types.
    pub fn new(sample_types: &[(&str, &str)]) -> Self {
        let mut b = ProfileBuilder {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::default(),
            mappings: HashMap::default(),
            locations: HashMap::default(),
            samples: HashMap::default(),
            sample_hasher: Fast::default(),
        };
        b.string("");
        for (ty, unit) in sample_types {
            let vt = ValueType {
                r#type: b.string(ty),
                unit: b.string(unit),
            };
            b.profile.sample_type.push(vt);
        }
        b
    }

    /// Interns `s` and returns its string-table index.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// Sets the sampling period, e.g. `("cpu", "nanoseconds", 52_631_578)` at 19 Hz.
    pub fn period(&mut self, ty: &str, unit: &str, period: i64) -> &mut Self {
        self.profile.period_type = Some(ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        });
        self.profile.period = period;
        self
    }

    /// Sets the wall-clock start and length of the profile.
    pub fn time(&mut self, time_nanos: i64, duration_nanos: i64) -> &mut Self {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
        self
    }

    /// Interns a function by name and file.
    pub fn function(&mut self, name: &str, filename: &str) -> u64 {
        let key = (self.string(name), self.string(filename));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// Interns a mapping; `build_id` is the hex GNU build ID, or `""` when unknown.
    pub fn mapping(
        &mut self,
        start: u64,
        limit: u64,
        offset: u64,
        filename: &str,
        build_id: &str,
    ) -> u64 {
        let key = MappingKey {
            start,
            limit,
            offset,
            filename: self.string(filename),
            build_id: self.string(build_id),
        };
        if let Some(&id) = self.mappings.get(&key) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        self.profile.mapping.push(Mapping {
            id,
            memory_start: start,
            memory_limit: limit,
            file_offset: offset,
            filename: key.filename,
            build_id: key.build_id,
            ..Default::default()
        });
        self.mappings.insert(key, id);
        id
    }

    /// Marks a mapping as symbolized (it carries function names, files and lines).
    pub fn mark_symbolized(&mut self, mapping_id: u64) {
        if let Some(m) = mapping_id
            .checked_sub(1)
            .and_then(|i| self.profile.mapping.get_mut(i as usize))
        {
            m.has_functions = true;
            m.has_filenames = true;
            m.has_line_numbers = true;
        }
    }

    /// Interns an unsymbolized location (address within `mapping_id`, 0 for none).
    pub fn raw_location(&mut self, mapping_id: u64, address: u64) -> u64 {
        self.location(LocationKey::Raw {
            mapping: mapping_id,
            address,
        })
    }

    /// Interns a symbolized location; `lines` is `(function id, line)` innermost (inlined) first.
    pub fn symbolized_location(
        &mut self,
        mapping_id: u64,
        address: u64,
        lines: &[(u64, i64)],
    ) -> u64 {
        self.location(LocationKey::Symbolized {
            mapping: mapping_id,
            address,
            lines: lines.to_vec(),
        })
    }

    fn location(&mut self, key: LocationKey) -> u64 {
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let (mapping_id, address, line) = match &key {
            LocationKey::Raw { mapping, address } => (*mapping, *address, Vec::new()),
            LocationKey::Symbolized {
                mapping,
                address,
                lines,
            } => (
                *mapping,
                *address,
                lines
                    .iter()
                    .map(|&(function_id, line)| Line { function_id, line })
                    .collect(),
            ),
        };
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// Adds `values` (one per sample type) to the sample with this stack (leaf first) and labels.
    pub fn add_sample(&mut self, locations: &[u64], values: &[i64], labels: &[(&str, &str)]) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label {
                key: self.string(k),
                str: self.string(v),
                num: 0,
                num_unit: 0,
            })
            .collect();
        let hash = self.sample_hasher.hash_one((locations, labels.as_slice()));
        let same = self.samples.entry(hash).or_default();
        let found = same.iter().copied().find(|&i| {
            let s = &self.profile.sample[i];
            s.location_id == locations && s.label == labels
        });
        if let Some(i) = found {
            let sample = &mut self.profile.sample[i];
            for (acc, v) in sample.value.iter_mut().zip(values) {
                *acc += v;
            }
            return;
        }
        same.push(self.profile.sample.len());
        self.profile.sample.push(Sample {
            location_id: locations.to_vec(),
            value: values.to_vec(),
            label: labels,
        });
    }

    /// Number of distinct samples so far.
    pub fn sample_count(&self) -> usize {
        self.profile.sample.len()
    }

    /// Sets the build ID of mapping `id` (from [`ProfileBuilder::mapping`]) learnt after it was
    /// interned. Unknown ids are ignored.
    pub fn set_mapping_build_id(&mut self, id: u64, build_id: &str) {
        let build_id = self.string(build_id);
        if let Some(m) = id
            .checked_sub(1)
            .and_then(|i| self.profile.mapping.get_mut(i as usize))
        {
            m.build_id = build_id;
        }
    }

    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_sums() {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        let m = b.mapping(0x1000, 0x2000, 0, "/bin/x", "abcd");
        assert_eq!(b.mapping(0x1000, 0x2000, 0, "/bin/x", "abcd"), m);
        let l1 = b.raw_location(m, 0x1234);
        let l2 = b.raw_location(m, 0x1300);
        assert_eq!(b.raw_location(m, 0x1234), l1);
        b.add_sample(&[l1, l2], &[1, 10], &[]);
        b.add_sample(&[l1, l2], &[1, 10], &[]);
        b.add_sample(&[l2], &[1, 10], &[("thread", "t1")]);
        let p = b.finish();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, vec![2, 20]);
        assert_eq!(p.location.len(), 2);
        assert_eq!(p.str(p.mapping[0].build_id), "abcd");
        assert_eq!(p.str(999), "");
    }
}
