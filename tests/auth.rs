//! The agent's shipper against a server started with an auth token: with the token its pushes
//! land, with a wrong one they are refused (401) and dropped, and debuginfo requests on the same
//! client carry the token too. No privileges needed: no sampling, just the HTTP path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kiln_agent::config::{AgentConfig, ServerUrl};
use kiln_agent::metrics::{AgentMetrics, PushFailure};
use kiln_agent::ship::{self, Shipper, ShipperConfig};
use kiln_proto::ProfileBuilder;
use kiln_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use kiln_storage_server::{Server, ServerConfig};

const TOKEN: &str = "agent-secret";

fn request(service: &str) -> PushRequest {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
    let f = b.function("main", "main.c");
    let l = b.symbolized_location(0, 0, &[(f, 1)]);
    b.add_sample(&[l], &[10], &[]);
    // Now: the server refuses profiles outside [now - retention, now + skew].
    b.time(kiln_storage_server::query::time::now_nanos(), 1);
    let label = |name: &str, value: &str| LabelPair {
        name: name.into(),
        value: value.into(),
    };
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                label("__name__", "process_cpu"),
                label("service_name", service),
            ],
            samples: vec![RawSample {
                // Gzipped raw profiles are accepted, like the agent's own.
                raw_profile: kiln_proto::encode_profile_gzip(&b.finish()),
                id: String::new(),
            }],
        }],
    }
}

/// Ships one request with `token`; returns the agent's metrics afterwards.
async fn ship_with(url: &str, token: Option<&str>, service: &str) -> AgentMetrics {
    let config = AgentConfig {
        server_url: ServerUrl::parse(url).unwrap(),
        auth_token: token.map(str::to_owned),
        ..Default::default()
    };
    let client = ship::http_client(Duration::from_secs(5), config.auth_token.as_deref()).unwrap();
    let metrics = AgentMetrics::unregistered();
    let shipper = Shipper::spawn(ShipperConfig::from(&config), client, metrics.clone());
    shipper.handle().enqueue(&request(service));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.push_success.get() + metrics.push_failed(PushFailure::Rejected).get() == 0 {
        assert!(std::time::Instant::now() < deadline, "push never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shipper.shutdown(Duration::from_secs(1)).await;
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sends_the_auth_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.auth_token = Some(TOKEN.into());
    let server = Server::bind(config).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let ok = ship_with(&url, Some(TOKEN), "with-token").await;
    assert_eq!(ok.push_success.get(), 1);
    let refused = ship_with(&url, Some("wrong"), "wrong-token").await;
    assert_eq!(refused.push_success.get(), 0);
    assert_eq!(refused.push_failed(PushFailure::Rejected).get(), 1);
    let refused = ship_with(&url, None, "no-token").await;
    assert_eq!(refused.push_failed(PushFailure::Rejected).get(), 1);

    // Only the push with the token was stored; debuginfo lookups carry the token as well.
    let client = ship::http_client(Duration::from_secs(5), Some(TOKEN)).unwrap();
    let values: serde_json::Value = client
        .get(format!(
            "{url}/api/v1/labels/service_name/values?from=0&until=now"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(values["values"], serde_json::json!(["with-token"]));
    let lookup = client
        .get(format!("{url}/debuginfo/v1/0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status(), 404);
    let anonymous = reqwest::Client::new()
        .get(format!("{url}/debuginfo/v1/0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        ship::http_client(Duration::from_secs(1), Some("bad\ntoken")).is_err(),
        "a token that cannot be a header value is refused up front"
    );

    let _ = stop_tx.send(());
    serving.await.unwrap().unwrap();
}
