//! `GET`/`PUT /debuginfo/v1/{build_id}`: what the caller's tenant can see, and uploads into its
//! store (or, with the privileged token, into the shared one).
//!
//! A `GET` answers from the caller's tenant store and the shared store only: a build ID another
//! tenant uploaded is a `404`, exactly like one never seen. A `PUT` is spooled to a temporary file
//! (compressed, under `debuginfo_max_upload_bytes`), then decompressed into the store, which
//! verifies it while it streams (see [`kiln_symbolizer::DebugInfoStore`]).

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::rc::Rc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kiln_symbolizer::{BuildId, FileKind, Stored};

use super::{DebugInfo, InsertError, Owner};
use crate::AppState;
use crate::error::ApiError;
use crate::tenant::Tenant;

pub(super) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The header carrying `--debuginfo-shared-token` on an upload to the shared store.
pub const SHARED_TOKEN_HEADER: &str = "X-Kiln-Shared-Token";

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

impl From<Kind> for FileKind {
    fn from(k: Kind) -> FileKind {
        match k {
            Kind::Executable => FileKind::Executable,
            Kind::Debuginfo => FileKind::Debuginfo,
        }
    }
}

/// Which store an upload goes to (`?scope=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The caller's tenant (the default).
    #[default]
    Tenant,
    /// The shared store: needs `--debuginfo-shared-token`.
    Shared,
}

/// Query parameters of the debuginfo endpoints.
#[derive(Debug, Default, serde::Deserialize)]
pub struct KindParam {
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub scope: Scope,
}

type QueryResult =
    Result<axum::extract::Query<KindParam>, axum::extract::rejection::QueryRejection>;

fn params_of(q: QueryResult) -> Result<KindParam, ApiError> {
    q.map(|axum::extract::Query(k)| k).map_err(|e| {
        ApiError::bad_request(format!(
            "bad query string (kind is executable or debuginfo, scope is tenant or shared): {}",
            e.body_text()
        ))
    })
}

