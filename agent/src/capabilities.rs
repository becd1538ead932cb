//! The Linux capabilities the agent runs with (the effective set in `/proc/self/status`) and
//! what each one it uses is for. Read at start: loading the sampler needs CAP_BPF and
//! CAP_PERFMON, and the agent logs which of the others it lacks and what will not work without
//! each, so that a pod granted too little says so in its first lines instead of in odd frames.
//!
//! Root is not assumed to hold them: in a container, root holds only the capabilities of its
//! bounding set (deploy/base/agent.yaml grants exactly [`Capability::USED`]).

use std::fmt;

/// A capability the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Load the eBPF sampler and create its maps.
    Bpf,
    /// Open perf events on every CPU and attach the sampler to them.
    Perfmon,
    /// Read kernel symbol addresses in `/proc/kallsyms` (hidden from others by `kptr_restrict`).
    Syslog,
    /// Read another user's (or a more privileged) process's `/proc/PID/maps` and reach its files
    /// through `/proc/PID/root`.
    SysPtrace,
    /// Read a binary that file permissions would not let the agent read (another user's 0700
    /// directory, a 0500 executable).
    DacReadSearch,
}

impl Capability {
    /// Every capability the agent uses, in the order the start-up report lists them.
    pub const USED: [Capability; 5] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::Syslog,
        Capability::SysPtrace,
        Capability::DacReadSearch,
    ];

    /// Bit number in the kernel's capability sets (linux/capability.h).
    fn bit(self) -> u32 {
        match self {
            Capability::DacReadSearch => 2,
            Capability::SysPtrace => 19,
            Capability::Syslog => 34,
            Capability::Perfmon => 38,
            Capability::Bpf => 39,
        }
    }

    /// The kernel's name, `CAP_BPF`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "CAP_BPF",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::DacReadSearch => "CAP_DAC_READ_SEARCH",
        }
    }

    /// What does not work without it.
    pub fn without(self) -> &'static str {
        match self {
            Capability::Bpf => "the eBPF sampler cannot be loaded: the agent cannot run",
            Capability::Perfmon => "perf events cannot be opened: the agent cannot run",
            Capability::Syslog => {
                "kernel addresses in /proc/kallsyms are hidden (kptr_restrict): kernel frames stay unnamed"
            }
            Capability::SysPtrace => {
                "the maps and files of processes of other users (and of more privileged ones) cannot be read: \
                 their frames stay unnamed and their binaries are not uploaded"
            }
            Capability::DacReadSearch => {
                "binaries the agent's user may not read (another user's private directory) are not uploaded: \
                 their frames stay unnamed (could not read the binary: permission denied)"
            }
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CAP_DAC_OVERRIDE: implies what CAP_DAC_READ_SEARCH gives for reading.
const DAC_OVERRIDE: u32 = 1;
/// CAP_SYS_ADMIN: kernels also accept it for BPF and perf events (the pre-5.8 way).
const SYS_ADMIN: u32 = 21;

/// A capability set as the kernel shows it (`CapEff:` of `/proc/PID/status`, 64 bits of hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    /// This process's effective set; empty if `/proc/self/status` cannot be read.
    pub fn effective() -> CapSet {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| CapSet::from_status(&s))
            .unwrap_or(CapSet(0))
    }

    /// The `CapEff:` line of a `/proc/PID/status` text.
    pub fn from_status(status: &str) -> Option<CapSet> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .map(CapSet)
    }

    fn bit(self, bit: u32) -> bool {
        self.0 & (1u64 << bit) != 0
    }

    /// Whether the set grants what `c` is used for (directly, or through a broader capability
    /// the kernel also accepts for it).
    pub fn has(self, c: Capability) -> bool {
        self.bit(c.bit())
            || match c {
                Capability::Bpf | Capability::Perfmon => self.bit(SYS_ADMIN),
                Capability::DacReadSearch => self.bit(DAC_OVERRIDE),
                Capability::Syslog | Capability::SysPtrace => false,
            }
    }

    /// The capabilities of [`Capability::USED`] this set lacks.
    pub fn missing(self) -> Vec<Capability> {
        Capability::USED
            .into_iter()
            .filter(|&c| !self.has(c))
            .collect()
    }

    /// Logs which used capabilities this set holds and, for each missing one, what will not
    /// work. Called once at start.
    pub fn log_report(self) {
        let held: Vec<&str> = Capability::USED
            .into_iter()
            .filter(|&c| self.has(c))
            .map(Capability::name)
            .collect();
        let missing = self.missing();
        if missing.is_empty() {
            tracing::info!(capabilities = %held.join(","), "running with every capability the agent uses");
            return;
        }
        tracing::info!(
            capabilities = %held.join(","),
            effective = %format_args!("{:#x}", self.0),
            "running with a subset of the capabilities the agent uses"
        );
        for c in missing {
            tracing::warn!(capability = c.name(), "missing {c}: {}", c.without());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(capeff: &str) -> String {
        format!(
            "Name:\tkiln\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\nCapBnd:\t000001ffffffffff\n"
        )
    }

    #[test]
    fn reads_the_effective_set_from_status() {
        // What the pod of deploy/ holds: BPF, PERFMON, SYSLOG, SYS_PTRACE, DAC_READ_SEARCH.
        let set = CapSet::from_status(&status("000000c400080004")).unwrap();
        assert!(set.missing().is_empty(), "{:?}", set.missing());
        // Full root.
        let root = CapSet::from_status(&status("000001ffffffffff")).unwrap();
        assert!(root.missing().is_empty());
        assert_eq!(CapSet::from_status("Name:\tx\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        // Only BPF + PERFMON.
        let set = CapSet::from_status(&status("000000c000000000")).unwrap();
        assert_eq!(
            set.missing(),
            [
                Capability::Syslog,
                Capability::SysPtrace,
                Capability::DacReadSearch
            ]
        );
        assert!(set.has(Capability::Bpf) && set.has(Capability::Perfmon));
        // Nothing at all (root with an empty bounding set, or a plain user).
        assert_eq!(CapSet(0).missing(), Capability::USED);
    }

    #[test]
    fn broader_capabilities_count_for_narrower_ones() {
        // CAP_SYS_ADMIN loads BPF and opens perf events on kernels before CAP_BPF existed.
        let admin = CapSet(1 << SYS_ADMIN);
        assert!(admin.has(Capability::Bpf) && admin.has(Capability::Perfmon));
        assert!(!admin.has(Capability::Syslog));
        assert!(CapSet(1 << DAC_OVERRIDE).has(Capability::DacReadSearch));
    }
}
