//! The agent's configuration: one plain struct with documented fields and defaults, checked once by
//! [`AgentConfig::validate`] before anything starts. CLI flags and env vars are converted at the edge.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use kiln_proto::push::PUSH_PATH;

/// Where the server listens unless told otherwise (Pyroscope's conventional port).
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:4040";

/// Default user-stack bytes copied per sample, chosen from measurements (agent/tests/unwind_bpf.rs
/// `measure_stack_copy_sizes`; 999 Hz, ~1,000-2,000 samples per cell; % of samples unwound to main /
/// mean bytes copied per sample):
///
/// | workload (stack depth)                      | 4 KiB      | 8 KiB      | 16 KiB      | 32 KiB      |
/// |---------------------------------------------|------------|------------|-------------|-------------|
/// | gcc -O2 no-FP, 12 frames of ~220 B (~3 KB)  | 99.9 / 4.1K | 99.9 / 5.1K | 99.9 / 6.3K | 99.9 / 10.4K |
/// | gcc -O2 no-FP, 40 frames (~9.6 KB)          | 0.1 / 4.1K | 0.3 / 8.2K | 99.9 / 15.4K | 99.9 / 15.9K |
/// | rustc -O, 10 frames of ~300 B + std runtime | 0.1 / 4.1K | 99.9 / 8.2K | 99.9 / 13.7K | 100 / 9.9K  |
/// | rustc -O, 40 frames                         | 0.0 / 4.1K | 0.0 / 8.2K | 0.1 / 16.4K | 99.9 / 24.7K |
///
/// 16 KiB doubles the reachable depth of 8 KiB for 1.2-1.9x the bytes (stacks near the top of
/// their mapping copy less: the sampler stops at the mapping's end); 32 KiB costs up to 3x for the
/// deepest case only. Deeper stacks end in a `[truncated: stack copy exhausted]` frame. Agent
/// unwind time is a few us per sample either way (it grows with frames, not with the copy size).
pub const DEFAULT_STACK_COPY_BYTES: u32 = 16384;

/// Default upload budget: 32 MiB of object files per minute. zstd (level 1) compresses them at
/// ~170 MB/s, so a spent budget costs the agent ~0.2 s of CPU a minute (0.3 % of a CPU) at worst,
/// on a node that keeps starting binaries never seen before (a build machine); a node running the
/// same services uploads each build ID once and then nothing. Without a budget, uploads were
/// 80-90 % of the agent's CPU on a machine running cargo builds.
pub const DEFAULT_UPLOAD_BYTES_PER_MINUTE: u64 = 32 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("server URL {0:?} must start with http:// or https:// and name a host")]
    ServerUrl(String),
    #[error("server URL {0:?} must not carry a query string or fragment")]
    ServerUrlQuery(String),
    #[error("frequency of {0} Hz is above the supported maximum of {MAX_FREQUENCY_HZ} Hz")]
    Frequency(u32),
    #[error("window of {0:?} is outside 1 s ..= 1 h")]
    Window(Duration),
    #[error("stack copy of {0} bytes exceeds the sampler's maximum of {max}", max = kiln_sampler_bpf::MAX_STACK_COPY)]
    StackCopy(u32),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("ring buffer size {0} must be a power of two of at least 4096 bytes")]
    RingBuffer(u32),
    #[error("--pod-labels: {0}")]
    PodLabels(String),
}

/// Highest sampling frequency we accept: above it the observer effect dominates (see the notes on
/// overhead) and periods stop being meaningful.
pub const MAX_FREQUENCY_HZ: u32 = 10_000;

