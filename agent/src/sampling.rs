//! The sampling stage: loads Kiln's eBPF sampler into the kernel, attaches it to the cpu-clock
//! event of every online CPU, and drains its ring buffer into [`RawSample`]s.
//!
//! The ring buffer is drained on a timer (paced by [`DrainPacer`]) rather than on wake-ups: the
//! BPF side submits with `BPF_RB_NO_WAKEUP`, so the agent's own scheduling does not synchronise
//! with the sampling timer and it is charged its true share of CPU.

use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::PerfEvent;
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::{Ebpf, EbpfLoader};
use kiln_sampler_bpf::{MAX_STACK_COPY, RawSample, globals, names};

/// The shortest and longest pause between two drains of the ring buffer (see [`DrainPacer`]). The
/// longest is half of [`RING_HEADROOM_SECONDS`]: a jump from an idle machine to every CPU busy
/// with full stack copies, just after a drain, still fits in the ring.
pub const MIN_DRAIN_INTERVAL: Duration = Duration::from_millis(50);
pub const MAX_DRAIN_INTERVAL: Duration = Duration::from_millis(500);

/// Paces the drains of the ring buffer: the next drain comes when the ring is expected to be a
/// quarter full at the rate bytes arrived lately, between [`MIN_DRAIN_INTERVAL`] and
/// [`MAX_DRAIN_INTERVAL`].
///
/// Why not a fixed short interval: every drain is a wake-up of the sampling thread, and on a VM a
/// timer wake-up costs tens of microseconds (the timer is reprogrammed through a trapped MSR
/// write). Measured with the agent at 19 Hz on an idle 2-CPU VM, 20 wake-ups a second were its
/// whole steady cost: 1.27 ms of CPU a second, more than all its sample processing at 19 Hz.
/// The quarter leaves three quarters of the ring for a burst or a stall of the thread (a large
/// object's tables being read, a window being encoded); losses are counted either way.
///
/// Why bytes, not records: a record carries only the stack bytes the sampler could copy (up to the
/// top of the stack), so most are far below the worst case the ring is sized for; pacing by
/// worst-case records drained it several times more often than needed, and every drain begins
/// cold: the first stack walked after a wake-up cost 6-8 µs on this VM, the second 2-3 µs, the
/// rest ~0.25 µs (median). On the agent_overhead workload at 99 Hz, the mean walk went from
/// 0.60 µs (by records, 250 ms at most) to 0.41-0.44 µs (by bytes, 500 ms at most); at 19 Hz
/// from 2.26 µs to 0.83 µs.
#[derive(Clone, Debug)]
pub struct DrainPacer {
    capacity_bytes: f64,
    /// Bytes per second, smoothed (rises at once, decays slowly).
    rate: f64,
    last: Instant,
}

impl DrainPacer {
    /// A pacer for a ring of `ring_bytes`, expecting up to `expected_rate` bytes a second until it
    /// has seen the real rate.
    pub fn new(ring_bytes: u64, expected_rate: f64, now: Instant) -> Self {
        DrainPacer {
            capacity_bytes: ring_bytes as f64,
            rate: expected_rate.max(0.0),
            last: now,
        }
    }

    /// Records that `bytes` of records were drained at `now`; returns how long to wait before the
    /// next drain.
    pub fn drained(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if elapsed > 0.0 {
            let seen = bytes as f64 / elapsed;
            // A burst is believed at once; a lull only gradually (it may end at any moment).
            self.rate = if seen > self.rate {
                seen
            } else {
                0.8 * self.rate + 0.2 * seen
            };
        }
        let quarter = self.capacity_bytes / 4.0;
        let secs = if self.rate > 0.0 {
            quarter / self.rate
        } else {
            f64::INFINITY
        };
        Duration::from_secs_f64(secs.clamp(
            MIN_DRAIN_INTERVAL.as_secs_f64(),
            MAX_DRAIN_INTERVAL.as_secs_f64(),
        ))
    }
}

