//! Query-time symbolization: gives every location of a stored profile its frames, asking the
//! symbolizer (in batches, per build ID) for raw user-space addresses the agent could not name.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use kiln_proto::pprof::{Function, Location, Mapping, Profile};
use kiln_symbolizer::{BuildId, Frame};

use crate::debuginfo::DebugInfo;

/// The mapping name the agent gives kernel frames.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// One function frame of a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Function name as symbolized (demangled), without decoration.
    pub function: String,
    pub file: String,
    pub line: i64,
    pub kernel: bool,
}

impl FrameInfo {
    /// The flame-graph name: kernel frames get a ` [k]` suffix.
    pub fn display(&self) -> String {
        if self.kernel {
            format!("{} [k]", self.function)
        } else {
            self.function.clone()
        }
    }
}

/// What a location resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Frames, innermost (inlined) first. `from_symbolizer` is true when the server named them.
    Frames {
        frames: Vec<FrameInfo>,
        from_symbolizer: bool,
    },
    /// No name: `<mapping basename>+0x<file offset>` or `0x<address>`.
    Raw(String),
}

/// Symbolizes across the profiles of one query, remembering answers and failures as it goes.
pub struct Resolver<'a> {
    debuginfo: Option<&'a DebugInfo>,
    cache: HashMap<(BuildId, u64), Option<Arc<[Frame]>>>,
    /// Build IDs the symbolizer could not help with in this query (no debuginfo, or an error).
    failed: HashSet<BuildId>,
    /// Set once the symbolizer itself is unusable, to stop asking.
    unavailable: bool,
}

