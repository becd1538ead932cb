//! The aggregation stage: [`Aggregator`] turns [`RawSample`]s into one pprof [`Profile`] per process
//! per window, with kernel frames named from kallsyms and user frames left as addresses in mappings
//! (with build IDs) for the server to symbolize.
//!
//! Decisions:
//! * **pid 0** (the idle task) should not reach us (the sampler skips it), but if it does, a sample
//!   with kernel frames (interrupt or softirq work done on the idle task) is kept under a `swapper`
//!   series; one without kernel frames says nothing about CPU use and is dropped as `Idle`.
//! * **Kernel threads** (no user registers) get kernel frames only.
//! * A process's series labels are fixed when it is first seen in a window; an `exec` mid-window
//!   shows up under the new labels from the next window on.
//! * The leaf frame keeps its address; every other frame (kernel and user) is a return address and is
//!   moved back by one byte so it symbolizes to the call, not to the line after it.
//! * User stacks come from [`Unwinder`] (DWARF CFI over the sampled registers and stack copy) when
//!   the sample has both, chosen against the kernel's frame-pointer walk by [`unwind::choose`]; a
//!   stack that stops short of a root ends in a pseudo-frame named after the reason (mapping
//!   [`PSEUDO_MAPPING`]), so the server shows `[truncated: stack copy exhausted]` rather than nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;
use kiln_proto::push::{LabelPair, RawProfileSeries};
use kiln_sampler_bpf::RawSample;
use prometheus_client::metrics::counter::Counter;

use crate::buildid::{BuildId, FileId, ObjectRef};
use crate::config::AgentConfig;
use crate::kallsyms::Kallsyms;
use crate::metrics::{AgentMetrics, SampleDropReason, UnwindSource, UnwindTruncation};
use crate::node::{JsLine, Node, NodeStack, Slot};
use crate::perfmap::{PerfMapConfig, PerfMaps};
use crate::procmaps::{Mapping, MappingKind, Process, ProcessCache};
use crate::python::{PyStack, Python, StackItem};
use crate::unwind::{self, StackEnd, Unwinder};

/// Why a frame of a binary the agent was refused reading has no name (in the frame's name, in the
/// server's "no symbols: …" style). Without CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH (see
/// capabilities.rs), another user's binary is such a one.
pub const UNREADABLE_BINARY: &str =
    "the agent could not read the binary: permission denied (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH?)";

/// Why a user frame of a process whose `/proc/PID/maps` the agent was refused has no name.
pub const UNREADABLE_PROCESS: &str =
    "the agent could not read the process's maps: permission denied (CAP_SYS_PTRACE?)";

/// Why kernel frames have no name when `/proc/kallsyms` shows the agent only zeros.
pub const HIDDEN_KERNEL: &str =
    "kernel addresses hidden from the agent (kptr_restrict; it lacks CAP_SYSLOG)";

/// The pprof mapping kernel frames belong to (the name `perf` uses, which the server recognizes).
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";
/// The pprof mapping of Kiln's pseudo-frames (truncation markers), symbolized by the agent.
pub const PSEUDO_MAPPING: &str = "[kiln]";
/// The pprof mapping of Python frames (named by the agent: function, file, line).
pub const PYTHON_MAPPING: &str = "[python]";
/// The pprof mapping of Java frames (named by the agent: class.method, line).
pub const JAVA_MAPPING: &str = "[java]";
/// The pprof mapping of JavaScript frames (named by the agent: function, script; see node/).
pub const JS_MAPPING: &str = "[js]";
/// Series name of CPU profiles (Pyroscope's convention).
pub const PROFILE_NAME: &str = "process_cpu";
/// Longest label value kept; longer ones are cut (at a character boundary).
pub const MAX_LABEL_VALUE_LEN: usize = 512;
const MAX_LABEL_NAME_LEN: usize = 128;

/// What the aggregator needs from [`AgentConfig`].
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub frequency_hz: NonZeroU32,
    pub node_name: String,
    pub max_processes_per_window: usize,
    pub max_stacks_per_process: usize,
}

impl From<&AgentConfig> for AggregatorConfig {
    fn from(c: &AgentConfig) -> Self {
        AggregatorConfig {
            frequency_hz: c.frequency_hz,
            node_name: c.node_name.clone(),
            max_processes_per_window: c.max_processes_per_window,
            max_stacks_per_process: c.max_stacks_per_process,
        }
    }
}

/// One process's profile for one window.
#[derive(Clone, Debug)]
pub struct ProcessProfile {
    pub pid: u32,
    /// Series labels, sorted by name, sanitized.
    pub labels: Vec<LabelPair>,
    pub profile: Profile,
    /// Object files with build IDs that this profile's frames point into (for debuginfo upload).
    pub objects: Vec<ObjectRef>,
}

impl ProcessProfile {
    /// The push series for this profile: its labels and the gzipped pprof.
    pub fn to_series(&self) -> RawProfileSeries {
        RawProfileSeries {
            labels: self.labels.clone(),
            samples: vec![kiln_proto::push::RawSample {
                // Plain protobuf: the push request around it is gzipped as a whole (see ship.rs),
                // and servers (Kiln's, Pyroscope's) tell gzip from plain pprof by its magic.
                // Gzipping each profile as well cost a zlib state per process per window — its
                // 256 KiB of tables zeroed each time, 43 % of the agent's CPU on a build machine
                // where every compiler run is a new process — for bytes compressed twice.
                raw_profile: prost::Message::encode_to_vec(&self.profile),
                id: random_uuid(),
            }],
        }
    }
}

/// A random (v4) UUID, as Pyroscope's SDKs put in `RawSample.ID`.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Identifies a mapping within a window (the same file mapped at the same place).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct MappingKey {
    start: u64,
    end: u64,
    offset: u64,
    file: FileId,
}

struct ProcessWindow {
    labels: Vec<LabelPair>,
    /// A pod process whose pod the watch had not delivered at the window's first sample: its
    /// labels are made again at the flush, when the pod is likely known by then.
    relabel: Option<LabelInputs>,
    builder: ProfileBuilder,
    mappings: HashMap<MappingKey, u64>,
    kernel_mapping: Option<u64>,
    objects: HashMap<BuildId, ObjectRef>,
    /// Mappings interned before the reader thread had their file's build ID (see
    /// [`BuildIdCache::with_worker`](crate::buildid::BuildIdCache::with_worker)): given their
    /// build ID at [`Aggregator::flush`] when it has arrived by then.
    awaiting_build_id: Vec<(u64, Mapping)>,
    /// Hashes of the (adjusted) address stacks seen, to enforce the distinct-stack limit before
    /// interning anything for a stack that will be dropped.
    stacks: foldhash::HashSet<u64>,
    /// Named frames already interned in this window (see [`NamedLocations`]).
    named: NamedLocations,
}

/// What identifies a named frame within one window, by integers: the location of a kernel address
/// under one load of kallsyms, of a JavaScript function at a line, of a Python code object at a
/// line, of a Java method at a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FrameKey {
    Kernel { addr: u64, kallsyms: u32 },
    Js { id: u64, line: u32 },
    Python { code: u64, line: i64 },
    Java { method: u64, line: i64 },
}

/// The pprof locations of the named frames a window has interned, so that a frame seen again
/// costs one integer lookup rather than hashing its function's name and file into the builder
/// (with 30-40 named frames per Node.js sample, that hashing was most of the aggregation stage).
///
/// The names a location was interned under are kept and compared by pointer on every hit: the
/// runtimes' caches hand out the same `Arc` for as long as they believe a name, so a function
/// renamed within the window (its address reused) misses here and gets its own location.
#[derive(Default)]
struct NamedLocations(foldhash::HashMap<FrameKey, (u64, Names)>);

/// The names a location was interned under (function, file), `None` where a kind has fewer.
type Names = [Option<Arc<str>>; 2];

impl NamedLocations {
    /// The location of `key` named `names`, interned with `intern` the first time.
    fn get_or_intern(
        &mut self,
        builder: &mut ProfileBuilder,
        key: FrameKey,
        names: [Option<&Arc<str>>; 2],
        intern: impl FnOnce(&mut ProfileBuilder) -> u64,
    ) -> u64 {
        let same = |held: &Names| {
            held.iter().zip(names).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
        };
        if let Some((location, held)) = self.0.get(&key)
            && same(held)
        {
            return *location;
        }
        let location = intern(builder);
        self.0.insert(key, (location, names.map(|n| n.cloned())));
        location
    }
}