/// What the sampler needs to know before it is loaded.
#[derive(Clone, Copy, Debug)]
pub struct SamplerConfig {
    /// Samples per second per CPU.
    pub frequency_hz: u64,
    /// Bytes of user stack copied per sample (0..=32768), for unwinding code without frame pointers.
    pub stack_copy_bytes: u32,
    /// Size of the kernel-to-agent ring buffer; `None` sizes it with [`ring_buffer_bytes`].
    pub ring_buffer_bytes: Option<u32>,
}

/// Seconds of samples the automatically sized ring buffer holds at the worst-case rate (every CPU
/// busy): [`DrainPacer`] drains it at a quarter full, so the sampling thread may stall for well
/// over a drain interval without losing samples. Losses are counted
/// (`samples_dropped{reason="RingBufferFull"}`). A second rather than half of one since drains
/// are up to 500 ms apart ([`MAX_DRAIN_INTERVAL`]): +4 MiB of RSS at 99 Hz on 2 CPUs.
const RING_HEADROOM_SECONDS: f64 = 1.0;
const MIN_RING_BYTES: u64 = 256 << 10;
const MAX_RING_BYTES: u64 = 64 << 20;

/// The ring buffer size for `cpus` CPUs sampled at `frequency_hz` with `stack_copy_bytes` copied:
/// [`RING_HEADROOM_SECONDS`] of worst-case records (header + a full copy), as a power of two
/// (the kernel requires one) between 256 KiB and 64 MiB.
///
/// It matters for memory: the agent maps the ring's data pages twice (the kernel's way of
/// letting records wrap), all of them at once, and both count in its RSS. The fixed 8 MiB ring
/// this replaces showed as 16 MiB of RSS on every machine.
pub fn ring_buffer_bytes(cpus: usize, frequency_hz: u64, stack_copy_bytes: u32) -> u32 {
    let record = record_bytes(stack_copy_bytes);
    let per_second = record
        .saturating_mul(frequency_hz)
        .saturating_mul(cpus as u64);
    let want = (per_second as f64 * RING_HEADROOM_SECONDS) as u64;
    let bytes = want
        .clamp(MIN_RING_BYTES, MAX_RING_BYTES)
        .next_power_of_two()
        .min(MAX_RING_BYTES);
    u32::try_from(bytes).unwrap_or(MAX_RING_BYTES as u32)
}

/// Ring bytes one record takes at most: the header, a full copy and the ring's 8-byte record header.
fn record_bytes(stack_copy_bytes: u32) -> u64 {
    ring_record_bytes(kiln_sampler_bpf::SAMPLE_HEADER_SIZE + stack_copy_bytes as usize)
}

/// Ring bytes a record of `len` bytes takes: the kernel's 8-byte header, rounded up to 8 bytes.
fn ring_record_bytes(len: usize) -> u64 {
    (len as u64 + 8).next_multiple_of(8)
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "loading eBPF needs CAP_BPF and CAP_PERFMON, and this process lacks {0}: run as root, or grant \
         them (in Kubernetes: deploy/ adds them to the agent's container; on kernels before 5.11 \
         CAP_SYS_RESOURCE too)"
    )]
    NotPrivileged(String),
    #[error(
        "this kernel exposes no BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y is required for the CO-RE sampler)"
    )]
    NoBtf,
    #[error("frequency must be between 1 and 10000 Hz, got {0}")]
    BadFrequency(u64),
    #[error("stack copy size must be at most {MAX_STACK_COPY} bytes, got {0}")]
    BadStackCopy(u32),
    #[error("ring buffer size must be a power of two of at least 4096 bytes, got {0}")]
    BadRingBuffer(u32),
    #[error("the kernel refused the eBPF sampler: {0}")]
    Load(String),
    #[error("the eBPF object lacks {0} (is sampler-bpf/prebuilt/sampler.bpf.o stale?)")]
    Missing(&'static str),
    #[error("the kernel refused the sampler program: {}", error_chain(.0))]
    Program(#[source] aya::programs::ProgramError),
    #[error("could not open the sampler's map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("could not list online CPUs: {0}")]
    Cpus(String),
    #[error(
        "perf_event_open on CPU {cpu} failed: {source} (perf events may be restricted: see \
         /proc/sys/kernel/perf_event_paranoid, or run as root)"
    )]
    Attach {
        cpu: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// A loaded, attached sampler. Detaches (the kernel closes its links) when dropped.
pub struct Sampler {
    // Keeps programs and links alive.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    cpus: usize,
    pacer: DrainPacer,
}

/// Counts from one [`Sampler::drain`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    pub records: u64,
    /// Ring bytes the records took (the ring's 8-byte record headers included).
    pub bytes: u64,
    /// Records that did not parse (a stale object; never expected).
    pub malformed: u64,
    /// How long to wait before the next drain (see [`DrainPacer`]).
    pub next_drain: Duration,
}

