//! Connect as a command: what a transport decoded, and the one place its defaults are
//! filled in to make an [`UpstreamSpec`].

use std::time::Duration;

use crate::seams::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    UpstreamAuth, UpstreamSign, UpstreamSpec, UpstreamSubscription, UpstreamTls,
};

use super::rules::{DEFAULT_AUTH_TIMEOUT_MS, DEFAULT_CONNECT_WAIT};
use super::{ControlError, ErrorCode};

/// The hosts upstream connections may go to (`upstream_allowed_hosts`): exact names or
/// addresses, or `*.example.com` for any subdomain. Empty: any host. Without a list a
/// caller of the API chooses where the node connects (and with which headers), so a node
/// whose API is reachable by anyone but its backends should have one.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHosts(Vec<String>);

/// Message of a Connect to a host outside the allow-list (HTTP 403), before the host.
pub const HOST_NOT_ALLOWED: &str = "upstream host not allowed: ";

impl UpstreamHosts {
    pub fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        Self(
            hosts
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    /// `Ok` when `url`'s host is allowed (or no list is set).
    pub fn check(&self, url: &str) -> Result<(), ControlError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let host = url
            .parse::<tungstenite::http::Uri>()
            .ok()
            .and_then(|u| {
                u.host()
                    .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
            })
            .ok_or_else(|| ControlError::invalid("url has no host"))?;
        let allowed = self
            .0
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => *pattern == host,
            });
        match allowed {
            true => Ok(()),
            false => Err(ControlError::new(
                ErrorCode::Forbidden,
                format!("{HOST_NOT_ALLOWED}{host}"),
            )),
        }
    }
}

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
    fn upstream_hosts_match_exactly_or_by_subdomain() {
        let any = UpstreamHosts::default();
        assert!(any.check("ws://10.0.0.1:6379/").is_ok());
        let list =
            UpstreamHosts::new(["Feed.example.com".into(), "*.corp.io".into(), "::1".into()]);
        for ok in [
            "wss://feed.example.com/ws",
            "ws://FEED.example.com:9000/",
            "ws://a.corp.io/",
            "ws://a.b.corp.io/",
            "ws://[::1]:8080/",
        ] {
            assert!(list.check(ok).is_ok(), "{ok}");
        }
        for refused in [
            "ws://169.254.169.254/latest",
            "ws://example.com/",
            "ws://corp.io/",
            "ws://evilcorp.io/",
            "ws://feed.example.com.evil.io/",
        ] {
            let e = list.check(refused).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{refused}");
            assert!(e.message.starts_with("upstream host not allowed: "), "{e}");
        }
        assert_eq!(
            list.check("not a url").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

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
