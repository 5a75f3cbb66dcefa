//! Node configuration: defaults, then a TOML file, then `WSGATE_*` environment variables,
//! then command-line flags (the binary merges those last).
//!
//! Every default is chosen for a laptop run and stated where it is defined; durations are in
//! milliseconds so tests can run heartbeats in milliseconds too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use wsgate_core::gateway::{ClientPublish, GatewayConfig};

/// A secret string: usable, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    // Serialised only when config is merged or shown; the value never leaves the process.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Development: everyone is welcome, anonymous users get a generated id.
    #[default]
    None,
    /// JWT (HS256 with `jwt_secret`, or RS256 with `jwt_public_key_file`).
    Jwt,
}

/// Where shared state lives (presence today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// Redis at `redis_url`: presence is cluster-wide.
    Redis,
}

/// How publications reach the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// Redis pub/sub, offsets and history in Redis Streams.
    Redis,
    /// NATS core pub/sub at `nats_url`; offsets and history still in Redis (`redis_url`).
    Nats,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt_secret: Option<Secret>,
    pub jwt_public_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Instance id; default `HOSTNAME`, else `wsgate`.
    pub node_id: Option<String>,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    /// When set, `/api/*` and `/connections*` require `Authorization: Bearer <api_key>`.
    pub api_key: Option<Secret>,
    /// WebSocket ping interval. Default 30 000 (seed 003).
    pub heartbeat_interval_ms: u64,
    /// Close (4008) a connection silent this long. Default 65 000 (seed 003).
    pub heartbeat_timeout_ms: u64,
    /// Largest client frame; larger ones close the connection with 1009. Default 64 KiB.
    pub max_message_size: usize,
    /// Frames a connection's backlog may hold (the kernel's send buffer being full) before it
    /// is closed as a slow consumer (4029). Default 1024.
    pub outbox_capacity: usize,
    pub client_publish: ClientPublish,
    /// Protocol errors in a row before a connection is closed with 1008. Default 10.
    pub max_protocol_errors: u32,
    /// Default 256.
    pub max_channels_per_connection: usize,
    /// Messages kept per channel for `since` recovery. Default 256.
    pub history_size: usize,
    /// How long shutdown waits for connections to close after sending 1001. Default 10 000.
    pub drain_timeout_ms: u64,
    /// How long a close frame may take to write before the socket is dropped. Default 2 000.
    pub close_grace_ms: u64,
    /// Socket read buffer per connection. Default 2 KiB: clients send small frames, and the
    /// buffer is zero-filled and kept per connection (tungstenite's 128 KiB default
    /// costs both memory and CPU; 4 KiB measured 8.0 KiB per idle connection, 2 KiB 6.1 KiB).
    pub read_buffer_size: usize,
    /// Largest HTTP API request body. Default 1 MiB.
    pub api_body_limit: usize,
    /// `memory` (default, one node) or `redis`.
    pub store: StoreKind,
    /// `memory` (default, one node), `redis` or `nats`.
    pub broker: BrokerKind,
    /// Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Prefix of every Redis key and NATS subject, so deployments can share them.
    /// Default `wsgate`.
    pub key_prefix: String,
    /// A dead node's presence entries disappear within this bound. Default 15 000.
    pub presence_ttl_ms: u64,
    /// gRPC control API listener (`wsgate.v1.WsGate`, health, reflection). Default
    /// `127.0.0.1:50051`.
    pub grpc_listen: SocketAddr,
    /// Serve the gRPC control API. Default true; `false` (`WSGATE_GRPC_ENABLED=false`)
    /// leaves the HTTP API as the only control API.
    pub grpc_enabled: bool,
    /// Cluster mode: an instance's lease lives this long without renewal (renewed every
    /// third of it); a SIGKILLed instance's upstream connections are reclaimed after it.
    /// Default 750, for the team's < 1 s fail-over target: a Redis stall longer than this
    /// makes survivors take the node's connections over (the fenced record writes make the
    /// old owner close its copies), so raise it where Redis is far or slow.
    pub lease_ttl_ms: u64,
    /// Wipe every upstream connection record at start (also env `CLEAR_ALL_ON_START=TRUE`,
    /// seed 000). Destructive; logged loudly. Default false.
    pub clear_all_on_start: bool,
    /// Base64 of 32 bytes: seals upstream secrets (header values, auth messages) in the
    /// Redis store with AES-256-GCM. Env `WSGATE_CLUSTER_KEY`.
    pub cluster_key: Option<Secret>,
    /// File holding the cluster key (base64), instead of `cluster_key`.
    pub cluster_key_file: Option<PathBuf>,
    /// Allow a Redis store without a cluster key (secrets in clear text). Dev only.
    pub allow_insecure_dev_store: bool,

    // ---- Protection (docs/operations.md, "Limits"). 0 disables a numeric limit. ----
    /// Client connections this node holds at most; past it upgrades get HTTP 503 with
    /// `Retry-After`, and `/ready` turns false from 95 % on so balancers steer away first.
    /// Default 50 000: about 300 MiB of connection state, well under a 64k fd limit.
    pub max_connections: usize,
    /// Open connections per client IP (HTTP 429). Default 1 000: generous for clients behind
    /// one NAT, small enough that one host cannot take the node.
    pub max_connections_per_ip: usize,
    /// New connections per second per client IP (HTTP 429 with `Retry-After`). Default 20,
    /// bursts of `ip_connect_burst` (default 100): a reconnecting client with backoff never
    /// comes near; a storm from one host is cut.
    pub ip_connect_rate: u32,
    pub ip_connect_burst: u32,
    /// Open connections per user (JWT `sub`). Past it the new connection is accepted and
    /// closed at once with 4029 (a browser cannot read an HTTP status of a failed upgrade,
    /// but it sees a close code). Default 100.
    pub max_connections_per_user: usize,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed (CIDRs or addresses).
    /// Default none: the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// Origins allowed to open a WebSocket from a browser (`https://app.example.com`).
    /// Requests without `Origin` are not browsers and are let in. Default none: browsers are
    /// refused (403) until their origin is listed, or `allow_any_origin` is set.
    pub allowed_origins: Vec<String>,
    /// Development only (`--allow-any-origin`): skip the Origin check. Default false, so that
    /// a forgotten setting fails closed (cross-site WebSocket hijacking).
    pub allow_any_origin: bool,
    /// Inbound frames per second per connection (`rate_limited` error frame, the frame is
    /// dropped). Default 100, bursts of `client_message_burst` (default 200).
    pub client_message_rate: u32,
    pub client_message_burst: u32,
    /// Inbound payload bytes per second per connection. Default 1 MiB/s, bursts of
    /// `client_byte_burst` (default 2 MiB; never below `max_message_size`).
    pub client_byte_rate: u32,
    pub client_byte_burst: u32,
    /// Frames in a row refused by the rate limit before the connection is closed with 4029.
    /// Default 50.
    pub rate_limit_strikes: u32,
    /// Control API requests per second per API key (per client IP without a key); HTTP 429.
    /// Default 200, bursts of `api_burst` (default 400).
    pub api_rate: u32,
    pub api_burst: u32,
    /// A connection that has not sent complete request headers within this is dropped
    /// (slowloris; a TCP connection that never upgrades). Default 10 000.
    pub handshake_timeout_ms: u64,
    /// Largest request head (request line + headers) in bytes; larger ones get 431.
    /// Default 16 KiB (tokens in a query string fit; hyper's floor is 8 KiB).
    pub max_header_size: usize,

    // ---- Transport security (docs/operations.md, "TLS"). ----
    /// PEM certificate chain for TLS on `listen` (HTTP API and WebSocket, same port). Set
    /// together with `tls_key_file`; reloaded on SIGHUP. Default none: plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: None,
            log_format: LogFormat::default(),
            auth: AuthConfig::default(),
            api_key: None,
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 65_000,
            max_message_size: 64 * 1024,
            outbox_capacity: 1024,
            client_publish: ClientPublish::default(),
            max_protocol_errors: 10,
            max_channels_per_connection: 256,
            history_size: 256,
            drain_timeout_ms: 10_000,
            close_grace_ms: 2_000,
            read_buffer_size: 2048,
            api_body_limit: 1024 * 1024,
            store: StoreKind::default(),
            broker: BrokerKind::default(),
            redis_url: "redis://127.0.0.1:6379".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            key_prefix: "wsgate".into(),
            presence_ttl_ms: 15_000,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            grpc_enabled: true,
            lease_ttl_ms: 750,
            clear_all_on_start: false,
            cluster_key: None,
            cluster_key_file: None,
            allow_insecure_dev_store: false,
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            ip_connect_rate: 20,
            ip_connect_burst: 100,
            max_connections_per_user: 100,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            client_message_rate: 100,
            client_message_burst: 200,
            client_byte_rate: 1024 * 1024,
            client_byte_burst: 2 * 1024 * 1024,
            rate_limit_strikes: 50,
            api_rate: 200,
            api_burst: 400,
            handshake_timeout_ms: 10_000,
            max_header_size: 16 * 1024,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Config {
    /// Defaults ← TOML file (if given) ← `WSGATE_*` env (nested keys with `__`,
    /// e.g. `WSGATE_AUTH__MODE=jwt`).
    pub fn figment(file: Option<&std::path::Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            f = f.merge(Toml::file(path));
        }
        // WSGATE_LOG (the log filter) and WSGATE_CONFIG (the file) are read elsewhere.
        f.merge(
            Env::prefixed("WSGATE_")
                .ignore(&["log", "config"])
                .split("__"),
        )
    }

    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "wsgate".into())
    }

    /// `clear_all_on_start`, or seed 000's `CLEAR_ALL_ON_START=TRUE` in the environment.
    pub fn clear_all_on_start(&self) -> bool {
        self.clear_all_on_start
            || std::env::var("CLEAR_ALL_ON_START")
                .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
                .unwrap_or(false)
    }

    /// The cluster key's base64 text, from `cluster_key` or `cluster_key_file`.
    pub fn cluster_key_text(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(k) = &self.cluster_key {
            return Ok(Some(k.clone()));
        }
        match &self.cluster_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading cluster key {}: {e}", path.display()))?;
                Ok(Some(Secret::new(text.trim().to_string())))
            }
            None => Ok(None),
        }
    }

    pub fn gateway(&self) -> GatewayConfig {
        let mut g = GatewayConfig::new(self.node_id().into());
        g.heartbeat_interval = Duration::from_millis(self.heartbeat_interval_ms.max(1));
        g.heartbeat_timeout = Duration::from_millis(self.heartbeat_timeout_ms.max(1));
        g.client_publish = self.client_publish;
        g.max_protocol_errors = self.max_protocol_errors.max(1);
        g.max_channels_per_connection = self.max_channels_per_connection;
        g
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt_secret.is_none()
            && self.auth.jwt_public_key_file.is_none()
        {
            anyhow::bail!("auth.mode = jwt needs auth.jwt_secret or auth.jwt_public_key_file");
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            anyhow::bail!(
                "heartbeat_timeout_ms ({}) must be longer than heartbeat_interval_ms ({})",
                self.heartbeat_timeout_ms,
                self.heartbeat_interval_ms
            );
        }
        if self.key_prefix.is_empty() {
            anyhow::bail!("key_prefix must not be empty");
        }
        if self.lease_ttl_ms < 300 {
            anyhow::bail!("lease_ttl_ms must be at least 300");
        }
        if self.store == StoreKind::Redis
            && self.cluster_key.is_none()
            && self.cluster_key_file.is_none()
            && !self.allow_insecure_dev_store
        {
            anyhow::bail!(
                "store = redis needs a cluster key to encrypt upstream secrets: set \
                 WSGATE_CLUSTER_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) \
                 or cluster_key_file, or allow_insecure_dev_store = true for development"
            );
        }
        for p in &self.trusted_proxies {
            crate::limits::parse_net(p)?;
        }
        if self.handshake_timeout_ms == 0 {
            anyhow::bail!("handshake_timeout_ms must be positive");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            anyhow::bail!("tls_cert_file and tls_key_file must be set together");
        }
        if self.presence_ttl_ms < 100 {
            anyhow::bail!("presence_ttl_ms must be at least 100");
        }
        Ok(())
    }
}