/// A sample past the unwind stage ([`Aggregator::unwind`]): final stacks, no stack copy.
pub struct UnwoundSample {
    tgid: u32,
    comm: String,
    /// The sampled task's cgroup (v2 ID), which names its pod even when /proc cannot.
    cgroup_id: u64,
    process: Option<Arc<Process>>,
    /// Kernel frames, leaf first, return addresses moved back into the call (see [`adjusted`]).
    kernel: Vec<u64>,
    /// User frames, likewise.
    user: Vec<u64>,
    end: StackEnd,
    /// The Python frames read at sample time, named (see python/).
    python: Option<PyStack>,
    /// The Java frames the walk found, named (see java/).
    java: Option<crate::java::JavaStack>,
    /// The JavaScript frames of a Node process, named (see node/).
    node: Option<NodeStack>,
}

/// Groups samples per process over a window; [`Aggregator::flush`] ends the window.
///
/// The caller drives the windows (calls `flush` every `window`), so profile times are wall-clock
/// times of the flushes rather than derived from the samples' monotonic timestamps.
pub struct Aggregator {
    config: AggregatorConfig,
    period_nanos: i64,
    processes: ProcessCache,
    kallsyms: Arc<Kallsyms>,
    metrics: AgentMetrics,
    window_start: SystemTime,
    window_started: Instant,
    windows: HashMap<u32, ProcessWindow>,
    unwinder: Unwinder,
    /// When `kallsyms` was last (re)read.
    kallsyms_loaded: Instant,
    /// Bumped when kallsyms are re-read: keys the windows' kernel frames (see [`FrameKey`]).
    kallsyms_generation: u32,
    /// Seeds the hashes of the distinct-stack limit (see [`ProcessWindow::stacks`]).
    stack_hasher: foldhash::fast::RandomState,
    /// Pod, namespace and container names (Kubernetes), when the agent knows the API server.
    pods: Option<crate::kube::PodIndex>,
    /// Cgroup IDs of samples → paths in the host's v2 tree (see containers.rs).
    cgroups: crate::containers::CgroupPaths,
    unwind_metrics: UnwindMetrics,
    /// Times the stack walks of the current unwind pass (wall clock).
    walk_timer: crate::ticks::IntervalTimer,
    /// The frames of the stack being walked (kept for its capacity).
    frames: Vec<u64>,
    /// JIT names from perf maps, read by their own worker thread.
    perf_maps: PerfMaps,
    /// Refusals of process files already published, by reason (see process_files.rs).
    refusals_seen: [u64; 4],
    /// Same for the memory door's refusals (`kiln_agent_process_memory_reads_refused_total`).
    memory_refusals_seen: [u64; 2],
    /// CPython processes and their code objects; `None` when Python frames are switched off.
    python: Option<Python>,
    /// JVMs, their code caches and methods; `None` when Java frames are switched off.
    java: Option<crate::java::Java>,
    /// Node processes and their functions' names; `None` when JavaScript frames are switched off.
    node: Option<Node>,
    /// Each frame's rbp, for Node samples (kept for its capacity).
    frame_pointers: Vec<u64>,
}

/// Handles on the per-sample unwind counters (no label lookup per sample) and the table-cache
/// totals already published.
struct UnwindMetrics {
    dwarf: Counter,
    frame_pointers: Counter,
    evictions_seen: u64,
    loads_seen: u64,
    dropped_seen: u64,
    rules: HitTotals,
    memo: HitTotals,
}

/// A cache's running (hits, lookups) totals already turned into hit and miss counters.
#[derive(Default)]
struct HitTotals {
    hits: u64,
    lookups: u64,
}

impl HitTotals {
    /// Adds what happened since the last call to `hit` and `miss`.
    fn publish(&mut self, (hits, lookups): (u64, u64), hit: &Counter, miss: &Counter) {
        let new_hits = hits.saturating_sub(self.hits);
        let new_lookups = lookups.saturating_sub(self.lookups);
        hit.inc_by(new_hits);
        miss.inc_by(new_lookups.saturating_sub(new_hits));
        *self = HitTotals { hits, lookups };
    }
}

impl UnwindMetrics {
    fn new(m: &AgentMetrics) -> Self {
        UnwindMetrics {
            dwarf: m.unwind_source(UnwindSource::Dwarf),
            frame_pointers: m.unwind_source(UnwindSource::FramePointers),
            evictions_seen: 0,
            loads_seen: 0,
            dropped_seen: 0,
            rules: HitTotals::default(),
            memo: HitTotals::default(),
        }
    }

    fn record(&self, m: &AgentMetrics, source: unwind::Source, frames: usize, end: StackEnd) {
        match source {
            unwind::Source::Dwarf => self.dwarf.inc(),
            unwind::Source::FramePointers => self.frame_pointers.inc(),
        };
        m.unwind_frames.inc_by(frames as u64);
        if let StackEnd::Truncated(why) = end {
            m.unwind_truncation(truncation_label(why)).inc();
        }
    }

    /// Publishes the table cache's size and its eviction and load totals, and the rule cache's and
    /// stack memo's hits and misses.
    fn publish_tables(
        &mut self,
        m: &AgentMetrics,
        stats: unwind::tables::CacheStats,
        rule_stats: (u64, u64),
        memo_stats: (u64, u64),
    ) {
        m.unwind_table_cache_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        m.unwind_table_cache_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        m.unwind_table_cache_evictions
            .inc_by(stats.evictions.saturating_sub(self.evictions_seen));
        m.unwind_table_loads
            .inc_by(stats.loads.saturating_sub(self.loads_seen));
        m.unwind_table_loads_pending
            .set(i64::try_from(stats.pending).unwrap_or(i64::MAX));
        m.unwind_table_loads_dropped
            .inc_by(stats.dropped.saturating_sub(self.dropped_seen));
        self.dropped_seen = stats.dropped;
        self.rules.publish(
            rule_stats,
            &m.unwind_rule_cache_hits,
            &m.unwind_rule_cache_misses,
        );
        self.memo
            .publish(memo_stats, &m.unwind_memo_hits, &m.unwind_memo_misses);
        self.evictions_seen = stats.evictions;
        self.loads_seen = stats.loads;
    }
}

fn truncation_label(t: unwind::Truncation) -> UnwindTruncation {
    use unwind::{Truncation as T, UnwindFailure as F};
    match t {
        T::CopyExhausted => UnwindTruncation::CopyExhausted,
        T::TooDeep => UnwindTruncation::TooDeep,
        T::TablesLoading => UnwindTruncation::TablesLoading,
        T::Failed(F::BadStackRead) => UnwindTruncation::BadStackRead,
        T::Failed(F::FramePointerBackwards) => UnwindTruncation::FramePointerBackwards,
        T::Failed(F::NoProgress) => UnwindTruncation::NoProgress,
        T::Failed(F::Overflow) => UnwindTruncation::Overflow,
        T::Failed(F::NullReturnAddress) => UnwindTruncation::NullReturnAddress,
    }
}

/// How often at most kernel symbols are re-read when a kernel frame is not covered by them.
const KALLSYMS_REFRESH: Duration = Duration::from_secs(60);

impl Aggregator {
    pub fn new(
        config: AggregatorConfig,
        processes: ProcessCache,
        kallsyms: Arc<Kallsyms>,
        metrics: AgentMetrics,
    ) -> Self {
        Aggregator {
            period_nanos: 1_000_000_000 / i64::from(config.frequency_hz.get()),
            config,
            processes,
            kallsyms,
            metrics: metrics.clone(),
            window_start: SystemTime::now(),
            window_started: Instant::now(),
            windows: HashMap::new(),
            unwinder: Unwinder::default(),
            kallsyms_loaded: Instant::now(),
            kallsyms_generation: 0,
            stack_hasher: foldhash::fast::RandomState::default(),
            pods: None,
            cgroups: crate::containers::CgroupPaths::detect(),
            unwind_metrics: UnwindMetrics::new(&metrics),
            walk_timer: crate::ticks::IntervalTimer::begin(),
            frames: Vec::with_capacity(unwind::MAX_FRAMES),
            perf_maps: PerfMaps::new(PerfMapConfig::default(), metrics.clone()),
            refusals_seen: [0; 4],
            memory_refusals_seen: [0; 2],
            python: None,
            java: None,
            node: None,
            frame_pointers: Vec::with_capacity(unwind::MAX_FRAMES),
        }
    }

