//! Command-line flags (each with an environment variable), parsed in one place and turned into the
//! server's and agent's configuration structs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Kiln: a continuous, cluster-wide CPU profiler.
///
/// The agent samples every CPU with eBPF and ships pprof profiles to the server, which symbolizes,
/// stores and serves them as flame graphs (web UI), top-function tables and pprof downloads.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start; boxing the argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server and an agent together on this machine (needs root for eBPF), then open the
    /// printed URL.
    Up {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Run the central server: ingest (Pyroscope push API), storage, query API and web UI.
    Server(ServerArgs),
    /// Run the node agent: sample every CPU with eBPF and push profiles to a server (needs root).
    Agent {
        /// Where the server listens.
        #[arg(long, env = "KILN_SERVER_URL", default_value = "http://127.0.0.1:4040", value_parser = parse_server_url)]
        server_url: String,
        /// Bearer token sent with every request, for a server started with --auth-token.
        #[arg(long, env = "KILN_AUTH_TOKEN", hide_env_values = true)]
        auth_token: Option<String>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Report damage in a server's data directory (read-only): each WAL segment and block with
    /// bad records or sections, and the profiles they cost. Refuses to run while a server holds
    /// the directory. Exit status: 0 no damage, 1 damage found, 2 usage error or directory in use.
    Check {
        /// The data directory to inspect (as given to `kiln server`).
        #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
        data_dir: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address for the HTTP API, the web UI, /metrics and /healthz: HOST:PORT with an IPv4 or
    /// bracketed IPv6 address ([::1]:4040, [::]:4040 for all) or a host name (localhost:4040).
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:4040", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Directory for stored profiles and uploaded debuginfo (created if missing).
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// Require `Authorization: Bearer <token>` on ingest and query (not on /healthz, /metrics or
    /// the UI's files). `kiln up` gives the same token to its agent.
    #[arg(long, env = "KILN_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Largest accepted request body, in bytes (compressed, as sent).
    #[arg(long, env = "KILN_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Largest decompressed body or profile, in bytes.
    #[arg(long, env = "KILN_MAX_DECOMPRESSED_BYTES", default_value_t = 64 << 20)]
    pub max_decompressed_bytes: usize,
    /// How far ahead of the server's clock a profile's time may be (clock skew), e.g. 10m; the
    /// accepted window is [now - retention, now + this], outside it ingest answers 400.
    #[arg(long, env = "KILN_INGEST_MAX_FUTURE_SKEW", default_value = "10m", value_parser = parse_duration)]
    pub ingest_max_future_skew: Duration,
    /// Per-tenant ingest rate in request bytes (as sent) per second, e.g. 128MiB, with a burst
    /// of two seconds' worth; `off` for none. Over it ingest answers 429 with Retry-After.
    #[arg(long, env = "KILN_INGEST_RATE_BYTES", default_value = "128MiB", value_parser = parse_bytes)]
    pub ingest_rate_bytes: u64,
    /// Per-tenant ingest rate in stored profiles per second (burst: two seconds' worth); 0 for
    /// none. Over it ingest answers 429 with Retry-After.
    #[arg(long, env = "KILN_INGEST_RATE_PROFILES", default_value_t = 20_000)]
    pub ingest_rate_profiles: u64,
    /// Delete stored profiles older than this, e.g. 30d, 12h; `off` keeps them forever.
    #[arg(long, env = "KILN_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub retention: Duration,
    /// Delete the oldest stored profiles while storage exceeds this size, e.g. 10GiB, 500MB;
    /// `off` for no limit.
    #[arg(long, env = "KILN_RETENTION_BYTES", default_value = "10GiB", value_parser = parse_bytes)]
    pub retention_bytes: u64,
    /// Size at which the write-ahead log starts a new segment and the full one is flushed into a
    /// block; bounds the data (and memory) not yet in blocks.
    #[arg(long, env = "KILN_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub wal_segment_bytes: u64,
    /// debuginfod servers (space- or comma-separated URLs, like DEBUGINFOD_URLS) asked for the
    /// executable and debug file of a build ID that was never uploaded or is stripped.
    #[arg(long, env = "KILN_DEBUGINFOD_URLS", default_value = "")]
    pub debuginfod_urls: String,
    /// Token that lets an upload (`PUT /debuginfo/v1/{id}?scope=shared` with header
    /// `X-Kiln-Shared-Token`) fill the shared debuginfo store, which names every tenant's frames;
    /// without it only debuginfod fills that store and uploads go to the uploader's tenant.
    #[arg(long, env = "KILN_DEBUGINFO_SHARED_TOKEN", hide_env_values = true)]
    pub debuginfo_shared_token: Option<String>,
    /// Largest debuginfo file accepted, decompressed, e.g. 1GiB (larger uploads get 413).
    #[arg(long, env = "KILN_DEBUGINFO_MAX_FILE_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub debuginfo_max_file_bytes: u64,
    /// Debuginfo bytes one tenant (and the shared store) may hold, e.g. 4GiB (then 507).
    #[arg(long, env = "KILN_DEBUGINFO_TENANT_MAX_BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    pub debuginfo_tenant_max_bytes: u64,
    /// Debuginfo files one tenant (and the shared store) may hold (then 507).
    #[arg(
        long,
        env = "KILN_DEBUGINFO_TENANT_MAX_FILES",
        default_value_t = 10_000
    )]
    pub debuginfo_tenant_max_files: u64,
    /// Queries (flame graphs, tables, pprof, series) merged at once; others wait in a queue.
    /// 0: half the CPUs, so that ingest keeps a core.
    #[arg(long, env = "KILN_QUERY_CONCURRENCY", default_value_t = 0)]
    pub query_concurrency: usize,
    /// Queries that may wait for a slot; one more is answered 503 with Retry-After.
    #[arg(long, env = "KILN_QUERY_QUEUE", default_value_t = 64)]
    pub query_queue: usize,
    /// Longest wait for a query slot, e.g. 30s; past it the query is answered 503 with
    /// Retry-After.
    #[arg(long, env = "KILN_QUERY_QUEUE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub query_queue_timeout: Duration,
    /// Most stored profiles one query may read; a query selecting more is answered 413.
    #[arg(long, env = "KILN_QUERY_MAX_PROFILES", default_value_t = 2_000_000)]
    pub query_max_profiles: u64,
    /// Most decoded profile data one query may read, e.g. 8GiB; a query selecting more is
    /// answered 413.
    #[arg(long, env = "KILN_QUERY_MAX_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub query_max_bytes: u64,
    /// A connection must send a complete request head within this long of opening or of its
    /// previous request, or it is closed (slow and idle clients give their slot back), e.g. 10s.
    #[arg(long, env = "KILN_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// Most open HTTP connections; beyond it new ones wait until one closes. 0: 80 % of the
    /// open-file limit (whose soft value is raised to the hard one at start); higher values are
    /// capped to that.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// How often the storage engine flushes, compacts and applies retention (tests shorten it).
    #[arg(long, env = "KILN_STORE_MAINTENANCE_INTERVAL", default_value = "10s", value_parser = parse_duration, hide = true)]
    pub store_maintenance_interval: Duration,
    /// Check the checksums of every stored block before serving (otherwise done in the background
    /// right after start-up); damaged data is quarantined and counted on /metrics either way.
    #[arg(long, env = "KILN_VERIFY")]
    pub verify: bool,
    /// Keep blocks in S3-compatible object storage, shared by every server given the same URL:
    /// `s3://BUCKET[/PREFIX]`. Endpoint and credentials come from the standard variables
    /// (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; AWS_ALLOW_HTTP=true
    /// for a plain-HTTP endpoint). The write-ahead log stays in --data-dir. Default: local disk.
    #[arg(long, env = "KILN_STORAGE", value_parser = parse_storage)]
    pub storage: Option<String>,
    /// With --storage: a profile pushed to any server is readable from every server within this
    /// long (each server uploads its head and re-reads the block list every third of it).
    #[arg(long, env = "KILN_STORAGE_FRESHNESS", default_value = "15s", value_parser = parse_duration)]
    pub storage_freshness: Duration,
    /// With --storage: local disk for blocks downloaded from the bucket, e.g. 10GiB (newest kept;
    /// survives restarts).
    #[arg(long, env = "KILN_STORAGE_CACHE_BYTES", default_value = "10GiB", value_parser = parse_bytes)]
    pub storage_cache_bytes: u64,
    /// With --storage: how long a compaction or retention lease outlives a server that died
    /// holding it (tests shorten it).
    #[arg(long, env = "KILN_STORAGE_LEASE", default_value = "5m", value_parser = parse_duration, hide = true)]
    pub storage_lease: Duration,
    /// With --storage: how long blocks replaced by a compaction (and orphaned block objects) stay
    /// in the bucket before they are deleted, for readers that listed them just before (tests
    /// shorten it).
    #[arg(long, env = "KILN_STORAGE_GRACE", default_value = "2m", value_parser = parse_duration, hide = true)]
    pub storage_grace: Duration,
}

