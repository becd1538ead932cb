//! A Kiln server on object storage, in-process, for the benches that measure the bucket backend
//! (`bucket`, and `flamegraph_vs_pprof` with `KILN_TEST_S3_ENDPOINT` set).

use std::sync::Arc;

use kiln_storage_server::store::BucketStore;
use kiln_storage_server::store::bucket::client::{Bucket, RequestCounts};
use kiln_storage_server::{AppState, BucketConfig, ServerConfig};

/// A server on a bucket prefix: its state, its router, and its own data directory (WAL, cache).
pub struct Server {
    pub state: AppState,
    pub app: axum::Router,
    _dir: tempfile::TempDir,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Opens a server with a new, empty data directory (so an empty read cache) on
/// `s3://$KILN_TEST_S3_BUCKET/{prefix}` at `endpoint` (credentials `KILN_TEST_S3_KEY` /
/// `KILN_TEST_S3_SECRET`, defaults those of scripts/ceph-rgw-up.sh). Background sync and
/// maintenance are slowed to hours: the harness flushes, uploads and refreshes itself.
pub fn open(endpoint: &str, prefix: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "s3://{}/{prefix}",
        env_or("KILN_TEST_S3_BUCKET", "profiles")
    );
    let key = env_or("KILN_TEST_S3_KEY", "testkey");
    let secret = env_or("KILN_TEST_S3_SECRET", "testsecret");
    let bucket = Bucket::from_url_with(
        &url,
        [
            ("aws_endpoint_url", endpoint),
            ("aws_access_key_id", key.as_str()),
            ("aws_secret_access_key", secret.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
        ],
    )
    .expect("bucket");
    let mut config = ServerConfig::with_data_dir(dir.path());
    let bucket_config = BucketConfig {
        url,
        freshness_secs: 3 * 3600,
        ..BucketConfig::default()
    };
    config.store.maintenance_interval_secs = 3600;
    let store = BucketStore::open(
        config.segments_dir(),
        bucket,
        bucket_config.clone(),
        config.store.clone(),
        config.limits.max_decompressed_bytes,
    )
    .expect("bucket store");
    config.bucket = Some(bucket_config);
    let state = AppState::with_store(config, Arc::new(store));
    let app = kiln_storage_server::router(state.clone());
    Server {
        state,
        app,
        _dir: dir,
    }
}

/// The object-store requests `servers` made so far, summed.
pub fn requests(servers: &[Server]) -> RequestCounts {
    let mut sum = RequestCounts::default();
    for s in servers {
        let r = s.state.store.stats().bucket_requests;
        sum.get += r.get;
        sum.put += r.put;
        sum.list += r.list;
        sum.delete += r.delete;
    }
    sum
}
