//! The agent's own Prometheus metrics (one [`AgentMetrics`] handle cloned into every stage) and the
//! `/metrics` + `/healthz` HTTP listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

/// Why a sample never made it into a profile.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum SampleDropReason {
    /// The kernel's ring buffer was full (counted by the BPF program).
    RingBufferFull,
    /// The window already held the maximum number of processes.
    ProcessLimit,
    /// The process already had the maximum number of distinct stacks this window.
    StackLimit,
    /// Idle-task samples without kernel frames (pure idle, not CPU work).
    Idle,
    /// The record could not be parsed.
    Malformed,
}

/// Why a push request was given up.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PushDropReason {
    /// The queue was full and this was the oldest request.
    QueueFull,
    /// The server answered 4xx (other than 429): retrying cannot help.
    Rejected,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

/// What a failed push attempt ran into.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PushFailure {
    /// Connection refused/reset, timeout, DNS…
    Transport,
    /// 5xx.
    ServerError,
    /// 429.
    RateLimited,
    /// Other 4xx.
    Rejected,
}

/// How one debuginfo candidate ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UploadOutcome {
    /// Uploaded and stored (201).
    Uploaded,
    /// The server already had it (GET 200, or PUT 200).
    AlreadyPresent,
    /// Larger than the configured maximum: not sent.
    TooLarge,
    /// Over the upload byte budget for now; offered again when seen in a later window.
    OverBudget,
    /// The server refused it (400/413).
    Rejected,
    /// A transport or server error; retried later with backoff.
    Failed,
    /// The file could not be opened (process gone, no permission).
    Unreadable,
    /// The bounded set of pending uploads was full; offered again in a later window.
    QueueFull,
}

/// Why an unwound user stack stopped before a root (what its `[truncated: …]` frame says).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UnwindTruncation {
    /// The next frame lies above the bytes the sampler copied.
    CopyExhausted,
    /// More frames than the agent keeps.
    TooDeep,
    /// Stopped short while unwind tables were still being read (off the sampling thread).
    TablesLoading,
    /// A read below the sampled sp or implausibly far above it.
    BadStackRead,
    /// Frame pointers led downwards.
    FramePointerBackwards,
    /// Neither pc nor sp changed.
    NoProgress,
    /// Arithmetic overflowed (garbage registers).
    Overflow,
    /// A zero return address before a root.
    NullReturnAddress,
}

