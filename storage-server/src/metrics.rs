//! The server's own Prometheus metrics (ingest, query, store) and the `/metrics` endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::store::StoreStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

pub struct Metrics {
    registry: Registry,
    ingest_requests: Family<OutcomeLabels, Counter>,
    ingest_bytes: Counter,
    ingest_samples: Counter,
    ingest_profiles: Family<OutcomeLabels, Counter>,
    ingest_rejected: Family<ReasonLabels, Counter>,
    query_duration: Family<EndpointLabels, Histogram>,
    store_bytes: Gauge,
    store_segments: Gauge,
    store_series: Gauge,
    store_profiles: Gauge,
    store_quarantined_blocks: Counter,
    store_quarantined_bytes: Gauge,
    store_profiles_lost: Counter,
    store_wal_damaged_bytes: Counter,
    store_upload_backlog_blocks: Gauge,
    store_upload_backlog_bytes: Gauge,
    store_decoded_cache_bytes: Gauge,
    store_bucket_request_errors: Counter,
    object_store_requests: Family<OpLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln_server");
        let m = Metrics {
            ingest_requests: Family::default(),
            ingest_bytes: Counter::default(),
            ingest_samples: Counter::default(),
            ingest_profiles: Family::default(),
            ingest_rejected: Family::default(),
            query_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            store_bytes: Gauge::default(),
            store_segments: Gauge::default(),
            store_series: Gauge::default(),
            store_profiles: Gauge::default(),
            store_quarantined_blocks: Counter::default(),
            store_quarantined_bytes: Gauge::default(),
            store_profiles_lost: Counter::default(),
            store_wal_damaged_bytes: Counter::default(),
            store_upload_backlog_blocks: Gauge::default(),
            store_upload_backlog_bytes: Gauge::default(),
            store_decoded_cache_bytes: Gauge::default(),
            store_bucket_request_errors: Counter::default(),
            object_store_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ingest_requests",
            "Push requests, by outcome (ok, rejected, error)",
            m.ingest_requests.clone(),
        );
        registry.register(
            "ingest_bytes",
            "Request body bytes received on ingest (as sent)",
            m.ingest_bytes.clone(),
        );
        registry.register(
            "ingest_samples",
            "pprof samples stored",
            m.ingest_samples.clone(),
        );
        registry.register(
            "ingest_profiles",
            "Profiles received, by outcome",
            m.ingest_profiles.clone(),
        );
        registry.register(
            "ingest_rejected",
            "Rejected push requests, by reason",
            m.ingest_rejected.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Query latency, by endpoint",
            m.query_duration.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes in segment files",
            m.store_bytes.clone(),
        );
        registry.register("store_segments", "Segment files", m.store_segments.clone());
        registry.register("store_series", "Distinct series", m.store_series.clone());
        registry.register(
            "store_profiles",
            "Stored profiles",
            m.store_profiles.clone(),
        );
        registry.register(
            "store_quarantined_blocks",
            "Blocks found damaged (whole or in part) and quarantined since start",
            m.store_quarantined_blocks.clone(),
        );
        registry.register(
            "store_quarantined_bytes",
            "Bytes of damaged blocks still on disk (until retention deletes them)",
            m.store_quarantined_bytes.clone(),
        );
        registry.register(
            "store_profiles_lost",
            "Stored profiles found unreadable since start (damaged block sections; one per damaged WAL record)",
            m.store_profiles_lost.clone(),
        );
        registry.register(
            "store_upload_backlog_blocks",
            "With object storage: blocks flushed here and not yet uploaded (waiting out an outage)",
            m.store_upload_backlog_blocks.clone(),
        );
        registry.register(
            "store_upload_backlog_bytes",
            "With object storage: bytes of blocks not yet uploaded",
            m.store_upload_backlog_bytes.clone(),
        );
        registry.register(
            "store_decoded_cache_bytes",
            "Bytes of decoded block tables and sums kept between flame-graph queries (bounded: 512 MiB)",
            m.store_decoded_cache_bytes.clone(),
        );
        registry.register(
            "store_bucket_request_errors",
            "With object storage: requests that failed (timeouts, 5xx, refused connections) since start",
            m.store_bucket_request_errors.clone(),
        );
        registry.register(
            "object_store_requests",
            "With object storage: requests made to the object store since start, by kind (get, put, list, delete)",
            m.object_store_requests.clone(),
        );
        registry.register(
            "store_wal_damaged_bytes",
            "WAL bytes skipped as damaged at start-up",
            m.store_wal_damaged_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Registers the query-time symbolization counter (owned by [`crate::debuginfo::DebugInfo`],
    /// which the resolver reaches; the metrics registry is not).
    pub fn register_symbolization(&mut self, frames: Family<ReasonLabels, Counter>) {
        self.registry.register(
            "symbolization_frames",
            "Locations resolved at query time, by outcome (symbolized, or why not)",
            frames,
        );
    }

    /// Lets a component register the metrics it owns (under the `kiln_server_` prefix).
    pub fn register_with(&mut self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry);
    }

    pub fn ingest_ok(&self, body_bytes: usize, profiles: usize, samples: usize) {
        self.ingest_bytes.inc_by(body_bytes as u64);
        self.ingest_requests
            .get_or_create(&OutcomeLabels {
                outcome: "ok".into(),
            })
            .inc();
        self.ingest_profiles
            .get_or_create(&OutcomeLabels {
                outcome: "ok".into(),
            })
            .inc_by(profiles as u64);
        self.ingest_samples.inc_by(samples as u64);
    }

    /// A request that failed: `server_fault` distinguishes our errors from bad input.
    pub fn ingest_failed(&self, body_bytes: usize, reason: &str, server_fault: bool) {
        self.ingest_bytes.inc_by(body_bytes as u64);
        let outcome = if server_fault { "error" } else { "rejected" };
        self.ingest_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.ingest_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn profiles_rejected(&self, n: usize) {
        self.ingest_profiles
            .get_or_create(&OutcomeLabels {
                outcome: "rejected".into(),
            })
            .inc_by(n as u64);
    }

    pub fn observe_query(&self, endpoint: &str, took: Duration) {
        self.query_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn set_store(&self, s: StoreStats) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_bytes.set(clamp(s.bytes));
        self.store_segments.set(clamp(s.segments));
        self.store_series.set(clamp(s.series));
        self.store_profiles.set(clamp(s.profiles));
        self.store_quarantined_bytes.set(clamp(s.quarantined_bytes));
        self.store_upload_backlog_blocks
            .set(clamp(s.upload_backlog_blocks));
        self.store_upload_backlog_bytes
            .set(clamp(s.upload_backlog_bytes));
        self.store_decoded_cache_bytes
            .set(clamp(s.decoded_cache_bytes));
        // The store keeps running totals; the counters catch up with them.
        for (counter, total) in [
            (&self.store_quarantined_blocks, s.quarantined_blocks),
            (&self.store_profiles_lost, s.profiles_lost),
            (&self.store_wal_damaged_bytes, s.wal_damaged_bytes),
            (&self.store_bucket_request_errors, s.bucket_request_errors),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        for (op, total) in s.bucket_requests.by_op() {
            let counter = self
                .object_store_requests
                .get_or_create(&OpLabels { op: op.into() });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a metric's own Display fails; none here do.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// `GET /metrics`.
pub async fn metrics_handler(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    if let Ok(stats) = tokio::task::spawn_blocking(move || store.stats()).await {
        state.metrics.set_store(stats);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub type SharedMetrics = Arc<Metrics>;
