//! Shipping: a bounded queue of gzipped `PushRequest`s and the task that POSTs them to the server's
//! push endpoint, retrying transient failures with exponential backoff and full jitter. Nothing is
//! dropped silently: overflow, rejection and shutdown losses are counted and logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_proto::push::{PushRequest, RawProfileSeries};
use prost::Message;
use rand::Rng;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::metrics::{AgentMetrics, PushDropReason, PushFailure};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("the auth token is not a valid HTTP header value (visible ASCII only)")]
    AuthToken,
}

/// Most bytes of a server's error message we log.
const MAX_LOGGED_MESSAGE: usize = 512;

#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// Full URL of the push endpoint.
    pub push_url: String,
    /// Most requests queued (the one being sent included).
    pub queue_capacity: usize,
    /// Most compressed bytes queued.
    pub queue_max_bytes: usize,
    /// First retry waits up to this long; each further retry doubles the cap.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Overflow is logged at most this often (with the running count).
    pub overflow_warn_interval: Duration,
}

impl From<&AgentConfig> for ShipperConfig {
    fn from(c: &AgentConfig) -> Self {
        ShipperConfig {
            push_url: c.server_url.push_url(),
            queue_capacity: c.queue_capacity,
            queue_max_bytes: c.queue_max_bytes,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            overflow_warn_interval: Duration::from_secs(30),
        }
    }
}

/// The HTTP client the agent uses for the server (plain HTTP/1.1; a request timeout so a stuck
/// server cannot stall shipping forever). With `auth_token`, every request (pushes and debuginfo
/// uploads alike) carries `Authorization: Bearer <token>`.
pub fn http_client(
    request_timeout: Duration,
    auth_token: Option<&str>,
) -> Result<reqwest::Client, ShipError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = auth_token {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ShipError::AuthToken)?;
        // Keeps the secret out of debug output.
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ShipError::Client)
}

/// Splits series into push requests of at most about `max_bytes` encoded each (a single series larger
/// than that goes alone).
pub fn push_requests(series: Vec<RawProfileSeries>, max_bytes: usize) -> Vec<PushRequest> {
    let mut out = Vec::new();
    let mut current = PushRequest::default();
    let mut size = 0;
    for s in series {
        // Field tag + length prefix: at most 1 + 10 bytes on top of the message.
        let len = s.encoded_len() + 11;
        if !current.series.is_empty() && size + len > max_bytes {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.series.push(s);
    }
    if !current.series.is_empty() {
        out.push(current);
    }
    out
}

struct Item {
    seq: u64,
    body: Bytes,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    bytes: usize,
    next_seq: u64,
    /// The request being sent right now: never the one overflow drops (it may be arriving).
    in_flight: Option<u64>,
    overflow_total: u64,
    last_overflow_warn: Option<Instant>,
}

struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
    config: ShipperConfig,
    metrics: AgentMetrics,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the queue inconsistent in a way worth dying
        // for: keep going with whatever it holds.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, body: Bytes) {
        let mut st = self.lock();
        let mut dropped = 0u64;
        if body.len() > self.config.queue_max_bytes {
            dropped += 1;
        } else {
            loop {
                let waiting = st.items.len() - usize::from(st.in_flight.is_some());
                let over_count = waiting + 1 > self.config.queue_capacity;
                let over_bytes = st.bytes + body.len() > self.config.queue_max_bytes;
                if !(over_count || over_bytes) {
                    break;
                }
                // The oldest request that is not being sent.
                let idx = usize::from(
                    st.in_flight.is_some() && st.items.front().map(|i| i.seq) == st.in_flight,
                );
                match st.items.remove(idx) {
                    Some(old) => {
                        st.bytes -= old.body.len();
                        dropped += 1;
                    }
                    None => break,
                }
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.bytes += body.len();
            st.items.push_back(Item { seq, body });
        }
        if dropped > 0 {
            st.overflow_total += dropped;
            self.metrics
                .push_drop(PushDropReason::QueueFull)
                .inc_by(dropped);
            let now = Instant::now();
            if st
                .last_overflow_warn
                .is_none_or(|t| now.duration_since(t) >= self.config.overflow_warn_interval)
            {
                st.last_overflow_warn = Some(now);
                tracing::warn!(
                    dropped_total = st.overflow_total,
                    capacity = self.config.queue_capacity,
                    max_bytes = self.config.queue_max_bytes,
                    "push queue full: dropped the oldest profiles (server slow or unreachable)"
                );
            }
        }
        self.gauges(&st);
        drop(st);
        self.notify.notify_one();
    }

    /// The oldest request, marked in flight.
    fn take_front(&self) -> Option<(u64, Bytes)> {
        let mut st = self.lock();
        let (seq, body) = st.items.front().map(|i| (i.seq, i.body.clone()))?;
        st.in_flight = Some(seq);
        Some((seq, body))
    }

    /// Ends the attempt on `seq`; removes it when `done` (delivered or given up).
    fn finish(&self, seq: u64, done: bool) {
        let mut st = self.lock();
        st.in_flight = None;
        if done
            && st.items.front().is_some_and(|i| i.seq == seq)
            && let Some(old) = st.items.pop_front()
        {
            st.bytes -= old.body.len();
        }
        self.gauges(&st);
    }

    fn drain(&self) -> usize {
        let mut st = self.lock();
        let n = st.items.len();
        st.items.clear();
        st.bytes = 0;
        st.in_flight = None;
        self.gauges(&st);
        n
    }

    fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn gauges(&self, st: &QueueState) {
        self.metrics.queue_depth.set(st.items.len() as i64);
        self.metrics.queue_bytes.set(st.bytes as i64);
    }
}

