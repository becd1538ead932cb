//! `kiln`: the one binary. `up` runs the server and an agent on this machine; `server` and `agent`
//! run one each (as on a Kubernetes cluster: see deploy/).

mod cli;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use cli::{AgentArgs, Cli, Command, ServerArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Agent { .. }) {
        // Before the runtime's threads exist (see kiln_agent::alloc).
        kiln_agent::alloc::tune_allocator();
    }
    tracing_subscriber::fmt()
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Check { data_dir } = &cli.command {
        return check(data_dir);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Colour codes in logs only on a terminal (never in files or pipes), and never when `NO_COLOR` is
/// set to a non-empty value (<https://no-color.org>).
fn log_colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    match command {
        Command::Server(server) => {
            kiln_storage_server::serve(server_config(&server), wait(shutdown)).await
        }
        Command::Agent {
            server_url,
            auth_token,
            agent,
        } => {
            let server_url = kiln_agent::config::ServerUrl::parse(&server_url)
                .with_context(|| format!("--server-url {server_url:?}"))?;
            let mut config = agent_config(&agent, server_url)?;
            config.auth_token = auth_token;
            kiln_agent::run(config, wait(shutdown)).await
        }
        Command::Up { server, agent } => up(server, agent, shutdown).await,
        Command::Check { .. } => anyhow::bail!("`kiln check` does not run a service"),
    }
}

/// `kiln check`: prints what is damaged in `data_dir`; 0 clean, 1 damage found, 2 cannot check.
fn check(data_dir: &Path) -> ExitCode {
    const CANNOT: u8 = 2;
    if !data_dir.is_dir() {
        eprintln!(
            "kiln check: {} is not a directory (give the server's --data-dir)",
            data_dir.display()
        );
        return ExitCode::from(CANNOT);
    }
    // Held for the whole check: no server may start on the directory meanwhile.
    let _lock = match kiln_storage_server::dirlock::DirLock::acquire(data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("kiln check: {e}");
            return ExitCode::from(CANNOT);
        }
    };
    let config = kiln_storage_server::config::ServerConfig::with_data_dir(data_dir);
    match kiln_storage_server::store::check::check(&config.segments_dir()) {
        Ok(report) => {
            print!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kiln check: {e}");
            ExitCode::from(CANNOT)
        }
    }
}

/// Server and agent in one process: the agent pushes to the server over loopback HTTP, exactly as
/// it would across a cluster.
async fn up(
    server: ServerArgs,
    agent: AgentArgs,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Nothing is created on disk until every flag is validated and every port bound, so a typo or
    // a busy port leaves no data directory behind. The agent's URL is set once the port is bound.
    let mut agent_config = agent_config(&agent, kiln_agent::config::ServerUrl::default())?;
    agent_config.auth_token = server.auth_token.clone();
    // Check what the agent needs before starting anything, so a missing privilege is the first and
    // only thing the user reads.
    kiln_agent::check_privileges().context("the agent cannot sample this machine")?;

    let listener = kiln_storage_server::Server::bind_listener(server.listen).await?;
    if let Some(addr) = agent_config.metrics_listen {
        // The agent binds it itself once running; a busy port must fail before the data
        // directory exists, so try it now (released at once: the agent binds it moments later).
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
    }
    let url = local_url(listener.local_addr()?);
    agent_config.server_url = kiln_agent::config::ServerUrl::parse(&url)
        .with_context(|| format!("the agent's URL for --listen {}", server.listen))?;
    let bound = kiln_storage_server::Server::open(server_config(&server), listener).await?;

    // The server outlives the agent so that the agent's last window, flushed on Ctrl-C, lands.
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(bound.run(async {
        let _ = server_stop_rx.await;
    }));
    let mut agent_task = tokio::spawn(kiln_agent::run(agent_config, wait(shutdown.clone())));
    println!("Kiln is up: open {url}/ (Ctrl-C to stop)");

    // The agent ends on Ctrl-C (after flushing) or on a failure; either way the server follows.
    let agent_result = tokio::select! {
        r = &mut agent_task => r,
        _ = wait(shutdown) => agent_task.await,
    };
    let _ = server_stop_tx.send(());
    let agent_result = agent_result.context("agent task panicked").and_then(|r| r);
    let server_result = server_task
        .await
        .context("server task panicked")
        .and_then(|r| r);
    agent_result.and(server_result)
}

/// The URL an agent on this machine reaches a server bound at `addr` by: an unspecified address
/// (`0.0.0.0`, `[::]`) becomes the loopback of its family, and IPv6 is bracketed.
fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