/// The server's base URL (`http(s)://host[:port][/prefix]`), validated on construction so that joining
/// endpoint paths to it cannot fail later.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Validates `url`: http or https, a host, no query or fragment. A trailing `/` is dropped.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| ConfigError::ServerUrl(url.to_owned()))?;
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || url.chars().any(char::is_whitespace) {
            return Err(ConfigError::ServerUrl(url.to_owned()));
        }
        if url.contains(['?', '#']) {
            return Err(ConfigError::ServerUrlQuery(url.to_owned()));
        }
        // reqwest must accept it too, or every request would fail at run time instead of now.
        reqwest::Url::parse(url).map_err(|_| ConfigError::ServerUrl(url.to_owned()))?;
        Ok(ServerUrl(url.trim_end_matches('/').to_owned()))
    }

    /// The base URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{base}/push.v1.PusherService/Push`.
    pub fn push_url(&self) -> String {
        format!("{}{PUSH_PATH}", self.0)
    }

    /// `{base}/debuginfo/v1/{build_id_hex}`.
    pub fn debuginfo_url(&self, build_id_hex: &str) -> String {
        format!("{}/debuginfo/v1/{build_id_hex}", self.0)
    }
}

impl Default for ServerUrl {
    fn default() -> Self {
        // A constant known to be valid (a test checks it against `parse`).
        ServerUrl(DEFAULT_SERVER_URL.to_owned())
    }
}

impl FromStr for ServerUrl {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        ServerUrl::parse(s)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerUrl({:?})", self.0)
    }
}

/// Everything the agent's pipeline needs to know. Build it with `AgentConfig { field, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Base URL of the Kiln (or Pyroscope) server that receives pushes and debuginfo.
    pub server_url: ServerUrl,
    /// Sent as `Authorization: Bearer <token>` on every request, for a server with `auth_token`.
    pub auth_token: Option<String>,
    /// Samples per second per CPU. 19 Hz by default: a prime, so sampling does not lock step with
    /// periodic work, and cheap enough to leave on everywhere.
    pub frequency_hz: NonZeroU32,
    /// Length of one aggregation window; one profile per process is pushed per window.
    pub window: Duration,
    /// The `node` label on every series. Defaults to the host name.
    pub node_name: String,
    /// Bytes of user stack the sampler copies per sample (for DWARF unwinding); see
    /// [`DEFAULT_STACK_COPY_BYTES`].
    pub stack_copy_bytes: u32,
    /// Where to serve `/metrics` and `/healthz`; `None` disables the listener.
    pub metrics_listen: Option<SocketAddr>,
    /// ELF files larger than this are not uploaded for symbolization (skipped, logged and counted).
    pub max_upload_bytes: u64,
    /// Average bytes of object files (uncompressed) uploaded per minute; a file that would go over
    /// waits (`debuginfo_uploads{outcome="OverBudget"}`) and is offered again when seen in a later
    /// window. A file larger than a minute's budget goes when the budget is full, and the
    /// following minutes pay for it. 0: no limit.
    pub upload_bytes_per_minute: u64,
    /// Byte budget of the unwind-table cache (least recently used objects are evicted beyond it).
    pub unwind_table_budget_bytes: usize,
    /// Size of the sampler's ring buffer (a power of two); `None` sizes it from the CPU count,
    /// frequency and stack copy size (see `sampling::ring_buffer_bytes`).
    pub ring_buffer_bytes: Option<u32>,
    /// Whether to upload ELF files the server lacks so it can symbolize them.
    pub upload_debuginfo: bool,
    /// Most push requests waiting to be sent; beyond it the oldest is dropped (and counted).
    pub queue_capacity: usize,
    /// Most bytes (compressed) of push requests waiting to be sent; the same oldest-first dropping.
    pub queue_max_bytes: usize,
    /// Largest encoded push request; a window with more profiles is split into several requests.
    pub max_request_bytes: usize,
    /// Timeout of one HTTP request to the server.
    pub request_timeout: Duration,
    /// How long shutdown may spend delivering what is still queued.
    pub shutdown_flush_timeout: Duration,
    /// Most processes whose mappings are cached at once.
    pub max_cached_processes: usize,
    /// Most processes in one window; samples of further processes are dropped (and counted).
    pub max_processes_per_window: usize,
    /// Most distinct stacks per process per window; samples with further stacks are dropped (and counted).
    pub max_stacks_per_process: usize,
    /// Where pod, namespace and container names come from (see [`crate::kube`]).
    pub kubernetes: KubeSource,
    /// Pod labels copied onto every sample of the pod (`--pod-labels`), at most
    /// [`crate::kube::index::MAX_POD_LABELS`].
    pub pod_labels: Vec<String>,
    /// Interpreted runtimes whose frames are read and named (see [`crate::python`]).
    pub runtimes: Runtimes,
}