/// A cheap, cloneable way to queue requests for the shipper.
#[derive(Clone)]
pub struct ShipperHandle {
    queue: Arc<Queue>,
}

impl ShipperHandle {
    /// Encodes and gzips `request` and queues it, dropping the oldest queued requests if needed.
    /// CPU-bound (compression): call from a blocking context for large requests.
    pub fn enqueue(&self, request: &PushRequest) {
        self.enqueue_encoded(Bytes::from(kiln_proto::codec::gzip(
            &request.encode_to_vec(),
        )));
    }

    /// Queues an already gzipped, encoded `PushRequest`.
    pub fn enqueue_encoded(&self, gzipped: Bytes) {
        self.queue.push(gzipped);
    }

    /// Requests waiting (including one being sent).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// What shutdown achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests still queued at the deadline, now dropped.
    pub undelivered: usize,
}

/// The shipping task and its queue.
pub struct Shipper {
    queue: Arc<Queue>,
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

enum Outcome {
    Delivered,
    Retry(PushFailure),
    Permanent,
}

impl Shipper {
    /// Starts the shipping task on the current tokio runtime.
    pub fn spawn(config: ShipperConfig, client: reqwest::Client, metrics: AgentMetrics) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            config,
            metrics,
        });
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(run(queue.clone(), client, stop_rx));
        Shipper { queue, stop, task }
    }

    pub fn handle(&self) -> ShipperHandle {
        ShipperHandle {
            queue: self.queue.clone(),
        }
    }

    /// Delivers what is queued within `timeout`, then stops; whatever is left is dropped, counted
    /// and logged.
    pub async fn shutdown(self, timeout: Duration) -> ShutdownReport {
        let _ = self.stop.send(Some(Instant::now() + timeout));
        self.queue.notify.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
        let undelivered = self.queue.drain();
        if undelivered > 0 {
            self.queue
                .metrics
                .push_drop(PushDropReason::Shutdown)
                .inc_by(undelivered as u64);
            tracing::warn!(
                undelivered,
                "shutdown deadline passed with profiles still queued"
            );
        }
        ShutdownReport { undelivered }
    }
}

async fn run(
    queue: Arc<Queue>,
    client: reqwest::Client,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let cfg = &queue.config;
    let m = &queue.metrics;
    // (seq, failed attempts so far) of the request at the head.
    let mut failing: Option<(u64, u32)> = None;
    let mut stop_open = true;
    loop {
        let notified = queue.notify.notified();
        let Some((seq, body)) = queue.take_front() else {
            if stop.borrow().is_some() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = stop_requested(&mut stop, &mut stop_open) => {}
            }
            continue;
        };
        let attempts = match failing {
            Some((s, n)) if s == seq => {
                m.push_retries.inc();
                n
            }
            _ => 0,
        };
        m.push_attempts.inc();
        let outcome = send(&client, cfg, m, body).await;
        match outcome {
            Outcome::Delivered => {
                m.push_success.inc();
                failing = None;
                queue.finish(seq, true);
            }
            Outcome::Permanent => {
                m.push_drop(PushDropReason::Rejected).inc();
                failing = None;
                queue.finish(seq, true);
            }
            Outcome::Retry(kind) => {
                queue.finish(seq, false);
                failing = Some((seq, attempts + 1));
                let delay = backoff(cfg.base_backoff, cfg.max_backoff, attempts);
                tracing::debug!(
                    ?kind,
                    attempt = attempts + 1,
                    ?delay,
                    "push failed; will retry"
                );
                let deadline = *stop.borrow();
                let delay = match deadline {
                    Some(d) => delay.min(d.saturating_duration_since(Instant::now())),
                    None => delay,
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // Shutdown asked for: retry now within the deadline instead of sleeping past it.
                    _ = stop_requested(&mut stop, &mut stop_open) => {}
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
            }
        }
    }
}

