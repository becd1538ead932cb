//! debuginfod, in the background: a build ID whose executable was never stored (or only a
//! stripped one, without a debug file) is put on a bounded queue when first seen (at ingest or by a
//! query); one worker thread fetches `GET {url}/buildid/{id}/executable|debuginfo` from the
//! configured servers, bounded in size and time, into the shared debuginfo store. Queries never
//! wait for the network: meanwhile their frames say the debuginfo is being fetched. Misses are
//! remembered for a while, so a profile full of unknown binaries does not turn every query into a
//! round of HTTP requests.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use kiln_symbolizer::{BuildId, FileKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::debuginfo::{DebugInfo, Owner};
use crate::metrics::OutcomeLabels;

/// How long a miss (every server answered 404 or failed) is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(600);
/// Build IDs waiting for the worker; more are dropped (and asked for again when next seen).
pub const QUEUE: usize = 256;
/// Misses remembered at most (oldest forgotten first when full).
const MAX_MISSES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum DebuginfodError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// The two files debuginfod serves per build ID that Kiln uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Artifact {
    Executable,
    Debuginfo,
}

impl Artifact {
    fn path(self) -> &'static str {
        match self {
            Artifact::Executable => "executable",
            Artifact::Debuginfo => "debuginfo",
        }
    }
}

/// What asking for a build ID came to, as a query reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Queued or being fetched.
    Pending,
    /// No server had what was needed, recently.
    Missed,
    /// The queue was full: not asked this time.
    Dropped,
}

/// The HTTP side: `GET` one artifact from the servers in turn.
struct Client {
    urls: Vec<String>,
    client: reqwest::Client,
    max_bytes: u64,
}