/// Which interpreted runtimes the agent reads (`--runtimes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runtimes {
    /// CPython 3.8–3.13: Python frames in every sample of a CPython process.
    pub python: bool,
    /// HotSpot JVMs (JDK 17): Java frames named and unwound through JIT code (see
    /// [`crate::java`]).
    pub java: bool,
    /// Node.js (V8): JavaScript frames in every sample of a `node` process (see [`crate::node`]).
    pub node: bool,
}

impl Default for Runtimes {
    fn default() -> Self {
        Runtimes {
            python: true,
            java: true,
            node: true,
        }
    }
}

impl std::str::FromStr for Runtimes {
    type Err = String;

    /// A comma-separated list of `python`, `java`, `node`, or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Runtimes {
            python: false,
            java: false,
            node: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "python" => r.python = true,
                "java" => r.java = true,
                "node" => r.node = true,
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown runtime {other:?}: expected a comma-separated list of `python`, `java`, `node`, or `none`"
                    ));
                }
            }
        }
        Ok(r)
    }
}

/// Where the agent learns pod, namespace and container names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KubeSource {
    /// The in-cluster API server when running in a pod (`KUBERNETES_SERVICE_HOST` set), else none.
    #[default]
    Auto,
    /// No names: processes in pods keep only their `pod_uid` and `container_id` labels.
    Off,
    /// This API server, with an optional token file and CA bundle.
    Url {
        url: String,
        token_file: Option<std::path::PathBuf>,
        ca_file: Option<std::path::PathBuf>,
    },
}

impl AgentConfig {
    /// The Kubernetes API to watch this node's pods from, if any.
    pub fn kube_config(&self) -> Option<crate::kube::KubeConfig> {
        let mut c = match &self.kubernetes {
            KubeSource::Off => None,
            KubeSource::Auto => crate::kube::KubeConfig::in_cluster(&self.node_name),
            KubeSource::Url {
                url,
                token_file,
                ca_file,
            } => Some(crate::kube::KubeConfig {
                api_url: url.trim_end_matches('/').to_owned(),
                token_file: token_file.clone(),
                ca_file: ca_file.clone(),
                node_name: self.node_name.clone(),
                pod_labels: Vec::new(),
                backoff: crate::kube::Backoff::default(),
            }),
        }?;
        c.pod_labels = self.pod_labels.clone();
        Some(c)
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server_url: ServerUrl::default(),
            auth_token: None,
            frequency_hz: NonZeroU32::new(19).unwrap_or(NonZeroU32::MIN),
            window: Duration::from_secs(10),
            node_name: hostname(),
            stack_copy_bytes: DEFAULT_STACK_COPY_BYTES,
            metrics_listen: None,
            max_upload_bytes: 512 << 20,
            upload_bytes_per_minute: DEFAULT_UPLOAD_BYTES_PER_MINUTE,
            unwind_table_budget_bytes: crate::unwind::DEFAULT_TABLE_BUDGET_BYTES,
            ring_buffer_bytes: None,
            upload_debuginfo: true,
            queue_capacity: 256,
            queue_max_bytes: 64 << 20,
            max_request_bytes: 4 << 20,
            request_timeout: Duration::from_secs(30),
            shutdown_flush_timeout: Duration::from_secs(5),
            max_cached_processes: 8192,
            max_processes_per_window: 4096,
            max_stacks_per_process: 16_384,
            kubernetes: KubeSource::Auto,
            pod_labels: Vec::new(),
            runtimes: Runtimes::default(),
        }
    }
}

