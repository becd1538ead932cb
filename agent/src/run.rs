//! The agent's wiring: sampler → aggregator → (debuginfo uploader, shipper), plus metrics.
//!
//! Sampling and aggregation run on one dedicated thread: the ring buffer is drained at the pace
//! [`crate::sampling::DrainPacer`] sets and each window is flushed into push requests there, so
//! `/proc` reads and compression never stall the async runtime that ships and serves metrics.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::config::AgentConfig;
use crate::debuginfo::{DebugInfoConfig, DebugInfoUploader};
use crate::kallsyms::Kallsyms;
use crate::metrics::{self, AgentMetrics};
use crate::procmaps::{ProcessCache, ProcessCacheConfig};
use crate::profile::{Aggregator, AggregatorConfig};
use crate::sampling::{MIN_DRAIN_INTERVAL, Sampler, SamplerConfig};
use crate::ship::{self, Shipper, ShipperConfig, ShipperHandle};
use crate::unwind::Unwinder;

/// Checks, without loading anything, that this process may load the sampler.
pub fn check_privileges() -> Result<(), crate::sampling::SamplerError> {
    crate::sampling::check_preconditions()
}

/// Runs the agent until `shutdown` completes, then flushes the current window and what is queued
/// (within `shutdown_flush_timeout`).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // The metrics port is bound first: a busy port is an error now, naming the address, not a
    // failure reported at shutdown after the sampler ran without its /metrics.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.context("--metrics-listen")?),
        None => None,
    };
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    // Which capabilities this process holds, and what will not work without each missing one.
    crate::capabilities::CapSet::effective().log_report();
    let mut sampler = Sampler::load(SamplerConfig {
        frequency_hz: u64::from(config.frequency_hz.get()),
        stack_copy_bytes: config.stack_copy_bytes,
        ring_buffer_bytes: config.ring_buffer_bytes,
    })?;
    let kallsyms = match Kallsyms::load() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "kernel frames will be unnamed");
            Kallsyms::parse("")
        }
    };
    let aggregator = Aggregator::new(
        AggregatorConfig::from(&config),
        ProcessCache::new(ProcessCacheConfig::from(&config)),
        Arc::new(kallsyms),
        metrics.clone(),
    )
    .with_unwinder(Unwinder::new(config.unwind_table_budget_bytes).with_background_loads());
    let aggregator = if config.runtimes.python {
        aggregator.with_python(
            crate::python::Python::new(Some(sampler.take_python_map()?)).with_detector(),
        )
    } else {
        aggregator
    };
    let aggregator = if config.runtimes.java {
        aggregator.with_java(crate::java::Java::new().with_detector())
    } else {
        aggregator
    };
    let aggregator = if config.runtimes.node {
        aggregator.with_node(crate::node::Node::new().with_detector())
    } else {
        aggregator
    };
    // Pod, namespace and container names, when there is a Kubernetes API to ask.
    let (stop_kube_tx, stop_kube_rx) = tokio::sync::oneshot::channel::<()>();
    let (aggregator, kube_task) = match config.kube_config() {
        Some(kube) => {
            tracing::info!(api = %kube.api_url, node = %kube.node_name, "watching this node's pods for pod/namespace/container/workload labels");
            let pods = crate::kube::PodIndex::default();
            let task = tokio::spawn(crate::kube::watch_pods(
                kube,
                pods.clone(),
                metrics.clone(),
                async {
                    let _ = stop_kube_rx.await;
                },
            ));
            (aggregator.with_pods(pods), Some(task))
        }
        None => (aggregator, None),
    };

    let client = ship::http_client(config.request_timeout, config.auth_token.as_deref())?;
    let shipper = Shipper::spawn(
        ShipperConfig::from(&config),
        client.clone(),
        metrics.clone(),
    );
    let uploader = config
        .upload_debuginfo
        .then(|| DebugInfoUploader::spawn(DebugInfoConfig::from(&config), client, metrics.clone()));

    let (stop_metrics_tx, stop_metrics_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|listener| {
        tokio::spawn(metrics::serve_metrics_on(
            listener,
            registry.clone(),
            async {
                let _ = stop_metrics_rx.await;
            },
        ))
    });

    tracing::info!(
        server = config.server_url.as_str(),
        frequency_hz = config.frequency_hz.get(),
        window_s = config.window.as_secs_f64(),
        node = %config.node_name,
        "kiln agent running"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = {
        let stop = stop.clone();
        let handle = shipper.handle();
        let uploader = uploader.as_ref().map(|(u, _)| u.clone());
        let runtime = tokio::runtime::Handle::current();
        let window = config.window;
        let max_request_bytes = config.max_request_bytes;
        std::thread::Builder::new()
            .name("kiln-sampling".into())
            .spawn(move || {
                // The uploader spawns tokio tasks when it opens files: give this thread the runtime.
                let _guard = runtime.enter();
                let mut state = Loop {
                    sampler,
                    aggregator,
                    handle,
                    uploader,
                    metrics,
                    max_request_bytes,
                };
                state.run(window, &stop);
            })?
    };

    // Stop on shutdown, or when the sampling thread ends by itself (it should not).
    let thread_done = tokio::task::spawn_blocking(move || loop_thread.join());
    tokio::pin!(thread_done);
    tokio::select! {
        _ = shutdown => {
            stop.store(true, Ordering::Relaxed);
            thread_done.await.context("joining the sampling thread")?.map_err(|_| anyhow::anyhow!("the sampling thread panicked"))?;
        }
        r = &mut thread_done => {
            r.context("joining the sampling thread")?.map_err(|_| anyhow::anyhow!("the sampling thread panicked"))?;
            anyhow::bail!("the sampling thread stopped unexpectedly");
        }
    }

    let report = shipper.shutdown(config.shutdown_flush_timeout).await;
    if report.undelivered > 0 {
        tracing::warn!(
            undelivered = report.undelivered,
            "stopped with push requests undelivered"
        );
    }
    if let Some((uploader, task)) = uploader {
        drop(uploader);
        task.abort();
    }
    let _ = stop_kube_tx.send(());
    if let Some(task) = kube_task {
        let _ = task.await;
    }
    let _ = stop_metrics_tx.send(());
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "metrics task panicked"),
        }
    }
    tracing::info!("kiln agent stopped");
    Ok(())
}