impl Client {
    /// The first server's answer for `artifact` of `id` as a temp file; `None` when none has it.
    async fn download(
        &self,
        id: &BuildId,
        artifact: Artifact,
    ) -> Result<Option<(std::fs::File, String)>, DebuginfodError> {
        let mut last_err = None;
        for base in &self.urls {
            let url = format!("{base}/buildid/{}/{}", id.as_str(), artifact.path());
            match self.get(&url).await {
                Ok(Some(file)) => return Ok(Some((file, url))),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// `GET url` into a temp file; `None` on 404.
    async fn get(&self, url: &str) -> Result<Option<std::fs::File>, DebuginfodError> {
        let fail = |message: String| DebuginfodError::Fetch {
            url: url.to_owned(),
            message,
        };
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        let too_large = || DebuginfodError::TooLarge {
            url: url.to_owned(),
            limit: self.max_bytes,
        };
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        let mut file = tempfile::tempfile().map_err(|e| fail(e.to_string()))?;
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(too_large());
            }
            file.write_all(&chunk).map_err(|e| fail(e.to_string()))?;
        }
        std::io::Seek::rewind(&mut file).map_err(|e| fail(e.to_string()))?;
        Ok(Some(file))
    }
}

/// The queue, the worker's state and its metrics.
pub struct Fetcher {
    client: Client,
    tx: SyncSender<BuildId>,
    rx: Mutex<Option<Receiver<BuildId>>>,
    /// Queued or in flight; at most [`QUEUE`] + 1.
    pending: Mutex<HashSet<BuildId>>,
    misses: Mutex<HashMap<BuildId, Instant>>,
    /// `kiln_server_debuginfod_queue_depth`.
    pub queue_depth: Gauge,
    /// `kiln_server_debuginfod_fetches_total{outcome}`: `stored`, `missed`, `failed`, `dropped`.
    pub fetches: Family<OutcomeLabels, Counter>,
}

impl Fetcher {
    /// A fetcher for `urls` (tried in order), each request bounded by `timeout` and `max_bytes`;
    /// `None` without URLs. Nothing runs until [`Fetcher::start`].
    pub fn new(urls: Vec<String>, timeout: Duration, max_bytes: u64) -> Option<Fetcher> {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return None;
        }
        let client = match reqwest::Client::builder().timeout(timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the debuginfod HTTP client");
                return None;
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Some(Fetcher {
            client: Client {
                urls,
                client,
                max_bytes,
            },
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashSet::new()),
            misses: Mutex::new(HashMap::new()),
            queue_depth: Gauge::default(),
            fetches: Family::default(),
        })
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "debuginfod_queue_depth",
            "Build IDs waiting to be fetched from debuginfod",
            self.queue_depth.clone(),
        );
        registry.register(
            "debuginfod_fetches",
            "debuginfod fetches, by outcome (stored, missed, failed, dropped: queue full)",
            self.fetches.clone(),
        );
    }

    fn count(&self, outcome: &str) {
        self.fetches
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Starts the worker thread (once). It ends when the fetcher is dropped.
    pub fn start(&self, debuginfo: Weak<DebugInfo>) {
        let Some(rx) = lock(&self.rx).take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("kiln-debuginfod".into())
            .spawn(move || worker(debuginfo, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the debuginfod fetcher");
        }
    }

    /// Whether `id` missed recently.
    pub fn recently_missed(&self, id: &BuildId) -> bool {
        lock(&self.misses)
            .get(id)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    /// Asks for `id` in the background (unless it is already pending or missed recently). Never
    /// blocks.
    pub fn request(&self, id: &BuildId) -> Status {
        if self.recently_missed(id) {
            return Status::Missed;
        }
        let mut pending = lock(&self.pending);
        if pending.contains(id) {
            return Status::Pending;
        }
        match self.tx.try_send(id.clone()) {
            Ok(()) => {
                pending.insert(id.clone());
                self.queue_depth.inc();
                Status::Pending
            }
            Err(TrySendError::Full(_)) => {
                self.count("dropped");
                Status::Dropped
            }
            Err(TrySendError::Disconnected(_)) => Status::Dropped,
        }
    }

    fn missed(&self, id: &BuildId) {
        let mut misses = lock(&self.misses);
        if misses.len() >= MAX_MISSES {
            misses.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if misses.len() >= MAX_MISSES {
                misses.clear();
            }
        }
        misses.insert(id.clone(), Instant::now());
    }

    /// Fetches into the shared store what it lacks for `id`: the executable when none is
    /// stored, the debug file when there is none and the executable (if any) has no symbols (a
    /// tenant may hold the stripped executable itself).
    fn fetch(&self, rt: &tokio::runtime::Runtime, debuginfo: &DebugInfo, id: &BuildId) {
        let Ok(opened) = debuginfo.get() else {
            return;
        };
        let shared = &opened.shared.store;
        let mut missed = false;
        for artifact in [Artifact::Executable, Artifact::Debuginfo] {
            let (kind, wanted) = match artifact {
                Artifact::Executable => (FileKind::Executable, shared.path(id).is_none()),
                Artifact::Debuginfo => (
                    FileKind::Debuginfo,
                    shared.debug_path(id).is_none()
                        && shared
                            .path(id)
                            .is_none_or(|exe| !kiln_symbolizer::has_symbols(&exe)),
                ),
            };
            if !wanted {
                continue;
            }
            match rt.block_on(self.client.download(id, artifact)) {
                Ok(Some((file, url))) => {
                    let mut reader = std::io::BufReader::new(file);
                    match debuginfo.insert(&Owner::Shared, kind, id, &mut reader) {
                        Ok(_) => {
                            tracing::info!(build_id = %id, %url, "fetched from debuginfod");
                            self.count("stored");
                        }
                        Err(e) => {
                            tracing::warn!(build_id = %id, %url, error = %e, "debuginfod's file refused");
                            self.count("failed");
                            missed = true;
                        }
                    }
                }
                Ok(None) => {
                    self.count("missed");
                    missed = true;
                }
                Err(e) => {
                    tracing::warn!(build_id = %id, error = %e, "debuginfod fetch failed");
                    self.count("failed");
                    missed = true;
                }
            }
        }
        if missed {
            self.missed(id);
        }
    }
}

fn worker(debuginfo: Weak<DebugInfo>, rx: Receiver<BuildId>) {
    // A runtime of its own: reqwest is async, and this thread must not depend on (or block) the
    // server's.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the debuginfod fetcher's runtime");
            return;
        }
    };
    while let Ok(id) = rx.recv() {
        let Some(debuginfo) = debuginfo.upgrade() else {
            return;
        };
        if let Some(d) = &debuginfo.debuginfod {
            d.queue_depth.dec();
            d.fetch(&rt, &debuginfo, &id);
            // After the outcome is stored (file or miss), so a query never sees neither.
            lock(&d.pending).remove(&id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> BuildId {
        BuildId::parse(&format!("{n:08x}")).unwrap()
    }

    /// Requests never block: they queue once per build ID, up to [`QUEUE`], then are dropped and
    /// counted; a recent miss is answered without asking again.
    #[test]
    fn requests_are_deduplicated_bounded_and_never_block() {
        // Never started: nothing drains the queue.
        let f = Fetcher::new(
            vec!["http://127.0.0.1:9".into()],
            Duration::from_secs(1),
            1 << 20,
        )
        .unwrap();
        assert_eq!(f.request(&id(0)), Status::Pending);
        assert_eq!(f.request(&id(0)), Status::Pending, "asked once");
        for n in 1..QUEUE {
            assert_eq!(f.request(&id(n)), Status::Pending);
        }
        assert_eq!(f.queue_depth.get(), QUEUE as i64);
        assert_eq!(f.request(&id(QUEUE)), Status::Dropped);
        assert_eq!(lock(&f.pending).len(), QUEUE);
        f.missed(&id(QUEUE + 1));
        assert_eq!(f.request(&id(QUEUE + 1)), Status::Missed);
        assert!(
            Fetcher::new(vec![" ".into()], Duration::from_secs(1), 1).is_none(),
            "no URL, no fetcher"
        );
    }
}
