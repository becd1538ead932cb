//! Query-time symbolization: gives every location of a stored profile its frames, asking the
//! symbolizer (in batches, per build ID) for raw user-space addresses the agent could not name.
//!
//! A query reads only what is stored, from the caller's tenant's debuginfo and the shared store
//! ([`crate::debuginfo::Opened::files`]); it never waits for the network. A build ID debuginfod
//! may have is queued for the background fetcher, and its frames say so meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use kiln_proto::pprof::{Function, Location, Mapping, Profile};
use kiln_symbolizer::{BuildId, Frame, Unsymbolized};
use serde::Serialize;

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
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        if self.kernel {
            format!("{} [k]", self.function).into()
        } else {
            self.function.as_str().into()
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
    /// No name: `<mapping basename>+0x<file offset>` or `0x<address>`, followed by why there is no
    /// name (`" (no symbols: debuginfo not uploaded)"`, see [`Reason::describe`]) when known. The
    /// reason is part of the name so that every output (flame graph, top, pprof, diff) shows it.
    Raw(String),
}

/// Why a frame has no name. Every unnamed user frame gets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The address lies in no mapping the agent knew: typically the process exited (or exec'd)
    /// before the agent read its `/proc/PID/maps`, or the code is anonymous memory (JIT).
    NoMapping,
    /// The mapping has no GNU build ID, so no debuginfo can be looked up for it.
    NoBuildId,
    /// The mapping is not backed by a file (anonymous memory: JIT code; `[vdso]`, `[stack]`…).
    NoFile,
    /// A kernel address `/proc/kallsyms` did not cover (module loaded later, or kptr_restrict).
    KernelUnknown,
    /// No debuginfo has been uploaded for the build ID (yet: the agent uploads in the background).
    NoDebuginfo,
    /// Debuginfo is stored, but it is stripped: no symbol table, no DWARF.
    Stripped,
    /// The stored file has symbols, but none covers the address.
    UnknownAddress,
    /// The address lies outside the stored file's segments: the mapping does not match the file.
    InvalidOffset,
    /// The symbolizer failed on this file (corrupt upload, parser error) or is unavailable.
    SymbolizerError,
    /// Nothing usable uploaded (none, or stripped), and the configured debuginfod servers do not
    /// have it either.
    DebuginfodMiss,
    /// Nothing usable uploaded yet; the configured debuginfod servers are being asked (in the
    /// background: a later query will show the names if they have it).
    DebuginfodPending,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::NoMapping,
        Reason::NoBuildId,
        Reason::NoFile,
        Reason::KernelUnknown,
        Reason::NoDebuginfo,
        Reason::Stripped,
        Reason::UnknownAddress,
        Reason::InvalidOffset,
        Reason::SymbolizerError,
        Reason::DebuginfodMiss,
        Reason::DebuginfodPending,
    ];

    /// Machine-readable name (API field values, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoMapping => "no_mapping",
            Reason::NoBuildId => "no_build_id",
            Reason::NoFile => "no_file",
            Reason::KernelUnknown => "kernel_unknown",
            Reason::NoDebuginfo => "no_debuginfo",
            Reason::Stripped => "stripped",
            Reason::UnknownAddress => "unknown_address",
            Reason::InvalidOffset => "invalid_offset",
            Reason::SymbolizerError => "symbolizer_error",
            Reason::DebuginfodMiss => "debuginfod_miss",
            Reason::DebuginfodPending => "debuginfod_pending",
        }
    }

    /// What a person reading the flame graph should be told.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::NoMapping => "no symbols: address in no known mapping (process exited?)",
            Reason::NoBuildId => "no symbols: binary has no build ID",
            Reason::NoFile => "no symbols: not backed by a file (JIT code? vdso?)",
            Reason::KernelUnknown => "no symbols: kernel address not in /proc/kallsyms",
            Reason::NoDebuginfo => "no symbols: debuginfo not uploaded",
            Reason::Stripped => "no symbols: stripped, no debuginfo",
            Reason::UnknownAddress => "no symbols: address not covered by any symbol",
            Reason::InvalidOffset => "no symbols: address outside the binary's segments",
            Reason::SymbolizerError => "no symbols: symbolizer error",
            Reason::DebuginfodMiss => "no symbols: no debuginfo uploaded or on debuginfod",
            Reason::DebuginfodPending => "no symbols: debuginfo being fetched from debuginfod",
        }
    }

    fn from_symbolizer(u: Unsymbolized) -> Reason {
        match u {
            Unsymbolized::NoSymbols => Reason::Stripped,
            Unsymbolized::InvalidOffset => Reason::InvalidOffset,
            // Future variants: the address is there but unnamed.
            _ => Reason::UnknownAddress,
        }
    }
}