/// Which walk a user stack came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UnwindSource {
    /// DWARF CFI over the stack copy.
    Dwarf,
    /// The kernel's frame-pointer walk, where it extends a truncated DWARF stack it agrees with.
    FramePointers,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessFileRefusalLabel {
    /// `not_regular`, `too_large`, `unsafe_link` or `remote_filesystem` (see
    /// `process_files::Refusal`).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeErrorLabel {
    /// See `kube::ErrorReason`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnwindTruncationLabel {
    pub reason: UnwindTruncation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnwindSourceLabel {
    pub source: UnwindSource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SampleDropLabel {
    pub reason: SampleDropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushDropLabel {
    pub reason: PushDropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushFailureLabel {
    pub kind: PushFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: UploadOutcome,
}

/// Every metric the agent exports. Cheap to clone: all clones update the same values.
#[derive(Clone)]
pub struct AgentMetrics {
    pub samples_received: Counter,
    pub samples_dropped: Family<SampleDropLabel, Counter>,
    pub profiles_built: Counter,
    pub push_attempts: Counter,
    pub push_success: Counter,
    pub push_failures: Family<PushFailureLabel, Counter>,
    pub push_retries: Counter,
    pub push_dropped: Family<PushDropLabel, Counter>,
    pub queue_depth: Gauge,
    pub queue_bytes: Gauge,
    pub push_latency_seconds: Histogram,
    pub debuginfo_uploads: Family<OutcomeLabel, Counter>,
    pub process_cache_size: Gauge,
    /// User stacks unwound from a stack copy, by the walk finally used.
    pub unwind_stacks: Family<UnwindSourceLabel, Counter>,
    /// Frames in those stacks.
    pub unwind_frames: Counter,
    /// Stacks that stopped before a root, by reason.
    pub unwind_truncated: Family<UnwindTruncationLabel, Counter>,
    /// Wall time spent walking user stacks (per sample).
    pub unwind_seconds: Counter<f64, AtomicU64>,
    /// Wall time spent building per-process unwinders, reading unwind tables included (per
    /// process and object, not per sample).
    pub unwind_build_seconds: Counter<f64, AtomicU64>,
    /// Approximate bytes of the unwind-table cache.
    pub unwind_table_cache_bytes: Gauge,
    /// Objects in the unwind-table cache (failures remembered included).
    pub unwind_table_cache_entries: Gauge,
    /// Objects evicted from the unwind-table cache to stay within its budget.
    pub unwind_table_cache_evictions: Counter,
    /// Objects whose unwind tables were read from their file (cache misses).
    pub unwind_table_loads: Counter,
    /// Objects whose tables the table worker is reading or has queued.
    pub unwind_table_loads_pending: Gauge,
    /// Table reads not queued because the worker's queue was full (asked for again later).
    pub unwind_table_loads_dropped: Counter,
    /// Frames whose unwind rule came from the rule cache, and those that needed a table lookup.
    pub unwind_rule_cache_hits: Counter,
    pub unwind_rule_cache_misses: Counter,
    /// Stacks taken from the memo of recent stacks (every word their walk read unchanged), and
    /// those walked.
    pub unwind_memo_hits: Counter,
    pub unwind_memo_misses: Counter,
    /// Bytes of ELF files (before compression) sent to the server.
    pub debuginfo_upload_bytes: Counter,
    /// Pods of this node known from the Kubernetes API (watch).
    pub kube_pods: Gauge,
    /// Failed Kubernetes API calls (pod list/watch, owner gets), by reason (`forbidden`,
    /// `unauthorized`, `gone`, `not_found`, `unreachable`, `other`).
    pub kube_api_errors: Family<KubeErrorLabel, Counter>,
    /// Full lists of this node's pods (the first, and each after a 410 Gone or a lost watch).
    pub kube_relists: Counter,
    /// Pods not indexed because the index was full (`kube::MAX_PODS`).
    pub kube_pods_refused: Counter,
    /// Files of profiled processes refused by the door to them (process_files.rs), by reason.
    pub process_files_refused: Family<ProcessFileRefusalLabel, Counter>,
    /// Reads of profiled processes' memory refused by the door to it (process_memory.rs), by
    /// reason (`remote_filesystem`, `unmapped`).
    pub process_memory_reads_refused: Family<ProcessFileRefusalLabel, Counter>,
    /// Bytes of perf maps parsed; appended lines only, a growing map is not re-read.
    pub perf_map_bytes_parsed: Counter,
    /// Perf-map reads not queued because the perf-map worker was busy (retried later).
    pub perf_map_requests_dropped: Counter,
    /// Last cumulative ring-buffer drop total seen from BPF, to turn it into counter increments.
    ringbuf_seen: Arc<AtomicU64>,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under the `kiln_agent_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("kiln_agent");
        r.register(
            "samples_received",
            "Samples read from the sampler",
            m.samples_received.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples lost or discarded, by reason",
            m.samples_dropped.clone(),
        );
        r.register(
            "profiles_built",
            "pprof profiles built (one per process per window)",
            m.profiles_built.clone(),
        );
        r.register(
            "push_attempts",
            "HTTP push attempts (including retries)",
            m.push_attempts.clone(),
        );
        r.register(
            "push_success",
            "Push requests the server accepted",
            m.push_success.clone(),
        );
        r.register(
            "push_failures",
            "Failed push attempts, by kind",
            m.push_failures.clone(),
        );
        r.register(
            "push_retries",
            "Push attempts that were retries",
            m.push_retries.clone(),
        );
        r.register(
            "push_dropped",
            "Push requests given up, by reason",
            m.push_dropped.clone(),
        );
        r.register(
            "push_queue_depth",
            "Push requests waiting to be sent",
            m.queue_depth.clone(),
        );
        r.register(
            "push_queue_bytes",
            "Compressed bytes of push requests waiting to be sent",
            m.queue_bytes.clone(),
        );
        r.register(
            "push_latency_seconds",
            "Time from sending a push request to the server's answer",
            m.push_latency_seconds.clone(),
        );
        r.register(
            "debuginfo_uploads",
            "Debuginfo candidates by outcome",
            m.debuginfo_uploads.clone(),
        );
        r.register(
            "kube_pods",
            "Pods of this node known from the Kubernetes API (watch)",
            m.kube_pods.clone(),
        );
        r.register(
            "kube_api_errors",
            "Failed Kubernetes API calls (pod list/watch, owner gets), by reason",
            m.kube_api_errors.clone(),
        );
        r.register(
            "kube_relists",
            "Full lists of this node's pods (first, and after 410 Gone or a lost watch)",
            m.kube_relists.clone(),
        );
        r.register(
            "kube_pods_refused",
            "Pods not indexed because the pod index was full",
            m.kube_pods_refused.clone(),
        );
        r.register(
            "process_cache_size",
            "Processes whose mappings are cached",
            m.process_cache_size.clone(),
        );
        r.register(
            "unwind_stacks",
            "User stacks unwound from a stack copy, by the walk used (Dwarf, or FramePointers extending a cut DWARF stack)",
            m.unwind_stacks.clone(),
        );
        r.register(
            "unwind_frames",
            "Frames in the unwound user stacks",
            m.unwind_frames.clone(),
        );
        r.register(
            "unwind_truncated",
            "Unwound user stacks that stopped before a root, by reason",
            m.unwind_truncated.clone(),
        );
        r.register(
            "unwind_seconds",
            "Wall time spent walking user stacks with ready unwinders (per-sample cost)",
            m.unwind_seconds.clone(),
        );
        r.register(
            "unwind_build_seconds",
            "Wall time spent building per-process unwinders, unwind-table reads included",
            m.unwind_build_seconds.clone(),
        );
        r.register(
            "unwind_table_cache_bytes",
            "Approximate bytes held by the unwind-table cache",
            m.unwind_table_cache_bytes.clone(),
        );
        r.register(
            "unwind_table_cache_entries",
            "Objects in the unwind-table cache",
            m.unwind_table_cache_entries.clone(),
        );
        r.register(
            "unwind_table_cache_evictions",
            "Objects evicted from the unwind-table cache to stay within its budget",
            m.unwind_table_cache_evictions.clone(),
        );
        r.register(
            "unwind_rule_cache_hits",
            "Frames whose unwind rule came from the rule cache",
            m.unwind_rule_cache_hits.clone(),
        );
        r.register(
            "unwind_rule_cache_misses",
            "Frames whose unwind rule needed a lookup in the object's tables (CFI parsed)",
            m.unwind_rule_cache_misses.clone(),
        );
        r.register(
            "unwind_memo_hits",
            "User stacks taken from the memo of recent stacks: same unwinder, registers and copy length, every stack word the earlier walk read unchanged",
            m.unwind_memo_hits.clone(),
        );
        r.register(
            "unwind_memo_misses",
            "User stacks walked frame by frame (not in the memo of recent stacks)",
            m.unwind_memo_misses.clone(),
        );
        r.register(
            "unwind_table_loads",
            "Objects whose unwind tables were read from the file (cache misses)",
            m.unwind_table_loads.clone(),
        );
        r.register(
            "unwind_table_loads_pending",
            "Objects whose unwind tables the table worker is reading or has queued",
            m.unwind_table_loads_pending.clone(),
        );
        r.register(
            "unwind_table_loads_dropped",
            "Unwind-table reads not queued because the table worker's queue was full",
            m.unwind_table_loads_dropped.clone(),
        );
        r.register(
            "debuginfo_upload_bytes",
            "Bytes of object files (uncompressed) sent to the server",
            m.debuginfo_upload_bytes.clone(),
        );
        r.register(
            "process_files_refused",
            "Files of profiled processes not read (FIFOs and devices, too large, magic links), by reason",
            m.process_files_refused.clone(),
        );
        r.register(
            "process_memory_reads_refused",
            "Reads of profiled processes' memory not made (in a mapping of a FUSE or network file, or unmapped), by reason",
            m.process_memory_reads_refused.clone(),
        );
        r.register(
            "perf_map_bytes_parsed",
            "Bytes of JIT perf maps parsed (only what was appended since the last read)",
            m.perf_map_bytes_parsed.clone(),
        );
        r.register(
            "perf_map_requests_dropped",
            "Perf-map reads not queued because the perf-map worker was busy (retried later)",
            m.perf_map_requests_dropped.clone(),
        );
        m
    }

    /// Metrics that no registry exports (tests, or when metrics are off).
    pub fn unregistered() -> Self {
        AgentMetrics {
            samples_received: Counter::default(),
            samples_dropped: Family::default(),
            profiles_built: Counter::default(),
            push_attempts: Counter::default(),
            push_success: Counter::default(),
            push_failures: Family::default(),
            push_retries: Counter::default(),
            push_dropped: Family::default(),
            queue_depth: Gauge::default(),
            queue_bytes: Gauge::default(),
            // 5 ms .. ~41 s.
            push_latency_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            debuginfo_uploads: Family::default(),
            process_cache_size: Gauge::default(),
            kube_pods: Gauge::default(),
            kube_api_errors: Family::default(),
            kube_relists: Counter::default(),
            kube_pods_refused: Counter::default(),
            unwind_stacks: Family::default(),
            unwind_frames: Counter::default(),
            unwind_truncated: Family::default(),
            unwind_seconds: Counter::default(),
            unwind_build_seconds: Counter::default(),
            unwind_table_cache_bytes: Gauge::default(),
            unwind_table_cache_entries: Gauge::default(),
            unwind_table_cache_evictions: Counter::default(),
            unwind_table_loads: Counter::default(),
            unwind_table_loads_pending: Gauge::default(),
            unwind_table_loads_dropped: Counter::default(),
            unwind_rule_cache_hits: Counter::default(),
            unwind_rule_cache_misses: Counter::default(),
            unwind_memo_hits: Counter::default(),
            unwind_memo_misses: Counter::default(),
            debuginfo_upload_bytes: Counter::default(),
            process_files_refused: Family::default(),
            process_memory_reads_refused: Family::default(),
            perf_map_bytes_parsed: Counter::default(),
            perf_map_requests_dropped: Counter::default(),
            ringbuf_seen: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counter of files refused for `reason`.
    pub fn process_file_refused(&self, reason: crate::process_files::Refusal) -> Counter {
        self.process_files_refused
            .get_or_create(&ProcessFileRefusalLabel {
                reason: reason.as_str().to_owned(),
            })
            .clone()
    }

    /// The counter of memory reads refused for `reason`.
    pub fn process_memory_read_refused(
        &self,
        reason: crate::process_memory::MemoryRefusal,
    ) -> Counter {
        self.process_memory_reads_refused
            .get_or_create(&ProcessFileRefusalLabel {
                reason: reason.as_str().to_owned(),
            })
            .clone()
    }

    /// The Kubernetes API error counter for `reason`.
    pub fn kube_api_error(&self, reason: &str) -> Counter {
        self.kube_api_errors
            .get_or_create(&KubeErrorLabel {
                reason: reason.to_owned(),
            })
            .clone()
    }

    /// The drop counter for `reason` (a handle sharing the family's value).
    pub fn sample_dropped(&self, reason: SampleDropReason) -> Counter {
        self.samples_dropped
            .get_or_create(&SampleDropLabel { reason })
            .clone()
    }

    pub fn push_failed(&self, kind: PushFailure) -> Counter {
        self.push_failures
            .get_or_create(&PushFailureLabel { kind })
            .clone()
    }

    pub fn push_drop(&self, reason: PushDropReason) -> Counter {
        self.push_dropped
            .get_or_create(&PushDropLabel { reason })
            .clone()
    }

    pub fn unwind_source(&self, source: UnwindSource) -> Counter {
        self.unwind_stacks
            .get_or_create(&UnwindSourceLabel { source })
            .clone()
    }

    pub fn unwind_truncation(&self, reason: UnwindTruncation) -> Counter {
        self.unwind_truncated
            .get_or_create(&UnwindTruncationLabel { reason })
            .clone()
    }

    pub fn upload(&self, outcome: UploadOutcome) -> Counter {
        self.debuginfo_uploads
            .get_or_create(&OutcomeLabel { outcome })
            .clone()
    }

    /// Feeds the BPF program's cumulative "ring buffer full" count (summed over CPUs); the counter
    /// grows by the difference since the last call. A smaller total (the program was reloaded) is
    /// taken as a fresh start.
    pub fn record_ringbuf_drops_total(&self, total: u64) {
        let prev = self.ringbuf_seen.swap(total, Ordering::Relaxed);
        let delta = if total >= prev { total - prev } else { total };
        if delta > 0 {
            self.sample_dropped(SampleDropReason::RingBufferFull)
                .inc_by(delta);
        }
    }
}

/// The `/metrics` and `/healthz` routes over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry)
}

async fn metrics_handler(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed").into_response(),
    }
}

/// Binds the metrics port (an error naming `addr` when it is busy).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `/metrics` and `/healthz` on a listener from [`bind`] (tests bind port 0) until
/// `shutdown` completes.
pub async fn serve_metrics_on(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ringbuf_totals_become_increments() {
        let m = AgentMetrics::unregistered();
        m.record_ringbuf_drops_total(5);
        m.record_ringbuf_drops_total(5);
        m.record_ringbuf_drops_total(12);
        assert_eq!(m.sample_dropped(SampleDropReason::RingBufferFull).get(), 12);
        m.record_ringbuf_drops_total(3); // reloaded program: counts from zero again
        assert_eq!(m.sample_dropped(SampleDropReason::RingBufferFull).get(), 15);
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        m.samples_received.inc_by(7);
        m.sample_dropped(SampleDropReason::StackLimit).inc();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics_on(listener, Arc::new(registry), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let health = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");
        let text = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("kiln_agent_samples_received_total 7"),
            "{text}"
        );
        assert!(
            text.contains(r#"kiln_agent_samples_dropped_total{reason="StackLimit"} 1"#),
            "{text}"
        );
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