fn is_kernel(m: &Mapping, p: &Profile) -> bool {
    p.str(m.filename) == KERNEL_MAPPING
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The offset into the mapped file of `address`, when it lies in the mapping.
fn file_offset(m: &Mapping, address: u64) -> Option<u64> {
    address
        .checked_sub(m.memory_start)
        .and_then(|d| d.checked_add(m.file_offset))
}

fn raw_name(p: &Profile, m: Option<&Mapping>, address: u64) -> String {
    match m {
        Some(m) if !p.str(m.filename).is_empty() => match file_offset(m, address) {
            Some(off) => format!("{}+0x{off:x}", basename(p.str(m.filename))),
            None => format!("{}@0x{address:x}", basename(p.str(m.filename))),
        },
        _ => format!("0x{address:x}"),
    }
}

impl<'a> Resolver<'a> {
    /// A resolver that symbolizes with `debuginfo`, or only names what is already named if `None`.
    pub fn new(debuginfo: Option<&'a DebugInfo>) -> Resolver<'a> {
        Resolver {
            debuginfo,
            cache: HashMap::new(),
            failed: HashSet::new(),
            unavailable: false,
        }
    }

    /// Resolves every location of `p`, by location id. Blocking (symbolizer I/O).
    pub fn resolve(&mut self, p: &Profile) -> HashMap<u64, Resolved> {
        let mappings: HashMap<u64, &Mapping> = p.mapping.iter().map(|m| (m.id, m)).collect();
        let functions: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
        self.symbolize_missing(p, &mappings);
        p.location
            .iter()
            .map(|loc| (loc.id, self.resolve_one(p, &mappings, &functions, loc)))
            .collect()
    }

    /// What to ask the symbolizer about this location: (build ID, file offset).
    fn wants(p: &Profile, m: Option<&&Mapping>, loc: &Location) -> Option<(BuildId, u64)> {
        let m = m?;
        if !loc.line.is_empty() || is_kernel(m, p) {
            return None;
        }
        let id = BuildId::parse(p.str(m.build_id)).ok()?;
        Some((id, file_offset(m, loc.address)?))
    }

    fn symbolize_missing(&mut self, p: &Profile, mappings: &HashMap<u64, &Mapping>) {
        let Some(debuginfo) = self.debuginfo else {
            return;
        };
        if self.unavailable {
            return;
        }
        let mut batches: HashMap<BuildId, Vec<u64>> = HashMap::new();
        for loc in &p.location {
            if let Some(key) = Self::wants(p, mappings.get(&loc.mapping_id), loc)
                && !self.failed.contains(&key.0)
                && !self.cache.contains_key(&key)
            {
                batches.entry(key.0).or_default().push(key.1);
            }
        }
        if batches.is_empty() {
            return;
        }
        // A bug in the symbolizer must cost names, not the whole query.
        let opened = match std::panic::catch_unwind(AssertUnwindSafe(|| debuginfo.get())) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "debuginfo store unavailable; frames stay unsymbolized");
                self.unavailable = true;
                return;
            }
            Err(_) => {
                tracing::error!("opening the symbolizer panicked; frames stay unsymbolized");
                self.unavailable = true;
                return;
            }
        };
        for (id, mut offsets) in batches {
            offsets.sort_unstable();
            offsets.dedup();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                opened.symbolizer.symbolize(&id, &offsets)
            }));
            match result {
                Ok(Ok(frames)) if frames.len() == offsets.len() => {
                    for (off, f) in offsets.into_iter().zip(frames) {
                        self.cache.insert(
                            (id.clone(), off),
                            f.map(Arc::from).filter(|f: &Arc<[Frame]>| !f.is_empty()),
                        );
                    }
                }
                Ok(Ok(frames)) => {
                    tracing::error!(
                        build_id = id.as_str(),
                        asked = offsets.len(),
                        got = frames.len(),
                        "symbolizer answered the wrong number of addresses"
                    );
                    self.failed.insert(id);
                }
                Ok(Err(kiln_symbolizer::Error::Missing(_))) => {
                    tracing::debug!(
                        build_id = id.as_str(),
                        "no debuginfo; frames stay unsymbolized"
                    );
                    self.failed.insert(id);
                }
                Ok(Err(e)) => {
                    tracing::warn!(build_id = id.as_str(), error = %e, "symbolization failed");
                    self.failed.insert(id);
                }
                Err(_) => {
                    tracing::error!(build_id = id.as_str(), "symbolizer panicked");
                    self.failed.insert(id);
                }
            }
        }
    }

    fn resolve_one(
        &self,
        p: &Profile,
        mappings: &HashMap<u64, &Mapping>,
        functions: &HashMap<u64, &Function>,
        loc: &Location,
    ) -> Resolved {
        let m = mappings.get(&loc.mapping_id).copied();
        let kernel = m.is_some_and(|m| is_kernel(m, p));
        if !loc.line.is_empty() {
            let frames: Vec<FrameInfo> = loc
                .line
                .iter()
                .filter_map(|line| {
                    let f = functions.get(&line.function_id)?;
                    let name = match p.str(f.name) {
                        "" => p.str(f.system_name),
                        n => n,
                    };
                    (!name.is_empty()).then(|| FrameInfo {
                        function: name.to_owned(),
                        file: p.str(f.filename).to_owned(),
                        line: line.line,
                        kernel,
                    })
                })
                .collect();
            if !frames.is_empty() {
                return Resolved::Frames {
                    frames,
                    from_symbolizer: false,
                };
            }
        }
        if let Some(key) = Self::wants(p, mappings.get(&loc.mapping_id), loc)
            && let Some(Some(frames)) = self.cache.get(&key)
        {
            return Resolved::Frames {
                frames: frames
                    .iter()
                    .map(|f| FrameInfo {
                        function: f.function.clone(),
                        file: f.file.clone().unwrap_or_default(),
                        line: f.line.map_or(0, i64::from),
                        kernel: false,
                    })
                    .collect(),
                from_symbolizer: true,
            };
        }
        Resolved::Raw(raw_name(p, m, loc.address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ProfileBuilder;

    #[test]
    fn names_without_symbolizer() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let user = b.mapping(0x40_0000, 0x50_0000, 0x1000, "/usr/bin/app", "abcd");
        let kern = b.mapping(0, u64::MAX, 0, KERNEL_MAPPING, "");
        b.mark_symbolized(kern);
        let kf = b.function("do_syscall_64", "");
        let raw = b.raw_location(user, 0x40_1234);
        let nomap = b.raw_location(0, 0xdead);
        let k = b.symbolized_location(kern, 0xffff_ffff_8100_0000, &[(kf, 0)]);
        b.add_sample(&[k, raw, nomap], &[1], &[]);
        let p = b.finish();
        let r = Resolver::new(None).resolve(&p);
        assert_eq!(r[&raw], Resolved::Raw("app+0x2234".into()));
        assert_eq!(r[&nomap], Resolved::Raw("0xdead".into()));
        match &r[&k] {
            Resolved::Frames { frames, .. } => assert_eq!(frames[0].display(), "do_syscall_64 [k]"),
            other => panic!("{other:?}"),
        }
    }
}
