//! Admission and lifetime of one query: the trust boundary between a client asking for a merge and
//! the CPU, memory and disk it would spend.
//!
//! - **Concurrency.** At most `max_concurrent` queries merge at once, each on a blocking thread (so
//!   decoding, merging and encoding never hold an async worker that ingest needs). Others wait in a
//!   queue of at most `max_queued`, each for at most `queue_timeout`; a full queue or a wait past
//!   the deadline answers 503 with `Retry-After`.
//! - **Cancellation.** A query whose client went away stops: the handler future holds a guard
//!   whose drop (hyper drops the future when the connection closes) raises the query's stop flag;
//!   the store and the merge check it between series and profiles. The slot is given back when the
//!   work has actually stopped, not when the client left, so abandoned work still counts.
//! - **Budget.** One query may read at most `max_profiles` stored profiles and `max_bytes` of
//!   decoded profile data; past either the read stops and the client gets 413 naming the limit.
//!
//! Metrics: `kiln_server_queries_in_flight`, `kiln_server_queries_queued`,
//! `kiln_server_queries_cancelled_total`, `kiln_server_queries_rejected_total{reason}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::QueryLimits;
use crate::error::ApiError;
use crate::metrics::ReasonLabels;

/// The query gate shared by every query endpoint (one per server).
pub struct Admission {
    slots: Arc<Semaphore>,
    max_queued: usize,
    queue_timeout: Duration,
    waiting: AtomicUsize,
    max_profiles: u64,
    max_bytes: u64,
    metrics: QueryMetrics,
}

/// The admission's own metrics (registered on /metrics by [`Admission::register`]).
#[derive(Clone, Default)]
struct QueryMetrics {
    in_flight: Gauge,
    queued: Gauge,
    cancelled: Counter,
    rejected: Family<ReasonLabels, Counter>,
}

impl QueryMetrics {
    fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl Admission {
    pub fn new(limits: &QueryLimits) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limits.concurrency())),
            max_queued: limits.max_queued,
            queue_timeout: Duration::from_secs(limits.queue_timeout_secs.max(1)),
            waiting: AtomicUsize::new(0),
            max_profiles: limits.max_profiles,
            max_bytes: limits.max_bytes,
            metrics: QueryMetrics::default(),
        }
    }

    /// Puts the admission's metrics on the server's registry.
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "queries_in_flight",
            "Queries working on a blocking thread (abandoned ones until they have stopped)",
            m.in_flight.clone(),
        );
        registry.register(
            "queries_queued",
            "Queries waiting for a slot",
            m.queued.clone(),
        );
        registry.register(
            "queries_cancelled",
            "Queries stopped because their client went away",
            m.cancelled.clone(),
        );
        registry.register(
            "queries_rejected",
            "Queries refused, by reason (queue_full, queue_timeout, too_large)",
            m.rejected.clone(),
        );
    }

    /// Waits for a slot: 503 at once when the queue is full, 503 when the wait passes the deadline.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        // Decremented however this future ends (including when the client goes away meanwhile).
        let _leave = Leave(&self.waiting, &self.metrics.queued);
        self.metrics.queued.inc();
        if queued >= self.max_queued {
            self.metrics.reject("queue_full");
            return Err(self.overloaded(format!(
                "too many queries: all slots busy and {} already waiting; retry later",
                self.max_queued
            )));
        }
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_closed)) => Err(ApiError::internal("query slots closed")),
            Err(_elapsed) => {
                self.metrics.reject("queue_timeout");
                Err(self.overloaded(format!(
                    "query waited {} s for a slot (all busy); retry later",
                    self.queue_timeout.as_secs()
                )))
            }
        }
    }

    fn overloaded(&self, message: String) -> ApiError {
        ApiError::Unavailable {
            message,
            retry_after_secs: self.queue_timeout.as_secs().max(1),
        }
    }

    /// Runs `work` as one query: admitted (or 503), on a blocking thread, with a [`QueryCtx`] whose
    /// stop flag is raised if this future is dropped before `work` returns.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&QueryCtx) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.admit().await?;
        let ctx = Arc::new(QueryCtx::new(self.max_profiles, self.max_bytes));
        let mut guard = CancelOnDrop {
            ctx: Some(ctx.clone()),
            metrics: self.metrics.clone(),
        };
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            // The slot and the gauge follow the work, not the client.
            let _permit = permit;
            me.metrics.in_flight.inc();
            let _done = GaugeDec(&me.metrics.in_flight);
            let out = work(&ctx);
            if ctx.reason() == Some(StopReason::TooLarge) {
                me.metrics.reject("too_large");
            }
            out
        })
        .await;
        guard.ctx = None;
        result?
    }
}

/// Leaves the queue: one fewer waiting.
struct Leave<'a>(&'a AtomicUsize, &'a Gauge);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.dec();
    }
}

struct GaugeDec<'a>(&'a Gauge);

