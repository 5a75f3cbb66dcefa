//! The durable description of one upstream connection: [`UpstreamRecord`].
//!
//! A record holds everything a node needs to re-establish the connection from scratch
//! (URL, headers, auth, subscriptions, policies, publish topic) plus who owns it and the
//! state last seen. It lives in the [`UpstreamRecords`](super::UpstreamRecords) store so that, in cluster mode, a
//! surviving node can reclaim the connections of a dead one.
//!
//! Records contain secrets (header values, auth messages and signing secrets, the TLS
//! client key). The memory store keeps them in
//! process; a shared store must encrypt them (cluster mode's job). Nothing here is ever
//! logged or shown by `/connections`: views show subscription keys and header names only.
//!
//! Messages are kept as the exact text sent on the wire (the API turns JSON values into
//! their JSON text before they get here).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One connection record, keyed by `id`. Its secrets are in `spec`, whose `Debug` hides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    /// Connection id (`<hex>-<node>`).
    pub id: String,
    /// The node that holds the connection.
    pub owner: String,
    /// Last state seen by the owner (`connecting`, `connected`, `reconnecting`,
    /// `circuit_open`, `failed`, `closed`).
    pub state: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// The connection's settings.
    pub spec: UpstreamSpec,
}

/// What to connect to and how: the Connect operation's input.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSpec {
    pub url: String,
    /// Handshake headers (values may be secrets).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub auth: Option<UpstreamAuth>,
    /// `wss://` settings beyond the platform's roots (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Tracked subscriptions, in replay order. Kept current by the manager.
    #[serde(default)]
    pub subscriptions: Vec<UpstreamSubscription>,
    #[serde(default = "yes")]
    pub auto_reconnect: bool,
    #[serde(default)]
    pub reconnect: ReconnectPolicy,
    /// `None`: the circuit breaker's defaults.
    #[serde(default)]
    pub breaker: Option<BreakerPolicy>,
    /// `None`: the client's default heartbeat (WebSocket ping every 30 s, 65 s timeout).
    #[serde(default)]
    pub heartbeat: Option<HeartbeatPolicy>,
    #[serde(default)]
    pub correlation: CorrelationMode,
    #[serde(default)]
    pub offline: OfflineMode,
    /// Broker topic every received message is published to (`None`: not publishing).
    /// Kept current by StartPublish / StopPublish.
    #[serde(default)]
    pub publish_topic: Option<String>,
}

fn yes() -> bool {
    true
}

impl UpstreamSpec {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: Vec::new(),
            auth: None,
            tls: None,
            subscriptions: Vec::new(),
            auto_reconnect: true,
            reconnect: ReconnectPolicy::default(),
            breaker: None,
            heartbeat: None,
            correlation: CorrelationMode::None,
            offline: OfflineMode::Reject,
            publish_topic: None,
        }
    }
}

impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values and auth messages may be secrets; the URL's query string too.
        f.debug_struct("UpstreamSpec")
            .field("url", &redact_url(&self.url))
            .field("headers", &wsgate_client::header_names(&self.headers))
            .field("auth", &self.auth.is_some())
            .field("tls", &self.tls.is_some())
            .field(
                "subscriptions",
                &self
                    .subscriptions
                    .iter()
                    .map(|s| &s.key)
                    .collect::<Vec<_>>(),
            )
            .field("auto_reconnect", &self.auto_reconnect)
            .field("reconnect", &self.reconnect)
            .field("breaker", &self.breaker)
            .field("heartbeat", &self.heartbeat)
            .field("correlation", &self.correlation)
            .field("offline", &self.offline)
            .field("publish_topic", &self.publish_topic)
            .finish()
    }
}

/// A URL without the parts that commonly carry secrets (the client's own, re-exported).
pub use wsgate_client::redact_url;

/// The authentication step run on every (re)connect before anything else.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamAuth {
    /// Sent in order (may be secrets).
    pub messages: Vec<String>,
    /// Reply that must arrive before the connection counts as ready.
    #[serde(default)]
    pub expect: Option<AuthExpect>,
    /// How long to wait for `expect`. Default 10 s.
    #[serde(default = "default_auth_timeout")]
    pub timeout_ms: u64,
    /// Computes `{{signature}}`; the messages' placeholders are rendered afresh per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<UpstreamSign>,
    /// Re-send the (freshly rendered) messages on the open connection at this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_ms: Option<u64>,
}

