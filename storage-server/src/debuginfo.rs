//! Debuginfo: the `GET`/`PUT /debuginfo/v1/{build_id}` endpoints, and [`DebugInfo`], which owns the
//! ELF store and the symbolizer over it.

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kiln_symbolizer::{BuildId, DebugInfoStore, Symbolizer};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::ReasonLabels;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The debuginfo store and symbolizer, opened on first use.
///
/// Opening lazily (and only ever from blocking threads) keeps the rest of the server working when
/// the debuginfo directory is unusable: ingest and queries of already-symbolized profiles need
/// neither.
pub struct DebugInfo {
    root: PathBuf,
    cache_entries: usize,
    opened: Mutex<Option<Arc<Opened>>>,
    /// Locations resolved at query time, by outcome (`symbolized` or a reason); registered in
    /// the server's metrics as `kiln_server_symbolization_frames_total`.
    pub frame_outcomes: Family<ReasonLabels, Counter>,
    /// Where to fetch what was never uploaded (`--debuginfod-urls`), if anywhere.
    pub debuginfod: Option<crate::debuginfod::Debuginfod>,
}

pub struct Opened {
    pub store: Arc<DebugInfoStore>,
    pub symbolizer: Symbolizer,
}

impl DebugInfo {
    pub fn new(root: PathBuf, cache_entries: usize) -> DebugInfo {
        DebugInfo {
            root,
            cache_entries,
            opened: Mutex::new(None),
            frame_outcomes: Family::default(),
            debuginfod: None,
        }
    }

    /// Counts `n` locations resolved with `outcome` (`symbolized` or a [`Reason`] name).
    ///
    /// [`Reason`]: crate::query::symbolize::Reason
    pub fn count_frames(&self, outcome: &str, n: u64) {
        self.frame_outcomes
            .get_or_create(&ReasonLabels {
                reason: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// The opened store and symbolizer. Blocking: call from `spawn_blocking`.
    pub fn get(&self) -> Result<Arc<Opened>, kiln_symbolizer::Error> {
        if let Some(o) = self.lock().as_ref() {
            return Ok(o.clone());
        }
        // Open outside the lock: two racing openers just build the same thing twice.
        let store = Arc::new(DebugInfoStore::open(&self.root)?);
        let symbolizer = Symbolizer::new(store.clone(), self.cache_entries);
        let opened = Arc::new(Opened { store, symbolizer });
        Ok(self.lock().get_or_insert(opened).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Opened>>> {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which file of a build ID a request is about (`?kind=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The mapped ELF itself (`?kind=executable`, the default): its segments place addresses.
    #[default]
    Executable,
    /// Its separate debug file (`?kind=debuginfo`: `/usr/lib/debug/.build-id/xx/y.debug`, a
    /// `.gnu_debuglink` target, debuginfod's answer): names and lines for a stripped executable.
    Debuginfo,
}

/// Query parameters of the debuginfo endpoints.
#[derive(Debug, Default, serde::Deserialize)]
pub struct KindParam {
    #[serde(default)]
    pub kind: Kind,
}

fn kind_of(
    q: Result<axum::extract::Query<KindParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Kind, ApiError> {
    q.map(|axum::extract::Query(k)| k.kind).map_err(|e| {
        ApiError::bad_request(format!(
            "bad query string (kind is executable or debuginfo): {}",
            e.body_text()
        ))
    })
}

fn parse_build_id(s: &str) -> Result<BuildId, ApiError> {
    BuildId::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /debuginfo/v1/{build_id}[?kind=debuginfo]`: `200 {"build_id", "size"}` or `404`.
pub async fn get_debuginfo(
    State(state): State<AppState>,
    Path(build_id): Path<String>,
    q: Result<axum::extract::Query<KindParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = parse_build_id(&build_id)?;
    let kind = kind_of(q)?;
    let debuginfo = state.debuginfo.clone();
    let id2 = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let opened = debuginfo.get()?;
        Ok::<_, kiln_symbolizer::Error>(match kind {
            Kind::Executable => opened.store.size(&id2),
            Kind::Debuginfo => opened.store.debug_size(&id2),
        })
    })
    .await?
    .map_err(ApiError::internal)?;
    match found {
        Some(size) => {
            Ok(Json(serde_json::json!({ "build_id": id.as_str(), "size": size })).into_response())
        }
        None => Err(ApiError::NotFound(format!(
            "no debuginfo stored for build ID {}",
            id.as_str()
        ))),
    }
}

/// How the upload body is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Zstd,
    /// No `Content-Encoding`: sniffed from the first bytes.
    Sniff,
}

/// `PUT /debuginfo/v1/{build_id}[?kind=debuginfo]`: a zstd-compressed ELF, streamed to a temp
/// file, then decompressed into the store with a size limit.
pub async fn put_debuginfo(
    State(state): State<AppState>,
    Path(build_id): Path<String>,
    q: Result<axum::extract::Query<KindParam>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = parse_build_id(&build_id)?;
    let kind = kind_of(q)?;
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("zstd") => Encoding::Zstd,
        None | Some("") | Some("identity") => Encoding::Sniff,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Encoding {other:?}: debuginfo must be zstd-compressed"
            )));
        }
    };

