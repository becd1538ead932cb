//! The object store the `s3_*` tests run against: a Ceph RADOS gateway (a real distributed object
//! store) at `KILN_TEST_S3_ENDPOINT`, which scripts/test.sh starts with scripts/ceph-rgw-up.sh.
//! These tests are `#[ignore]`d so a plain `cargo test` shows them as ignored; scripts/test.sh runs
//! them with `-- --ignored s3_`, and there a missing endpoint fails them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kiln_storage_server::store::bucket::client::Bucket;

/// Why the `s3_*` tests are ignored by default.
pub const NEEDS_S3: &str = "needs KILN_TEST_S3_ENDPOINT (scripts/test.sh starts a Ceph RGW)";

/// The endpoint, e.g. `http://127.0.0.1:7480`. Panics without one: these tests never pass vacuously.
pub fn endpoint() -> String {
    std::env::var("KILN_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("KILN_TEST_S3_ENDPOINT is not set: start scripts/ceph-rgw-up.sh DIR PORT and export it (scripts/test.sh does)")
    })
}

/// The bucket (created by scripts/ceph-rgw-up.sh).
pub fn bucket_name() -> String {
    std::env::var("KILN_TEST_S3_BUCKET").unwrap_or_else(|_| "profiles".into())
}

/// `AWS_*` settings for the test endpoint, as a child `kiln server` gets them.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        (
            "AWS_ACCESS_KEY_ID",
            std::env::var("KILN_TEST_S3_KEY").unwrap_or_else(|_| "testkey".into()),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("KILN_TEST_S3_SECRET").unwrap_or_else(|_| "testsecret".into()),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// A prefix no other test (nor an earlier run against the same gateway) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test/{name}-{}-{nanos}", std::process::id())
}

/// The prefix for a store made in `dir`: the same for every reopen of `dir` in this process.
pub fn prefix_for_dir(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().replace('.', "");
    format!("test/dir-{}-{name}", std::process::id())
}

/// The test bucket under `prefix`.
pub fn bucket(prefix: &str) -> Bucket {
    let env = aws_env();
    Bucket::from_url_with(
        &format!("s3://{}/{prefix}", bucket_name()),
        env.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .unwrap()
}
