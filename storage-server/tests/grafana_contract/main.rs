//! Contract tests for the three Pyroscope clients that query Kiln: Grafana's Pyroscope data source
//! ([`grafana`]), Grafana's Profiles Drilldown app ([`drilldown`]) and `profilecli`
//! ([`profilecli`]). Each module replays the exact requests its client sends — method order,
//! fields, encodings (binary proto or JSON Connect) and headers, each with where in the client's
//! public source it comes from — against one real Kiln server on a loopback port, and asserts what
//! the client needs from the answers.
//!
//! The server ([`fixture`]) holds agent-like profiles pushed through the push API and, when the
//! SDK venv of scripts/sdk-setup.sh is there, real uploads of PyPI's `pyroscope-io` 1.x with
//! `pyroscope-otel`'s span processor (tests/sdk/python/spans.py): two OpenTelemetry root spans
//! whose samples carry `span_id` labels. Without the venv the span checks are skipped with a
//! message, unless `KILN_REQUIRE_SDKS=1` (scripts/test.sh), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod drilldown;
mod fixture;
mod grafana;
mod profilecli;
#[path = "../support/mod.rs"]
mod support;
