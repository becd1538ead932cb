//! [`Bucket`]: a blocking, bounded view of the object store (through the `object_store` crate)
//! under one prefix. Every request has a timeout and is counted; the store's engine threads call
//! these from outside any async context, so requests run on a small runtime of their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

/// One request's deadline. Blocks are at most `max_block_bytes` (128 MiB by default); at a modest
/// 10 MB/s that is well under this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// LIST pages fetched for one listing at most: 1,000 keys a page (S3), so 100 k objects.
const MAX_LIST_KEYS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("object {0} not found")]
    NotFound(String),
    /// A conditional create found the key taken.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    #[error("object store request on {key} failed: {reason}")]
    Request { key: String, reason: String },
}

/// Request counters (for `/metrics`).
#[derive(Default, Debug)]
pub struct Requests {
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub errors: AtomicU64,
}

/// Requests made so far, by kind (a [`Requests`] snapshot; on `/metrics` as
/// `kiln_server_object_store_requests_total{op=…}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
}

impl RequestCounts {
    /// `(op label, count)` pairs.
    pub fn by_op(&self) -> [(&'static str, u64); 4] {
        [
            ("get", self.get),
            ("put", self.put),
            ("list", self.list),
            ("delete", self.delete),
        ]
    }
}

impl Requests {
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            get: self.get.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
        }
    }
}

/// The object store under `prefix`.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `None` only while dropping (see the `Drop` impl).
    rt: Option<tokio::runtime::Runtime>,
    pub requests: Requests,
}

