//! Debuginfo upload: [`DebugInfoUploader`] makes sure the server has every ELF file our profiles point
//! into, so it can symbolize them. Each build ID is handled at most once per agent lifetime (failures
//! are retried when seen again, with exponential backoff); files go up zstd-compressed and streamed,
//! never held in memory whole. Everything runs on a background task, off the sampling path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::buildid::{BuildId, ObjectRef, open_mapped_file};
use crate::config::{AgentConfig, ServerUrl};
use crate::metrics::{AgentMetrics, UploadOutcome};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("server answered {status} to {method} {url}")]
    Status {
        method: &'static str,
        url: String,
        status: StatusCode,
    },
}

#[derive(Clone, Debug)]
pub struct DebugInfoConfig {
    pub server: ServerUrl,
    /// Files larger than this are skipped (logged and counted), never read.
    pub max_upload_bytes: u64,
    /// Most uploads waiting for the background task; further candidates are offered again later.
    pub max_pending: usize,
    /// Wait after a first failure before trying a build ID again; doubles per failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub zstd_level: i32,
    /// Most build IDs remembered (settled or failing); bounds memory on nodes that see many binaries.
    pub max_tracked: usize,
    /// Average bytes (uncompressed) uploaded per minute; 0 for no limit. See [`UploadBudget`].
    pub bytes_per_minute: u64,
}

impl From<&AgentConfig> for DebugInfoConfig {
    fn from(c: &AgentConfig) -> Self {
        DebugInfoConfig {
            server: c.server_url.clone(),
            max_upload_bytes: c.max_upload_bytes,
            max_pending: 64,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(3600),
            // Level 1 rather than 3: on an 81 MB Rust binary 0.48 s of CPU instead of 0.64 s for
            // 12 % more bytes (21.3 MB vs 19.0 MB); compression was ~80 % of the agent's CPU
            // while it uploaded.
            zstd_level: 1,
            max_tracked: 65_536,
            bytes_per_minute: c.upload_bytes_per_minute,
        }
    }
}

/// What became of one [`DebugInfoUploader::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued for the background task.
    Queued,
    /// Already uploaded, present, skipped for good, or queued: nothing to do.
    Known,
    /// Failed before; its backoff has not expired.
    BackingOff,
    /// Larger than the limit: skipped for good.
    TooLarge,
    /// The file could not be opened (will be tried again when seen again).
    Unreadable,
    /// Too many uploads pending (will be tried again when seen again).
    QueueFull,
    /// The table of known build IDs is full of entries that cannot be forgotten.
    Untracked,
    /// Over the byte budget for now (will be tried again when seen again).
    OverBudget,
}

