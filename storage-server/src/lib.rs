//! Kiln's storage server: ingests profiles (Pyroscope push API), stores them durably, symbolizes
//! at query time with uploaded debuginfo, and serves queries, metrics and the web UI.
//!
//! [`router`] builds the whole HTTP service from an [`AppState`] (tests drive it in-process);
//! [`serve`] / [`Server`] bind it to a socket.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod config;
pub mod debuginfo;
pub mod debuginfod;
pub mod dirlock;
pub mod error;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod query;
pub mod store;
pub mod tenant;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use config::{BucketConfig, Limits, ServerConfig, StoreConfig};
use debuginfo::DebugInfo;
pub use error::ApiError;
use metrics::Metrics;
use store::{LocalStore, SharedStore};

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub store: SharedStore,
    pub debuginfo: Arc<DebugInfo>,
    pub metrics: Arc<Metrics>,
    /// The data directory's lock, held while any clone of the state lives (`None` for a state
    /// over a store that does not own a directory).
    pub dir_lock: Option<Arc<dirlock::DirLock>>,
    /// Per-tenant ingest rate limits (bytes and profiles per second).
    pub ingest_rate: Arc<ingest::rate::RateLimiter>,
    /// The gate every profile-reading query goes through (see [`query::admission`]).
    pub queries: Arc<query::admission::Admission>,
    /// The HTTP listener's connection gauges (see [`listener`]).
    pub connections: listener::ConnectionMetrics,
}

impl AppState {
    /// Opens the local store under `config.data_dir` (scanning its segments: blocking).
    /// Also opens the debuginfo store now, so a bad data directory fails at startup.
    /// Takes the directory's lock first: a second server on the same directory fails here,
    /// naming the holder, before touching anything.
    pub fn open(config: ServerConfig) -> anyhow::Result<AppState> {
        let lock = dirlock::DirLock::acquire(&config.data_dir)?;
        clean_tmp_dir(&config.tmp_dir())?;
        let debuginfo = Arc::new(DebugInfo::new(&config));
        // Debuginfo shares the data directory's size budget with the profiles.
        let mut store_config = config.store.clone();
        store_config.other_bytes = Some(debuginfo.total_bytes());
        let store: SharedStore = match &config.bucket {
            None => Arc::new(LocalStore::open(
                config.segments_dir(),
                store_config,
                config.limits.max_decompressed_bytes,
            )?),
            // The WAL stays local, in the same place; blocks go to the bucket.
            Some(bucket) => Arc::new(store::BucketStore::open(
                config.segments_dir(),
                store::bucket::client::Bucket::from_url(&bucket.url).map_err(anyhow::Error::msg)?,
                bucket.clone(),
                store_config,
                config.limits.max_decompressed_bytes,
            )?),
        };
        let mut state = AppState::with_debuginfo(config, store, debuginfo);
        state.dir_lock = Some(Arc::new(lock));
        state.debuginfo.get().map_err(|e| {
            anyhow::anyhow!(
                "opening debuginfo store {}: {e}",
                state.config.debuginfo_dir().display()
            )
        })?;
        Ok(state)
    }

    /// State over any [`store::Store`] implementation.
    pub fn with_store(config: ServerConfig, store: SharedStore) -> AppState {
        let debuginfo = Arc::new(DebugInfo::new(&config));
        AppState::with_debuginfo(config, store, debuginfo)
    }

    fn with_debuginfo(
        config: ServerConfig,
        store: SharedStore,
        debuginfo: Arc<DebugInfo>,
    ) -> AppState {
        let mut metrics = Metrics::new();
        metrics.register_symbolization(debuginfo.frame_outcomes.clone());
        metrics.register_with(|r| debuginfo.register_metrics(r));
        debuginfo.start();
        let ingest_rate = Arc::new(ingest::rate::RateLimiter::new(
            config.limits.ingest_rate_bytes,
            config.limits.ingest_rate_profiles,
        ));
        let queries = Arc::new(query::admission::Admission::new(&config.queries));
        metrics.register_with(|r| queries.register(r));
        let connections = listener::ConnectionMetrics::default();
        metrics.register_with(|r| connections.register(r));
        AppState {
            ingest_rate,
            config: Arc::new(config),
            // Ingested profiles tell which debuginfo is still referenced.
            store: debuginfo::referenced::ReferencingStore::wrap(store, debuginfo.clone()),
            debuginfo,
            metrics: Arc::new(metrics),
            dir_lock: None,
            queries,
            connections,
        }
    }
}

