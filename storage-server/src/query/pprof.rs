//! The pprof export: every selected profile merged into one symbolized `Profile` with all their
//! sample types, for `go tool pprof` and friends.

use std::collections::HashMap;

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;

use super::symbolize::{Resolved, Resolver};

/// Accumulates profiles into one. The union of sample types must be known up front (a pprof's
/// sample types are fixed); profiles are then added one at a time.
pub struct PprofMerger {
    builder: ProfileBuilder,
    types: HashMap<String, usize>,
    n_types: usize,
    start: Option<i64>,
    end: Option<i64>,
    period_set: bool,
    pub profiles: usize,
}

impl PprofMerger {
    /// `types` are `type:unit` strings, in output order.
    pub fn new(types: &[String]) -> PprofMerger {
        let pairs: Vec<(&str, &str)> = types
            .iter()
            .map(|t| t.split_once(':').unwrap_or((t.as_str(), "")))
            .collect();
        PprofMerger {
            builder: ProfileBuilder::new(&pairs),
            types: types
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect(),
            n_types: types.len(),
            start: None,
            end: None,
            period_set: false,
            profiles: 0,
        }
    }

    pub fn add(&mut self, p: &Profile, time_nanos: i64, resolver: &mut Resolver<'_>) {
        let b = &mut self.builder;
        // Where each of this profile's values goes in the merged value vector.
        let slots: Vec<Option<usize>> = p
            .sample_type
            .iter()
            .map(|st| {
                self.types
                    .get(&format!("{}:{}", p.str(st.r#type), p.str(st.unit)))
                    .copied()
            })
            .collect();
        if slots.iter().all(Option::is_none) {
            return;
        }
        self.profiles += 1;
        self.start = Some(self.start.map_or(time_nanos, |s| s.min(time_nanos)));
        let end = time_nanos.saturating_add(p.duration_nanos.max(0));
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
        if !self.period_set
            && let Some(pt) = &p.period_type
        {
            b.period(p.str(pt.r#type), p.str(pt.unit), p.period);
            self.period_set = true;
        }

        let resolved = resolver.resolve(p);
        let mappings: HashMap<u64, u64> = p
            .mapping
            .iter()
            .map(|m| {
                let id = b.mapping(
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    p.str(m.filename),
                    p.str(m.build_id),
                );
                if m.has_functions {
                    b.mark_symbolized(id);
                }
                (m.id, id)
            })
            .collect();
        let mut locations: HashMap<u64, u64> = HashMap::with_capacity(p.location.len());
        for loc in &p.location {
            let mapping = mappings.get(&loc.mapping_id).copied().unwrap_or(0);
            let id = match resolved.get(&loc.id) {
                Some(Resolved::Frames {
                    frames,
                    from_symbolizer,
                }) => {
                    if *from_symbolizer {
                        b.mark_symbolized(mapping);
                    }
                    let lines: Vec<(u64, i64)> = frames
                        .iter()
                        .map(|f| (b.function(&f.function, &f.file), f.line))
                        .collect();
                    b.symbolized_location(mapping, loc.address, &lines)
                }
                // No name to be had: keep the name the flame graph shows as the function, so that
                // the export is complete. A location without lines would make `go tool pprof`
                // fetching this over HTTP ask the server's `/symbolz`, which Kiln has no use for:
                // the server already symbolized all it could.
                Some(Resolved::Raw(name)) => {
                    let f = b.function(name, "");
                    b.symbolized_location(mapping, loc.address, &[(f, 0)])
                }
                None => b.raw_location(mapping, loc.address),
            };
            locations.insert(loc.id, id);
        }
        let mut stack = Vec::new();
        let mut values = vec![0i64; self.n_types];
        for s in &p.sample {
            stack.clear();
            stack.extend(
                s.location_id
                    .iter()
                    .filter_map(|l| locations.get(l).copied()),
            );
            values.iter_mut().for_each(|v| *v = 0);
            for (v, slot) in s.value.iter().zip(&slots) {
                if let Some(i) = slot {
                    values[*i] = *v;
                }
            }
            let labels: Vec<(&str, &str)> = s
                .label
                .iter()
                .filter(|l| l.str != 0)
                .map(|l| (p.str(l.key), p.str(l.str)))
                .collect();
            b.add_sample(&stack, &values, &labels);
        }
    }

    /// The merged profile; `preferred` (a `type:unit`) becomes the default sample type if present.
    pub fn finish(mut self, preferred: Option<&str>) -> Profile {
        let start = self.start.unwrap_or(0);
        let end = self.end.unwrap_or(start);
        self.builder.time(start, end.saturating_sub(start));
        let default_type = preferred
            .filter(|t| self.types.contains_key(*t))
            .or_else(|| {
                self.types
                    .keys()
                    .find(|t| t.starts_with("cpu:"))
                    .map(String::as_str)
            })
            .and_then(|t| t.split_once(':'))
            .map(|(ty, _)| ty.to_owned());
        let default_idx = default_type.map(|t| self.builder.string(&t));
        let mut p = self.builder.finish();
        // Every location carries its final name (see `add`): say so, or pprof tools try to
        // symbolize the mappings themselves.
        for m in &mut p.mapping {
            m.has_functions = true;
        }
        if let Some(i) = default_idx {
            p.default_sample_type = i;
        }
        p
    }
}
/// Keeps the samples of `p` whose stack, root first, begins with the functions `call_site`
/// (Pyroscope's `StackTraceSelector.call_site`, what the Drilldown app sends for a function's
/// details). Inlined frames count as frames, outermost first.
pub fn keep_call_site(p: &mut Profile, call_site: &[String]) {
    let functions: HashMap<u64, &str> = p.function.iter().map(|f| (f.id, p.str(f.name))).collect();
    // Per location: its frame names, outermost first.
    let frames: HashMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| {
            let names = l
                .line
                .iter()
                .rev()
                .map(|line| functions.get(&line.function_id).copied().unwrap_or(""))
                .collect();
            (l.id, names)
        })
        .collect();
    let keep: Vec<bool> = p
        .sample
        .iter()
        .map(|s| {
            let mut root_first = s
                .location_id
                .iter()
                .rev()
                .flat_map(|id| frames.get(id).into_iter().flatten().copied());
            call_site
                .iter()
                .all(|want| root_first.next() == Some(want.as_str()))
        })
        .collect();
    let mut keep = keep.into_iter();
    p.sample.retain(|_| keep.next().unwrap_or(false));
}