/// `--storage`: `s3://BUCKET[/PREFIX]` (or an empty value / `local` for local disk).
fn parse_storage(s: &str) -> Result<String, String> {
    match s.strip_prefix("s3://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            Ok(s.trim_end_matches('/').to_owned())
        }
        _ => Err(format!("expected s3://BUCKET[/PREFIX], got {s:?}")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Samples per second per CPU (a prime such as 19 or 97 avoids lockstep with periodic work).
    #[arg(long, env = "KILN_FREQUENCY", default_value_t = 19)]
    pub frequency: u64,
    /// Time covered by one pushed profile, e.g. 10s, 500ms, 1m.
    #[arg(long, env = "KILN_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub window: Duration,
    /// Value of the `node` label (default: this machine's hostname).
    #[arg(long, env = "KILN_NODE_NAME")]
    pub node_name: Option<String>,
    /// Bytes of user stack copied per sample, for unwinding code built without frame pointers.
    #[arg(long, env = "KILN_STACK_COPY_BYTES", default_value_t = kiln_agent::config::DEFAULT_STACK_COPY_BYTES)]
    pub stack_copy_bytes: u32,
    /// Address of the agent's own /metrics and /healthz, or `off`.
    #[arg(long, env = "KILN_METRICS_LISTEN", default_value = "127.0.0.1:4041", value_parser = parse_optional_addr)]
    pub metrics_listen: OptionalAddr,
    /// Memory for cached unwind tables (.eh_frame) of the objects sampled, e.g. 24MiB; the least
    /// recently used are evicted beyond it.
    #[arg(long, env = "KILN_UNWIND_TABLE_BUDGET", default_value = "24MiB", value_parser = parse_bytes)]
    pub unwind_table_budget: u64,
    /// Object files uploaded to the server for symbolization per minute, on average (uncompressed
    /// bytes), e.g. 32MiB; `off` for no limit. Files over the budget wait for a later window.
    #[arg(long, env = "KILN_UPLOAD_BUDGET", default_value = "32MiB", value_parser = parse_bytes)]
    pub upload_budget: u64,
    /// Size of the kernel-to-agent ring buffer (a power of two, e.g. 4MiB); `auto` sizes it for
    /// a second of samples at the worst case (CPUs x frequency x stack copy).
    #[arg(long, env = "KILN_RING_BUFFER", default_value = "auto", value_parser = parse_ring)]
    pub ring_buffer: RingSize,
    /// Kubernetes API server to watch this node's pods from, for pod/namespace/container/workload
    /// labels:
    /// `auto` (the in-cluster API when running in a pod, with the service account's token and
    /// CA), `off`, or a URL such as https://10.0.0.1:6443.
    #[arg(long, env = "KILN_KUBE_API", default_value = "auto")]
    pub kube_api: String,
    /// Bearer token file for --kube-api URL (re-read as it rotates).
    #[arg(long, env = "KILN_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<std::path::PathBuf>,
    /// PEM CA bundle that signed the --kube-api URL's certificate.
    #[arg(long, env = "KILN_KUBE_CA_FILE")]
    pub kube_ca_file: Option<std::path::PathBuf>,
    /// Pod labels to copy onto every sample of the pod, comma-separated Kubernetes label keys
    /// (e.g. `app,team,app.kubernetes.io/version`); label names are sanitized (`.`,`/`,`-` → `_`)
    /// and never replace Kiln's own labels. At most 16.
    #[arg(long, env = "KILN_POD_LABELS", value_delimiter = ',')]
    pub pod_labels: Vec<String>,
    /// Interpreted runtimes whose functions are named in samples, a comma-separated list:
    /// `python` (CPython 3.8-3.13, read at sample time), `java` (HotSpot JDK 17, from its
    /// vmStructs), `node` (Node.js/V8, JavaScript frames found in the stack copy), or `none` for
    /// native frames only.
    #[arg(long, env = "KILN_RUNTIMES", default_value = "python,java,node")]
    pub runtimes: kiln_agent::config::Runtimes,
}

/// A URL the agent can push to, checked while parsing so that a bad one is a usage error (exit code
/// 2) naming the flag, like every other bad value.
fn parse_server_url(s: &str) -> Result<String, String> {
    kiln_agent::config::ServerUrl::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A ring buffer size, or `auto` (`None`).
#[derive(Clone, Copy, Debug)]
pub struct RingSize(pub Option<u64>);

fn parse_ring(s: &str) -> Result<RingSize, String> {
    match s.trim() {
        "auto" => Ok(RingSize(None)),
        s => parse_bytes(s).map(|b| RingSize(Some(b))),
    }
}

/// A listen address that can be switched off.
#[derive(Clone, Copy, Debug)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    parse_listen(s)
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{e}, or `off`"))
}

/// A listen address: `IP:PORT` (IPv6 in brackets, `[::1]:4040`) or `NAME:PORT`, the name resolved
/// now (its first address), so that a typo fails here and not when the port is bound.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} has no port: expected HOST:PORT, e.g. 127.0.0.1:4040, [::1]:4040 or localhost:4040"
        ));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{s:?}: an IPv6 address needs brackets, e.g. [{host}]:{port}"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host: e.g. 127.0.0.1:{port}"));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?} in {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("host {host:?} in {s:?} resolves to no address"))
}