impl Sampler {
    /// Checks the preconditions, then loads and attaches the sampler on every online CPU.
    pub fn load(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        if !(1..=10_000).contains(&config.frequency_hz) {
            return Err(SamplerError::BadFrequency(config.frequency_hz));
        }
        if config.stack_copy_bytes as usize > MAX_STACK_COPY {
            return Err(SamplerError::BadStackCopy(config.stack_copy_bytes));
        }
        check_preconditions()?;
        raise_memlock_limit();

        let possible =
            aya::util::nr_cpus().map_err(|(what, e)| SamplerError::Cpus(format!("{what}: {e}")))?;
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| SamplerError::Cpus(format!("{what}: {e}")))?;
        let ring_bytes = match config.ring_buffer_bytes {
            Some(b) => b,
            None => ring_buffer_bytes(cpus.len(), config.frequency_hz, config.stack_copy_bytes),
        };
        if !ring_bytes.is_power_of_two() || ring_bytes < 4096 {
            return Err(SamplerError::BadRingBuffer(ring_bytes));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::SCRATCH, possible as u32)
            .map_max_entries(names::RING_BUFFER, ring_bytes)
            .override_global(globals::STACK_COPY_BYTES, &config.stack_copy_bytes, true)
            .load(kiln_sampler_bpf::OBJECT)
            .map_err(|e| match &e {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EPERM)
                        && !missing_to_load().is_empty() =>
                {
                    SamplerError::NotPrivileged(missing_to_load())
                }
                _ => SamplerError::Load(error_chain(&e)),
            })?;

        let program: &mut PerfEvent = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(SamplerError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(SamplerError::Program)?;
        program.load().map_err(SamplerError::Program)?;
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(config.frequency_hz),
                    false,
                )
                .map_err(|source| SamplerError::Attach { cpu, source })?;
        }

        let ring_map = ebpf
            .take_map(names::RING_BUFFER)
            .ok_or(SamplerError::Missing(names::RING_BUFFER))?;
        let ring = RingBuf::try_from(ring_map).map_err(|source| SamplerError::Map {
            name: names::RING_BUFFER,
            source,
        })?;
        let drops_map = ebpf
            .take_map(names::DROPS)
            .ok_or(SamplerError::Missing(names::DROPS))?;
        let drops = PerCpuArray::try_from(drops_map).map_err(|source| SamplerError::Map {
            name: names::DROPS,
            source,
        })?;
        tracing::info!(
            cpus = cpus.len(),
            frequency_hz = config.frequency_hz,
            stack_copy_bytes = config.stack_copy_bytes,
            ring_buffer_bytes = ring_bytes,
            "eBPF sampler attached"
        );
        let pacer = DrainPacer::new(
            u64::from(ring_bytes),
            (record_bytes(config.stack_copy_bytes) * config.frequency_hz * cpus.len() as u64)
                as f64,
            Instant::now(),
        );
        Ok(Sampler {
            _ebpf: ebpf,
            ring,
            drops,
            cpus: cpus.len(),
            pacer,
        })
    }

    /// The sampler's map of CPython processes to walk (see python/), once: the caller owns it.
    pub fn take_python_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u32, kiln_sampler_bpf::PyProc>, SamplerError> {
        let map = self
            ._ebpf
            .take_map(names::PY_PROCS)
            .ok_or(SamplerError::Missing(names::PY_PROCS))?;
        aya::maps::HashMap::try_from(map).map_err(|source| SamplerError::Map {
            name: names::PY_PROCS,
            source,
        })
    }

    /// The kernel's record of the loaded sampler program: how many instructions its verifier
    /// processed (`verified_instruction_count`; the kernel refuses a program past 1 M) and, while
    /// BPF run-time statistics are on (`kernel.bpf_stats_enabled`), its run count and time.
    pub fn program_info(&self) -> Result<aya::programs::ProgramInfo, SamplerError> {
        let program: &PerfEvent = self
            ._ebpf
            .program(names::PROGRAM)
            .ok_or(SamplerError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(SamplerError::Program)?;
        program.info().map_err(SamplerError::Program)
    }

    /// Number of CPUs sampled.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Hands every record waiting in the ring buffer to `sink`.
    pub fn drain(&mut self, mut sink: impl FnMut(RawSample<'_>)) -> DrainStats {
        let mut stats = DrainStats::default();
        while let Some(item) = self.ring.next() {
            stats.records += 1;
            stats.bytes += ring_record_bytes(item.len());
            match RawSample::parse(&item) {
                Ok(sample) => sink(sample),
                Err(e) => {
                    stats.malformed += 1;
                    tracing::warn!(error = %e, "malformed sample record");
                }
            }
        }
        stats.next_drain = self.pacer.drained(stats.bytes, Instant::now());
        stats
    }

    /// Samples the kernel could not deliver because the ring buffer was full, since load.
    pub fn ring_drops(&self) -> u64 {
        match self.drops.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sampler's drop counter");
                0
            }
        }
    }
}