    /// Names Java frames of HotSpot JVMs and unwinds through their JIT code (see java/).
    pub fn with_java(mut self, java: crate::java::Java) -> Self {
        self.java = Some(java);
        self
    }

    /// Names JavaScript frames of Node processes (see node/).
    pub fn with_node(mut self, node: Node) -> Self {
        self.node = Some(node);
        self
    }

    /// Names Python frames of CPython processes (see python/): `python` holds the sampler's map
    /// of them.
    pub fn with_python(mut self, python: Python) -> Self {
        self.python = Some(python);
        self
    }

    /// Replaces the user-stack unwinder (e.g. with another table budget).
    pub fn with_unwinder(mut self, unwinder: Unwinder) -> Self {
        self.unwinder = unwinder;
        self
    }

    /// Names pods, namespaces and containers from this index (kept current by
    /// [`crate::kube::refresh_loop`]).
    pub fn with_pods(mut self, pods: crate::kube::PodIndex) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Adds one sample to the current window: an unwind pass of one, then [`Aggregator::aggregate`].
    pub fn add(&mut self, s: &RawSample) {
        let mut unwound = Vec::with_capacity(1);
        self.unwind_pass(&mut unwound, |sink| sink(s));
        for u in unwound {
            self.aggregate(u);
        }
    }

    /// One unwind pass: `feed` hands samples (a drain of the ring buffer) to the sink it is given,
    /// each is unwound with [`Aggregator::unwind`] and appended to `out`. Returns what `feed` does.
    ///
    /// The pass is the unit the walk's cost is measured over
    /// (`kiln_agent_unwind_seconds_total`): the smaller of the walks' summed wall-clock times
    /// and the thread's CPU time over the whole pass less the unwinders built in it. Both bound
    /// the walks' CPU time from above; wall-clock time alone also counts every preemption that
    /// falls inside a walk (see cputime.rs), CPU time alone counts reading and parsing the records.
    pub fn unwind_pass<R>(
        &mut self,
        out: &mut Vec<UnwoundSample>,
        feed: impl FnOnce(&mut dyn FnMut(&RawSample)) -> R,
    ) -> R {
        let started = crate::cputime::thread_cpu_time();
        self.walk_timer = crate::ticks::IntervalTimer::begin();
        let r = feed(&mut |s| out.extend(self.unwind(s)));
        let walks = self.walk_timer.finish();
        let pass = crate::cputime::thread_cpu_time().saturating_sub(started);
        let build = self.unwinder.take_build_time();
        let walks = walks.min(pass.saturating_sub(build));
        self.metrics.unwind_seconds.inc_by(walks.as_secs_f64());
        if !build.is_zero() {
            self.metrics
                .unwind_build_seconds
                .inc_by(build.as_secs_f64());
        }
        r
    }

    /// The unwind stage of one sample: finds its process and rebuilds its user stack from the
    /// stack copy, the one part of a sample that needs the copy (still in the ring buffer).
    /// `None` for a sample dropped as idle. Called by [`Aggregator::unwind_pass`].
    fn unwind(&mut self, s: &RawSample) -> Option<UnwoundSample> {
        self.metrics.samples_received.inc();
        if s.tgid == 0 && s.kernel_stack.is_empty() {
            self.metrics.sample_dropped(SampleDropReason::Idle).inc();
            return None;
        }
        // Kernel threads have no user context: whatever the user stack says is meaningless.
        let user: &[u64] = if s.user_regs.is_some() {
            &s.user_stack
        } else {
            &[]
        };
        let fp_user = adjusted(user);

        let process = if s.tgid == 0 {
            None
        } else {
            // A sample on the thread-group leader carries the process's own comm: a change means exec.
            let leader_comm = (s.tid == s.tgid).then_some(s.comm.as_str());
            self.processes.resolve(s.tgid, leader_comm, &fp_user)
        };
        // A JVM: its JIT frames are stepped over by the Java hook, which also finds its Java frames.
        let jvm = match (&mut self.java, &process) {
            (Some(j), Some(p)) if s.user_regs.is_some() => Some(j.observe(p)),
            _ => None,
        };
        // A Node process: its frames' rbp values are needed to find its JavaScript frames.
        // `Some(builtins)` for one the agent can read (where V8's embedded builtins are).
        let node_kind = match (&mut self.node, &process) {
            (Some(n), Some(p)) if s.user_regs.is_some() => match n.observe(p) {
                crate::node::Detection::NotNode => None,
                crate::node::Detection::Readable(t) => Some(Some(t.builtins)),
                crate::node::Detection::Unreadable(_) => Some(None),
            },
            _ => None,
        };
        let mut java_raw = Vec::new();
        let (user, end, node) = match (&process, s.user_regs) {
            (Some(p), Some(regs)) if !s.stack_copy.is_empty() => {
                let mut walker = self.unwinder.prepare(p);
                let started = crate::ticks::now();
                let end = match (&jvm, &mut self.java) {
                    (Some(crate::java::Detection::Readable(jvm)), Some(java)) => {
                        let mut hook = java.walk(jvm);
                        let end =
                            walker.walk_jit(regs, &s.stack_copy, &mut self.frames, &mut hook, None);
                        java_raw = hook.frames;
                        end
                    }
                    _ if let Some(Some(builtins)) = node_kind => walker.walk_jit(
                        regs,
                        &s.stack_copy,
                        &mut self.frames,
                        &mut crate::node::V8Code::new(builtins, p),
                        Some(&mut self.frame_pointers),
                    ),
                    _ => walker.walk(regs, &s.stack_copy, &mut self.frames),
                };
                self.walk_timer.add_since(started);
                let (frames, end, source) = unwind::choose(&self.frames, end, user);
                if source != unwind::Source::Dwarf {
                    // The Java frames were found by index in the walk that was not taken.
                    java_raw.clear();
                }
                self.unwind_metrics
                    .record(&self.metrics, source, frames.len(), end);
                // JavaScript frames are named now, while their functions surely still exist.
                let node = match (&mut self.node, node_kind) {
                    (Some(n), Some(builtins)) => {
                        let readable = builtins.is_some();
                        // The kernel's frame-pointer walk was taken: its frames' rbp values are
                        // the chain from the sampled rbp, not what the DWARF walk recorded.
                        if readable && source == unwind::Source::FramePointers {
                            crate::node::frame_pointer_chain(
                                regs.bp,
                                regs.sp,
                                &s.stack_copy,
                                frames.len(),
                                &mut self.frame_pointers,
                            );
                        }
                        let fps: &[u64] = if readable { &self.frame_pointers } else { &[] };
                        n.resolve(p, frames, fps, regs.sp, &s.stack_copy)
                    }
                    _ => None,
                };
                (adjusted(frames), end, node)
            }
            // No copy (or no process to find tables in): the kernel's walk is all there is.
            _ => (fp_user, StackEnd::Complete, None),
        };
        // Python frames are named now, while their code objects surely still exist.
        let python = match (&mut self.python, &process) {
            (Some(py), Some(p)) if s.user_regs.is_some() => {
                py.observe(p);
                py.resolve(p, s.py_status, &s.py_frames)
            }
            _ => None,
        };
        let java = match (jvm, &mut self.java, &process) {
            (Some(crate::java::Detection::Readable(jvm)), Some(java), Some(p)) => {
                Some(java.resolve(p, &jvm, &java_raw))
            }
            (Some(crate::java::Detection::Unreadable(why)), _, _) => Some(crate::java::JavaStack {
                frames: Vec::new(),
                unreadable: Some(why),
            }),
            _ => None,
        };
        Some(UnwoundSample {
            tgid: s.tgid,
            comm: s.comm.clone(),
            cgroup_id: s.cgroup_id,
            kernel: adjusted(&s.kernel_stack),
            process,
            user,
            end,
            python,
            java,
            node,
        })
    }

