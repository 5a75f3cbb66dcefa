//! Channel namespaces: a channel `name:rest` takes its options from namespace `name`, a
//! channel without `:` from the default namespace.
//!
//! A node that declares no namespace treats `:` as an ordinary character: every channel
//! takes the default options, so a laptop's `team:42` works without configuration. Once one
//! namespace is declared, a channel whose prefix names none is refused (`unknown namespace`):
//! a typo in a channel name is then an error, not a silently unconfigured channel.
//!
//! `topic` is built in: upstream publications go there, clients never publish into it.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gateway::ClientPublish;

/// The namespace of upstream publications (`topic:<name>`).
pub const TOPIC_NAMESPACE: &str = "topic";

/// The error text of a channel whose namespace is not configured.
pub const UNKNOWN_NAMESPACE: &str = "unknown namespace";

/// Which channels of a namespace a client may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Channels the token's `channels` claim grants (a token without the claim, or no
    /// token in development mode, grants every channel).
    #[default]
    Token,
    /// Any channel, whatever the token says.
    Any,
    /// The backend's subscribe hook decides each subscription.
    Proxy,
}

/// The options of one namespace. A field left out takes the node-wide setting (history) or
/// the default written beside it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Messages kept per channel; `None`: the node's `history_size`.
    pub history_size: Option<usize>,
    /// How long history is kept; `None`: the node's `history_ttl_ms`.
    pub history_ttl_ms: Option<u64>,
    /// Whether `subscribe` with `since` replays history. Default on.
    pub recover: bool,
    /// Whether clients may ask a channel's presence. Default on.
    pub presence: bool,
    /// Whether subscribers get `join`/`leave` frames. Default off.
    pub join_leave: bool,
    /// Who may publish from a client connection. Default: subscribers.
    pub client_publish: ClientPublish,
    /// Who may subscribe. Default: what the token grants.
    pub subscribe: SubscribeRule,
    /// Whether a client's publication goes through the backend's publish hook first.
    pub publish_proxy: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: None,
            history_ttl_ms: None,
            recover: true,
            presence: true,
            join_leave: false,
            client_publish: ClientPublish::default(),
            subscribe: SubscribeRule::default(),
            publish_proxy: false,
        }
    }
}

impl NamespaceOptions {
    /// The built-in `topic` namespace: the default's history, never published by clients.
    fn topic(default: &NamespaceOptions) -> Self {
        Self {
            client_publish: ClientPublish::Deny,
            publish_proxy: false,
            ..default.clone()
        }
    }
}

/// A configured namespace is refused: the name is not usable as a channel prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceConfigError {
    #[error("namespace names are 1 to 64 bytes of letters, digits, '_' and '-': {0:?}")]
    BadName(String),
    #[error(
        "namespace {TOPIC_NAMESPACE:?} is built in (upstream publications); configure it with the default"
    )]
    Reserved,
}

/// A channel's namespace is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{UNKNOWN_NAMESPACE}")]
pub struct UnknownNamespace;

/// Every namespace of a node, resolved from a channel name.
#[derive(Debug, Clone)]
pub struct Namespaces {
    default: Arc<NamespaceOptions>,
    topic: Arc<NamespaceOptions>,
    named: HashMap<Box<str>, Arc<NamespaceOptions>>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new(NamespaceOptions::default(), HashMap::new())
            .expect("no named namespace to refuse")
    }
}

impl Namespaces {
    /// The default options and the named namespaces (names checked here).
    pub fn new(
        default: NamespaceOptions,
        named: HashMap<String, NamespaceOptions>,
    ) -> Result<Self, NamespaceConfigError> {
        let mut map = HashMap::with_capacity(named.len());
        for (name, options) in named {
            if name == TOPIC_NAMESPACE {
                return Err(NamespaceConfigError::Reserved);
            }
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(NamespaceConfigError::BadName(name));
            }
            map.insert(name.into_boxed_str(), Arc::new(options));
        }
        Ok(Self {
            topic: Arc::new(NamespaceOptions::topic(&default)),
            default: Arc::new(default),
            named: map,
        })
    }

    /// Whether any namespace is declared (then unknown prefixes are refused).
    pub fn is_strict(&self) -> bool {
        !self.named.is_empty()
    }

    /// The options of `channel`'s namespace.
    pub fn resolve(&self, channel: &str) -> Result<&Arc<NamespaceOptions>, UnknownNamespace> {
        let Some((prefix, _)) = channel.split_once(':') else {
            return Ok(&self.default);
        };
        if prefix == TOPIC_NAMESPACE {
            return Ok(&self.topic);
        }
        match self.named.get(prefix) {
            Some(options) => Ok(options),
            None if self.is_strict() => Err(UnknownNamespace),
            None => Ok(&self.default),
        }
    }

    /// The default namespace's options.
    pub fn default_options(&self) -> &Arc<NamespaceOptions> {
        &self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[(&str, NamespaceOptions)]) -> Namespaces {
        Namespaces::new(
            NamespaceOptions::default(),
            names
                .iter()
                .map(|(n, o)| (n.to_string(), o.clone()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn without_declared_namespaces_every_channel_takes_the_default() {
        let ns = Namespaces::default();
        assert!(!ns.is_strict());
        assert_eq!(
            **ns.resolve("team:42").unwrap(),
            NamespaceOptions::default()
        );
        assert_eq!(**ns.resolve("news").unwrap(), NamespaceOptions::default());
    }

    #[test]
    fn declared_namespaces_refuse_unknown_prefixes_but_not_plain_channels() {
        let chat = NamespaceOptions {
            join_leave: true,
            ..Default::default()
        };
        let ns = named(&[("chat", chat.clone())]);
        assert_eq!(**ns.resolve("chat:room1").unwrap(), chat);
        assert_eq!(ns.resolve("chta:room1"), Err(UnknownNamespace));
        assert_eq!(**ns.resolve("lobby").unwrap(), NamespaceOptions::default());
        assert_eq!(UnknownNamespace.to_string(), "unknown namespace");
    }

    #[test]
    fn topic_is_built_in_and_never_published_by_clients() {
        let ns = named(&[("chat", NamespaceOptions::default())]);
        assert_eq!(
            ns.resolve("topic:btc").unwrap().client_publish,
            ClientPublish::Deny
        );
        let refused = Namespaces::new(
            NamespaceOptions::default(),
            [("topic".to_string(), NamespaceOptions::default())].into(),
        );
        assert_eq!(refused.unwrap_err(), NamespaceConfigError::Reserved);
    }

    #[test]
    fn namespace_names_are_checked() {
        for bad in ["", "a b", "a:b", &"x".repeat(65)] {
            let r = Namespaces::new(
                NamespaceOptions::default(),
                [(bad.to_string(), NamespaceOptions::default())].into(),
            );
            assert!(
                matches!(r, Err(NamespaceConfigError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn options_parse_from_toml_shaped_json_and_refuse_unknown_keys() {
        let o: NamespaceOptions = serde_json::from_value(serde_json::json!({
            "history_size": 10, "join_leave": true, "client_publish": "any",
            "subscribe": "proxy", "publish_proxy": true
        }))
        .unwrap();
        assert_eq!(o.history_size, Some(10));
        assert_eq!(o.subscribe, SubscribeRule::Proxy);
        assert!(o.recover && o.presence && o.join_leave && o.publish_proxy);
        assert!(
            serde_json::from_value::<NamespaceOptions>(serde_json::json!({"histroy": 1})).is_err()
        );
    }
}