impl Drop for GaugeDec<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Raises the stop flag when the handler future is dropped with the work still running.
struct CancelOnDrop {
    ctx: Option<Arc<QueryCtx>>,
    metrics: QueryMetrics,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.stop_for(StopReason::ClientGone);
            self.metrics.cancelled.inc();
            tracing::debug!("query cancelled: the client went away");
        }
    }
}

/// Why a query stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    ClientGone = 1,
    TooLarge = 2,
}

/// One running query's stop flag and read budget, handed to the blocking work.
pub struct QueryCtx {
    stop: AtomicBool,
    reason: AtomicU8,
    profiles: AtomicU64,
    bytes: AtomicU64,
    max_profiles: u64,
    max_bytes: u64,
}

impl QueryCtx {
    /// A context with the given budget and nobody to cancel it (tests, benches, tools).
    pub fn new(max_profiles: u64, max_bytes: u64) -> QueryCtx {
        QueryCtx {
            stop: AtomicBool::new(false),
            reason: AtomicU8::new(0),
            profiles: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_profiles,
            max_bytes,
        }
    }

    /// The flag a store read checks ([`crate::store::ReadRequest::stop`]).
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn stop_for(&self, reason: StopReason) {
        // The first reason wins: a query cut for size and then abandoned stays "too large".
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.stop.store(true, Ordering::Release);
    }

    pub fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::Acquire) {
            1 => Some(StopReason::ClientGone),
            2 => Some(StopReason::TooLarge),
            _ => None,
        }
    }

    /// Counts `profiles` stored profiles of `bytes` decoded bytes against the budget. False (and
    /// the query stopped) when the query is stopped or this passes the budget: skip the data.
    pub fn admit_read(&self, profiles: usize, bytes: usize) -> bool {
        if self.stopped() {
            return false;
        }
        let p = self
            .profiles
            .fetch_add(profiles as u64, Ordering::Relaxed)
            .saturating_add(profiles as u64);
        let b = self
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed)
            .saturating_add(bytes as u64);
        if p > self.max_profiles || b > self.max_bytes {
            self.stop_for(StopReason::TooLarge);
            return false;
        }
        true
    }

    /// After the read: the error to answer when the query stopped early, else `Ok`.
    pub fn finish(&self) -> Result<(), ApiError> {
        match self.reason() {
            None => Ok(()),
            Some(StopReason::TooLarge) => Err(ApiError::PayloadTooLarge(format!(
                "the query selects more than a query may read (at most {} profiles and {} bytes \
                 of decoded profiles): narrow the time range or the label selector",
                self.max_profiles, self.max_bytes
            ))),
            // Nobody reads this answer: the connection is gone.
            Some(StopReason::ClientGone) => Err(ApiError::Unavailable {
                message: "query cancelled: the client went away".into(),
                retry_after_secs: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrent: usize, queued: usize) -> QueryLimits {
        QueryLimits {
            max_concurrent: concurrent,
            max_queued: queued,
            queue_timeout_secs: 1,
            ..QueryLimits::default()
        }
    }

    #[test]
    fn budget_stops_the_read_and_names_the_limit() {
        let ctx = QueryCtx::new(3, 1000);
        assert!(ctx.admit_read(2, 100));
        assert!(ctx.admit_read(1, 100));
        assert!(!ctx.admit_read(1, 100), "the 4th profile is over");
        assert!(ctx.stopped());
        let e = ctx.finish().unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.to_string().contains("at most 3 profiles"), "{e}");
        let ctx = QueryCtx::new(100, 1000);
        assert!(!ctx.admit_read(1, 1001), "bytes count too");
    }

    #[tokio::test]
    async fn full_queue_answers_503_with_retry_after() {
        let a = Arc::new(Admission::new(&limits(1, 0)));
        let held = a.admit().await.unwrap();
        let e = a.admit().await.unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            matches!(e, ApiError::Unavailable { retry_after_secs, .. } if retry_after_secs >= 1)
        );
        drop(held);
        assert!(a.admit().await.is_ok(), "a freed slot admits again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_answers_503() {
        let a = Arc::new(Admission::new(&limits(1, 4)));
        let _held = a.admit().await.unwrap();
        // Paused time: the timeout fires as soon as the runtime is idle, no real waiting.
        let e = a.admit().await.unwrap_err();
        assert!(e.to_string().contains("waited"), "{e}");
        assert_eq!(a.waiting.load(Ordering::Acquire), 0, "left the queue");
    }

    #[tokio::test]
    async fn dropping_the_caller_raises_the_stop_flag() {
        let a = Arc::new(Admission::new(&limits(1, 0)));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let a2 = a.clone();
        let fut = async move {
            a2.run(move |ctx| {
                started_tx.send(()).unwrap();
                while !ctx.stopped() {
                    std::thread::yield_now();
                }
                seen_tx.send(ctx.reason()).unwrap();
                ctx.finish()
            })
            .await
        };
        let task = tokio::spawn(fut);
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        task.abort();
        let reason = tokio::task::spawn_blocking(move || seen_rx.recv().unwrap())
            .await
            .unwrap();
        assert_eq!(reason, Some(StopReason::ClientGone));
        assert_eq!(a.metrics.cancelled.get(), 1);
    }
}