/// HMAC signing of a login (`auth.sign`): the client's [`Signer`](wsgate_client::Signer),
/// stored as it is. `secret` is a secret: sealed at rest, never logged or shown. Its
/// `payload` may hold `{{timestamp_ms}}`, `{{timestamp_s}}`, `{{nonce}}`.
pub use wsgate_client::Signer as UpstreamSign;
pub use wsgate_client::{SignAlgorithm, SignEncoding};

/// `wss://` settings: extra trusted CAs and a client certificate (mutual TLS), all PEM: the
/// client's [`TlsOptions`](wsgate_client::TlsOptions), stored as they are. The key is a
/// secret (sealed at rest, never shown).
pub use wsgate_client::TlsOptions as UpstreamTls;

fn default_auth_timeout() -> u64 {
    10_000
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("messages", &self.messages.len())
            .field("expect", &self.expect.is_some())
            .field("timeout_ms", &self.timeout_ms)
            .field("sign", &self.sign)
            .field("refresh_ms", &self.refresh_ms)
            .finish()
    }
}

/// How the expected auth reply is recognised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum AuthExpect {
    /// The reply's text contains this string.
    Contains(String),
    /// The reply is a JSON object holding every top-level field of this JSON object
    /// (kept as JSON text).
    JsonFields(String),
    /// The reply is a JSON object whose `field` equals `equals` (JSON text of the value):
    /// the API's `{"field": …, "equals": …}`.
    Field { field: String, equals: String },
}

/// One tracked subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSubscription {
    /// Bookkeeping key (shown by `/connections`; the messages are not).
    pub key: String,
    pub message: String,
    #[serde(default)]
    pub unsubscribe: Option<String>,
}

/// Reconnect delays: exponential from `initial_ms`, doubling to `max_ms`, with subtractive
/// jitter, giving up after `max_attempts` retries (`None`: never).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconnectPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub max_attempts: Option<u32>,
    pub jitter: f64,
    /// How long a connection must stay up (authenticated and subscribed) before the
    /// backoff resets (`None`: `max_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_stable_ms: Option<u64>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 60_000,
            max_attempts: Some(10),
            jitter: 0.2,
            min_stable_ms: None,
        }
    }
}

/// Circuit breaker: opens after `failure_threshold` consecutive failed attempts (0
/// disables it) for `cooldown_ms`, then lets one probe through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub cooldown_ms: u64,
}

/// Liveness check: ping every `interval_ms`; silence for `timeout_ms` forces a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPolicy {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// How SendAsync matches a reply to its request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum CorrelationMode {
    /// SendAsync is unavailable.
    #[default]
    None,
    /// 16-byte UUID prefix on binary frames (seed 000).
    UuidPrefix,
    /// A top-level JSON field on text frames.
    JsonField {
        #[serde(default = "default_id_field")]
        field: String,
    },
}

fn default_id_field() -> String {
    "id".into()
}

/// What Send does while the socket is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineMode {
    /// Fail with `WebSocket is not connected` (seed 000).
    #[default]
    Reject,
    /// Queue (bounded) and flush after auth and subscription replay.
    Outbox,
}

/// A spec for `url` holding every kind of secret a record carries: a header value, an auth
/// message, a signing secret and a TLS key, each with `s3cr3t` in it (the signed payload
/// names `realtime`, the key starts with `KEY`). For the tests that check secrets never show.
#[cfg(any(test, feature = "test-support"))]
pub fn spec_with_secrets(url: &str) -> UpstreamSpec {
    let mut spec = UpstreamSpec::new(url);
    spec.headers
        .push(("authorization".into(), "Bearer s3cr3t".into()));
    spec.auth = Some(UpstreamAuth {
        messages: vec!["login s3cr3t".into()],
        expect: None,
        timeout_ms: 5,
        sign: Some(UpstreamSign {
            algorithm: SignAlgorithm::HmacSha256,
            secret: "s3cr3t".into(),
            payload: "{{timestamp_ms}}GET/realtime".into(),
            encoding: SignEncoding::Hex,
        }),
        refresh_ms: Some(60_000),
    });
    spec.tls = Some(UpstreamTls {
        ca_pem: None,
        client_cert_pem: Some("CERT".into()),
        client_key_pem: Some("KEY s3cr3t".into()),
    });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact_url("wss://user:pw@host:9/feed?token=abc#x"),
            "wss://host:9/feed"
        );
        assert_eq!(redact_url("ws://h/"), "ws://h/");
        assert_eq!(redact_url("ws://h?k=v"), "ws://h");
    }

    #[test]
    fn debug_hides_secrets() {
        let spec = spec_with_secrets("ws://h/?key=s3cr3t");
        let dbg = format!("{spec:?}");
        assert!(
            dbg.contains("authorization") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }
}