impl AgentConfig {
    /// Checks the ranges the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frequency_hz.get() > MAX_FREQUENCY_HZ {
            return Err(ConfigError::Frequency(self.frequency_hz.get()));
        }
        if self.pod_labels.len() > crate::kube::index::MAX_POD_LABELS {
            return Err(ConfigError::PodLabels(format!(
                "{} labels, at most {} allowed",
                self.pod_labels.len(),
                crate::kube::index::MAX_POD_LABELS
            )));
        }
        if let Some(bad) = self
            .pod_labels
            .iter()
            .find(|k| k.is_empty() || k.len() > 317 || k.contains(char::is_whitespace))
        {
            return Err(ConfigError::PodLabels(format!(
                "{bad:?} is not a Kubernetes label key"
            )));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(3600) {
            return Err(ConfigError::Window(self.window));
        }
        if self.stack_copy_bytes as usize > kiln_sampler_bpf::MAX_STACK_COPY {
            return Err(ConfigError::StackCopy(self.stack_copy_bytes));
        }
        if let Some(b) = self.ring_buffer_bytes
            && (!b.is_power_of_two() || b < 4096)
        {
            return Err(ConfigError::RingBuffer(b));
        }
        for (name, v) in [
            ("queue_capacity", self.queue_capacity),
            ("queue_max_bytes", self.queue_max_bytes),
            ("max_request_bytes", self.max_request_bytes),
            ("max_cached_processes", self.max_cached_processes),
            ("max_processes_per_window", self.max_processes_per_window),
            ("max_stacks_per_process", self.max_stacks_per_process),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }

    /// Nanoseconds of CPU one sample stands for: `1e9 / frequency`.
    pub fn period_nanos(&self) -> i64 {
        1_000_000_000 / i64::from(self.frequency_hz.get())
    }
}

/// The kernel's host name (the node name on Kubernetes), or `unknown` if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `--runtimes` switches each runtime on or off; a wrong name is refused with the list.
    #[test]
    fn runtimes_parse_as_a_list() {
        let r: Runtimes = "python,java,node".parse().unwrap();
        assert_eq!(r, Runtimes::default());
        let r: Runtimes = "python,java".parse().unwrap();
        assert!(r.python && r.java && !r.node);
        let r: Runtimes = "java".parse().unwrap();
        assert!(!r.python && r.java);
        let r: Runtimes = "node".parse().unwrap();
        assert!(r.node && !r.python && !r.java);
        let r: Runtimes = "none".parse().unwrap();
        assert!(!r.python && !r.java && !r.node);
        assert!("jvm".parse::<Runtimes>().unwrap_err().contains("`java`"));
        assert!(
            "node,ruby"
                .parse::<Runtimes>()
                .unwrap_err()
                .contains("ruby")
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = AgentConfig::default();
        c.validate().unwrap();
        assert_eq!(c.frequency_hz.get(), 19);
        assert_eq!(c.period_nanos(), 52_631_578);
        assert_eq!(ServerUrl::parse(DEFAULT_SERVER_URL).unwrap(), c.server_url);
        assert!(!c.node_name.is_empty());
    }

    #[test]
    fn server_url_validation_and_joining() {
        let u = ServerUrl::parse("http://kiln:4040/prefix/").unwrap();
        assert_eq!(
            u.push_url(),
            "http://kiln:4040/prefix/push.v1.PusherService/Push"
        );
        assert_eq!(
            u.debuginfo_url("abcd"),
            "http://kiln:4040/prefix/debuginfo/v1/abcd"
        );
        assert!(matches!(
            ServerUrl::parse("kiln:4040"),
            Err(ConfigError::ServerUrl(_))
        ));
        assert!(matches!(
            ServerUrl::parse("http://"),
            Err(ConfigError::ServerUrl(_))
        ));
        assert!(matches!(
            ServerUrl::parse("http://x/?a=1"),
            Err(ConfigError::ServerUrlQuery(_))
        ));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let c = AgentConfig {
            window: Duration::from_millis(10),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Window(_))));
        let c = AgentConfig {
            stack_copy_bytes: 1 << 20,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::StackCopy(1 << 20)));
        let c = AgentConfig {
            queue_capacity: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("queue_capacity")));
    }
}