impl Drop for Bucket {
    /// Stops the runtime without waiting for it: a plain drop blocks, which tokio forbids when the
    /// last owner of the store is dropped inside an async context (a server shutting down, a test).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Bucket {
    /// `url` is `s3://bucket/prefix`; endpoint and credentials come from the standard `AWS_*`
    /// environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP` …), or, without `AWS_ACCESS_KEY_ID`, from the shared
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`; profile
    /// `AWS_PROFILE`, else `default`) when it exists.
    pub fn from_url(url: &str) -> Result<Bucket, String> {
        Bucket::from_url_with(url, [])
    }

    /// [`Bucket::from_url`] with settings that override the environment's, named like the
    /// variables (`aws_endpoint_url`, `aws_allow_http` …): tests point at their own endpoint
    /// without touching the process environment.
    pub fn from_url_with<'a>(
        url: &str,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Bucket, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--storage {url:?}: expected s3://BUCKET[/PREFIX]"))?;
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(format!("--storage {url:?}: no bucket name"));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(name)
            // Give up on one request well before the caller's timeout, so an outage shows up as
            // failed requests (and a growing backlog) rather than as stuck threads.
            .with_retry(object_store::RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(15),
                ..object_store::RetryConfig::default()
            });
        let overrides: Vec<(&str, &str)> = overrides.into_iter().collect();
        let key_given = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
            || overrides
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("aws_access_key_id"));
        if !key_given && let Some((path, creds)) = credentials_file()? {
            tracing::info!(path = %path.display(), "object store credentials from the shared credentials file");
            builder = builder
                .with_access_key_id(creds.key_id)
                .with_secret_access_key(creds.secret);
            if let Some(token) = creds.token {
                builder = builder.with_token(token);
            }
        }
        for (key, value) in overrides {
            let key = key
                .to_ascii_lowercase()
                .parse::<object_store::aws::AmazonS3ConfigKey>()
                .map_err(|e| format!("object store setting {key}: {e}"))?;
            builder = builder.with_config(key, value);
        }
        let store = builder
            .build()
            .map_err(|e| format!("--storage {url:?}: {e}"))?;
        Bucket::new(Arc::new(store), prefix)
    }

    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Bucket, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-bucket")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the object store runtime: {e}"))?;
        let prefix = prefix.trim_matches('/');
        Ok(Bucket {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            rt: Some(rt),
            requests: Requests::default(),
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{key}", self.prefix))
    }

    /// Runs `fut` on the bucket's runtime with the request timeout, from any thread.
    fn run<T>(
        &self,
        key: &str,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T, BucketError>
    where
        T: Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(BucketError::Request {
                key: key.to_owned(),
                reason: "the object store client is shutting down".into(),
            });
        };
        let handle = rt.spawn(async move { tokio::time::timeout(REQUEST_TIMEOUT, fut).await });
        let out = match futures::executor::block_on(handle) {
            Ok(Ok(r)) => r.map_err(|e| match e {
                object_store::Error::NotFound { .. } => BucketError::NotFound(key.to_owned()),
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. } => {
                    BucketError::AlreadyExists(key.to_owned())
                }
                e => BucketError::Request {
                    key: key.to_owned(),
                    reason: e.to_string(),
                },
            }),
            Ok(Err(_)) => Err(BucketError::Request {
                key: key.to_owned(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            }),
            Err(e) => Err(BucketError::Request {
                key: key.to_owned(),
                reason: format!("request task failed: {e}"),
            }),
        };
        if matches!(out, Err(BucketError::Request { .. })) {
            self.requests.errors.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    pub fn get(&self, key: &str) -> Result<Bytes, BucketError> {
        self.requests.get.fetch_add(1, Ordering::Relaxed);
        let (store, path) = (self.store.clone(), self.path(key));
        self.run(key, async move { store.get(&path).await?.bytes().await })
    }

    /// Writes `body` at `key`, replacing what is there.
    pub fn put(&self, key: &str, body: Bytes) -> Result<(), BucketError> {
        self.put_opts(key, body, PutMode::Overwrite)
    }

    /// Writes `body` at `key` only if nothing is there (`If-None-Match: *`), else
    /// [`BucketError::AlreadyExists`].
    pub fn create(&self, key: &str, body: Bytes) -> Result<(), BucketError> {
        self.put_opts(key, body, PutMode::Create)
    }

    fn put_opts(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), BucketError> {
        self.requests.put.fetch_add(1, Ordering::Relaxed);
        let (store, path) = (self.store.clone(), self.path(key));
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.run(key, async move {
            store
                .put_opts(&path, PutPayload::from_bytes(body), opts)
                .await
                .map(|_| ())
        })
    }

    /// Deletes `key`; a missing key is fine.
    pub fn delete(&self, key: &str) -> Result<(), BucketError> {
        self.requests.delete.fetch_add(1, Ordering::Relaxed);
        let (store, path) = (self.store.clone(), self.path(key));
        match self.run(key, async move { store.delete(&path).await }) {
            Err(BucketError::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    /// Keys (relative to the prefix) under `dir/` with their last-modified time (ns since the
    /// epoch, the object store's clock).
    pub fn list_with_times(&self, dir: &str) -> Result<Vec<(String, i64)>, BucketError> {
        self.requests.list.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        let under = self.path(dir);
        let strip = self.prefix.clone();
        let metas = self.run(dir, async move {
            store
                .list(Some(&under))
                .map_ok(|m| {
                    let nanos = m.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX);
                    (m.location.to_string(), nanos)
                })
                .take(MAX_LIST_KEYS)
                .try_collect::<Vec<(String, i64)>>()
                .await
        })?;
        Ok(metas
            .into_iter()
            .filter_map(|(p, t)| Some((p.strip_prefix(&strip)?.to_owned(), t)))
            .collect())
    }

    /// Keys (relative to the prefix) under `dir/`, greater than `dir/after` when given.
    pub fn list(&self, dir: &str, after: Option<&str>) -> Result<Vec<String>, BucketError> {
        self.requests.list.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        let under = self.path(dir);
        let offset = after.map(|a| self.path(&format!("{dir}/{a}")));
        let strip = self.prefix.clone();
        let paths = self.run(dir, async move {
            let stream = match &offset {
                Some(o) => store.list_with_offset(Some(&under), o),
                None => store.list(Some(&under)),
            };
            stream
                .map_ok(|m| m.location.to_string())
                .take(MAX_LIST_KEYS)
                .try_collect::<Vec<String>>()
                .await
        })?;
        Ok(paths
            .into_iter()
            .filter_map(|p| p.strip_prefix(&strip).map(str::to_owned))
            .collect())
    }
}
/// Keys from an AWS shared credentials file.
#[derive(Debug, PartialEq, Eq)]
struct FileCredentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// The shared credentials file's keys for the current profile, if the file exists. An existing
/// file without the profile, or a profile without both keys, is an error: the operator meant to
/// use it, and a silent fallback to other sources would hide the mistake.
fn credentials_file() -> Result<Option<(std::path::PathBuf, FileCredentials)>, String> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => std::path::Path::new(&home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    parse_credentials(&text, &profile)
        .map(|c| Some((path.clone(), c)))
        .ok_or_else(|| {
            format!(
                "{}: no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
                path.display()
            )
        })
}

/// The INI format of `~/.aws/credentials`: `[profile]` sections of `key = value` lines.
fn parse_credentials(text: &str, profile: &str) -> Option<FileCredentials> {
    let mut in_profile = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(FileCredentials {
        key_id: key_id?,
        secret: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_credentials_file_gives_the_named_profiles_keys() {
        let text = "\
# comment
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key=secret/default

[ceph]
aws_access_key_id = testkey
aws_secret_access_key = testsecret
aws_session_token = tok
region = us-east-1
";
        assert_eq!(
            parse_credentials(text, "default"),
            Some(FileCredentials {
                key_id: "AKIDEFAULT".into(),
                secret: "secret/default".into(),
                token: None,
            })
        );
        assert_eq!(
            parse_credentials(text, "ceph"),
            Some(FileCredentials {
                key_id: "testkey".into(),
                secret: "testsecret".into(),
                token: Some("tok".into()),
            })
        );
        assert_eq!(parse_credentials(text, "prod"), None, "no such profile");
        assert_eq!(
            parse_credentials("[default]\naws_access_key_id = x\n", "default"),
            None,
            "a key without its secret"
        );
    }
}
