//! `[hooks.<event>]`: where each proxy hook goes and how long it may take.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wsgate_core::hooks::Hook;

/// A hook's answer must come within this long (per attempt): a backend on the same network
/// answers in milliseconds, and a client waits for it (a connect waits before `hello`).
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 1_000;
/// Attempts after the first for idempotent hooks (connect, subscribe, refresh): one retry
/// rides over a backend instance restarting behind its balancer.
pub const DEFAULT_HOOK_RETRIES: u32 = 1;
/// Retries are capped so that one client never holds a connection task for long.
pub const MAX_HOOK_RETRIES: u32 = 5;

/// One hook's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookEndpoint {
    /// `http://…` URL the JSON request is POSTed to.
    pub url: String,
    /// Per attempt. Default [`DEFAULT_HOOK_TIMEOUT_MS`].
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Attempts after a timeout, a 5xx or a refused connection, for connect, subscribe and
    /// refresh only (publish and rpc are not idempotent: they are asked once).
    /// Default [`DEFAULT_HOOK_RETRIES`] for those, 0 for the others.
    pub retries: Option<u32>,
    /// Headers sent with every request of this hook (a credential for the backend, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Connect only: headers of the client's upgrade request passed on in `headers` (a
    /// session cookie, say), by name.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

fn default_timeout() -> u64 {
    DEFAULT_HOOK_TIMEOUT_MS
}

impl HookEndpoint {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Attempts `hook` gets in all.
    pub fn attempts(&self, hook: Hook) -> u32 {
        if hook.idempotent() {
            1 + self.retries.unwrap_or(DEFAULT_HOOK_RETRIES)
        } else {
            1
        }
    }
}

/// `[hooks]`: an endpoint per event; an event without one is not proxied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    pub connect: Option<HookEndpoint>,
    pub subscribe: Option<HookEndpoint>,
    pub publish: Option<HookEndpoint>,
    pub rpc: Option<HookEndpoint>,
    pub refresh: Option<HookEndpoint>,
}

impl HooksConfig {
    pub fn endpoint(&self, hook: Hook) -> Option<&HookEndpoint> {
        match hook {
            Hook::Connect => self.connect.as_ref(),
            Hook::Subscribe => self.subscribe.as_ref(),
            Hook::Publish => self.publish.as_ref(),
            Hook::Rpc => self.rpc.as_ref(),
            Hook::Refresh => self.refresh.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        Hook::ALL.iter().all(|h| self.endpoint(*h).is_none())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for hook in Hook::ALL {
            let Some(ep) = self.endpoint(hook) else {
                continue;
            };
            let name = hook.name();
            let url = reqwest::Url::parse(&ep.url)
                .map_err(|e| anyhow::anyhow!("hooks.{name}.url {:?}: {e}", ep.url))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                anyhow::bail!(
                    "hooks.{name}.url must be an http:// or https:// URL: {:?}",
                    ep.url
                );
            }
            if ep.timeout_ms == 0 {
                anyhow::bail!("hooks.{name}.timeout_ms must be above 0");
            }
            let retries = ep.retries.unwrap_or(0);
            if retries > MAX_HOOK_RETRIES {
                anyhow::bail!("hooks.{name}.retries is at most {MAX_HOOK_RETRIES}");
            }
            if retries > 0 && !hook.idempotent() {
                anyhow::bail!(
                    "hooks.{name}.retries must be 0: a {name} asked twice could act twice"
                );
            }
            if !ep.forward_headers.is_empty() && hook != Hook::Connect {
                anyhow::bail!(
                    "hooks.{name}.forward_headers: only the connect hook has a client request to forward from"
                );
            }
            for (k, v) in &ep.headers {
                reqwest::header::HeaderName::try_from(k.as_str())
                    .map_err(|e| anyhow::anyhow!("hooks.{name}.headers {k:?}: {e}"))?;
                reqwest::header::HeaderValue::try_from(v.as_str())
                    .map_err(|e| anyhow::anyhow!("hooks.{name}.headers {k:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> HookEndpoint {
        HookEndpoint {
            url: url.into(),
            timeout_ms: DEFAULT_HOOK_TIMEOUT_MS,
            retries: None,
            headers: BTreeMap::new(),
            forward_headers: Vec::new(),
        }
    }

    fn refused(config: HooksConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn only_idempotent_hooks_are_retried_by_default_or_at_all() {
        let ep = endpoint("http://127.0.0.1:9000/x");
        assert_eq!(ep.attempts(Hook::Connect), 1 + DEFAULT_HOOK_RETRIES);
        assert_eq!(ep.attempts(Hook::Publish), 1);
        assert_eq!(ep.attempts(Hook::Rpc), 1);
        let e = refused(HooksConfig {
            publish: Some(HookEndpoint {
                retries: Some(1),
                ..ep.clone()
            }),
            ..Default::default()
        });
        assert!(e.contains("hooks.publish.retries must be 0"), "{e}");
        let e = refused(HooksConfig {
            connect: Some(HookEndpoint {
                retries: Some(MAX_HOOK_RETRIES + 1),
                ..ep
            }),
            ..Default::default()
        });
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn bad_urls_timeouts_and_headers_are_refused_by_name() {
        let e = refused(HooksConfig {
            rpc: Some(endpoint("ftp://backend/rpc")),
            ..Default::default()
        });
        assert!(
            e.contains("hooks.rpc.url must be an http:// or https:// URL"),
            "{e}"
        );
        let e = refused(HooksConfig {
            subscribe: Some(endpoint("not a url")),
            ..Default::default()
        });
        assert!(e.contains("hooks.subscribe.url"), "{e}");
        let mut zero = endpoint("http://b/connect");
        zero.timeout_ms = 0;
        let e = refused(HooksConfig {
            connect: Some(zero),
            ..Default::default()
        });
        assert!(e.contains("timeout_ms"), "{e}");
        let mut forwarding = endpoint("http://b/publish");
        forwarding.forward_headers = vec!["cookie".into()];
        let e = refused(HooksConfig {
            publish: Some(forwarding),
            ..Default::default()
        });
        assert!(e.contains("only the connect hook"), "{e}");
        let mut header = endpoint("http://b/connect");
        header.headers.insert("bad header".into(), "x".into());
        assert!(
            refused(HooksConfig {
                connect: Some(header),
                ..Default::default()
            })
            .contains("hooks.connect.headers")
        );
        assert!(HooksConfig::default().validate().is_ok());
    }
}