/// Symbolization counts for one binary (build ID + mapped file name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BinaryStats {
    /// Distinct locations (addresses) with names.
    pub frames_symbolized: u64,
    /// Distinct locations without, by reason.
    pub frames_unsymbolized: BTreeMap<Reason, u64>,
    /// Sample values (of the queried profile type) over stacks, counted once per frame occurrence:
    /// how much of the profile's weight passes through named vs unnamed frames of this binary.
    pub samples_symbolized: i64,
    pub samples_unsymbolized: BTreeMap<Reason, i64>,
}

/// Key for [`BinaryStats`]: (mapped file, build ID); both may be empty.
pub type BinaryKey = (String, String);

/// Per-query cache entry: frames, or why there are none.
type Cached = Result<Arc<[Frame]>, Reason>;

/// Symbolizes across the profiles of one query, remembering answers and failures as it goes.
pub struct Resolver<'a> {
    debuginfo: Option<&'a DebugInfo>,
    cache: HashMap<(BuildId, u64), Cached>,
    /// Build IDs the symbolizer could not help with in this query, and why (no debuginfo, error).
    failed: HashMap<BuildId, Reason>,
    /// Set once the symbolizer itself is unusable, to stop asking.
    unavailable: bool,
    /// Build IDs whose debuginfo the configured debuginfod servers lack (asked recently).
    debuginfod_missed: std::collections::HashSet<BuildId>,
    /// Build IDs being fetched from debuginfod in the background.
    debuginfod_pending: std::collections::HashSet<BuildId>,
    /// Whose debuginfo (besides the shared store's) names the frames.
    tenant: crate::tenant::Tenant,
    /// Per-binary counts, kept only when asked for ([`Resolver::with_stats`]): counting samples
    /// costs a pass over every stack, which flame-graph queries should not pay.
    stats: Option<BTreeMap<BinaryKey, BinaryStats>>,
    /// `type:unit` of the value the sample counts weigh by.
    stats_type: String,
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
            failed: HashMap::new(),
            unavailable: false,
            debuginfod_missed: std::collections::HashSet::new(),
            debuginfod_pending: std::collections::HashSet::new(),
            tenant: crate::tenant::Tenant::default(),
            stats: None,
            stats_type: String::new(),
        }
    }

    /// Like [`Resolver::new`], also counting per binary what was named and what not (see
    /// [`Resolver::into_stats`]), samples weighed by the `profile_type` (`type:unit`) value.
    pub fn with_stats(debuginfo: Option<&'a DebugInfo>, profile_type: &str) -> Resolver<'a> {
        Resolver {
            stats: Some(BTreeMap::new()),
            stats_type: profile_type.to_owned(),
            ..Resolver::new(debuginfo)
        }
    }

    /// Symbolizes with `tenant`'s uploads (and the shared store); the default tenant's otherwise.
    pub fn for_tenant(mut self, tenant: &crate::tenant::Tenant) -> Resolver<'a> {
        self.tenant = tenant.clone();
        self
    }

    /// The per-binary counts gathered so far (empty unless made by [`Resolver::with_stats`]).
    pub fn into_stats(self) -> BTreeMap<BinaryKey, BinaryStats> {
        self.stats.unwrap_or_default()
    }

    /// Resolves every location of `p`, by location id. Blocking (symbolizer I/O).
    pub fn resolve(&mut self, p: &Profile) -> HashMap<u64, Resolved> {
        let mappings: HashMap<u64, &Mapping> = p.mapping.iter().map(|m| (m.id, m)).collect();
        let functions: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
        self.symbolize_missing(p, &mappings);
        let mut outcomes: HashMap<u64, Option<Reason>> = HashMap::new();
        // Summed here and added to the metric once per profile: the metric family takes a lock.
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        let resolved: HashMap<u64, Resolved> = p
            .location
            .iter()
            .map(|loc| {
                let (r, reason) = self.resolve_one(p, &mappings, &functions, loc);
                // Kernel frames and frames already named by the agent are not the
                // symbolizer's to count.
                let counted = match &r {
                    Resolved::Frames {
                        from_symbolizer, ..
                    } => *from_symbolizer,
                    Resolved::Raw(_) => true,
                };
                if counted {
                    outcomes.insert(loc.id, reason);
                    *counts
                        .entry(reason.map_or("symbolized", Reason::as_str))
                        .or_default() += 1;
                }
                (loc.id, r)
            })
            .collect();
        if let Some(debuginfo) = self.debuginfo {
            for (outcome, n) in counts {
                debuginfo.count_frames(outcome, n);
            }
        }
        if self.stats.is_some() {
            self.count(p, &mappings, &outcomes);
        }
        resolved
    }

    fn count(
        &mut self,
        p: &Profile,
        mappings: &HashMap<u64, &Mapping>,
        outcomes: &HashMap<u64, Option<Reason>>,
    ) {
        let value_index = p
            .sample_type
            .iter()
            .position(|t| format!("{}:{}", p.str(t.r#type), p.str(t.unit)) == self.stats_type)
            .unwrap_or(0);
        let Some(stats) = self.stats.as_mut() else {
            return;
        };
        let locations: HashMap<u64, &Location> = p.location.iter().map(|l| (l.id, l)).collect();
        let key = |loc_id: u64| -> BinaryKey {
            let m = locations
                .get(&loc_id)
                .and_then(|l| mappings.get(&l.mapping_id));
            match m {
                Some(m) => (p.str(m.filename).to_owned(), p.str(m.build_id).to_owned()),
                None => (String::new(), String::new()),
            }
        };
        for (&loc_id, reason) in outcomes {
            let s = stats.entry(key(loc_id)).or_default();
            match reason {
                None => s.frames_symbolized += 1,
                Some(r) => *s.frames_unsymbolized.entry(*r).or_default() += 1,
            }
        }
        for sample in &p.sample {
            let weight = sample.value.get(value_index).copied().unwrap_or(0);
            for loc_id in &sample.location_id {
                let Some(reason) = outcomes.get(loc_id) else {
                    continue;
                };
                let s = stats.entry(key(*loc_id)).or_default();
                match reason {
                    None => s.samples_symbolized += weight,
                    Some(r) => *s.samples_unsymbolized.entry(*r).or_default() += weight,
                }
            }
        }
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
                && !self.failed.contains_key(&key.0)
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
            let files = opened.files(&self.tenant, &id);
            if let Some(d) = debuginfo.debuginfod.as_ref()
                && crate::debuginfo::needs_fetch(files.as_ref())
            {
                // Never waits: the fetcher works in the background.
                match d.request(&id) {
                    crate::debuginfod::Status::Pending => {
                        self.debuginfod_pending.insert(id.clone());
                    }
                    crate::debuginfod::Status::Missed => {
                        self.debuginfod_missed.insert(id.clone());
                    }
                    crate::debuginfod::Status::Dropped => {}
                }
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                opened.symbolizer.symbolize_files(
                    self.tenant.as_str(),
                    &id,
                    files.as_ref(),
                    &offsets,
                )
            }));
            match result {
                Ok(Ok(frames)) if frames.len() == offsets.len() => {
                    for (off, f) in offsets.into_iter().zip(frames) {
                        let cached = match f {
                            Ok(f) if !f.is_empty() => Ok(Arc::from(f)),
                            Ok(_) => Err(Reason::UnknownAddress),
                            Err(u) => Err(Reason::from_symbolizer(u)),
                        };
                        self.cache.insert((id.clone(), off), cached);
                    }
                }
                Ok(Ok(frames)) => {
                    tracing::error!(
                        build_id = id.as_str(),
                        asked = offsets.len(),
                        got = frames.len(),
                        "symbolizer answered the wrong number of addresses"
                    );
                    self.failed.insert(id, Reason::SymbolizerError);
                }
                Ok(Err(kiln_symbolizer::Error::Missing(_))) => {
                    tracing::debug!(
                        build_id = id.as_str(),
                        "no debuginfo; frames stay unsymbolized"
                    );
                    self.failed.insert(id, Reason::NoDebuginfo);
                }
                Ok(Err(e)) => {
                    tracing::warn!(build_id = id.as_str(), error = %e, "symbolization failed");
                    self.failed.insert(id, Reason::SymbolizerError);
                }
                Err(_) => {
                    tracing::error!(build_id = id.as_str(), "symbolizer panicked");
                    self.failed.insert(id, Reason::SymbolizerError);
                }
            }
        }
    }

    /// `reason` with what debuginfod said folded in.
    fn with_debuginfod(&self, id: &BuildId, reason: Reason) -> Reason {
        match reason {
            Reason::NoDebuginfo | Reason::Stripped if self.debuginfod_pending.contains(id) => {
                Reason::DebuginfodPending
            }
            Reason::NoDebuginfo | Reason::Stripped if self.debuginfod_missed.contains(id) => {
                Reason::DebuginfodMiss
            }
            r => r,
        }
    }

    fn resolve_one(
        &self,
        p: &Profile,
        mappings: &HashMap<u64, &Mapping>,
        functions: &HashMap<u64, &Function>,
        loc: &Location,
    ) -> (Resolved, Option<Reason>) {
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
                return (
                    Resolved::Frames {
                        frames,
                        from_symbolizer: false,
                    },
                    None,
                );
            }
        }
        let wanted = Self::wants(p, mappings.get(&loc.mapping_id), loc);
        if let Some(key) = &wanted
            && let Some(Ok(frames)) = self.cache.get(key)
        {
            let resolved = Resolved::Frames {
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
            return (resolved, None);
        }
        let reason = self.reason(p, m, wanted.as_ref());
        let name = raw_name(p, m, loc.address);
        let name = match reason {
            Some(r) => format!("{name} ({})", r.describe()),
            None => name,
        };
        (Resolved::Raw(name), reason)
    }

    /// Why an unnamed location has no name; `None` when this resolver cannot tell (no symbolizer).
    fn reason(
        &self,
        p: &Profile,
        m: Option<&Mapping>,
        wanted: Option<&(BuildId, u64)>,
    ) -> Option<Reason> {
        let Some(m) = m else {
            return Some(Reason::NoMapping);
        };
        if is_kernel(m, p) {
            return Some(Reason::KernelUnknown);
        }
        let file = p.str(m.filename);
        if file.is_empty() || file.starts_with('[') || file.starts_with("//anon") {
            return Some(Reason::NoFile);
        }
        let Some(key) = wanted else {
            // A user mapping we would not ask about: no (valid) build ID, or the address lies
            // outside it; kernel frames the agent could not name are out of our reach too.
            return Some(if BuildId::parse(p.str(m.build_id)).is_err() {
                Reason::NoBuildId
            } else {
                Reason::InvalidOffset
            });
        };
        if let Some(Err(r)) = self.cache.get(key) {
            return Some(self.with_debuginfod(&key.0, *r));
        }
        if let Some(r) = self.failed.get(&key.0) {
            return Some(self.with_debuginfod(&key.0, *r));
        }
        if self.unavailable {
            return Some(Reason::SymbolizerError);
        }
        // Without a symbolizer (tests, tools) we did not look: say nothing rather than guess.
        self.debuginfo.map(|_| Reason::SymbolizerError)
    }
}