fn parse_build_id(s: &str) -> Result<BuildId, ApiError> {
    BuildId::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /debuginfo/v1/{build_id}[?kind=debuginfo]`: `200 {"build_id", "size", "scope"}` when the
/// caller's tenant or the shared store holds it, else `404`.
pub async fn get_debuginfo(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(build_id): Path<String>,
    q: QueryResult,
) -> Result<Response, ApiError> {
    let id = parse_build_id(&build_id)?;
    let kind = params_of(q)?.kind;
    let debuginfo = state.debuginfo.clone();
    let id2 = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let opened = debuginfo.get()?;
        Ok::<_, kiln_symbolizer::Error>(opened.size(&tenant, &id2, kind.into()))
    })
    .await?
    .map_err(ApiError::internal)?;
    match found {
        Some((size, owner)) => {
            let scope = match owner {
                Owner::Shared => "shared",
                Owner::Tenant(_) => "tenant",
            };
            Ok(
                Json(serde_json::json!({ "build_id": id.as_str(), "size": size, "scope": scope }))
                    .into_response(),
            )
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

/// Counts a refused upload by `reason` and passes the error on.
fn refuse(debuginfo: &DebugInfo, reason: &str, e: ApiError) -> ApiError {
    debuginfo.metrics.refused(reason);
    e
}

/// `PUT /debuginfo/v1/{build_id}[?kind=debuginfo][&scope=shared]`: a zstd-compressed ELF, spooled
/// to a temp file, then decompressed into the store under the per-file limit and the quotas.
/// `201` stored (or replaced something carrying less), `200` the same bytes were stored already,
/// `409` a different file is stored and this one carries no more.
pub async fn put_debuginfo(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(build_id): Path<String>,
    q: QueryResult,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let di = &state.debuginfo;
    let id = parse_build_id(&build_id).map_err(|e| refuse(di, "bad_request", e))?;
    let params = params_of(q).map_err(|e| refuse(di, "bad_request", e))?;
    let owner = match params.scope {
        Scope::Tenant => Owner::Tenant(tenant),
        Scope::Shared => {
            check_shared_token(&state, &headers).map_err(|e| refuse(di, "unauthorized", e))?;
            Owner::Shared
        }
    };
    let kind = FileKind::from(params.kind);
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("zstd") => Encoding::Zstd,
        None | Some("") | Some("identity") => Encoding::Sniff,
        Some(other) => {
            return Err(refuse(
                di,
                "bad_request",
                ApiError::UnsupportedMediaType(format!(
                    "unsupported Content-Encoding {other:?}: debuginfo must be zstd-compressed"
                )),
            ));
        }
    };

    let limits = &state.config.limits;
    let early = super::early::EarlyCheck::new(&id, encoding == Encoding::Zstd);
    let tmp = spool_body(
        body,
        state.config.tmp_dir(),
        limits.debuginfo_max_upload_bytes,
        early,
    )
    .await
    .map_err(|(reason, e)| {
        if reason == "wrong_build_id" {
            tracing::info!(build_id = id.as_str(), error = %e, "debuginfo upload refused while streaming");
        }
        refuse(di, reason, e)
    })?;

    let debuginfo = state.debuginfo.clone();
    let id2 = id.clone();
    let owner2 = owner.clone();
    let stored = tokio::task::spawn_blocking(move || {
        insert(&debuginfo, &owner2, &id2, kind, tmp, encoding)
            .map_err(|(reason, e)| refuse(&debuginfo, reason, e))
    })
    .await??;
    tracing::info!(
        build_id = id.as_str(),
        ?kind,
        ?owner,
        ?stored,
        "debuginfo upload"
    );
    let (status, json) = match stored {
        Stored::New { .. } => (
            StatusCode::CREATED,
            serde_json::json!({"build_id": id.as_str(), "stored": true}),
        ),
        Stored::Replaced { .. } => (
            StatusCode::CREATED,
            serde_json::json!({"build_id": id.as_str(), "stored": true, "replaced": true}),
        ),
        Stored::Unchanged { .. } => (
            StatusCode::OK,
            serde_json::json!({"build_id": id.as_str(), "stored": false}),
        ),
    };
    Ok((status, Json(json)).into_response())
}

/// Uploads to the shared store need `--debuginfo-shared-token` in [`SHARED_TOKEN_HEADER`].
fn check_shared_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = state.config.debuginfo_shared_token.as_deref() else {
        return Err(ApiError::Unauthorized(
            "uploads to the shared debuginfo store are disabled (no --debuginfo-shared-token)"
                .into(),
        ));
    };
    let got = headers
        .get(SHARED_TOKEN_HEADER)
        .map(|v| v.as_bytes().trim_ascii())
        .unwrap_or_default();
    if crate::auth::constant_time_eq(got, want.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(format!(
            "scope=shared needs the shared-store token in {SHARED_TOKEN_HEADER}"
        )))
    }
}

/// Writes the request body to a temp file, failing with 413 past `limit` bytes, and with 400 as
/// soon as `early` sees a build ID other than the URL's (the rest of the body is not read: the
/// connection is closed after the answer). On failure: the metric reason and the error.
async fn spool_body(
    body: Body,
    tmp_dir: PathBuf,
    limit: u64,
    mut early: super::early::EarlyCheck,
) -> Result<tempfile::NamedTempFile, (&'static str, ApiError)> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ("error", ApiError::internal(format!("{what}: {e}")))
    };
    let tmp = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&tmp_dir)?;
        tempfile::NamedTempFile::with_prefix_in(".debuginfo-", &tmp_dir)
    })
    .await
    .map_err(|e| internal("creating upload temp file", &e))?
    .map_err(|e| internal("creating upload temp file", &e))?;
    let mut file = tokio::fs::File::from_std(
        tmp.as_file()
            .try_clone()
            .map_err(|e| internal("upload temp file", &e))?,
    );
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (
                "bad_request",
                ApiError::bad_request(format!("reading upload: {e}")),
            )
        })?;
        total += chunk.len() as u64;
        if total > limit {
            return Err((
                "too_large",
                ApiError::PayloadTooLarge(format!(
                    "debuginfo upload exceeds the limit of {limit} compressed bytes"
                )),
            ));
        }
        early
            .feed(&chunk)
            .map_err(|message| ("wrong_build_id", ApiError::bad_request(message)))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| internal("writing upload temp file", &e))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| internal("writing upload temp file", &e))?;
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

/// Decompresses the spooled upload into `owner`'s store. On refusal: the metric reason and the
/// error for the client.
fn insert(
    debuginfo: &DebugInfo,
    owner: &Owner,
    id: &BuildId,
    kind: FileKind,
    tmp: tempfile::NamedTempFile,
    encoding: Encoding,
) -> Result<Stored, (&'static str, ApiError)> {
    let internal = |e: std::io::Error| ("error", ApiError::internal(e));
    let mut file = tmp.reopen().map_err(internal)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(internal)?;
    file.seek(SeekFrom::Start(0)).map_err(internal)?;
    let zstd = encoding == Encoding::Zstd || (n == 4 && magic == ZSTD_MAGIC);
    let failed = Rc::new(RefCell::new(None));
    let result = if zstd {
        let decoder =
            zstd::stream::read::Decoder::new(std::io::BufReader::new(file)).map_err(|e| {
                (
                    "bad_body",
                    ApiError::bad_request(format!("body is not zstd: {e}")),
                )
            })?;
        let mut reader = TrackedReader {
            inner: decoder,
            failed: failed.clone(),
        };
        debuginfo.insert(owner, kind, id, &mut reader)
    } else {
        let mut reader = TrackedReader {
            inner: std::io::BufReader::new(file),
            failed: failed.clone(),
        };
        debuginfo.insert(owner, kind, id, &mut reader)
    };
    drop(tmp);
    let e = match result {
        Ok(stored) => return Ok(stored),
        Err(e) => e,
    };
    if let Some(why) = failed.borrow().as_ref() {
        return Err((
            "bad_body",
            ApiError::bad_request(format!(
                "debuginfo body could not be decompressed (expected zstd): {why}"
            )),
        ));
    }
    use kiln_symbolizer::Error as E;
    Err(match e {
        InsertError::Files { .. } | InsertError::Bytes { .. } => {
            ("quota", ApiError::InsufficientStorage(e.to_string()))
        }
        InsertError::Store(E::TooLarge { limit }) => (
            "too_large",
            ApiError::PayloadTooLarge(format!(
                "debuginfo exceeds the limit of {limit} decompressed bytes"
            )),
        ),
        InsertError::Store(e @ E::Padding(_)) => {
            ("padding", ApiError::PayloadTooLarge(e.to_string()))
        }
        InsertError::Store(e @ E::Conflict(_)) => ("conflict", ApiError::Conflict(e.to_string())),
        InsertError::Store(e @ (E::WrongBuildId { .. } | E::BadBuildId(_))) => {
            ("wrong_build_id", ApiError::bad_request(e.to_string()))
        }
        InsertError::Store(e @ E::NotElf(_)) => ("not_elf", ApiError::bad_request(e.to_string())),
        InsertError::Store(other) => ("error", ApiError::internal(other)),
    })
}
