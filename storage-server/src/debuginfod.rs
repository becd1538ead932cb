//! debuginfod client: on a symbolization miss, fetches a build ID's executable and debug file from
//! the configured debuginfod servers (`GET {url}/buildid/{id}/executable|debuginfo`), bounded in
//! size and time, into the debuginfo store; misses are remembered for a while so a profile full of
//! unknown binaries does not turn every query into a round of HTTP requests.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_symbolizer::{BuildId, DebugInfoStore};

/// How long a miss (every server answered 404 or failed) is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DebuginfodError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("storing what {url} sent: {source}")]
    Store {
        url: String,
        source: kiln_symbolizer::Error,
    },
    #[error("no async runtime to run the request on")]
    NoRuntime,
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

pub struct Debuginfod {
    urls: Vec<String>,
    client: reqwest::Client,
    max_bytes: u64,
    misses: Mutex<HashMap<(BuildId, Artifact), Instant>>,
}

impl Debuginfod {
    /// A client for `urls` (tried in order), each request bounded by `timeout` and `max_bytes`.
    pub fn new(urls: Vec<String>, timeout: Duration, max_bytes: u64) -> Option<Debuginfod> {
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
        Some(Debuginfod {
            urls,
            client,
            max_bytes,
            misses: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `artifact` of `id` missed recently (then [`Debuginfod::fetch`] will not ask again).
    pub fn recently_missed(&self, id: &BuildId, artifact: Artifact) -> bool {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        misses.retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
        misses.contains_key(&(id.clone(), artifact))
    }

    /// Fetches `artifact` of `id` into `store`. `Ok(true)` when stored, `Ok(false)` when no server
    /// has it (remembered for [`NEGATIVE_TTL`]). Blocking: call from a blocking thread inside the
    /// server's tokio runtime.
    pub fn fetch(
        &self,
        store: &DebugInfoStore,
        id: &BuildId,
        artifact: Artifact,
    ) -> Result<bool, DebuginfodError> {
        if self.recently_missed(id, artifact) {
            return Ok(false);
        }
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| DebuginfodError::NoRuntime)?;
        let mut last_err = None;
        for base in &self.urls {
            let url = format!("{base}/buildid/{}/{}", id.as_str(), artifact.path());
            match handle.block_on(self.download(&url)) {
                Ok(Some(file)) => {
                    let reader = std::io::BufReader::new(file);
                    let stored = match artifact {
                        Artifact::Executable => {
                            store.insert_from_reader(id, reader, self.max_bytes)
                        }
                        Artifact::Debuginfo => {
                            store.insert_debug_from_reader(id, reader, self.max_bytes)
                        }
                    };
                    match stored {
                        Ok(()) => {
                            tracing::info!(build_id = %id, %url, "fetched from debuginfod");
                            return Ok(true);
                        }
                        Err(source) => {
                            last_err = Some(DebuginfodError::Store { url, source });
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        self.misses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((id.clone(), artifact), Instant::now());
        match last_err {
            Some(e) => {
                tracing::debug!(build_id = %id, error = %e, "debuginfod fetch failed");
                Err(e)
            }
            None => Ok(false),
        }
    }

    /// `GET url` into a temp file; `None` on 404.
    async fn download(&self, url: &str) -> Result<Option<std::fs::File>, DebuginfodError> {
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
