//! Connect as a command: what a transport decoded, and the one place its defaults are
//! filled in to make an [`UpstreamSpec`].

use std::time::Duration;

use crate::seams::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    UpstreamAuth, UpstreamSign, UpstreamSpec, UpstreamSubscription, UpstreamTls,
};

use super::rules::{DEFAULT_AUTH_TIMEOUT_MS, DEFAULT_CONNECT_WAIT};

/// Connect: open an upstream connection. `None` fields take their defaults.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// `ws://` or `wss://`.
    pub url: String,
    /// Handshake headers (values are secrets: never logged or shown).
    pub headers: Vec<(String, String)>,
    pub auth: Option<ConnectAuth>,
    /// `wss://` extras: CA bundle, client certificate (the key is a secret).
    pub tls: Option<UpstreamTls>,
    pub subscriptions: Vec<Subscribe>,
    /// Default true.
    pub auto_reconnect: Option<bool>,
    pub reconnect: Option<ReconnectPolicy>,
    pub breaker: Option<BreakerPolicy>,
    pub heartbeat: Option<HeartbeatPolicy>,
    pub correlation: Option<CorrelationMode>,
    pub offline: Option<OfflineMode>,
    pub publish_topic: Option<String>,
    /// How long Connect waits for the first connection (0: not at all). Default
    /// [`DEFAULT_CONNECT_WAIT`].
    pub wait_ms: Option<u64>,
}

/// The auth step of a Connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectAuth {
    pub messages: Vec<String>,
    pub expect: Option<AuthExpect>,
    /// Default [`DEFAULT_AUTH_TIMEOUT_MS`].
    pub timeout_ms: Option<u64>,
    /// Signed logins: `{{signature}}` and the other placeholders, rendered per attempt.
    pub sign: Option<UpstreamSign>,
    /// Re-send the auth messages (freshly signed) on the open connection at this period.
    pub refresh_ms: Option<u64>,
}

/// A tracked subscription as a caller gives it.
#[derive(Debug, Clone, Default)]
pub struct Subscribe {
    /// Without a key, the subscribe message's text is the key.
    pub key: Option<String>,
    pub message: String,
    pub unsubscribe: Option<String>,
}

impl From<Subscribe> for UpstreamSubscription {
    fn from(s: Subscribe) -> Self {
        UpstreamSubscription {
            key: s.key.unwrap_or_else(|| s.message.clone()),
            message: s.message,
            unsubscribe: s.unsubscribe,
        }
    }
}

impl Connect {
    /// The spec to store and run, and how long to wait for the first connection.
    pub(super) fn into_spec(self) -> (UpstreamSpec, Duration) {
        let spec = UpstreamSpec {
            url: self.url,
            headers: self.headers,
            auth: self.auth.map(|a| UpstreamAuth {
                messages: a.messages,
                expect: a.expect,
                timeout_ms: a.timeout_ms.unwrap_or(DEFAULT_AUTH_TIMEOUT_MS),
                sign: a.sign,
                refresh_ms: a.refresh_ms,
            }),
            tls: self.tls,
            subscriptions: self.subscriptions.into_iter().map(Into::into).collect(),
            auto_reconnect: self.auto_reconnect.unwrap_or(true),
            reconnect: self.reconnect.unwrap_or_default(),
            breaker: self.breaker,
            heartbeat: self.heartbeat,
            correlation: self.correlation.unwrap_or_default(),
            offline: self.offline.unwrap_or_default(),
            publish_topic: self.publish_topic,
        };
        let wait = self
            .wait_ms
            .map_or(DEFAULT_CONNECT_WAIT, Duration::from_millis);
        (spec, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cmd = Connect {
            url: "ws://h/".into(),
            auth: Some(ConnectAuth {
                messages: vec!["login".into()],
                ..Default::default()
            }),
            subscriptions: vec![Subscribe {
                message: "sub btc".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (spec, wait) = cmd.into_spec();
        assert_eq!(wait, Duration::from_secs(10));
        assert_eq!(spec.auth.unwrap().timeout_ms, 10_000);
        assert!(spec.auto_reconnect);
        assert_eq!(spec.subscriptions[0].key, "sub btc");
        assert_eq!(spec.correlation, CorrelationMode::default());
        let (_, wait) = Connect {
            wait_ms: Some(0),
            ..Default::default()
        }
        .into_spec();
        assert_eq!(wait, Duration::ZERO);
    }
}