/// Completes when shutdown is requested; never, once the [`Shipper`] is gone without asking (a
/// closed channel must not turn the waits in `run` into a busy loop).
async fn stop_requested(stop: &mut watch::Receiver<Option<Instant>>, open: &mut bool) {
    if *open && stop.changed().await.is_ok() {
        return;
    }
    *open = false;
    std::future::pending::<()>().await;
}

/// Exponential backoff with full jitter: uniformly random in `0..=min(max, base * 2^attempt)`.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

async fn send(
    client: &reqwest::Client,
    cfg: &ShipperConfig,
    m: &AgentMetrics,
    body: Bytes,
) -> Outcome {
    let started = Instant::now();
    let result = client
        .post(&cfg.push_url)
        .header(CONTENT_TYPE, "application/proto")
        .header(CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await;
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            m.push_failed(PushFailure::Transport).inc();
            tracing::debug!(error = %e, url = %cfg.push_url, "push request failed");
            return Outcome::Retry(PushFailure::Transport);
        }
    };
    m.push_latency_seconds
        .observe(started.elapsed().as_secs_f64());
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let kind = if status.as_u16() == 429 {
        PushFailure::RateLimited
    } else if status.is_server_error() {
        PushFailure::ServerError
    } else {
        PushFailure::Rejected
    };
    m.push_failed(kind).inc();
    if kind != PushFailure::Rejected {
        tracing::debug!(%status, "server is busy or failing; will retry");
        return Outcome::Retry(kind);
    }
    let text = response.text().await.unwrap_or_default();
    let mut end = text.len().min(MAX_LOGGED_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(%status, message = &text[..end], "server rejected a push request; dropped");
    Outcome::Permanent
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use kiln_proto::push::{LabelPair, PUSH_PATH, RawSample};

    /// Content-Encoding header and body of one request.
    type Received = (Option<String>, Bytes);

    #[derive(Clone, Default)]
    struct Server {
        /// Status codes to answer with, in order; 200 once exhausted.
        script: Arc<Mutex<VecDeque<u16>>>,
        received: Arc<Mutex<Vec<Received>>>,
        /// When set, each request waits for a permit before answering.
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    async fn handler(
        State(s): State<Server>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let enc = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned());
        s.received.lock().unwrap().push((enc, body));
        if let Some(g) = &s.gate {
            g.acquire().await.unwrap().forget();
        }
        let code = s.script.lock().unwrap().pop_front().unwrap_or(200);
        (
            StatusCode::from_u16(code).unwrap(),
            "bad labels: __name__ missing".into(),
        )
    }

    async fn serve(s: Server) -> String {
        let app = axum::Router::new()
            .route(PUSH_PATH, post(handler))
            .with_state(s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}{PUSH_PATH}")
    }

    fn config(url: String, capacity: usize) -> ShipperConfig {
        ShipperConfig {
            push_url: url,
            queue_capacity: capacity,
            queue_max_bytes: 1 << 20,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            overflow_warn_interval: Duration::from_secs(1),
        }
    }

    fn request(n: u8) -> PushRequest {
        PushRequest {
            series: vec![RawProfileSeries {
                labels: vec![LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                }],
                samples: vec![RawSample {
                    raw_profile: vec![n; 100],
                    id: format!("id-{n}"),
                }],
            }],
        }
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn retries_5xx_then_delivers_a_gzipped_request_once() {
        let server = Server {
            script: Arc::new(Mutex::new([503, 503].into())),
            ..Default::default()
        };
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let shipper = Shipper::spawn(config(url, 8), reqwest::Client::new(), metrics.clone());
        shipper.handle().enqueue(&request(1));
        wait_for(|| metrics.push_success.get() == 1).await;
        assert_eq!(
            shipper.shutdown(Duration::from_secs(1)).await.undelivered,
            0
        );

        let received = server.received.lock().unwrap();
        assert_eq!(received.len(), 3, "two failures, then one delivery");
        assert_eq!(metrics.push_attempts.get(), 3);
        assert_eq!(metrics.push_retries.get(), 2);
        assert_eq!(metrics.push_failed(PushFailure::ServerError).get(), 2);
        assert_eq!(metrics.queue_depth.get(), 0);
        let (enc, body) = &received[2];
        assert_eq!(enc.as_deref(), Some("gzip"));
        assert!(kiln_proto::codec::is_gzip(body));
        let raw = kiln_proto::codec::gunzip_limited(body, 1 << 20).unwrap();
        assert_eq!(PushRequest::decode(raw.as_slice()).unwrap(), request(1));
    }

    #[tokio::test]
    async fn permanent_4xx_is_dropped_and_counted() {
        let server = Server {
            script: Arc::new(Mutex::new([400].into())),
            ..Default::default()
        };
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let shipper = Shipper::spawn(config(url, 8), reqwest::Client::new(), metrics.clone());
        shipper.handle().enqueue(&request(1));
        wait_for(|| metrics.push_drop(PushDropReason::Rejected).get() == 1).await;
        shipper.handle().enqueue(&request(2));
        wait_for(|| metrics.push_success.get() == 1).await;
        shipper.shutdown(Duration::from_secs(1)).await;
        assert_eq!(
            server.received.lock().unwrap().len(),
            2,
            "the 400 was not retried"
        );
        assert_eq!(metrics.push_retries.get(), 0);
        assert_eq!(metrics.push_failed(PushFailure::Rejected).get(), 1);
    }

    #[tokio::test]
    async fn overflow_drops_the_oldest_waiting_request() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let server = Server {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let shipper = Shipper::spawn(config(url, 2), reqwest::Client::new(), metrics.clone());
        let h = shipper.handle();
        h.enqueue(&request(1));
        // Request 1 is at the server (in flight): it is never the one dropped.
        wait_for(|| server.received.lock().unwrap().len() == 1).await;
        for n in 2..=4 {
            h.enqueue(&request(n));
        }
        assert_eq!(metrics.push_drop(PushDropReason::QueueFull).get(), 1);
        assert_eq!(h.queued(), 3);
        gate.add_permits(10);
        wait_for(|| metrics.push_success.get() == 3).await;
        shipper.shutdown(Duration::from_secs(1)).await;
        let ids: Vec<String> = server
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                let raw = kiln_proto::codec::gunzip_limited(b, 1 << 20).unwrap();
                PushRequest::decode(raw.as_slice()).unwrap().series[0].samples[0]
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(
            ids,
            ["id-1", "id-3", "id-4"],
            "request 2 (oldest waiting) was dropped"
        );
    }

    #[tokio::test]
    async fn shutdown_gives_up_at_the_deadline_and_counts() {
        let server = Server {
            script: Arc::new(Mutex::new([503; 1000].into())),
            ..Default::default()
        };
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        // Unreachable server and a transport error count as retryable too.
        let shipper = Shipper::spawn(config(url, 8), reqwest::Client::new(), metrics.clone());
        shipper.handle().enqueue(&request(1));
        shipper.handle().enqueue(&request(2));
        let started = Instant::now();
        let report = shipper.shutdown(Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(report.undelivered, 2);
        assert_eq!(metrics.push_drop(PushDropReason::Shutdown).get(), 2);
        assert!(metrics.push_failed(PushFailure::ServerError).get() >= 1);
    }

    #[tokio::test]
    async fn transport_errors_are_retried() {
        // Bind and close to get a port nobody listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = AgentMetrics::unregistered();
        let shipper = Shipper::spawn(
            config(format!("http://{addr}{PUSH_PATH}"), 8),
            reqwest::Client::new(),
            metrics.clone(),
        );
        shipper.handle().enqueue(&request(1));
        wait_for(|| metrics.push_retries.get() >= 2).await;
        // Each retry follows a failure; the next failure may not have happened yet.
        assert!(metrics.push_failed(PushFailure::Transport).get() >= 2);
        assert_eq!(
            shipper
                .shutdown(Duration::from_millis(50))
                .await
                .undelivered,
            1
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        for attempt in [0, 1, 5, 40, u32::MAX] {
            let cap = base.saturating_mul(2u32.saturating_pow(attempt)).min(max);
            for _ in 0..50 {
                assert!(backoff(base, max, attempt) <= cap);
            }
        }
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(base, max, 10)).collect();
        assert!(distinct.len() > 1, "full jitter varies the delay");
    }

    #[test]
    fn requests_are_split_by_size() {
        let series: Vec<_> = (0..10).flat_map(|n| request(n).series).collect();
        let one = series[0].encoded_len();
        let reqs = push_requests(series.clone(), one * 3 + 40);
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs.iter().map(|r| r.series.len()).sum::<usize>(), 10);
        assert_eq!(push_requests(series, usize::MAX).len(), 1);
        assert!(push_requests(Vec::new(), 10).is_empty());
    }
}