/// A retention age: a duration, or `off` / `0` (returned as zero) to disable.
fn parse_retention(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "off" | "0" => Ok(Duration::ZERO),
        s => parse_duration(s),
    }
}

/// A size: `10GiB`, `512MiB`, `500MB`, `4096` (bytes); `off` / `0` (returned as zero) to disable.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(0);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10GiB, 500MB or 4096"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use B, KB, MB, GB, KiB, MiB, GiB…"
            ));
        }
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// `10s`, `500ms`, `2m`, `1h`, `30d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
    }

    #[test]
    fn retention_flags() {
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("off"), Ok(0));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(parse_retention("off"), Ok(Duration::ZERO));
        let cli = Cli::try_parse_from(["kiln", "server"]).unwrap();
        let Command::Server(server) = cli.command else {
            panic!("not server")
        };
        assert_eq!(
            server.retention,
            Duration::from_secs(30 * 86400),
            "on by default"
        );
        assert_eq!(server.retention_bytes, 10 << 30, "on by default");
        let cli = Cli::try_parse_from([
            "kiln",
            "server",
            "--retention",
            "7d",
            "--retention-bytes",
            "1GB",
        ])
        .unwrap();
        let Command::Server(server) = cli.command else {
            panic!("not server")
        };
        assert_eq!(server.retention, Duration::from_secs(7 * 86400));
        assert_eq!(server.retention_bytes, 1_000_000_000);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "kiln",
            "up",
            "--listen",
            "127.0.0.1:5000",
            "--frequency",
            "99",
            "--metrics-listen",
            "off",
        ])
        .unwrap();
        let Command::Up { server, agent } = cli.command else {
            panic!("not up")
        };
        assert_eq!(server.listen.port(), 5000);
        assert_eq!(agent.frequency, 99);
        assert!(agent.metrics_listen.0.is_none());
        assert!(Cli::try_parse_from(["kiln", "agent", "--window", "forever"]).is_err());
        let Command::Server(server) = Cli::try_parse_from(["kiln", "server", "--verify"])
            .unwrap()
            .command
        else {
            panic!("not server")
        };
        assert!(server.verify);
        let Command::Check { data_dir } =
            Cli::try_parse_from(["kiln", "check", "--data-dir", "/srv/kiln"])
                .unwrap()
                .command
        else {
            panic!("not check")
        };
        assert_eq!(data_dir, PathBuf::from("/srv/kiln"));
    }

    #[test]
    fn listen_takes_ipv6_and_host_names() {
        let v6 = parse_listen("[::1]:4040").unwrap();
        assert!(v6.is_ipv6() && v6.ip().is_loopback() && v6.port() == 4040);
        let named = parse_listen("localhost:4041").unwrap();
        assert!(named.ip().is_loopback() && named.port() == 4041, "{named}");
        let err = parse_listen("::1:4040").unwrap_err();
        assert!(err.contains("brackets"), "{err}");
        let err = parse_listen("127.0.0.1").unwrap_err();
        assert!(err.contains("no port"), "{err}");
        let err = parse_listen("localhost:99999").unwrap_err();
        assert!(err.contains("port"), "{err}");
        assert!(parse_listen("no-such-host.invalid:4040").is_err());
        let cli = Cli::try_parse_from(["kiln", "up", "--listen", "[::1]:0"]).unwrap();
        let Command::Up { server, .. } = cli.command else {
            panic!("not up")
        };
        assert!(server.listen.is_ipv6());
        let OptionalAddr(Some(m)) = parse_optional_addr("[::1]:4041").unwrap() else {
            panic!("off")
        };
        assert!(m.is_ipv6());
    }
}