fn server_config(args: &ServerArgs) -> kiln_storage_server::config::ServerConfig {
    let mut config = kiln_storage_server::config::ServerConfig::with_data_dir(&args.data_dir);
    config.listen = args.listen;
    config.auth_token = args.auth_token.clone().filter(|t| !t.is_empty());
    config.limits.max_body_bytes = args.max_body_bytes;
    config.limits.max_decompressed_bytes = args.max_decompressed_bytes;
    config.limits.max_future_skew_secs = args.ingest_max_future_skew.as_secs();
    config.limits.ingest_rate_bytes = args.ingest_rate_bytes;
    config.limits.ingest_rate_profiles = args.ingest_rate_profiles;
    config.store.retention_age_secs = args.retention.as_secs();
    config.store.retention_bytes = args.retention_bytes;
    config.store.max_segment_bytes = args.wal_segment_bytes;
    config.store.maintenance_interval_secs = args.store_maintenance_interval.as_secs().max(1);
    config.store.verify_on_open = args.verify;
    config.bucket = args
        .storage
        .clone()
        .map(|url| kiln_storage_server::BucketConfig {
            url,
            freshness_secs: args.storage_freshness.as_secs().max(1),
            cache_bytes: args.storage_cache_bytes,
            lease_secs: args.storage_lease.as_secs().max(1),
            grace_secs: args.storage_grace.as_secs(),
        });
    config.queries.max_concurrent = args.query_concurrency;
    config.queries.max_queued = args.query_queue;
    config.queries.queue_timeout_secs = args.query_queue_timeout.as_secs().max(1);
    config.queries.max_profiles = args.query_max_profiles;
    config.queries.max_bytes = args.query_max_bytes;
    config.http.header_read_timeout_secs = args.http_header_timeout.as_secs().max(1);
    config.http.max_connections = args.max_connections;
    config.debuginfod_urls = args
        .debuginfod_urls
        .split([' ', ','])
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    config.debuginfo_shared_token = args
        .debuginfo_shared_token
        .clone()
        .filter(|t| !t.is_empty());
    config.limits.debuginfo_max_bytes = args.debuginfo_max_file_bytes;
    config.limits.debuginfo_tenant_max_bytes = args.debuginfo_tenant_max_bytes;
    config.limits.debuginfo_tenant_max_files = args.debuginfo_tenant_max_files;
    config
}

fn agent_config(
    args: &AgentArgs,
    server_url: kiln_agent::config::ServerUrl,
) -> anyhow::Result<kiln_agent::config::AgentConfig> {
    let mut config = kiln_agent::config::AgentConfig {
        server_url,
        frequency_hz: NonZeroU32::new(u32::try_from(args.frequency).unwrap_or(u32::MAX))
            .context("--frequency must be at least 1 Hz")?,
        window: args.window,
        stack_copy_bytes: args.stack_copy_bytes,
        metrics_listen: args.metrics_listen.0,
        unwind_table_budget_bytes: usize::try_from(args.unwind_table_budget)
            .context("--unwind-table-budget is too large")?,
        upload_bytes_per_minute: args.upload_budget,
        ring_buffer_bytes: args
            .ring_buffer
            .0
            .map(u32::try_from)
            .transpose()
            .context("--ring-buffer must be below 4 GiB")?,
        runtimes: args.runtimes,
        ..Default::default()
    };
    if let Some(node) = &args.node_name {
        config.node_name = node.clone();
    }
    config.kubernetes = match args.kube_api.trim() {
        "auto" => kiln_agent::config::KubeSource::Auto,
        "off" => kiln_agent::config::KubeSource::Off,
        url if url.starts_with("http://") || url.starts_with("https://") => {
            kiln_agent::config::KubeSource::Url {
                url: url.to_owned(),
                token_file: args.kube_token_file.clone(),
                ca_file: args.kube_ca_file.clone(),
            }
        }
        other => anyhow::bail!(
            "--kube-api {other:?}: expected `auto`, `off` or an http(s):// URL of the Kubernetes API server"
        ),
    };
    config.pod_labels = args
        .pod_labels
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    config.validate()?;
    Ok(config)
}

/// Flips to `true` on Ctrl-C or on SIGTERM (what Kubernetes sends).
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
            _ = term => tracing::info!("SIGTERM: stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

/// A future that completes when shutdown is signalled.
async fn wait(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_derives_a_reachable_url_from_listen() {
        let url = |s: &str| local_url(s.parse().unwrap());
        assert_eq!(url("[::1]:4040"), "http://[::1]:4040");
        assert_eq!(url("[::]:4040"), "http://[::1]:4040");
        assert_eq!(url("0.0.0.0:5000"), "http://127.0.0.1:5000");
        assert_eq!(url("192.0.2.7:80"), "http://192.0.2.7:80");
        for u in ["http://[::1]:4040", "http://localhost:4040"] {
            assert!(kiln_agent::config::ServerUrl::parse(u).is_ok(), "{u}");
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(!log_colours(false, None), "files and pipes get no escapes");
        assert!(!log_colours(true, Some("1".into())), "NO_COLOR honoured");
        assert!(
            log_colours(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
    }
}
