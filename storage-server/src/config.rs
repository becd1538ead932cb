//! Server configuration: where to listen, where data lives, and the limits that keep hostile or
//! buggy clients from exhausting memory or disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything the server needs to start. `Default` gives a working local setup.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address the HTTP server binds to.
    pub listen: SocketAddr,
    /// Root of all durable state: `segments/` (profiles), `debuginfo/` (ELF files), `tmp/`.
    pub data_dir: PathBuf,
    /// Request and profile size limits.
    pub limits: Limits,
    /// Segment log rotation.
    pub store: StoreConfig,
    /// How many symbolization results the symbolizer keeps cached.
    pub symbolizer_cache_entries: usize,
    /// When set, every ingest and query request must carry `Authorization: Bearer <token>`
    /// (`/healthz`, `/metrics` and the UI's static files stay open).
    pub auth_token: Option<String>,
    /// debuginfod servers asked (in order) for a build ID's executable and debug file when the
    /// store lacks them or holds only a stripped executable.
    pub debuginfod_urls: Vec<String>,
    /// Time limit of one debuginfod request.
    pub debuginfod_timeout_secs: u64,
    /// Uploads carrying this token (`X-Kiln-Shared-Token`, with `?scope=shared`) go to the shared
    /// debuginfo store, which every tenant's profiles are symbolized from; without it, only
    /// debuginfod fills the shared store.
    pub debuginfo_shared_token: Option<String>,
    /// How many queries run at once, how long others wait, and how much one may read.
    pub queries: QueryLimits,
    /// Connection limits and timeouts of the HTTP listener.
    pub http: HttpLimits,
    /// Blocks in S3-compatible object storage shared by several servers (`--storage s3://…`)
    /// instead of on local disk only.
    pub bucket: Option<BucketConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4040)),
            data_dir: PathBuf::from("kiln-data"),
            limits: Limits::default(),
            store: StoreConfig::default(),
            symbolizer_cache_entries: 100_000,
            auth_token: None,
            debuginfod_urls: Vec::new(),
            debuginfod_timeout_secs: 30,
            debuginfo_shared_token: None,
            queries: QueryLimits::default(),
            http: HttpLimits::default(),
            bucket: None,
        }
    }
}

/// Input limits. Each one is enforced while reading, before anything is stored.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest request body accepted on ingest and query routes (as sent, possibly compressed).
    pub max_body_bytes: usize,
    /// Largest size a gzip body or a raw profile may inflate to.
    pub max_decompressed_bytes: usize,
    /// Most samples one profile may carry.
    pub max_samples_per_profile: usize,
    /// Most locations one sample's stack may have.
    pub max_stack_depth: usize,
    /// Most labels one series may carry (including `__name__` and `service_name`).
    pub max_labels_per_series: usize,
    pub max_label_name_len: usize,
    pub max_label_value_len: usize,
    /// Largest compressed debuginfo upload.
    pub debuginfo_max_upload_bytes: u64,
    /// Largest decompressed debuginfo (ELF) file.
    pub debuginfo_max_bytes: u64,
    /// Most debuginfo bytes one tenant (and the shared store) may hold.
    pub debuginfo_tenant_max_bytes: u64,
    /// Most debuginfo files one tenant (and the shared store) may hold.
    pub debuginfo_tenant_max_files: u64,
    /// How far in the future (by the server's clock) a profile's time may be, in seconds: the
    /// accepted window is [now − retention, now + this].
    pub max_future_skew_secs: u64,
    /// Per-tenant ingest rate in request bytes (as sent) per second, with a burst of two
    /// seconds' worth; 0 turns it off. Over it: 429 with `Retry-After`.
    pub ingest_rate_bytes: u64,
    /// Per-tenant ingest rate in stored profiles per second (burst: two seconds' worth); 0: off.
    pub ingest_rate_profiles: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_samples_per_profile: 1_000_000,
            max_stack_depth: 2048,
            max_labels_per_series: 32,
            max_label_name_len: 256,
            max_label_value_len: 2048,
            debuginfo_max_upload_bytes: 1 << 30,
            debuginfo_max_bytes: 1 << 30,
            debuginfo_tenant_max_bytes: 4 << 30,
            debuginfo_tenant_max_files: 10_000,
            max_future_skew_secs: 600,
            ingest_rate_bytes: 128 << 20,
            ingest_rate_profiles: 20_000,
        }
    }
}

/// Query limits (see [`crate::query::admission`]): a heavy or abandoned query must not starve
/// ingest or other clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct QueryLimits {
    /// Queries merged at once, each on a blocking thread; 0 means half the CPUs (at least 1), so
    /// that ingest keeps a core.
    pub max_concurrent: usize,
    /// Queries waiting for a slot; one more answers 503 with `Retry-After`.
    pub max_queued: usize,
    /// Longest wait for a slot (seconds); past it the query answers 503 with `Retry-After`.
    pub queue_timeout_secs: u64,
    /// Most stored profiles one query may read; past it the query answers 413.
    pub max_profiles: u64,
    /// Most decoded profile bytes one query may read; past it the query answers 413.
    pub max_bytes: u64,
}

/// Largest `max_nodes` a flame graph may ask for; larger values are clamped to it. A node costs
/// about 100 bytes of JSON and a browser cannot draw more usefully.
pub const MAX_FLAMEGRAPH_NODES: usize = 65_536;

