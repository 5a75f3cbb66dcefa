//! `wsgate serve`: configuration, logging, signals, and the node itself.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use tracing::info;
use wsgate_server::Config;
use wsgate_server::config::LogFormat;
use wsgate_server::{gateway, lifecycle, limits, listener, seams, ws};

/// Flags override the TOML file and `WSGATE_*` variables.
#[derive(Args, Serialize, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "WSGATE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long, help = format!(
        "Listener address, e.g. 0.0.0.0:8080 (default {})",
        listener::DEFAULT_LISTEN
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Instance id (default: HOSTNAME).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// pretty or json.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// Require `Authorization: Bearer <key>` on the control API.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    #[arg(long, help = format!(
        "WebSocket ping interval (default {})",
        gateway::DEFAULT_HEARTBEAT_INTERVAL_MS
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long, help = format!(
        "Close (4008) a connection silent this long (default {})",
        gateway::DEFAULT_HEARTBEAT_TIMEOUT_MS
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_timeout_ms: Option<u64>,
    #[arg(long, help = format!(
        "How long shutdown waits for connections to close (default {})",
        lifecycle::DEFAULT_DRAIN_TIMEOUT_MS
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_timeout_ms: Option<u64>,
    #[arg(long, help = format!(
        "Frames a slow client's backlog may hold before it is closed (default {})",
        ws::DEFAULT_OUTBOX_CAPACITY
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_capacity: Option<usize>,
    #[arg(long, help = format!(
        "Bytes a client's queue may hold, answers included, before it is closed (default {})",
        ws::DEFAULT_OUTBOX_BYTES
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_bytes: Option<usize>,
    #[arg(long, help = format!(
        "Largest client frame in bytes (default {})",
        ws::DEFAULT_MAX_MESSAGE_SIZE
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_size: Option<usize>,
    /// Shared state: memory (one node) or redis.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    /// Fan-out between nodes: memory (one node), redis or nats.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    #[arg(long, env = "WSGATE_REDIS_URL", hide_env_values = true, help = format!(
        "Redis URL (default {})",
        seams::DEFAULT_REDIS_URL
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    /// `--redis-url` names a Redis Cluster (comma-separated seed nodes).
    #[arg(long, env = "WSGATE_REDIS_CLUSTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_cluster: Option<bool>,
    /// Redis broker: each channel on its own pub/sub channel, received only by the nodes
    /// with local subscribers (sharded pub/sub on a cluster).
    #[arg(long, env = "WSGATE_REDIS_PER_CHANNEL_PUBSUB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_per_channel_pubsub: Option<bool>,
    #[arg(long, env = "WSGATE_NATS_URL", hide_env_values = true, help = format!(
        "NATS URL (default {})",
        seams::DEFAULT_NATS_URL
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<String>,
    #[arg(long, help = format!(
        "Prefix of Redis keys and NATS subjects (default {})",
        seams::DEFAULT_KEY_PREFIX
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
    #[arg(long, help = format!(
        "Messages kept per channel for `since` recovery (default {})",
        seams::DEFAULT_HISTORY_SIZE
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    history_size: Option<usize>,
    #[arg(long, help = format!(
        "A dead node's presence entries disappear within this bound (default {})",
        seams::DEFAULT_PRESENCE_TTL_MS
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_ttl_ms: Option<u64>,
    /// Development only: accept WebSocket upgrades from any browser Origin.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_any_origin: bool,
    #[arg(long, help = format!(
        "Client connections this node holds at most (default {})",
        limits::DEFAULT_MAX_CONNECTIONS
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    #[arg(long, help = format!(
        "Open connections per client IP (default {}; 0: no limit)",
        limits::DEFAULT_MAX_CONNECTIONS_PER_IP
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_ip: Option<usize>,
    #[arg(long, help = format!(
        "New connections per second per client IP (default {}; 0: no limit)",
        limits::DEFAULT_IP_CONNECT_RATE
    ))]
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_connect_rate: Option<u32>,
}

pub fn main(args: ServeArgs) -> anyhow::Result<()> {
    // The gRPC API is set with `grpc_listen` / `grpc_enabled` in the file or as
    // `WSGATE_GRPC_LISTEN` / `WSGATE_GRPC_ENABLED`.
    let sources = ConfigSources {
        file: args.config.clone(),
        flags: serde_json::to_value(&args)?,
    };
    let config = sources.read()?;
    init_logging(config.log_format);
    let unknown = Config::unknown_env();
    if !unknown.is_empty() {
        // Kubernetes service links (`WSGATE_PORT=tcp://…`) look like settings; they are not.
        tracing::warn!(
            variables = %unknown.join(", "),
            "ignoring WSGATE_* environment variables that name no setting"
        );
    }
    // Every client is a file descriptor: take the hard limit, not the shell's soft default.
    crate::bench::procfs::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let node = wsgate_server::Node::new(config)?;
        // Cluster mode: never listen under a node id another live process holds.
        node.take_lease().await?;
        let listen = node.config().listener.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
        // Signals are taken from here on: whoever reads the line below may send SIGTERM.
        let shutdown = shutdown_signal();
        // SIGHUP's default would end the process: taken before anybody can send it.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        // Machines (tests, scripts) read the bound address from stdout; logs go to stderr.
        let scheme = if node.is_tls() { "https" } else { "http" };
        println!("wsgate listening on {scheme}://{}", listener.local_addr()?);
        match hup {
            Ok(hup) => drop(tokio::spawn(reload_on_sighup(node.clone(), sources, hup))),
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler: reloads disabled"),
        }
        // The gRPC address goes to the log only: stdout's single line is read by machines
        // that may close the pipe after it.
        let grpc = wsgate_server::bind_grpc(node.config()).await?;
        wsgate_server::run_with(node, listener, grpc, shutdown).await
    })
}

/// Where the settings come from, kept to read them again on SIGHUP.
struct ConfigSources {
    file: Option<PathBuf>,
    /// The command-line flags, which win over the file and the environment.
    flags: serde_json::Value,
}

impl ConfigSources {
    fn read(&self) -> anyhow::Result<Config> {
        Config::extract(
            &Config::figment(self.file.as_deref())
                .merge(figment::providers::Serialized::defaults(&self.flags)),
        )
    }
}

/// SIGHUP re-reads the TLS certificate and key (connections already open keep theirs) and
/// the config file's channel namespaces (connections and subscriptions stay). Either one
/// that fails keeps what is in use and says why.
async fn reload_on_sighup(
    node: std::sync::Arc<wsgate_server::Node>,
    sources: ConfigSources,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        match node.reload_tls() {
            Ok(true) => info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one")
            }
        }
        match sources.read().and_then(|c| node.reload_namespaces(&c)) {
            Ok(()) => info!("channel namespaces reloaded"),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "config reload failed; keeping the channel namespaces in use"
            ),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutdown requested");
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}
