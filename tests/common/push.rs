//! Pushing numbered profiles to a `kiln server` and reading back which ones it holds: profile `i`
//! has one stack whose leaf is the unique function `f{i}` worth `i + 1`, so a top-functions query
//! shows each profile stored once (value `i + 1`), twice (`2 (i + 1)`) or not at all.

#![allow(dead_code)]

use std::collections::BTreeMap;

use kiln_proto::{ProfileBuilder, encode_profile_gzip};
use serde_json::Value;

/// Protobuf length-delimited field.
fn field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A Pyroscope `PushRequest` with one series and one gzipped pprof, encoded by hand (the root
/// package has no protobuf dependency of its own).
pub fn push_body(service: &str, gz: &[u8]) -> Vec<u8> {
    let mut series = Vec::new();
    for (name, value) in [("__name__", "process_cpu"), ("service_name", service)] {
        let mut pair = Vec::new();
        field(&mut pair, 1, name.as_bytes());
        field(&mut pair, 2, value.as_bytes());
        field(&mut series, 1, &pair);
    }
    let mut sample = Vec::new();
    field(&mut sample, 1, gz);
    field(&mut series, 2, &sample);
    let mut req = Vec::new();
    field(&mut req, 1, &series);
    req
}

/// Profile `i`: one stack whose leaf is the unique function `f{i}`, worth `i + 1`.
pub fn profile(i: u64) -> Vec<u8> {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    let main = b.function("main", "main.c");
    let leaf = b.function(&format!("f{i}"), "leaf.c");
    let l_main = b.symbolized_location(0, 0x10, &[(main, 1)]);
    let l_leaf = b.symbolized_location(0, 0x20 + i, &[(leaf, 2)]);
    let v = i as i64 + 1;
    b.add_sample(&[l_leaf, l_main], &[v, v * 1000], &[]);
    encode_profile_gzip(&b.finish())
}

/// Pushes profile `i` to the server on `port`; whether it was acknowledged (2xx).
pub fn push(client: &reqwest::blocking::Client, port: u16, i: u64) -> bool {
    let url = format!("http://127.0.0.1:{port}/push.v1.PusherService/Push");
    client
        .post(&url)
        .header("content-type", "application/proto")
        .body(push_body(&format!("svc{}", i % 3), &profile(i)))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// Self value of every `f{i}` function the server on `port` holds; `None` if it does not answer.
pub fn try_stored(port: u16) -> Option<BTreeMap<u64, i64>> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/top?from=0&until=now&profile_type=samples:count&limit=100000"
    );
    let v: Value = reqwest::blocking::get(url).ok()?.json().ok()?;
    Some(
        v["functions"]
            .as_array()?
            .iter()
            .filter_map(|f| {
                let i = f["name"].as_str()?.strip_prefix('f')?.parse().ok()?;
                Some((i, f["self"].as_i64()?))
            })
            .collect(),
    )
}

/// [`try_stored`], panicking if the server does not answer.
pub fn stored(port: u16) -> BTreeMap<u64, i64> {
    try_stored(port).expect("server answers /api/v1/top")
}

/// What [`stored`] shows when exactly `acked` are stored, each once.
pub fn expected(acked: &[u64]) -> BTreeMap<u64, i64> {
    acked.iter().map(|&i| (i, i as i64 + 1)).collect()
}
