//! Channel namespaces as the config file spells them: `[channels]` for the default
//! namespace, `[namespaces.<name>]` for each named one (docs/operations.md, "Channel
//! namespaces"), checked and turned into the core's [`Namespaces`].
//!
//! Every key is optional. A named namespace's missing keys take the built-in defaults (not
//! `[channels]`'s): what a namespace does is read from its own table.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use wsgate_core::gateway::ClientPublish;
use wsgate_core::namespace::{NamespaceOptions, Namespaces, SubscribeRule};

use crate::gateway::GatewaySettings;
use crate::seams::ClusterConfig;

/// One namespace's table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceSettings {
    /// Messages kept per channel; default the node's `history_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// How long a channel's history outlives its last publication (at least
    /// `channel_idle_ttl_ms`); default the node's `history_ttl_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl_ms: Option<u64>,
    /// `subscribe` with `since` replays history. Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recover: Option<bool>,
    /// Presence is kept and may be asked. Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    /// Subscribers get `join`/`leave`. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    /// `deny`, `subscribed` (default) or `any`. In `[channels]`, default the top-level
    /// `client_publish`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<ClientPublish>,
    /// `token` (default), `any` or `proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRule>,
    /// `true` is `subscribe = "proxy"` (the spelling); contradicting `subscribe` is
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_proxy: Option<bool>,
    /// Client publications go through the backend's publish hook. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_proxy: Option<bool>,
}

/// `[channels]` and `[namespaces.*]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespacesConfig {
    /// The default namespace: channels without `:` (and every channel while no namespace
    /// is declared).
    pub channels: NamespaceSettings,
    /// Named namespaces: once one is declared, a channel `x:…` whose `x` is none of them is
    /// refused (`unknown namespace`).
    pub namespaces: BTreeMap<String, NamespaceSettings>,
}

impl NamespaceSettings {
    /// The options, on `base` (the defaults for this table).
    fn options(
        &self,
        base: NamespaceOptions,
        cluster: &ClusterConfig,
    ) -> anyhow::Result<NamespaceOptions> {
        let subscribe = match (self.subscribe, self.subscribe_proxy) {
            (Some(rule), Some(proxy)) if (rule == SubscribeRule::Proxy) != proxy => {
                anyhow::bail!(
                    "subscribe = {rule:?} and subscribe_proxy = {proxy} contradict each other"
                )
            }
            (Some(rule), _) => rule,
            (None, Some(true)) => SubscribeRule::Proxy,
            (None, _) => base.subscribe,
        };
        Ok(NamespaceOptions {
            history_size: self.history_size.or(base.history_size),
            // Like the node's own: never shorter than the idle bound of channels.
            history_ttl_ms: self
                .history_ttl_ms
                .map(|ms| ms.max(cluster.channel_idle_ttl_ms))
                .or(base.history_ttl_ms),
            recover: self.recover.unwrap_or(base.recover),
            presence: self.presence.unwrap_or(base.presence),
            join_leave: self.join_leave.unwrap_or(base.join_leave),
            client_publish: self.client_publish.unwrap_or(base.client_publish),
            subscribe,
            publish_proxy: self.publish_proxy.unwrap_or(base.publish_proxy),
        })
    }
}

impl NamespacesConfig {
    /// The namespaces, or why the tables are refused (naming the table).
    pub fn build(
        &self,
        gateway: &GatewaySettings,
        cluster: &ClusterConfig,
    ) -> anyhow::Result<Namespaces> {
        let base = NamespaceOptions {
            client_publish: gateway.client_publish,
            ..NamespaceOptions::default()
        };
        let default = self
            .channels
            .options(base, cluster)
            .map_err(|e| anyhow::anyhow!("[channels]: {e}"))?;
        let mut named = HashMap::with_capacity(self.namespaces.len());
        for (name, table) in &self.namespaces {
            let options = table
                .options(NamespaceOptions::default(), cluster)
                .map_err(|e| anyhow::anyhow!("[namespaces.{name}]: {e}"))?;
            named.insert(name.clone(), options);
        }
        Namespaces::new(default, named).map_err(|e| anyhow::anyhow!("[namespaces]: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> anyhow::Result<Namespaces> {
        use figment::providers::{Format, Toml};
        let c: NamespacesConfig = figment::Figment::from(Toml::string(toml_text)).extract()?;
        c.build(&GatewaySettings::default(), &ClusterConfig::default())
    }

    #[test]
    fn tables_become_namespaces() {
        let ns = build(
            "[channels]\nrecover = false\n[namespaces.chat]\njoin_leave = true\n\
             subscribe_proxy = true\nhistory_ttl_ms = 1",
        )
        .unwrap();
        assert!(!ns.resolve("lobby").unwrap().recover);
        let chat = ns.resolve("chat:1").unwrap();
        assert!(
            chat.join_leave && chat.recover,
            "named tables start from the defaults"
        );
        assert_eq!(chat.subscribe, SubscribeRule::Proxy);
        // Never shorter than the idle bound of channels.
        let idle = ClusterConfig::default().channel_idle_ttl_ms;
        assert_eq!(chat.history_ttl_ms, Some(idle));
        assert!(ns.resolve("chta:1").is_err());
    }

    #[test]
    fn the_top_level_client_publish_is_the_default_namespaces() {
        let c = NamespacesConfig::default();
        let g = GatewaySettings {
            client_publish: ClientPublish::Any,
            ..GatewaySettings::default()
        };
        let ns = c.build(&g, &ClusterConfig::default()).unwrap();
        assert_eq!(ns.resolve("x").unwrap().client_publish, ClientPublish::Any);
    }

    #[test]
    fn bad_tables_are_refused_with_their_name() {
        let e = build("[namespaces.chat]\nsubscribe = \"any\"\nsubscribe_proxy = true")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[namespaces.chat]") && e.contains("contradict"),
            "{e}"
        );
        let e = build("[namespaces.\"a b\"]\n").unwrap_err().to_string();
        assert!(e.contains("namespace names"), "{e}");
        assert!(build("[namespaces.topic]\n").is_err());
        assert!(build("[namespaces.chat]\nhistroy_size = 1").is_err());
    }
}