/// A token bucket of bytes that may go into debt: a file is let through whenever the bucket is
/// not empty, and its whole size is taken, so a file larger than a minute's budget still goes up
/// and the minutes after it pay for it. The long-run average stays at `bytes_per_minute`; at most
/// one minute's budget goes out in a burst (after a quiet spell), plus one file.
#[derive(Debug)]
pub struct UploadBudget {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl UploadBudget {
    /// A full bucket; `None` when `bytes_per_minute` is 0 (no limit).
    pub fn new(bytes_per_minute: u64, now: Instant) -> Option<Self> {
        (bytes_per_minute > 0).then(|| UploadBudget {
            per_second: bytes_per_minute as f64 / 60.0,
            capacity: bytes_per_minute as f64,
            tokens: bytes_per_minute as f64,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes `bytes` if the bucket is not empty.
    pub fn try_take(&mut self, bytes: u64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens <= 0.0 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }

    /// Takes `bytes` whatever the bucket holds (for a file that goes with one already let through).
    pub fn take(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// Gives back bytes taken for a file that did not need sending after all.
    pub fn refund(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + bytes as f64).min(self.capacity);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Queued or being uploaded.
    Pending {
        failures: u32,
    },
    /// Nothing more to do for the agent's lifetime (uploaded, present, rejected, too large).
    Settled,
    Failed {
        failures: u32,
        retry_at: Instant,
    },
}

struct Job {
    build_id: BuildId,
    file: File,
    size: u64,
    path: PathBuf,
    /// The separate debug file of a stripped object, found (and opened) at submit time:
    /// (file, size, path), uploaded as `?kind=debuginfo`.
    debug: Option<(File, u64, PathBuf)>,
    failures: u32,
}

struct Shared {
    states: Mutex<HashMap<BuildId, State>>,
    /// A [`DebugInfoUploader::submit_all`] batch is being examined.
    examining: AtomicBool,
    budget: Mutex<Option<UploadBudget>>,
    config: DebugInfoConfig,
    metrics: AgentMetrics,
}

impl Shared {
    fn states(&self) -> MutexGuard<'_, HashMap<BuildId, State>> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn budget(&self) -> MutexGuard<'_, Option<UploadBudget>> {
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts an entry back to what it was before an attempt that never reached the server.
    fn forget_attempt(&self, id: &BuildId, failures: u32, retry_at: Option<Instant>) {
        let mut states = self.states();
        match retry_at {
            Some(retry_at) => {
                states.insert(id.clone(), State::Failed { failures, retry_at });
            }
            None => {
                states.remove(id);
            }
        }
    }

    fn record_failure(&self, id: &BuildId, failures: u32) {
        let exp = failures.saturating_sub(1).min(20);
        let delay = self
            .config
            .initial_backoff
            .saturating_mul(1 << exp)
            .min(self.config.max_backoff);
        self.states().insert(
            id.clone(),
            State::Failed {
                failures,
                retry_at: Instant::now() + delay,
            },
        );
    }
}

/// Uploads ELF files the server lacks. Cheap to clone; [`DebugInfoUploader::submit`] never blocks on
/// the network.
#[derive(Clone)]
pub struct DebugInfoUploader {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

impl DebugInfoUploader {
    /// Starts the background task; it ends when every uploader clone is dropped.
    pub fn spawn(
        config: DebugInfoConfig,
        client: reqwest::Client,
        metrics: AgentMetrics,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.max_pending.max(1));
        let shared = Arc::new(Shared {
            states: Mutex::new(HashMap::new()),
            examining: AtomicBool::new(false),
            budget: Mutex::new(UploadBudget::new(config.bytes_per_minute, Instant::now())),
            config,
            metrics,
        });
        let task = tokio::spawn(run(shared.clone(), client, rx));
        (DebugInfoUploader { shared, tx }, task)
    }

    /// Offers every object of a flushed window, smallest mapping first: when the budget runs out
    /// in a window, it is the one large file that waits, not the many small ones (whose processes
    /// may not be seen again).
    ///
    /// Returns at once: opening and judging the files (their headers, debug-link candidates) is I/O
    /// on the profiled processes' filesystems, done on a blocking thread of the runtime, never on
    /// the caller's (the sampling thread). One batch at a time: while one is still at work (a slow
    /// filesystem), later batches are skipped; their objects are offered again when seen again.
    pub fn submit_all<'a>(&self, objects: impl IntoIterator<Item = &'a ObjectRef>) {
        let mut objects: Vec<ObjectRef> = objects.into_iter().cloned().collect();
        if objects.is_empty() {
            return;
        }
        if self.shared.examining.swap(true, Ordering::AcqRel) {
            tracing::debug!(
                objects = objects.len(),
                "previous objects still being examined; these are offered again later"
            );
            return;
        }
        objects.sort_by_key(|o| o.end.saturating_sub(o.start));
        let this = self.clone();
        let examine = move || {
            for o in &objects {
                this.submit(o);
            }
            this.shared.examining.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(examine)),
            // Outside a runtime (never in the agent): do the work here.
            Err(_) => examine(),
        }
    }

    /// Offers one object: opens its file now (while the process that maps it is known to live) and
    /// queues it, unless it is known, backing off, too large or the queue is full.
    pub fn submit(&self, obj: &ObjectRef) -> Submitted {
        let now = Instant::now();
        let (failures, retry_at) = {
            let mut states = self.shared.states();
            let prior = match states.get(&obj.build_id) {
                Some(State::Pending { .. } | State::Settled) => return Submitted::Known,
                Some(&State::Failed { retry_at, .. }) if now < retry_at => {
                    return Submitted::BackingOff;
                }
                Some(&State::Failed { failures, retry_at }) => (failures, Some(retry_at)),
                None => {
                    if states.len() >= self.shared.config.max_tracked {
                        // Failed entries can be retried from scratch later; settled ones must stay
                        // or we would re-upload.
                        states.retain(|_, s| !matches!(s, State::Failed { .. }));
                        if states.len() >= self.shared.config.max_tracked {
                            return Submitted::Untracked;
                        }
                    }
                    (0, None)
                }
            };
            states.insert(obj.build_id.clone(), State::Pending { failures: prior.0 });
            prior
        };
        let m = &self.shared.metrics;
        let opened = match open_mapped_file(&obj.mapped()) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(build_id = %obj.build_id, error = %e, "cannot open object for upload");
                m.upload(UploadOutcome::Unreadable).inc();
                self.shared
                    .forget_attempt(&obj.build_id, failures, retry_at);
                return Submitted::Unreadable;
            }
        };
        let size = opened.len();
        let path = opened.shown_path().to_owned();
        let file = opened.into_file();
        if size > self.shared.config.max_upload_bytes {
            tracing::info!(
                build_id = %obj.build_id,
                path = %obj.path.display(),
                size,
                max = self.shared.config.max_upload_bytes,
                "object file too large to upload; the server cannot symbolize it"
            );
            m.upload(UploadOutcome::TooLarge).inc();
            self.shared
                .states()
                .insert(obj.build_id.clone(), State::Settled);
            return Submitted::TooLarge;
        }
        // The budget first: judging whether the file is stripped (and finding its debug file)
        // reads its section headers, work that a file over the budget would redo every window.
        if let Some(budget) = self.shared.budget().as_mut()
            && !budget.try_take(size, now)
        {
            tracing::debug!(build_id = %obj.build_id, size, "upload budget spent; offered again later");
            m.upload(UploadOutcome::OverBudget).inc();
            self.shared
                .forget_attempt(&obj.build_id, failures, retry_at);
            return Submitted::OverBudget;
        }
        // Stripped: look for its separate debuginfo now, while the process (and so its root
        // directory, /proc/PID/root) is known to exist.
        let debug = if crate::debuglink::has_symbols(&file) {
            None
        } else {
            let max = self.shared.config.max_upload_bytes;
            crate::process_files::ProcessRoot::of_process(obj.pid)
                .ok()
                .and_then(|root| {
                    crate::debuglink::find_debug_file(&root, &file, &obj.path, &obj.build_id, max)
                })
                .map(|f| {
                    let (size, path) = (f.len(), f.shown_path().to_owned());
                    (f.into_file(), size, path)
                })
        };
        // The debug file goes with its object: its bytes are owed even past the budget.
        if let (Some(budget), Some((_, debug_size, _))) =
            (self.shared.budget().as_mut(), debug.as_ref())
        {
            budget.take(*debug_size, now);
        }
        let total = size.saturating_add(debug.as_ref().map_or(0, |d| d.1));
        // Parsing moved the read position; the upload streams from the current one.
        let mut file = file;
        if let Err(e) = std::io::Seek::rewind(&mut file) {
            tracing::debug!(build_id = %obj.build_id, error = %e, "cannot rewind object file");
            m.upload(UploadOutcome::Unreadable).inc();
            self.shared
                .forget_attempt(&obj.build_id, failures, retry_at);
            return Submitted::Unreadable;
        }
        let job = Job {
            build_id: obj.build_id.clone(),
            file,
            size,
            path,
            debug,
            failures,
        };
        match self.tx.try_send(job) {
            Ok(()) => Submitted::Queued,
            Err(_) => {
                if let Some(budget) = self.shared.budget().as_mut() {
                    budget.refund(total, Instant::now());
                }
                m.upload(UploadOutcome::QueueFull).inc();
                self.shared
                    .forget_attempt(&obj.build_id, failures, retry_at);
                Submitted::QueueFull
            }
        }
    }
}

async fn run(shared: Arc<Shared>, client: reqwest::Client, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let id = job.build_id.clone();
        let failures = job.failures;
        let m = &shared.metrics;
        match upload(&client, &shared, job).await {
            Ok(outcome) => {
                m.upload(outcome).inc();
                shared.states().insert(id, State::Settled);
            }
            Err(e) => {
                // 409: the server holds a different file for the build ID that carries at least
                // as much; sending ours again would change nothing. (507, a full quota, is
                // retried: retention may free room.)
                let permanent = matches!(
                    &e,
                    UploadError::Status { status, .. }
                        if *status == StatusCode::BAD_REQUEST
                            || *status == StatusCode::PAYLOAD_TOO_LARGE
                            || *status == StatusCode::CONFLICT
                );
                if permanent {
                    tracing::warn!(build_id = %id, error = %e, "server refused the object file");
                    m.upload(UploadOutcome::Rejected).inc();
                    shared.states().insert(id, State::Settled);
                } else {
                    tracing::debug!(build_id = %id, error = %e, "debuginfo upload failed; will retry later");
                    m.upload(UploadOutcome::Failed).inc();
                    shared.record_failure(&id, failures + 1);
                }
            }
        }
    }
}

async fn upload(
    client: &reqwest::Client,
    shared: &Shared,
    job: Job,
) -> Result<UploadOutcome, UploadError> {
    let config = &shared.config;
    let url = config.server.debuginfo_url(&job.build_id.to_hex());
    // Bytes not sent (the server had the file) go back to the budget; sent bytes are counted.
    let account = |sent: Option<u64>, size: u64| match sent {
        Some(n) => {
            shared.metrics.debuginfo_upload_bytes.inc_by(n);
        }
        None => {
            if let Some(budget) = shared.budget().as_mut() {
                budget.refund(size, Instant::now());
            }
        }
    };
    let (outcome, sent) = upload_file(
        client,
        config,
        &url,
        &job.build_id,
        job.file,
        job.size,
        &job.path,
    )
    .await?;
    account(sent, job.size);
    // After the executable (the server needs its segments to use the debug file).
    if let Some((file, size, path)) = job.debug {
        let url = format!("{url}?kind=debuginfo");
        let (debug, sent) =
            upload_file(client, config, &url, &job.build_id, file, size, &path).await?;
        account(sent, size);
        if debug == UploadOutcome::Uploaded {
            return Ok(UploadOutcome::Uploaded);
        }
    }
    Ok(outcome)
}

/// GET `url`; PUT the file there (zstd, streamed) unless the server has it. Also says how many
/// bytes were sent (`None`: nothing, the server had it).
async fn upload_file(
    client: &reqwest::Client,
    config: &DebugInfoConfig,
    url: &str,
    build_id: &BuildId,
    file: File,
    size: u64,
    path: &std::path::Path,
) -> Result<(UploadOutcome, Option<u64>), UploadError> {
    let url = url.to_owned();
    let http = |source| UploadError::Http {
        url: url.clone(),
        source,
    };
    let status = client.get(&url).send().await.map_err(http)?.status();
    match status {
        StatusCode::OK => return Ok((UploadOutcome::AlreadyPresent, None)),
        StatusCode::NOT_FOUND => {}
        status => {
            return Err(UploadError::Status {
                method: "GET",
                url,
                status,
            });
        }
    }
    tracing::debug!(build_id = %build_id, path = %path.display(), size, "uploading object file");
    let body = reqwest::Body::wrap_stream(compressed_stream(
        file,
        config.max_upload_bytes,
        config.zstd_level,
    ));
    let status = client
        .put(&url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_ENCODING, "zstd")
        .body(body)
        .send()
        .await
        .map_err(http)?
        .status();
    match status {
        StatusCode::CREATED => Ok((UploadOutcome::Uploaded, Some(size))),
        StatusCode::OK => Ok((UploadOutcome::AlreadyPresent, Some(size))),
        status => Err(UploadError::Status {
            method: "PUT",
            url,
            status,
        }),
    }
}

/// Chunks of compressed output handed from the compressing thread to the request body.
const CHUNK: usize = 64 * 1024;

/// Compresses `file` with zstd on a blocking thread, yielding chunks as they are produced. At most a
/// few chunks are in memory at a time (the channel is small and the compressor waits for the
/// network). A file that grows past `max_bytes` while being read ends the stream with an error.
fn compressed_stream(
    file: File,
    max_bytes: u64,
    level: i32,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            let writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let mut enc = zstd::stream::write::Encoder::new(writer, level)?;
            let copied = std::io::copy(&mut file.take(max_bytes.saturating_add(1)), &mut enc)?;
            if copied > max_bytes {
                return Err(std::io::Error::other(format!(
                    "file grew past the upload limit of {max_bytes} bytes"
                )));
            }
            enc.finish()?.flush()
        })();
        if let Err(e) = result {
            // The receiver may be gone (request aborted): then nobody needs to know.
            let _ = tx.blocking_send(Err(e));
        }
    });
    ReceiverStream(rx)
}