    /// The aggregation stage: adds an unwound sample to its process's profile of this window.
    pub fn aggregate(&mut self, s: UnwoundSample) {
        let UnwoundSample {
            kernel,
            process,
            user,
            end,
            python,
            java,
            node,
            ..
        } = &s;
        let (kernel, user, end) = (kernel.as_slice(), user.as_slice(), *end);
        if kernel.iter().any(|&a| self.kallsyms.lookup(a).is_none()) {
            self.refresh_kallsyms();
        }
        self.metrics
            .process_cache_size
            .set(self.processes.len() as i64);

        if !self.windows.contains_key(&s.tgid) {
            if self.windows.len() >= self.config.max_processes_per_window {
                self.metrics
                    .sample_dropped(SampleDropReason::ProcessLimit)
                    .inc();
                return;
            }
            // Labels are resolved now, at the process's first sample in the window, not at
            // upload: a process that lived 200 ms is gone by then.
            let by_id = self.cgroups.path(s.cgroup_id);
            let inputs = LabelInputs::of(&s, process.as_deref(), by_id.as_deref());
            let labels = inputs.labels(&self.config.node_name, self.pods.as_ref());
            self.windows.insert(
                s.tgid,
                ProcessWindow {
                    labels,
                    relabel: inputs.pod_unknown(self.pods.as_ref()).then_some(inputs),
                    builder: ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]),
                    mappings: HashMap::new(),
                    kernel_mapping: None,
                    objects: HashMap::new(),
                    awaiting_build_id: Vec::new(),
                    stacks: foldhash::HashSet::default(),
                    named: NamedLocations::default(),
                },
            );
        }
        let Some(w) = self.windows.get_mut(&s.tgid) else {
            return;
        };

        let mut h = self.stack_hasher.build_hasher();
        kernel.hash(&mut h);
        user.hash(&mut h);
        end.hash(&mut h);
        if let Some(PyStack::Frames { frames, .. }) = python {
            for f in frames {
                (f.code, f.line, f.entry).hash(&mut h);
            }
        }
        if let Some(j) = java {
            for (i, frames) in &j.frames {
                i.hash(&mut h);
                for f in frames {
                    (f.method, f.line).hash(&mut h);
                }
            }
        }
        if let Some(NodeStack::Frames(slots)) = node {
            for slot in slots {
                if let Slot::Js(chain) = slot {
                    for f in chain.iter() {
                        (f.frame.id, f.line).hash(&mut h);
                    }
                }
            }
        }
        let stack_hash = h.finish();
        if !w.stacks.contains(&stack_hash) {
            if w.stacks.len() >= self.config.max_stacks_per_process {
                self.metrics
                    .sample_dropped(SampleDropReason::StackLimit)
                    .inc();
                return;
            }
            w.stacks.insert(stack_hash);
        }

        // A process whose maps the agent may not read: its user frames say so (see below).
        let denied = process.is_none() && self.processes.is_denied(s.tgid);
        let mut locations = Vec::with_capacity(kernel.len() + user.len());
        for &addr in kernel {
            let kmap = *w.kernel_mapping.get_or_insert_with(|| {
                let id = w.builder.mapping(0, u64::MAX, 0, KERNEL_MAPPING, "");
                w.builder.mark_symbolized(id);
                id
            });
            let kallsyms = &self.kallsyms;
            let key = FrameKey::Kernel {
                addr,
                kallsyms: self.kallsyms_generation,
            };
            let loc = w
                .named
                .get_or_intern(&mut w.builder, key, [None, None], |b| {
                    match kallsyms.lookup(addr) {
                        Some(sym) => {
                            let f = b.function(sym.name, "");
                            b.symbolized_location(kmap, addr, &[(f, 0)])
                        }
                        // Hidden addresses: say why here, the server cannot tell (see
                        // HIDDEN_KERNEL).
                        None if kallsyms.is_restricted() => {
                            let name = format!(
                                "{KERNEL_MAPPING}+0x{addr:x} (no symbols: {HIDDEN_KERNEL})"
                            );
                            let f = b.function(&name, "");
                            b.symbolized_location(kmap, addr, &[(f, 0)])
                        }
                        None => b.raw_location(kmap, addr),
                    }
                });
            locations.push(loc);
        }
        let spliced: Vec<UserItem<'_>> = match (python, node) {
            (Some(py), _) => py
                .splice(user, |a| {
                    process.as_deref().and_then(|p| p.find(a)).map(|m| m.file)
                })
                .into_iter()
                .map(UserItem::Stack)
                .collect(),
            (None, Some(node)) => {
                let mut items: Vec<UserItem<'_>> = Vec::with_capacity(user.len() + 1);
                for (i, &a) in user.iter().enumerate() {
                    match node.slot(i) {
                        Slot::Native => items.push(UserItem::Stack(StackItem::Native(a))),
                        Slot::Js(chain) => items.extend(chain.iter().map(UserItem::Js)),
                        Slot::Same => {}
                    }
                }
                if let NodeStack::Unreadable(why) = node {
                    items.push(UserItem::Stack(StackItem::Marker(why)));
                }
                items
            }
            (None, None) => user
                .iter()
                .map(|&a| UserItem::Stack(StackItem::Native(a)))
                .collect(),
        };
        // Java frames replace the walked frames they were found at (a JVM is never also CPython
        // or Node, so `spliced` is the walked stack itself then).
        let mut java_frames = java.as_ref().map(|j| j.frames.iter().peekable());
        for (index, item) in spliced.into_iter().enumerate() {
            if python.is_none()
                && let Some(jf) = java_frames.as_mut()
                && let Some((_, named)) = jf.next_if(|(i, _)| *i == index)
            {
                for f in named {
                    let key = FrameKey::Java {
                        method: f.method,
                        line: f.line,
                    };
                    locations.push(w.named.get_or_intern(
                        &mut w.builder,
                        key,
                        [Some(&f.name), None],
                        |b| {
                            let jmap = b.mapping(0, 0, 0, JAVA_MAPPING, "");
                            b.mark_symbolized(jmap);
                            let func = b.function(&f.name, "");
                            b.symbolized_location(jmap, f.method, &[(func, f.line)])
                        },
                    ));
                }
                continue;
            }
            let item = match item {
                UserItem::Js(f) => {
                    let key = FrameKey::Js {
                        id: f.frame.id,
                        line: f.line,
                    };
                    let names = [Some(&f.frame.name), Some(&f.frame.script)];
                    locations.push(w.named.get_or_intern(&mut w.builder, key, names, |b| {
                        let jsmap = b.mapping(0, 0, 0, JS_MAPPING, "");
                        b.mark_symbolized(jsmap);
                        let func = b.function(&f.frame.name, &f.frame.script);
                        b.symbolized_location(jsmap, f.frame.id, &[(func, i64::from(f.line))])
                    }));
                    continue;
                }
                UserItem::Stack(item) => item,
            };

            let addr = match item {
                StackItem::Native(addr) => addr,
                StackItem::Python(f) => {
                    let key = FrameKey::Python {
                        code: f.code,
                        line: f.line,
                    };
                    let names = [Some(&f.name), Some(&f.file)];
                    locations.push(w.named.get_or_intern(&mut w.builder, key, names, |b| {
                        let pymap = b.mapping(0, 0, 0, PYTHON_MAPPING, "");
                        b.mark_symbolized(pymap);
                        let func = b.function(&f.name, &f.file);
                        b.symbolized_location(pymap, f.code, &[(func, f.line)])
                    }));
                    continue;
                }
                StackItem::Marker(name) => {
                    locations.push(pseudo_location(&mut w.builder, name));
                    continue;
                }
            };
            // JIT code named from the runtime's /tmp/perf-PID.map (see perfmap.rs).
            if let Some(loc) = crate::perfmap::jit_location(
                &mut w.builder,
                &mut self.perf_maps,
                process.as_deref(),
                addr,
            ) {
                locations.push(loc);
                continue;
            }
            if denied {
                let name = format!("0x{addr:x} (no symbols: {UNREADABLE_PROCESS})");
                let f = w.builder.function(&name, "");
                locations.push(w.builder.symbolized_location(0, addr, &[(f, 0)]));
                continue;
            }
            let mapping = process.as_deref().and_then(|p| p.find(addr));
            let mapping_id = match mapping {
                Some(m) => window_mapping(
                    w,
                    m,
                    s.tgid,
                    process.as_deref().is_some_and(|p| p.build_id_pending(m)),
                ),
                None => 0,
            };
            // vDSO frames are named here: the server has no file for them (see vdso.rs).
            if let Some(name) =
                mapping.and_then(|m| crate::vdso::Vdso::get().and_then(|v| v.lookup(m, addr)))
            {
                let f = w.builder.function(name, "[vdso]");
                locations.push(w.builder.symbolized_location(mapping_id, addr, &[(f, 0)]));
                continue;
            }
            // A binary the agent may not read has no build ID we know of; the server would call
            // it "no build ID", which is false: name the frame with the real reason here.
            if let (Some(p), Some(m)) = (process.as_deref(), mapping)
                && p.unreadable(m)
            {
                let file = m.filename();
                let base = file.rsplit('/').next().unwrap_or(&file);
                let name = format!(
                    "{base}+0x{:x} (no symbols: {UNREADABLE_BINARY})",
                    m.file_offset(addr)
                );
                let f = w.builder.function(&name, "");
                locations.push(w.builder.symbolized_location(mapping_id, addr, &[(f, 0)]));
                continue;
            }
            locations.push(w.builder.raw_location(mapping_id, addr));
        }
        if let StackEnd::Truncated(why) = end {
            locations.push(pseudo_location(&mut w.builder, why.frame_name()));
        }
        if let Some(why) = java.as_ref().and_then(|j| j.unreadable.as_deref()) {
            locations.push(pseudo_location(&mut w.builder, why));
        }
        w.builder
            .add_sample(&locations, &[1, self.period_nanos], &[]);
    }

    /// Re-reads `/proc/kallsyms` after a kernel address it did not cover (a module or BPF
    /// program loaded since), at most once per [`KALLSYMS_REFRESH`].
    fn refresh_kallsyms(&mut self) {
        if self.kallsyms_loaded.elapsed() < KALLSYMS_REFRESH {
            return;
        }
        self.kallsyms_loaded = Instant::now();
        match Kallsyms::load() {
            Ok(k) if !k.is_empty() => {
                self.kallsyms = Arc::new(k);
                // Kernel frames interned under the old symbols are looked up again.
                self.kallsyms_generation = self.kallsyms_generation.wrapping_add(1);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "re-reading kernel symbols"),
        }
    }

    /// Ends the window: returns one profile per process seen (sorted by pid) and starts the next
    /// window. Afterwards the process cache drops processes that exited.
    pub fn flush(&mut self) -> Vec<ProcessProfile> {
        let now = SystemTime::now();
        let elapsed = self.window_started.elapsed();
        let start_nanos = self
            .window_start
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let start_nanos = i64::try_from(start_nanos).unwrap_or(i64::MAX);
        let duration_nanos = i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX);

        let mut out: Vec<ProcessProfile> = self
            .windows
            .drain()
            .map(|(pid, mut w)| {
                // The pod the watch delivered since the window's first sample.
                if let Some(inputs) = w.relabel.take()
                    && !inputs.pod_unknown(self.pods.as_ref())
                {
                    w.labels = inputs.labels(&self.config.node_name, self.pods.as_ref());
                }
                // Build IDs the reader thread found since their mappings were interned.
                for (id, m) in std::mem::take(&mut w.awaiting_build_id) {
                    if let Some(Some(b)) = self.processes.known_build_id(m.file) {
                        w.builder.set_mapping_build_id(id, &b.to_hex());
                        offer_object(&mut w, &m, &b, pid);
                    }
                }
                w.builder
                    .period("cpu", "nanoseconds", self.period_nanos)
                    .time(start_nanos, duration_nanos);
                let mut objects: Vec<ObjectRef> = w.objects.into_values().collect();
                objects.sort_by(|a, b| a.build_id.cmp(&b.build_id));
                ProcessProfile {
                    pid,
                    labels: w.labels,
                    profile: w.builder.finish(),
                    objects,
                }
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        self.metrics.profiles_built.inc_by(out.len() as u64);
        self.window_start = now;
        self.window_started = Instant::now();
        self.processes.sweep();
        let processes = &self.processes;
        self.perf_maps
            .retain(|pid, start| processes.cached(pid).is_some_and(|p| p.start_time == start));
        if let Some(py) = &mut self.python {
            py.end_window(|pid, start| {
                processes.cached(pid).is_some_and(|p| p.start_time == start)
            });
        }
        if let Some(java) = &mut self.java {
            java.end_window(|pid, start| {
                processes.cached(pid).is_some_and(|p| p.start_time == start)
            });
        }
        if let Some(node) = &mut self.node {
            node.end_window(|pid, start| {
                processes.cached(pid).is_some_and(|p| p.start_time == start)
            });
        }
        self.publish_refusals();
        self.unwinder.end_window();
        self.unwind_metrics.publish_tables(
            &self.metrics,
            self.unwinder.table_stats(),
            self.unwinder.rule_cache_stats(),
            self.unwinder.memo_stats(),
        );
        self.metrics
            .process_cache_size
            .set(self.processes.len() as i64);
        out
    }

    /// Adds the door's refusals (counted on whichever thread opened the file) since the last call
    /// to `kiln_agent_process_files_refused_total`, and the memory door's to
    /// `kiln_agent_process_memory_reads_refused_total`.
    fn publish_refusals(&mut self) {
        for (seen, (reason, total)) in self
            .refusals_seen
            .iter_mut()
            .zip(crate::process_files::refusal_totals())
        {
            self.metrics
                .process_file_refused(reason)
                .inc_by(total.saturating_sub(*seen));
            *seen = total;
        }
        for (seen, (reason, total)) in self
            .memory_refusals_seen
            .iter_mut()
            .zip(crate::process_memory::refusal_totals())
        {
            self.metrics
                .process_memory_read_refused(reason)
                .inc_by(total.saturating_sub(*seen));
            *seen = total;
        }
    }

    /// Replaces the perf-map reader (e.g. with other limits).
    pub fn with_perf_maps(mut self, config: PerfMapConfig) -> Self {
        self.perf_maps = PerfMaps::new(config, self.metrics.clone());
        self
    }

    /// Processes with samples in the current window.
    pub fn processes_in_window(&self) -> usize {
        self.windows.len()
    }
}