/// What loading the sampler needs from the machine: BTF, and root or the BPF capabilities.
pub fn check_preconditions() -> Result<(), SamplerError> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SamplerError::NoBtf);
    }
    let missing = missing_to_load();
    if !missing.is_empty() {
        return Err(SamplerError::NotPrivileged(missing));
    }
    Ok(())
}

/// `error: cause: cause…`, so that the kernel's reason (errno, verifier log) reaches the user.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// The capabilities that loading a perf-event BPF program needs and this process lacks (`CAP_BPF
/// and CAP_PERFMON`), or "" if it has them. From the effective set, not the uid: root in a
/// container holds only what its bounding set allows.
fn missing_to_load() -> String {
    use crate::capabilities::{CapSet, Capability};
    let caps = CapSet::effective();
    [Capability::Bpf, Capability::Perfmon]
        .into_iter()
        .filter(|&c| !caps.has(c))
        .map(Capability::name)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (harmless on newer kernels).
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For the `root_*` tests (ignored by a plain `cargo test`; `scripts/test.sh` runs them as
    /// root): a clear failure when run without root.
    fn require_root() {
        // SAFETY: no preconditions.
        let root = unsafe { libc::geteuid() == 0 };
        assert!(root, "this test loads eBPF and needs root");
    }

    #[test]
    fn ring_buffer_is_sized_by_rate() {
        // 2 CPUs at 19 Hz with 16 KiB copies: ~0.7 MB/s, a second of it.
        assert_eq!(ring_buffer_bytes(2, 19, 16384), 1 << 20);
        assert_eq!(ring_buffer_bytes(2, 99, 16384), 4 << 20);
        assert_eq!(ring_buffer_bytes(1, 1, 0), 256 << 10);
        assert_eq!(ring_buffer_bytes(64, 19, 16384), 32 << 20);
        assert_eq!(ring_buffer_bytes(512, 999, 32768), 64 << 20);
        for (c, f) in [(3, 97), (7, 19), (96, 49)] {
            assert!(ring_buffer_bytes(c, f, 16384).is_power_of_two());
        }
    }

    #[test]
    fn drains_are_paced_by_the_rate_ring_bytes_arrive_at() {
        let record = record_bytes(16384);
        // 2 CPUs at 19 Hz: a 1 MiB ring holds ~55 full records; a quarter is ~14, ~0.36 s at 38/s.
        let ring = u64::from(ring_buffer_bytes(2, 19, 16384));
        let t0 = Instant::now();
        let mut p = DrainPacer::new(ring, 38.0 * record as f64, t0);
        let d = p.drained(8 * record, t0 + Duration::from_millis(200));
        assert!(
            (Duration::from_millis(300)..=Duration::from_millis(420)).contains(&d),
            "{d:?}"
        );
        // An idle machine: the longest pause.
        let mut t = t0 + Duration::from_millis(200);
        let mut d = d;
        for _ in 0..30 {
            t += d;
            d = p.drained(0, t);
        }
        assert_eq!(d, MAX_DRAIN_INTERVAL);
        // A burst (every CPU busy again at a higher rate than expected): the next drain comes soon.
        t += d;
        assert_eq!(p.drained(150 * record, t), MIN_DRAIN_INTERVAL);
        // 99 Hz on 2 CPUs: the ring is sized for it, drains come well before it fills.
        let ring = u64::from(ring_buffer_bytes(2, 99, 16384));
        let mut p = DrainPacer::new(ring, 198.0 * record as f64, t0);
        let d = p.drained(40 * record, t0 + Duration::from_millis(200));
        let filled = 198.0 * d.as_secs_f64() * record as f64;
        assert!(
            filled <= ring as f64 / 4.0 + 1.0,
            "{d:?} fills {filled} of {ring}"
        );
        assert!(d < MAX_DRAIN_INTERVAL, "{d:?}");
        // The same samples with shallow stacks (records of 3 KiB, not 18): the ring fills six
        // times slower, so once the pacer has seen it (a lull is believed gradually) it waits its
        // longest.
        let (mut t, mut d) = (t0, Duration::from_millis(200));
        for _ in 0..20 {
            t += d;
            d = p.drained((198.0 * d.as_secs_f64()) as u64 * 3072, t);
        }
        assert_eq!(d, MAX_DRAIN_INTERVAL);
    }

    #[test]
    fn rejects_bad_config_before_touching_the_kernel() {
        assert!(matches!(
            Sampler::load(SamplerConfig {
                frequency_hz: 0,
                stack_copy_bytes: 0,
                ring_buffer_bytes: None,
            }),
            Err(SamplerError::BadFrequency(0))
        ));
        assert!(matches!(
            Sampler::load(SamplerConfig {
                frequency_hz: 19,
                stack_copy_bytes: 1 << 20,
                ring_buffer_bytes: None,
            }),
            Err(SamplerError::BadStackCopy(_))
        ));
    }

    /// Loads the real sampler into this kernel and checks that a busy thread of this process is
    /// sampled with its registers, a frame-pointer stack and a stack copy.
    #[test]
    #[ignore = "needs root"]
    fn root_samples_this_process_from_the_kernel() {
        require_root();
        let mut sampler = match Sampler::load(SamplerConfig {
            frequency_hz: 999,
            stack_copy_bytes: 4096,
            ring_buffer_bytes: None,
        }) {
            Ok(s) => s,
            Err(e) => panic!("sampler failed to load as root: {e}"),
        };
        let me = std::process::id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
        };
        let mut mine = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while mine.len() < 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(MIN_DRAIN_INTERVAL);
            sampler.drain(|s| {
                if s.tgid == me {
                    mine.push(s.into_owned())
                }
            });
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = spinner.join();
        assert!(
            mine.len() >= 20,
            "only {} samples of this process in 10 s at 999 Hz",
            mine.len()
        );
        let user: Vec<_> = mine.iter().filter(|s| !s.in_kernel).collect();
        assert!(
            !user.is_empty(),
            "no user-mode samples of a spinning thread"
        );
        for s in &user {
            let regs = s.user_regs.expect("a user-mode sample has user registers");
            assert_eq!(
                s.user_stack.first(),
                Some(&regs.ip),
                "the FP stack starts at the sampled ip"
            );
            assert!(!s.stack_copy.is_empty(), "the stack copy is present");
            assert!(!s.comm.is_empty());
        }
    }
}