/// `GET /api/v1/symbolization`: per binary (mapped file + build ID), how many distinct frames and
/// how much sample weight of the selection are named, and why the rest are not.
pub async fn symbolization_handler(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    tenant: crate::tenant::Tenant,
    q: Result<axum::extract::Query<super::Params>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use axum::response::IntoResponse;
    let started = std::time::Instant::now();
    let p = super::params(q)?;
    let sel = p.selection()?.for_tenant(&tenant);
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            let mut resolver = Resolver::with_stats(Some(&st.debuginfo), &sel.profile_type)
                .for_tenant(&sel.tenant);
            let mut profiles = 0u64;
            st.store
                .read(
                    crate::store::ReadRequest {
                        selector: &sel.selector,
                        range: sel.range,
                        profile_type: Some(&sel.profile_type),
                        stop: Some(ctx.stop_flag()),
                    },
                    &mut |stored| {
                        use prost::Message as _;
                        if ctx.admit_read(1, stored.profile.encoded_len()) {
                            profiles += 1;
                            resolver.resolve(&stored.profile);
                        }
                    },
                )
                .map_err(crate::error::ApiError::internal)?;
            ctx.finish()?;
            let binaries: Vec<serde_json::Value> = resolver
                .into_stats()
                .into_iter()
                .map(|((file, build_id), s)| {
                    serde_json::json!({
                        "file": file,
                        "build_id": build_id,
                        "frames": {
                            "symbolized": s.frames_symbolized,
                            "unsymbolized": s.frames_unsymbolized,
                        },
                        "samples": {
                            "symbolized": s.samples_symbolized,
                            "unsymbolized": s.samples_unsymbolized,
                        },
                    })
                })
                .collect();
            Ok::<_, crate::error::ApiError>(serde_json::json!({
                "profile_type": sel.profile_type,
                "profiles": profiles,
                "binaries": binaries,
            }))
        })
        .await?;
    state
        .metrics
        .observe_query("symbolization", started.elapsed());
    Ok(axum::Json(body).into_response())
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
        let anon = b.mapping(0x7000_0000, 0x7001_0000, 0, "", "");
        let jit = b.raw_location(anon, 0x7000_0042);
        let kraw = b.raw_location(kern, 0xffff_ffff_c000_0000);
        b.add_sample(&[kraw, jit], &[1], &[]);
        let p = b.finish();
        let r = Resolver::new(None).resolve(&p);
        assert_eq!(
            r[&jit],
            Resolved::Raw("0x70000042 (no symbols: not backed by a file (JIT code? vdso?))".into())
        );
        assert_eq!(
            r[&kraw],
            Resolved::Raw(
                "[kernel.kallsyms]+0xffffffffc0000000 (no symbols: kernel address not in /proc/kallsyms)".into()
            )
        );
        assert_eq!(r[&raw], Resolved::Raw("app+0x2234".into()));
        assert_eq!(
            r[&nomap],
            Resolved::Raw(
                "0xdead (no symbols: address in no known mapping (process exited?))".into()
            )
        );
        match &r[&k] {
            Resolved::Frames { frames, .. } => assert_eq!(frames[0].display(), "do_syscall_64 [k]"),
            other => panic!("{other:?}"),
        }
    }
}