/// Creates `dir` and removes uploads left behind by a crash: nothing is in flight at startup.
/// `GET /healthz`: `ok` while the server serves. With object storage, a second line reports the
/// upload backlog (blocks flushed here but not yet in the bucket, e.g. during an outage): the
/// server still takes pushes (they are durable in its WAL and outbox) and answers 200.
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.stats()).await {
        Ok(s) if s.upload_backlog_blocks > 0 => format!(
            "ok\nupload_backlog_blocks={} upload_backlog_bytes={} bucket_request_errors={}\n",
            s.upload_backlog_blocks, s.upload_backlog_bytes, s.bucket_request_errors
        ),
        _ => "ok".to_owned(),
    }
}

fn clean_tmp_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove stale upload");
        }
    }
    Ok(())
}

/// The whole HTTP API (see docs/API.md).
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route(
            kiln_proto::push::PUSH_PATH,
            axum::routing::post(ingest::push::push),
        )
        .route("/ingest", axum::routing::post(ingest::legacy::ingest))
        .route(
            "/pyroscope/ingest",
            axum::routing::post(ingest::legacy::ingest),
        )
        .route(
            "/debuginfo/v1/{build_id}",
            get(debuginfo::get_debuginfo)
                // Uploads are streamed to disk under their own (much larger) limit.
                .put(debuginfo::put_debuginfo)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/profile_types", get(query::labels::profile_types))
        .route("/api/v1/labels", get(query::labels::label_names))
        .route(
            "/api/v1/labels/{name}/values",
            get(query::labels::label_values),
        )
        .route("/api/v1/flamegraph", get(query::flamegraph_handler))
        .route("/api/v1/top", get(query::top_handler))
        .route("/api/v1/pprof", get(query::pprof_handler))
        .route("/api/v1/series", get(query::series::series_handler))
        .route("/api/v1/diff", get(query::diff::diff_handler))
        .route(
            "/api/v1/symbolization",
            get(query::symbolize::symbolization_handler),
        )
        // `go tool pprof http://host:port` (a bare host) fetches this path.
        .route("/debug/pprof/profile", get(query::debug_profile_handler))
        .route(
            &format!("{}/{{method}}", kiln_proto::querier::SERVICE_PATH),
            axum::routing::post(query::querier::connect_handler),
        )
        .route("/pyroscope/render", get(query::render::render_handler))
        .route(
            "/pyroscope/render-diff",
            get(query::render::render_diff_handler),
        )
        .merge(query::services::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics_handler))
        .route("/", get(web::index))
        .route("/assets/{*path}", get(web::asset))
        .fallback(|| async { ApiError::NotFound("no such endpoint (see docs/API.md)".into()) })
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost: an unauthenticated request is turned away before its body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `config.listen`, then opens the data directory: a busy port leaves nothing on disk.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        let listener = Server::bind_listener(config.listen).await?;
        Server::open(config, listener).await
    }

    /// Binds the HTTP port alone (nothing is created on disk), for callers that must know the
    /// bound address before they open the data directory (`kiln up` derives its agent's URL).
    pub async fn bind_listener(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    }

    /// Opens the data directory (creating it) and serves on an already bound `listener`.
    pub async fn open(
        config: ServerConfig,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<Server> {
        let state = tokio::task::spawn_blocking(move || AppState::open(config)).await??;
        Ok(Server { listener, state })
    }

    /// Serves `state` (opened by the caller, e.g. over a store it built) on `listener`.
    pub fn with_state(state: AppState, listener: tokio::net::TcpListener) -> Server {
        Server { listener, state }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(
            url = %format!("http://{addr}/"),
            data_dir = %self.state.config.data_dir.display(),
            "kiln server listening"
        );
        let limits = self.state.config.http.clone();
        let connections = self.state.connections.clone();
        listener::serve(
            self.listener,
            router(self.state),
            limits,
            connections,
            shutdown,
        )
        .await?;
        tracing::info!("kiln server stopped");
        Ok(())
    }
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