    // Already stored: answer without reading the upload.
    let debuginfo = state.debuginfo.clone();
    let id2 = id.clone();
    let exists = tokio::task::spawn_blocking(move || {
        debuginfo.get().map(|o| match kind {
            Kind::Executable => o.store.contains(&id2),
            Kind::Debuginfo => o.store.debug_path(&id2).is_some(),
        })
    })
    .await?
    .map_err(ApiError::internal)?;
    if exists {
        return Ok((
            StatusCode::OK,
            Json(serde_json::json!({"build_id": id.as_str(), "stored": false})),
        )
            .into_response());
    }

    let limits = &state.config.limits;
    let tmp_dir = state.config.tmp_dir();
    let tmp = spool_body(body, tmp_dir, limits.debuginfo_max_upload_bytes).await?;

    let debuginfo = state.debuginfo.clone();
    let max_bytes = limits.debuginfo_max_bytes;
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || insert(&debuginfo, &id2, kind, tmp, encoding, max_bytes))
        .await??;
    tracing::info!(build_id = id.as_str(), ?kind, "debuginfo stored");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"build_id": id.as_str(), "stored": true})),
    )
        .into_response())
}

/// Writes the request body to a temp file, failing with 413 past `limit` bytes.
async fn spool_body(
    body: Body,
    tmp_dir: PathBuf,
    limit: u64,
) -> Result<tempfile::NamedTempFile, ApiError> {
    let tmp = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&tmp_dir)?;
        tempfile::NamedTempFile::with_prefix_in(".debuginfo-", &tmp_dir)
    })
    .await?
    .map_err(|e| ApiError::internal(format!("creating upload temp file: {e}")))?;
    let mut file = tokio::fs::File::from_std(
        tmp.as_file()
            .try_clone()
            .map_err(|e| ApiError::internal(format!("upload temp file: {e}")))?,
    );
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading upload: {e}")))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "debuginfo upload exceeds the limit of {limit} compressed bytes"
            )));
        }
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| ApiError::internal(format!("writing upload temp file: {e}")))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| ApiError::internal(format!("writing upload temp file: {e}")))?;
    Ok(tmp)
}

/// Remembers a decompression failure, so it can be told apart from the store's own I/O errors
/// (the first is the client's fault, the second the server's).
struct TrackedReader<R> {
    inner: R,
    failed: Rc<RefCell<Option<String>>>,
}

impl<R: Read> Read for TrackedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            *self.failed.borrow_mut() = Some(e.to_string());
        })
    }
}

fn insert(
    debuginfo: &DebugInfo,
    id: &BuildId,
    kind: Kind,
    tmp: tempfile::NamedTempFile,
    encoding: Encoding,
    max_bytes: u64,
) -> Result<(), ApiError> {
    let store_into = |reader: &mut dyn Read| match kind {
        Kind::Executable => opened_store_insert(debuginfo, id, reader, max_bytes, false),
        Kind::Debuginfo => opened_store_insert(debuginfo, id, reader, max_bytes, true),
    };
    let opened = debuginfo.get().map_err(ApiError::internal)?;
    let mut file = tmp.reopen().map_err(ApiError::internal)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(ApiError::internal)?;
    file.seek(SeekFrom::Start(0)).map_err(ApiError::internal)?;
    let zstd = encoding == Encoding::Zstd || (n == 4 && magic == ZSTD_MAGIC);
    let failed = Rc::new(RefCell::new(None));
    let result = if zstd {
        let decoder = zstd::stream::read::Decoder::new(std::io::BufReader::new(file))
            .map_err(|e| ApiError::bad_request(format!("body is not zstd: {e}")))?;
        let mut reader = TrackedReader {
            inner: decoder,
            failed: failed.clone(),
        };
        store_into(&mut reader)
    } else {
        let mut reader = TrackedReader {
            inner: std::io::BufReader::new(file),
            failed: failed.clone(),
        };
        store_into(&mut reader)
    };
    drop(tmp);
    match result {
        Ok(()) => {
            opened.symbolizer.invalidate(id);
            Ok(())
        }
        Err(e) => {
            if let Some(why) = failed.borrow().as_ref() {
                return Err(ApiError::bad_request(format!(
                    "debuginfo body could not be decompressed (expected zstd): {why}"
                )));
            }
            Err(match e {
                kiln_symbolizer::Error::TooLarge { limit } => ApiError::PayloadTooLarge(format!(
                    "debuginfo exceeds the limit of {limit} decompressed bytes"
                )),
                kiln_symbolizer::Error::NotElf(_)
                | kiln_symbolizer::Error::WrongBuildId { .. }
                | kiln_symbolizer::Error::BadBuildId(_) => ApiError::bad_request(e.to_string()),
                other => ApiError::internal(other),
            })
        }
    }
}

fn opened_store_insert(
    debuginfo: &DebugInfo,
    id: &BuildId,
    reader: &mut dyn Read,
    max_bytes: u64,
    debug_file: bool,
) -> Result<(), kiln_symbolizer::Error> {
    let opened = debuginfo.get()?;
    if debug_file {
        opened.store.insert_debug_from_reader(id, reader, max_bytes)
    } else {
        opened.store.insert_from_reader(id, reader, max_bytes)
    }
}