/// Everything the sampling thread owns.
struct Loop {
    sampler: Sampler,
    aggregator: Aggregator,
    handle: ShipperHandle,
    uploader: Option<DebugInfoUploader>,
    metrics: AgentMetrics,
    max_request_bytes: usize,
}

impl Loop {
    fn run(&mut self, window: Duration, stop: &AtomicBool) {
        let mut window_end = Instant::now() + window;
        let mut drops_read = Instant::now();
        let mut pause = MIN_DRAIN_INTERVAL;
        // One drain's samples between the unwind and aggregation stages (see
        // `Aggregator::unwind_pass`); the capacity is kept from drain to drain.
        let mut unwound = Vec::new();
        loop {
            // Not past the window's end, so that windows keep their length.
            let until_flush = window_end.saturating_duration_since(Instant::now());
            std::thread::sleep(pause.min(until_flush.max(MIN_DRAIN_INTERVAL)));
            let stopping = stop.load(Ordering::Relaxed);
            let (aggregator, sampler) = (&mut self.aggregator, &mut self.sampler);
            let stats = aggregator.unwind_pass(&mut unwound, |sink| sampler.drain(|s| sink(&s)));
            for s in unwound.drain(..) {
                aggregator.aggregate(s);
            }
            pause = stats.next_drain;
            if stats.malformed > 0 {
                tracing::warn!(malformed = stats.malformed, "malformed sample records");
            }
            // A syscall per CPU: once a second is enough for a counter.
            if stopping || Instant::now() >= drops_read + Duration::from_secs(1) {
                drops_read = Instant::now();
                self.metrics
                    .record_ringbuf_drops_total(self.sampler.ring_drops());
            }
            if stopping || Instant::now() >= window_end {
                self.flush();
                crate::alloc::release_free_memory();
                window_end += window;
                // After a stall (e.g. a suspended VM), start the next window from now.
                if window_end < Instant::now() {
                    window_end = Instant::now() + window;
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Closes the window: profiles to the shipper, their objects to the uploader.
    fn flush(&mut self) {
        let profiles = self.aggregator.flush();
        if profiles.is_empty() {
            return;
        }
        if let Some(uploader) = &self.uploader {
            uploader.submit_all(profiles.iter().flat_map(|p| &p.objects));
        }
        let series = profiles.iter().map(|p| p.to_series()).collect();
        let requests = ship::push_requests(series, self.max_request_bytes);
        tracing::debug!(
            profiles = profiles.len(),
            requests = requests.len(),
            "window flushed"
        );
        for r in &requests {
            self.handle.enqueue(r);
        }
    }
}
