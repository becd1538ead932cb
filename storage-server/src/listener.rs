//! The HTTP listener: the trust boundary where any TCP client reaches the server. It owns the
//! accept loop and the limits that keep idle, slow or numerous clients from locking others out
//! (`axum::serve` has none of these knobs):
//!
//! - **A connection limit below the descriptor limit.** At start the soft `RLIMIT_NOFILE` is raised
//!   to the hard one, and at most 80 % of it (or `max_connections`, if lower) may be open
//!   connections; the rest stays for the store's files. At the limit the loop stops accepting and
//!   new connections wait in the kernel's backlog until one closes, instead of the server failing
//!   with `EMFILE` for everyone, its own files included.
//! - **A header-read timeout** (hyper's): a connection must deliver a complete request head within
//!   `header_read_timeout_secs` of opening or of finishing its previous request. That closes
//!   slowloris connections (a header byte now and then) and idle keep-alive connections alike, so
//!   a slot held by an idle client is given back within that bound.
//! - **Graceful shutdown**: on `shutdown` the loop stops accepting, idle connections are closed
//!   and in-flight requests finish.
//!
//! Metrics: `kiln_server_http_connections`, `kiln_server_http_connection_limit`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::HttpLimits;

/// Share of the descriptor limit open connections may take.
const CONNECTION_SHARE_PERCENT: u64 = 80;
/// Connections allowed when the descriptor limit cannot be read.
const FALLBACK_CONNECTIONS: usize = 800;
/// Pause after a failed `accept` (out of descriptors, or the kernel's memory), so the loop does
/// not spin while connections close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The listener's metrics.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    limit: Gauge,
}

impl ConnectionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_connections",
            "Open HTTP connections",
            self.open.clone(),
        );
        registry.register(
            "http_connection_limit",
            "Most open HTTP connections (beyond it new ones wait in the backlog)",
            self.limit.clone(),
        );
    }
}

/// How many connections may be open: 80 % of the descriptor limit after raising it, or
/// `configured` when that is lower (0: no lower setting).
pub fn connection_limit(configured: usize) -> usize {
    let cap = match raise_nofile_limit() {
        Some(n) => {
            let share = n.saturating_mul(CONNECTION_SHARE_PERCENT) / 100;
            usize::try_from(share).unwrap_or(usize::MAX).max(1)
        }
        None => FALLBACK_CONNECTIONS,
    };
    if configured > 0 {
        configured.min(cap)
    } else {
        cap
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a server should use what it is allowed) and
/// returns the soft limit in force, or `None` when it cannot be read.
fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            // An infinite hard limit cannot be the soft one (the kernel caps it at nr_open).
            tracing::debug!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                error = %std::io::Error::last_os_error(),
                "could not raise the descriptor limit; keeping the soft one"
            );
        }
    }
    Some(lim.rlim_cur)
}

/// Serves `app` on `listener` until `shutdown` completes, then closes idle connections and waits
/// for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = connection_limit(limits.max_connections);
    metrics.limit.set(i64::try_from(max).unwrap_or(i64::MAX));
    let slots = Arc::new(Semaphore::new(max));
    let header_timeout = Duration::from_secs(limits.header_read_timeout_secs.max(1));
    tracing::debug!(
        max_connections = max,
        header_read_timeout_secs = header_timeout.as_secs(),
        "HTTP limits"
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first: at the limit, new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_closed) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Timeouts, resets and malformed requests: the client's problem, not the server's.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_stays_below_the_descriptor_limit() {
        let auto = connection_limit(0);
        let soft = raise_nofile_limit().unwrap();
        assert!(auto as u64 <= soft * 8 / 10, "{auto} of {soft}");
        assert!(auto >= 1);
        assert_eq!(connection_limit(3), 3, "a lower setting wins");
        assert_eq!(
            connection_limit(usize::MAX),
            auto,
            "a higher setting is capped"
        );
    }
}