struct ReceiverStream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures::Stream for ReceiverStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A `Write` that batches bytes into [`CHUNK`]-sized pieces and sends them down a channel,
/// blocking (this runs on a blocking thread) while the network catches up.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload request ended")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buf()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::procmaps::{ProcessCache, ProcessCacheConfig};
    use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State};
    use axum::http::HeaderMap;
    use axum::routing::get;
    use std::collections::HashSet;

    /// (build id, content-encoding, decompressed body) of one PUT.
    type Put = (String, Option<String>, Vec<u8>);

    #[derive(Clone, Default)]
    struct Server {
        stored: Arc<Mutex<HashSet<String>>>,
        /// (build id, content-encoding, decompressed body)
        puts: Arc<Mutex<Vec<Put>>>,
        gets: Arc<Mutex<usize>>,
        /// Answer GETs with 500 while set.
        failing: Arc<Mutex<bool>>,
    }

    /// The build ID, with `?<query>` appended when there is one (`?kind=debuginfo`).
    fn key(id: String, q: Option<String>) -> String {
        match q {
            Some(q) => format!("{id}?{q}"),
            None => id,
        }
    }

    async fn get_handler(
        State(s): State<Server>,
        UrlPath(id): UrlPath<String>,
        RawQuery(q): RawQuery,
    ) -> StatusCode {
        let id = key(id, q);
        *s.gets.lock().unwrap() += 1;
        if *s.failing.lock().unwrap() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if s.stored.lock().unwrap().contains(&id) {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        }
    }

    async fn put_handler(
        State(s): State<Server>,
        UrlPath(id): UrlPath<String>,
        RawQuery(q): RawQuery,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let id = key(id, q);
        let enc = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned());
        let raw = zstd::decode_all(body.as_ref()).unwrap();
        s.puts.lock().unwrap().push((id.clone(), enc, raw));
        s.stored.lock().unwrap().insert(id);
        StatusCode::CREATED
    }

    async fn serve(s: Server) -> ServerUrl {
        let app = axum::Router::new()
            .route("/debuginfo/v1/{id}", get(get_handler).put(put_handler))
            .layer(DefaultBodyLimit::disable())
            .with_state(s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ServerUrl::parse(&format!("http://{addr}")).unwrap()
    }

    #[test]
    fn upload_budget_lets_a_file_through_while_not_empty_and_then_pays_it_off() {
        let t0 = Instant::now();
        let mut b = UploadBudget::new(60, t0).unwrap();
        assert!(
            b.try_take(100, t0),
            "a full bucket lets a larger file through"
        );
        assert!(!b.try_take(1, t0), "in debt: nothing more");
        // 1 byte/s: after 40 s the debt of 40 is paid, the bucket is empty, still no.
        assert!(!b.try_take(1, t0 + Duration::from_secs(40)));
        assert!(b.try_take(1, t0 + Duration::from_secs(41)));
        b.refund(1000, t0 + Duration::from_secs(41));
        assert!(b.tokens <= 60.0, "a refund never overfills");
        assert!(UploadBudget::new(0, t0).is_none(), "0: no limit");
    }

    fn config(server: ServerUrl) -> DebugInfoConfig {
        DebugInfoConfig {
            server,
            max_upload_bytes: 512 << 20,
            max_pending: 4,
            initial_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
            zstd_level: 3,
            max_tracked: 100,
            bytes_per_minute: 0,
        }
    }

    /// A child process killed and reaped when dropped, even if the test panics.
    struct Sleeper(std::process::Child);

    impl Sleeper {
        fn id(&self) -> u32 {
            self.0.id()
        }
        fn kill(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A live `sleep` child and the ObjectRef of its executable (a small ELF with a build ID).
    fn sleep_object() -> (Sleeper, ObjectRef) {
        let child = Sleeper(
            std::process::Command::new("sleep")
                .arg("100")
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut cache = ProcessCache::new(ProcessCacheConfig::default());
            let p = cache.resolve(child.id(), None, &[]).unwrap();
            // comm changes early in exec, before the new executable is mapped: wait for the mapping.
            let exe_mapping = p
                .mappings
                .iter()
                .find(|m| p.comm == "sleep" && m.path() == p.exe.as_deref());
            if let Some(m) = exe_mapping {
                let obj = ObjectRef {
                    build_id: m.build_id.clone().expect("Debian binaries carry build IDs"),
                    pid: child.id(),
                    start: m.start,
                    end: m.end,
                    path: m.path().unwrap().to_owned(),
                    inode: m.file.inode,
                };
                return (child, obj);
            }
            assert!(Instant::now() < deadline, "child never exec'd sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn uploads_once_zstd_compressed() {
        let (mut child, obj) = sleep_object();
        let server = Server::default();
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let (up, _task) =
            DebugInfoUploader::spawn(config(url), reqwest::Client::new(), metrics.clone());
        assert_eq!(up.submit(&obj), Submitted::Queued);
        assert_eq!(
            up.submit(&obj),
            Submitted::Known,
            "in flight: not queued twice"
        );
        wait_for(|| metrics.upload(UploadOutcome::Uploaded).get() == 1).await;
        assert_eq!(up.submit(&obj), Submitted::Known, "uploaded: never again");
        child.kill();

        let puts = server.puts.lock().unwrap();
        assert_eq!(puts.len(), 1);
        let (id, enc, raw) = &puts[0];
        assert_eq!(id, &obj.build_id.to_hex());
        assert_eq!(enc.as_deref(), Some("zstd"));
        assert_eq!(raw, &std::fs::read(&obj.path).unwrap());
        assert_eq!(*server.gets.lock().unwrap(), 1);
    }

    /// The sampling thread hands a window's objects over and goes on: the files are opened and
    /// uploaded from the runtime's threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_all_examines_files_off_the_calling_thread() {
        let (mut child, obj) = sleep_object();
        let server = Server::default();
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let (up, _task) =
            DebugInfoUploader::spawn(config(url), reqwest::Client::new(), metrics.clone());
        // While the uploader's state is locked, any examining blocks: submit_all must still return.
        let held = up.shared.states();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let caller = {
            let (up, obj) = (up.clone(), obj.clone());
            // As the agent's sampling thread: a plain thread that has entered the runtime.
            let runtime = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let _entered = runtime.enter();
                up.submit_all([&obj]);
                let _ = done_tx.send(());
            })
        };
        let returned = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        drop(held);
        assert!(returned, "submit_all waited on the files' examination");
        caller.join().unwrap();
        wait_for(|| metrics.upload(UploadOutcome::Uploaded).get() == 1).await;
        wait_for(|| !up.shared.examining.load(Ordering::Acquire)).await;
        child.kill();
        assert_eq!(server.puts.lock().unwrap().len(), 1);
    }

    /// A stripped program with its debug file beside it (`.gnu_debuglink`): the agent uploads the
    /// executable, then the debug file as `?kind=debuginfo`.
    #[tokio::test]
    async fn uploads_separate_debuginfo_of_stripped_object() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("app.c");
        std::fs::write(
            &src,
            "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
        )
        .unwrap();
        let full = dir.path().join("app.full");
        let exe = dir.path().join("stripped-app");
        let debug = dir.path().join("stripped-app.debug");
        let run = |c: &mut std::process::Command| c.status().is_ok_and(|s| s.success());
        let ok = run(std::process::Command::new("gcc")
            .args(["-g", "-Wl,--build-id=sha1", "-o"])
            .arg(&full)
            .arg(&src))
            && run(std::process::Command::new("objcopy")
                .arg("--only-keep-debug")
                .arg(&full)
                .arg(&debug))
            && run(std::process::Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(&exe)
                .arg(&full))
            && run(std::process::Command::new("objcopy")
                .arg(format!("--add-gnu-debuglink={}", debug.display()))
                .arg(&exe));
        if !ok {
            eprintln!("SKIPPED: gcc/binutils not available to build a stripped program");
            return;
        }
        let child = Sleeper(std::process::Command::new(&exe).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let obj = loop {
            let mut cache = ProcessCache::new(ProcessCacheConfig::default());
            let p = cache.resolve(child.id(), None, &[]).unwrap();
            if let Some(m) = p
                .mappings
                .iter()
                .find(|m| m.build_id.is_some() && m.path() == Some(exe.as_path()))
            {
                break ObjectRef {
                    build_id: m.build_id.clone().unwrap(),
                    pid: child.id(),
                    start: m.start,
                    end: m.end,
                    path: exe.clone(),
                    inode: m.file.inode,
                };
            }
            assert!(
                Instant::now() < deadline,
                "child never mapped {}",
                exe.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let server = Server::default();
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let (up, _task) =
            DebugInfoUploader::spawn(config(url), reqwest::Client::new(), metrics.clone());
        assert_eq!(up.submit(&obj), Submitted::Queued);
        wait_for(|| metrics.upload(UploadOutcome::Uploaded).get() == 1).await;
        drop(child);

        let puts = server.puts.lock().unwrap();
        let hex = obj.build_id.to_hex();
        let got: Vec<&str> = puts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(got, [hex.clone(), format!("{hex}?kind=debuginfo")]);
        assert_eq!(puts[0].2, std::fs::read(&exe).unwrap());
        assert_eq!(puts[1].2, std::fs::read(&debug).unwrap());
    }

    #[tokio::test]
    async fn skips_what_the_server_has_and_what_is_too_large() {
        let (mut child, obj) = sleep_object();
        let server = Server::default();
        server.stored.lock().unwrap().insert(obj.build_id.to_hex());
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let (up, _task) =
            DebugInfoUploader::spawn(config(url.clone()), reqwest::Client::new(), metrics.clone());
        assert_eq!(up.submit(&obj), Submitted::Queued);
        wait_for(|| metrics.upload(UploadOutcome::AlreadyPresent).get() == 1).await;
        assert!(server.puts.lock().unwrap().is_empty());

        let (small, _task) = DebugInfoUploader::spawn(
            DebugInfoConfig {
                max_upload_bytes: 100,
                ..config(url)
            },
            reqwest::Client::new(),
            metrics.clone(),
        );
        assert_eq!(small.submit(&obj), Submitted::TooLarge);
        assert_eq!(small.submit(&obj), Submitted::Known);
        assert_eq!(metrics.upload(UploadOutcome::TooLarge).get(), 1);
        assert_eq!(*server.gets.lock().unwrap(), 1, "too large: never asked");
        child.kill();
        // Process gone: the file can no longer be found through it.
        let (gone, _task) = DebugInfoUploader::spawn(
            config(ServerUrl::default()),
            reqwest::Client::new(),
            metrics.clone(),
        );
        assert_eq!(gone.submit(&obj), Submitted::Unreadable);
    }

    #[tokio::test]
    async fn failures_back_off_then_retry() {
        let (mut child, obj) = sleep_object();
        let server = Server::default();
        *server.failing.lock().unwrap() = true;
        let url = serve(server.clone()).await;
        let metrics = AgentMetrics::unregistered();
        let (up, _task) = DebugInfoUploader::spawn(
            DebugInfoConfig {
                initial_backoff: Duration::from_millis(200),
                ..config(url)
            },
            reqwest::Client::new(),
            metrics.clone(),
        );
        assert_eq!(up.submit(&obj), Submitted::Queued);
        wait_for(|| metrics.upload(UploadOutcome::Failed).get() == 1).await;
        assert_eq!(up.submit(&obj), Submitted::BackingOff);
        *server.failing.lock().unwrap() = false;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(up.submit(&obj), Submitted::Queued);
        wait_for(|| metrics.upload(UploadOutcome::Uploaded).get() == 1).await;
        child.kill();
    }

    #[tokio::test]
    async fn stream_stops_at_the_size_limit() {
        use futures::StreamExt;
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&[7u8; 300_000]).unwrap();
        let whole: Vec<_> = compressed_stream(File::open(t.path()).unwrap(), 300_000, 3)
            .collect()
            .await;
        let bytes: Vec<u8> = whole
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(
            zstd::decode_all(bytes.as_slice()).unwrap(),
            vec![7u8; 300_000]
        );
        let cut: Vec<_> = compressed_stream(File::open(t.path()).unwrap(), 1000, 3)
            .collect()
            .await;
        assert!(cut.last().unwrap().is_err());
    }
}