/// One user frame of a sample in the aggregation loop: native or Python (spliced), or JavaScript.
enum UserItem<'a> {
    Stack(StackItem<'a>),
    Js(&'a JsLine),
}

/// A named pseudo-frame (a truncation or Python marker) in [`PSEUDO_MAPPING`].
fn pseudo_location(builder: &mut ProfileBuilder, name: &str) -> u64 {
    let pmap = builder.mapping(0, 0, 0, PSEUDO_MAPPING, "");
    builder.mark_symbolized(pmap);
    let f = builder.function(name, "");
    // Address 0 in the pseudo-mapping: the name is the whole identity of this frame.
    builder.symbolized_location(pmap, 0, &[(f, 0)])
}

/// Leaf first: the leaf stays, every other frame is a return address and moves back one byte.
fn adjusted(stack: &[u64]) -> Vec<u64> {
    stack
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// The window's pprof mapping for `m`, interned once; its object is offered for upload. A
/// mapping whose build ID is still being read (`pending`) waits for it until the flush.
fn window_mapping(w: &mut ProcessWindow, m: &Mapping, pid: u32, pending: bool) -> u64 {
    let key = MappingKey {
        start: m.start,
        end: m.end,
        offset: m.offset,
        file: m.file,
    };
    if let Some(&id) = w.mappings.get(&key) {
        return id;
    }
    let build_id = m.build_id.as_ref().map(BuildId::to_hex).unwrap_or_default();
    let id = w
        .builder
        .mapping(m.start, m.end, m.offset, &m.filename(), &build_id);
    w.mappings.insert(key, id);
    match &m.build_id {
        Some(b) => offer_object(w, m, b, pid),
        None if pending => w.awaiting_build_id.push((id, m.clone())),
        None => {}
    }
    id
}

/// Offers `m`'s file (build ID `b`) to the debuginfo uploader, once per window.
fn offer_object(w: &mut ProcessWindow, m: &Mapping, b: &BuildId, pid: u32) {
    if let MappingKind::File { path, .. } = &m.kind {
        w.objects.entry(b.clone()).or_insert_with(|| ObjectRef {
            build_id: b.clone(),
            pid,
            start: m.start,
            end: m.end,
            path: path.clone(),
            inode: m.file.inode,
        });
    }
}

/// What a process's series labels are made of, read at its first sample in a window (a process
/// that lived 200 ms is gone by the flush); the pod's names are looked up from it (see
/// [`LabelInputs::labels`]), again at the flush when the pod was not known yet.
#[derive(Clone, Debug)]
struct LabelInputs {
    tgid: u32,
    service: String,
    comm: String,
    exe: Option<String>,
    cgroup: Option<String>,
    container: crate::containers::ContainerRef,
}

impl LabelInputs {
    /// `cgroup_by_id` is the path of the sample's cgroup ID in the host's v2 tree, when known.
    fn of(s: &UnwoundSample, p: Option<&Process>, cgroup_by_id: Option<&str>) -> LabelInputs {
        let (service, comm, exe, cgroup) = match p {
            _ if s.tgid == 0 => ("swapper".to_owned(), "swapper".to_owned(), None, None),
            Some(p) => (
                p.service_name().to_owned(),
                p.comm.clone(),
                p.exe.as_ref().map(|e| e.to_string_lossy().into_owned()),
                p.cgroup.clone(),
            ),
            // The process is gone (or unreadable): what the sample itself says.
            None => (s.comm.clone(), s.comm.clone(), None, None),
        };
        let cgroup = match s.tgid {
            0 => None,
            _ => crate::containers::best_path(cgroup_by_id, cgroup.as_deref()).map(str::to_owned),
        };
        // Containers and pods: IDs from the cgroup path, names from the node's pods (watched).
        let container = cgroup
            .as_deref()
            .map(crate::containers::parse_cgroup_path)
            .unwrap_or_default();
        LabelInputs {
            tgid: s.tgid,
            service,
            comm,
            exe,
            cgroup,
            container,
        }
    }

    /// A pod process whose pod the index does not know (yet): the watch had not delivered it
    /// when the window started (agent start-up, a pod just created).
    fn pod_unknown(&self, pods: Option<&crate::kube::PodIndex>) -> bool {
        !self.container.is_empty() && pods.is_some_and(|idx| idx.lookup(&self.container).is_none())
    }

    /// The series labels (sorted by name; empty values left out).
    fn labels(&self, node: &str, pods: Option<&crate::kube::PodIndex>) -> Vec<LabelPair> {
        let LabelInputs {
            tgid,
            service,
            comm,
            exe,
            cgroup,
            container,
        } = self;
        let mut service = service.clone();
        let found = pods.and_then(|idx| idx.lookup(container));
        let pod = found.as_ref().map(|m| m.pod.as_ref());
        match pod {
            // `namespace/workload`, or the pod's annotation (see kube::pod_info).
            Some(pod) => service = pod.service_name.clone(),
            // Outside Kubernetes (or a pod the API did not name): the systemd unit, if any.
            None => {
                if let Some(unit) = cgroup.as_deref().and_then(crate::containers::systemd_unit) {
                    service = unit.to_owned();
                }
            }
        }
        let pid = tgid.to_string();
        let own: [(&str, Option<&str>); 14] = [
            ("__name__", Some(PROFILE_NAME)),
            ("service_name", Some(service.as_str())),
            ("node", Some(node)),
            ("pid", Some(pid.as_str())),
            ("comm", Some(comm.as_str())),
            ("executable", exe.as_deref()),
            ("cgroup", cgroup.as_deref()),
            ("pod_uid", container.pod_uid.as_deref()),
            ("container_id", container.container_id.as_deref()),
            ("namespace", pod.map(|p| p.namespace.as_str())),
            ("pod", pod.map(|p| p.name.as_str())),
            (
                "container",
                found.as_ref().and_then(|m| m.container.as_deref()),
            ),
            ("workload_kind", pod.map(|p| p.workload_kind.as_str())),
            ("workload", pod.map(|p| p.workload.as_str())),
        ];
        let mut labels: Vec<LabelPair> = own
            .into_iter()
            .filter_map(|(k, v)| {
                let v = sanitize_label_value(v?);
                (!v.is_empty()).then(|| LabelPair {
                    name: sanitize_label_name(k),
                    value: v,
                })
            })
            .collect();
        // Allow-listed pod labels (`--pod-labels`), never replacing one of Kiln's own.
        for (k, v) in pod.map(|p| p.labels.as_slice()).unwrap_or_default() {
            let name = sanitize_label_name(k);
            let v = sanitize_label_value(v);
            let taken =
                own.iter().any(|(o, _)| *o == name) || labels.iter().any(|l| l.name == name);
            if !v.is_empty() && !taken {
                labels.push(LabelPair { name, value: v });
            }
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        labels
    }
}

/// The series labels of a process's sample (see [`LabelInputs`]).
#[cfg(test)]
fn series_labels(
    s: &UnwoundSample,
    p: Option<&Process>,
    cgroup_by_id: Option<&str>,
    node: &str,
    pods: Option<&crate::kube::PodIndex>,
) -> Vec<LabelPair> {
    LabelInputs::of(s, p, cgroup_by_id).labels(node, pods)
}

/// A Prometheus-style label name: `[a-zA-Z_][a-zA-Z0-9_]*`, other characters become `_`, capped.
pub fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_LABEL_NAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label value without control characters, at most [`MAX_LABEL_VALUE_LEN`] bytes.
pub fn sanitize_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LABEL_VALUE_LEN));
    for c in value.chars() {
        let c = if c.is_control() { '_' } else { c };
        if out.len() + c.len_utf8() > MAX_LABEL_VALUE_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::procmaps::ProcessCacheConfig;
    use kiln_sampler_bpf::UserRegs;

    /// A frame seen again in a window reuses its location; the same key under another name (a
    /// function's address reused within the window) gets a location of its own.
    #[test]
    fn named_frames_are_interned_once_per_name() {
        let mut b = ProfileBuilder::new(&[("samples", "count")]);
        let mut named = NamedLocations::default();
        let (alpha, script): (Arc<str>, Arc<str>) = ("alpha".into(), "/app/a.js".into());
        let key = FrameKey::Js {
            id: 0x1000,
            line: 7,
        };
        let intern = |name: &Arc<str>| {
            let name = name.clone();
            move |b: &mut ProfileBuilder| {
                let f = b.function(&name, "/app/a.js");
                b.symbolized_location(0, 0x1000, &[(f, 7)])
            }
        };
        let first = named.get_or_intern(&mut b, key, [Some(&alpha), Some(&script)], intern(&alpha));
        let again = named.get_or_intern(&mut b, key, [Some(&alpha), Some(&script)], |_| {
            panic!("a frame seen in this window is not interned again")
        });
        assert_eq!(first, again);
        let beta: Arc<str> = "beta".into();
        let renamed = named.get_or_intern(&mut b, key, [Some(&beta), Some(&script)], intern(&beta));
        assert_ne!(first, renamed);
        let p = b.finish();
        let names: Vec<&str> = p.function.iter().map(|f| p.str(f.name)).collect();
        assert_eq!(names, ["alpha", "beta"]);
    }

    #[test]
    fn cache_totals_become_hit_and_miss_counters_once() {
        let (hit, miss) = (Counter::default(), Counter::default());
        let mut seen = HitTotals::default();
        seen.publish((5, 10), &hit, &miss);
        seen.publish((7, 13), &hit, &miss);
        seen.publish((7, 13), &hit, &miss);
        assert_eq!((hit.get(), miss.get()), (7, 6));
    }

    #[inline(never)]
    fn leaf_fn() -> u64 {
        std::hint::black_box(1)
    }

    #[inline(never)]
    fn caller_fn() -> u64 {
        std::hint::black_box(2)
    }

    const KSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 T do_syscall_64
ffffffff81200000 T vfs_read
ffffffff81300000 t ext4_file_read_iter
";

    fn aggregator(max_processes: usize, max_stacks: usize) -> (Aggregator, AgentMetrics) {
        let metrics = AgentMetrics::unregistered();
        let agg = Aggregator::new(
            AggregatorConfig {
                frequency_hz: NonZeroU32::new(100).unwrap(),
                node_name: "node-a".into(),
                max_processes_per_window: max_processes,
                max_stacks_per_process: max_stacks,
            },
            ProcessCache::new(ProcessCacheConfig::default()),
            Arc::new(Kallsyms::parse(KSYMS)),
            metrics.clone(),
        );
        (agg, metrics)
    }

    fn sample(tgid: u32, kernel: Vec<u64>, user: Vec<u64>) -> RawSample<'static> {
        RawSample {
            time_ns: 123,
            tgid,
            tid: tgid,
            cpu: 0,
            comm: "sampled-comm".into(),
            // Unknown: these samples' labels come from /proc.
            cgroup_id: 0,
            in_kernel: !kernel.is_empty(),
            kernel_stack: kernel,
            user_regs: (!user.is_empty()).then_some(UserRegs {
                ip: user.first().copied().unwrap_or(0),
                sp: 0,
                bp: 0,
            }),
            user_stack: user,
            stack_copy: Default::default(),
            py_status: kiln_sampler_bpf::PyStatus::None,
            py_frames: Vec::new(),
        }
    }

    fn label<'a>(p: &'a ProcessProfile, name: &str) -> Option<&'a str> {
        p.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    #[test]
    fn builds_a_profile_with_kernel_and_user_frames() {
        let leaf = leaf_fn as *const () as usize as u64;
        let ret = caller_fn as *const () as usize as u64 + 4;
        let pid = std::process::id();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let (mut agg, metrics) = aggregator(16, 16);
        let kernel = vec![0xffffffff81200010, 0xffffffff81100020];
        let s = sample(pid, kernel.clone(), vec![leaf, ret]);
        agg.add(&s);
        agg.add(&s);
        agg.add(&sample(pid, vec![], vec![leaf]));
        std::thread::sleep(Duration::from_millis(20));
        let out = agg.flush();
        assert_eq!(out.len(), 1);
        let pp = &out[0];
        let p = &pp.profile;

        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (p.str(t.r#type), p.str(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let pt = p.period_type.unwrap();
        assert_eq!((p.str(pt.r#type), p.str(pt.unit)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, 10_000_000);
        assert!(p.time_nanos >= before, "window start is wall-clock time");
        assert!(p.duration_nanos >= 20_000_000);

        // Labels.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let names: Vec<_> = pp.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "__name__",
                "cgroup",
                "comm",
                "executable",
                "node",
                "pid",
                "service_name"
            ]
        );
        assert_eq!(label(pp, "__name__"), Some("process_cpu"));
        assert_eq!(label(pp, "pid"), Some(pid.to_string().as_str()));
        assert_eq!(label(pp, "node"), Some("node-a"));
        assert_eq!(label(pp, "executable"), exe.to_str());
        assert_eq!(label(pp, "service_name"), exe.file_name().unwrap().to_str());

        // Samples: the kernel+user stack twice, the user-only one once.
        assert_eq!(p.sample.len(), 2);
        let full = &p.sample[0];
        assert_eq!(full.value, vec![2, 20_000_000]);
        assert_eq!(p.sample[1].value, vec![1, 10_000_000]);
        let locs: Vec<_> = full
            .location_id
            .iter()
            .map(|&id| &p.location[id as usize - 1])
            .collect();
        assert_eq!(locs.len(), 4);
        // Leaf first: kernel frames, named, in the kernel mapping.
        let fname = |l: &kiln_proto::pprof::Location| {
            let f = &p.function[l.line[0].function_id as usize - 1];
            p.str(f.name).to_owned()
        };
        assert_eq!(fname(locs[0]), "vfs_read");
        assert_eq!(locs[0].address, kernel[0]);
        assert_eq!(fname(locs[1]), "do_syscall_64");
        assert_eq!(locs[1].address, kernel[1] - 1, "return address moved back");
        let kmap = &p.mapping[locs[0].mapping_id as usize - 1];
        assert_eq!(p.str(kmap.filename), KERNEL_MAPPING);
        // Then user frames, unsymbolized, in the test binary's mapping with its build ID.
        assert!(locs[2].line.is_empty());
        assert_eq!(locs[2].address, leaf, "the user leaf keeps its address");
        assert_eq!(locs[3].address, ret - 1, "return address moved back");
        let umap = &p.mapping[locs[2].mapping_id as usize - 1];
        assert_eq!(p.str(umap.filename), exe.to_str().unwrap());
        assert!(umap.memory_start <= leaf && leaf < umap.memory_limit);
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let expected = object::Object::build_id(&object::File::parse(&*bytes).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(p.str(umap.build_id), hex::encode(expected));
        assert_eq!(pp.objects.len(), 1);
        assert_eq!(pp.objects[0].build_id.as_bytes(), expected);

        assert_eq!(metrics.samples_received.get(), 3);
        assert_eq!(metrics.profiles_built.get(), 1);
        // The next window starts empty.
        assert!(agg.flush().is_empty());
    }

    /// The agent reads build IDs on a worker thread: the first sample of a new binary sees its
    /// build ID pending, and the flushed profile still carries it (and offers the file for upload).
    #[test]
    fn build_ids_read_by_the_worker_reach_the_flushed_profile() {
        let leaf = leaf_fn as *const () as usize as u64;
        let pid = std::process::id();
        let metrics = AgentMetrics::unregistered();
        let mut agg = Aggregator::new(
            AggregatorConfig {
                frequency_hz: NonZeroU32::new(100).unwrap(),
                node_name: "node-a".into(),
                max_processes_per_window: 16,
                max_stacks_per_process: 16,
            },
            ProcessCache::new(ProcessCacheConfig {
                build_id_worker: true,
                // No wait: this test is about answers that arrive after the first sample.
                build_id_wait: Duration::ZERO,
                ..Default::default()
            }),
            Arc::new(Kallsyms::parse(KSYMS)),
            metrics,
        );
        agg.add(&sample(pid, vec![], vec![leaf]));
        let p = agg.processes.cached(pid).unwrap();
        let m = p.find(leaf).unwrap().clone();
        assert!(
            p.build_id_pending(&m) && m.build_id.is_none(),
            "a file never seen is read by the worker, not by the sampling thread"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while agg.processes.known_build_id(m.file).is_none() {
            assert!(
                Instant::now() < deadline,
                "the worker never read the build ID"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = agg.flush();
        let pp = &out[0];
        let prof = &pp.profile;
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let expected = object::Object::build_id(&object::File::parse(&*bytes).unwrap())
            .unwrap()
            .unwrap();
        let loc = &prof.location[prof.sample[0].location_id[0] as usize - 1];
        let umap = &prof.mapping[loc.mapping_id as usize - 1];
        assert_eq!(prof.str(umap.build_id), hex::encode(expected));
        assert_eq!(pp.objects.len(), 1);
        assert_eq!(pp.objects[0].build_id.as_bytes(), expected);
        // The next sample's snapshot is re-read with the build ID in place.
        let mut refreshed = None;
        while refreshed.is_none() {
            assert!(
                Instant::now() < deadline,
                "the snapshot never got its build ID"
            );
            agg.add(&sample(pid, vec![], vec![leaf]));
            let p = agg.processes.cached(pid).unwrap();
            refreshed = p.find(leaf).and_then(|m| m.build_id.clone());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A stack copy too short for the first return address: the user stack is the sampled ip and
    /// then the named truncation frame in the `[kiln]` pseudo-mapping, not a guessed caller.
    #[test]
    fn a_cut_stack_ends_in_a_named_truncation_frame() {
        let (mut agg, _) = aggregator(10, 10);
        let me = std::process::id();
        let ip = leaf_fn as *const () as usize as u64;
        let mut s = sample(me, vec![], vec![ip]);
        // At the function's entry the return address is the word at sp, which the copy lacks.
        s.user_regs = Some(UserRegs {
            ip,
            sp: 0x7fff_0000,
            bp: 0,
        });
        s.stack_copy = vec![0; 4].into();
        agg.add(&s);
        let out = agg.flush();
        let p = &out[0].profile;
        let sample = &p.sample[0];
        assert_eq!(sample.location_id.len(), 2, "ip + truncation frame");
        let last = &p.location[(sample.location_id[1] - 1) as usize];
        let f = &p.function[(last.line[0].function_id - 1) as usize];
        assert_eq!(
            p.string_table[f.name as usize],
            "[truncated: stack copy exhausted]"
        );
        let m = &p.mapping[(last.mapping_id - 1) as usize];
        assert_eq!(p.string_table[m.filename as usize], PSEUDO_MAPPING);
        assert!(m.has_functions);
    }

    #[test]
    fn unknown_frames_kernel_threads_and_idle() {
        let (mut agg, metrics) = aggregator(16, 16);
        let pid = std::process::id();
        // An address nothing maps: a location without a mapping.
        agg.add(&sample(pid, vec![], vec![0x10]));
        // pid 0 without kernel frames: dropped; with: kept as swapper.
        agg.add(&sample(0, vec![], vec![]));
        agg.add(&sample(0, vec![0xffffffff81000010], vec![]));
        // A kernel thread: user stack ignored without user registers.
        let mut kthread = sample(pid, vec![0xffffffff81300005], vec![]);
        kthread.user_stack = vec![0x1234];
        agg.add(&kthread);
        let out = agg.flush();
        assert_eq!(out.len(), 2);
        let swapper = &out[0];
        assert_eq!(label(swapper, "service_name"), Some("swapper"));
        assert_eq!(label(swapper, "executable"), None);
        let me = &out[1].profile;
        let raw = &me.location[me.sample[0].location_id[0] as usize - 1];
        assert_eq!((raw.mapping_id, raw.address), (0, 0x10));
        assert_eq!(me.sample[1].location_id.len(), 1, "kernel frame only");
        assert_eq!(metrics.sample_dropped(SampleDropReason::Idle).get(), 1);
    }

    #[test]
    fn limits_are_enforced_and_counted() {
        let (mut agg, metrics) = aggregator(1, 2);
        let pid = std::process::id();
        for a in [0x10, 0x20, 0x30, 0x10] {
            agg.add(&sample(pid, vec![], vec![a]));
        }
        agg.add(&sample(
            std::os::unix::process::parent_id(),
            vec![],
            vec![0x10],
        ));
        assert_eq!(agg.processes_in_window(), 1);
        let out = agg.flush();
        assert_eq!(out[0].profile.sample.len(), 2);
        assert_eq!(
            out[0]
                .profile
                .sample
                .iter()
                .map(|s| s.value[0])
                .sum::<i64>(),
            3
        );
        assert_eq!(
            metrics.sample_dropped(SampleDropReason::StackLimit).get(),
            1
        );
        assert_eq!(
            metrics.sample_dropped(SampleDropReason::ProcessLimit).get(),
            1
        );
    }

    #[test]
    fn gone_process_uses_the_sample_comm_and_series_encode() {
        let (mut agg, _) = aggregator(4, 4);
        // pid_max is at most 2^22: this pid cannot exist.
        agg.add(&sample(u32::MAX - 1, vec![], vec![0x10]));
        let out = agg.flush();
        assert_eq!(label(&out[0], "service_name"), Some("sampled-comm"));
        assert_eq!(label(&out[0], "cgroup"), None);
        let series = out[0].to_series();
        assert_eq!(series.labels, out[0].labels);
        let decoded = kiln_proto::decode_profile(&series.samples[0].raw_profile, 1 << 20).unwrap();
        assert_eq!(decoded, out[0].profile);
        assert_eq!(series.samples[0].id.len(), 36);
    }

    /// A process in a pod-shaped cgroup (created for real in the cgroup v2 hierarchy; root only)
    /// gets its pod UID and container ID from the path and its names from the pod list.
    #[test]
    #[ignore = "needs root"]
    fn root_processes_in_pods_get_pod_namespace_and_container_labels() {
        // SAFETY: no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        assert!(is_root, "this test creates a cgroup and needs root");
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
            .expect(
                "a cgroup v2 hierarchy is mounted (at /sys/fs/cgroup or /sys/fs/cgroup/unified)",
            );
        const UID: &str = "0d5b7a4e-9c3f-4b8e-a1d2-3e4f5a6b7c8d";
        let id = format!("{:064x}", std::process::id());
        let top = root.join(format!("kiln-test-{}", std::process::id()));
        let leaf = top.join(format!("kubepods/burstable/pod{UID}/{id}"));
        std::fs::create_dir_all(&leaf).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string()).unwrap();

        let pods = crate::kube::PodIndex::default();
        pods.upsert(crate::kube::PodInfo {
            uid: UID.into(),
            namespace: "shop".into(),
            name: "web-1".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            service_name: "shop/web".into(),
            labels: vec![("app.kubernetes.io/name".into(), "web".into())],
            containers: vec![(id.clone(), "nginx".into())],
        });
        let (agg, _) = aggregator(4, 4);
        let mut agg = agg.with_pods(pods);
        agg.add(&sample(pid, vec![], vec![0x10]));
        let out = agg.flush();

        let _ = child.kill();
        let _ = child.wait();
        // Cgroups are removed leaf first, once empty.
        let mut dir = leaf.as_path();
        while dir.starts_with(&top) {
            let _ = std::fs::remove_dir(dir);
            dir = dir.parent().unwrap();
        }

        let p = &out[0];
        assert_eq!(label(p, "pod_uid"), Some(UID));
        assert_eq!(label(p, "container_id"), Some(id.as_str()));
        assert_eq!(label(p, "namespace"), Some("shop"));
        assert_eq!(label(p, "pod"), Some("web-1"));
        assert_eq!(label(p, "container"), Some("nginx"));
        assert_eq!(label(p, "workload_kind"), Some("Deployment"));
        assert_eq!(label(p, "workload"), Some("web"));
        assert_eq!(label(p, "app_kubernetes_io_name"), Some("web"));
        assert_eq!(label(p, "service_name"), Some("shop/web"));
    }

    fn unwound(tgid: u32) -> UnwoundSample {
        UnwoundSample {
            tgid,
            comm: "gone".into(),
            cgroup_id: 0,
            process: None,
            kernel: vec![],
            user: vec![],
            end: StackEnd::Complete,
            python: None,
            java: None,
            node: None,
        }
    }

    fn get<'a>(labels: &'a [LabelPair], name: &str) -> Option<&'a str> {
        labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    /// A process gone before /proc was read still gets its cgroup (from the sample's cgroup ID)
    /// and so its service: the systemd unit outside Kubernetes, its pod's inside.
    #[test]
    fn labels_from_the_cgroup_id_path_and_the_pod() {
        let l = series_labels(
            &unwound(42),
            None,
            Some("/system.slice/nginx.service"),
            "n",
            None,
        );
        assert_eq!(get(&l, "service_name"), Some("nginx"));
        assert_eq!(get(&l, "cgroup"), Some("/system.slice/nginx.service"));

        const UID: &str = "0d5b7a4e-9c3f-4b8e-a1d2-3e4f5a6b7c8d";
        let id = "c".repeat(64);
        let pods = crate::kube::PodIndex::default();
        pods.upsert(crate::kube::PodInfo {
            uid: UID.into(),
            namespace: "shop".into(),
            name: "web-1".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            service_name: "shop/web".into(),
            // An allow-listed pod label named like one of Kiln's own does not replace it.
            labels: vec![
                ("pod".into(), "spoofed".into()),
                ("team".into(), "a".into()),
            ],
            containers: vec![(id.clone(), "app".into())],
        });
        let path = format!("/kubepods/burstable/pod{UID}/{id}");
        let l = series_labels(&unwound(42), None, Some(&path), "n", Some(&pods));
        assert_eq!(get(&l, "pod"), Some("web-1"));
        assert_eq!(get(&l, "team"), Some("a"));
        assert_eq!(get(&l, "container"), Some("app"));
        assert_eq!(get(&l, "service_name"), Some("shop/web"));
        assert_eq!(l.iter().filter(|x| x.name == "pod").count(), 1);
        // Sorted by name.
        assert!(l.windows(2).all(|w| w[0].name <= w[1].name));
    }

    #[test]
    fn labels_are_sanitized() {
        assert_eq!(sanitize_label_name("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(sanitize_label_name("1abc"), "_1abc");
        assert_eq!(sanitize_label_value("a\nb\tc"), "a_b_c");
        let long = "é".repeat(1000);
        let v = sanitize_label_value(&long);
        assert!(v.len() <= MAX_LABEL_VALUE_LEN && v.len() >= MAX_LABEL_VALUE_LEN - 1);
    }
}