impl QueryLimits {
    /// Slots for concurrent queries: `max_concurrent`, or half the CPUs when it is 0.
    pub fn concurrency(&self) -> usize {
        if self.max_concurrent > 0 {
            return self.max_concurrent;
        }
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        (cpus / 2).max(1)
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_concurrent: 0,
            max_queued: 64,
            queue_timeout_secs: 30,
            max_profiles: 2_000_000,
            max_bytes: 8 << 30,
        }
    }
}

/// The HTTP listener's defences against idle and slow clients (see [`crate::listener`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct HttpLimits {
    /// A connection must deliver a complete request head within this many seconds of opening, or
    /// of finishing its previous request (keep-alive idle time), or it is closed.
    pub header_read_timeout_secs: u64,
    /// Most open connections; 0 means 80 % of the descriptor limit (`RLIMIT_NOFILE`, whose soft
    /// limit is raised to the hard one at start). Beyond it new connections wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout_secs: 10,
            max_connections: 0,
        }
    }
}

/// The embedded storage engine: write-ahead log rotation, head flushes into blocks, compaction and
/// retention.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Rotate the active WAL segment (and flush the sealed ones into blocks) once it reaches this
    /// size. This bounds the un-flushed head, and with it the index memory it needs.
    pub max_segment_bytes: u64,
    /// Rotate (and flush) once the active segment is this old (seconds).
    pub max_segment_age_secs: u64,
    /// Delete blocks whose newest profile is older than this (seconds); 0 disables.
    pub retention_age_secs: u64,
    /// Delete the oldest blocks while blocks + WAL exceed this many bytes; 0 disables.
    pub retention_bytes: u64,
    /// How often the background thread rotates, flushes, compacts and applies retention (seconds).
    pub maintenance_interval_secs: u64,
    /// Blocks of one time partition are merged while their sum stays below this size. Merging
    /// decodes the inputs in memory (several times their compressed size), so this bounds
    /// compaction's memory too.
    pub max_block_bytes: u64,
    /// Check every block's section CRCs before `open` returns (`kiln server --verify`), instead of
    /// in the background right after.
    pub verify_on_open: bool,
    /// Bytes kept elsewhere in the data directory that count toward `retention_bytes` too (the
    /// debuginfo stores); set by the server, not configurable.
    #[serde(skip)]
    pub other_bytes: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl StoreConfig {
    /// [`StoreConfig::other_bytes`] now.
    pub fn other_bytes(&self) -> u64 {
        self.other_bytes
            .as_ref()
            .map_or(0, |b| b.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl StoreConfig {
    pub fn max_segment_age(&self) -> Duration {
        Duration::from_secs(self.max_segment_age_secs)
    }
    pub fn retention_age(&self) -> Option<Duration> {
        (self.retention_age_secs > 0).then(|| Duration::from_secs(self.retention_age_secs))
    }
    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_secs(self.maintenance_interval_secs.max(1))
    }
}

/// Default age retention: 30 days.
pub const DEFAULT_RETENTION_AGE_SECS: u64 = 30 * 24 * 3600;
/// Default size retention: 10 GiB.
pub const DEFAULT_RETENTION_BYTES: u64 = 10 << 30;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_segment_bytes: 64 << 20,
            // Short enough that the head (WAL not yet in blocks) stays small on a quiet server.
            max_segment_age_secs: 900,
            retention_age_secs: DEFAULT_RETENTION_AGE_SECS,
            retention_bytes: DEFAULT_RETENTION_BYTES,
            maintenance_interval_secs: 10,
            max_block_bytes: 128 << 20,
            verify_on_open: false,
            other_bytes: None,
        }
    }
}

impl ServerConfig {
    /// A config for `data_dir` with every other field defaulted.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            ..ServerConfig::default()
        }
    }
    pub fn segments_dir(&self) -> PathBuf {
        self.data_dir.join("segments")
    }
    pub fn debuginfo_dir(&self) -> PathBuf {
        self.data_dir.join("debuginfo")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

/// The object-storage backend ([`crate::store::BucketStore`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct BucketConfig {
    /// `s3://BUCKET[/PREFIX]`; endpoint and credentials from the standard `AWS_*` variables.
    pub url: String,
    /// A profile pushed to one server is readable from every server within this many seconds:
    /// each server flushes and uploads its head, and re-reads the block list, every third of it.
    pub freshness_secs: u64,
    /// Bytes of downloaded blocks kept on local disk (newest first; survives restarts).
    pub cache_bytes: u64,
    /// How long a compaction or retention lease lasts if its holder dies (seconds).
    pub lease_secs: u64,
    /// How long blocks replaced by a compaction stay in the bucket, for readers that listed them
    /// just before (seconds).
    pub grace_secs: u64,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig {
            url: String::new(),
            freshness_secs: 15,
            cache_bytes: 10 << 30,
            lease_secs: 300,
            grace_secs: 120,
        }
    }
}

impl BucketConfig {
    /// How often the sync thread flushes, uploads and refreshes: a third of the freshness bound,
    /// leaving a third for the upload itself.
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis((self.freshness_secs.max(1) * 1000 / 3).max(200))
    }
    pub fn lease_nanos(&self) -> i64 {
        i64::try_from(self.lease_secs.max(1)).unwrap_or(i64::MAX / 2) * 1_000_000_000
    }
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}
