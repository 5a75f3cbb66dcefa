//! Node configuration: defaults, then a TOML file, then `WSGATE_*` environment variables,
//! then command-line flags (the binary merges those last).
//!
//! Each subsystem owns its settings, their `DEFAULT_*` constants (with why) and their
//! validation, beside the code that uses them: [`ListenerConfig`], [`WsConfig`],
//! [`GatewaySettings`], [`LimitsConfig`], [`ClusterConfig`], [`ApiConfig`], [`GrpcConfig`],
//! [`AuthConfig`], [`EventsConfig`]. [`Config`] composes them; all but `auth` and `events`
//! are flattened, so every other key stays top-level (`max_connections`,
//! `WSGATE_MAX_CONNECTIONS`); those two are tables (`[events]`,
//! `WSGATE_EVENTS__WEBHOOK_URL`). Durations are in milliseconds so tests can run heartbeats
//! in milliseconds too.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::auth::{AuthConfig, AuthMode};
pub use crate::events::EventsConfig;
pub use crate::gateway::GatewaySettings;
pub use crate::grpc::GrpcConfig;
pub use crate::hooks::HooksConfig;
pub use crate::http::ApiConfig;
pub use crate::limits::LimitsConfig;
pub use crate::listener::ListenerConfig;
pub use crate::namespaces::NamespacesConfig;
pub use crate::seams::{BrokerKind, ClusterConfig, StoreKind};
pub use crate::secret::Secret;
pub use crate::ws::WsConfig;

/// Prefix of the environment variables that set keys of [`Config`].
const ENV_PREFIX: &str = "WSGATE_";
/// `WSGATE_*` variables that are not settings: the log filter, the config file, the CLI's
/// server address.
const READ_ELSEWHERE: [&str; 3] = ["LOG", "CONFIG", "SERVER"];

/// Every key an environment variable may set, as figment's `Env` spells it after the
/// prefix (`max_connections`, `auth__mode`): the fields of [`Config`], nested ones joined
/// with `__`.
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let key = format!("{prefix}{k}");
                if v.is_object() {
                    walk(&format!("{key}__"), v, out);
                }
                out.push(key);
            }
        }
    }
    let mut out = Vec::new();
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    walk("", &defaults, &mut out);
    out
}

/// The node id of a node without `node_id` and without `HOSTNAME`: fine alone, refused in
/// cluster mode.
pub const FALLBACK_NODE_ID: &str = "wsgate";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Instance id; default `HOSTNAME`, else [`FALLBACK_NODE_ID`] (refused in cluster
    /// mode: two such nodes would be one).
    pub node_id: Option<String>,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    /// How long shutdown waits for connections to close after sending 1001.
    /// Default [`crate::lifecycle::DEFAULT_DRAIN_TIMEOUT_MS`].
    pub drain_timeout_ms: u64,
    #[serde(flatten)]
    pub listener: ListenerConfig,
    #[serde(flatten)]
    pub ws: WsConfig,
    #[serde(flatten)]
    pub gateway: GatewaySettings,
    /// Protection (docs/operations.md, "Limits").
    #[serde(flatten)]
    pub limits: LimitsConfig,
    #[serde(flatten)]
    pub cluster: ClusterConfig,
    #[serde(flatten)]
    pub api: ApiConfig,
    #[serde(flatten)]
    pub grpc: GrpcConfig,
    /// `[hooks.<event>]`: the backend's proxy hooks (docs/backend.md).
    pub hooks: HooksConfig,
    /// `[channels]` and `[namespaces.*]` (docs/operations.md, "Channel namespaces");
    /// reloaded on SIGHUP.
    #[serde(flatten)]
    pub namespaces: NamespacesConfig,
    /// Events out to the backend (docs/events.md): the `[events]` table.
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            log_format: LogFormat::default(),
            auth: AuthConfig::default(),
            drain_timeout_ms: crate::lifecycle::DEFAULT_DRAIN_TIMEOUT_MS,
            listener: ListenerConfig::default(),
            ws: WsConfig::default(),
            gateway: GatewaySettings::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
            api: ApiConfig::default(),
            grpc: GrpcConfig::default(),
            hooks: HooksConfig::default(),
            namespaces: NamespacesConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

impl Config {
    /// Defaults ← TOML file (if given) ← `WSGATE_*` env (nested keys with `__`,
    /// e.g. `WSGATE_AUTH__MODE=jwt`).
    ///
    /// Only variables that name a setting are read: Kubernetes injects service links
    /// (`WSGATE_PORT=tcp://…`, `WSGATE_SERVICE_HOST`, …) for a Service named `wsgate`, and
    /// those must not stop the node. [`Config::unknown_env`] names the others, for one
    /// warning. A bad value of a known variable still fails; so does an unknown key in the
    /// TOML file (a file is written on purpose, so a typo there is an error).
    pub fn figment(file: Option<&std::path::Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            f = f.merge(Toml::file(path));
        }
        let known = known_keys();
        f.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(move |k| {
                    known
                        .iter()
                        .any(|known| k.as_str().eq_ignore_ascii_case(known))
                })
                .split("__"),
        )
    }

    /// The settings `figment` gives, or an error that names the key at fault. serde loses
    /// the key of a bad value inside a flattened part (`invalid type: found string "lots",
    /// expected usize`), so on error each part is read alone to find it.
    pub fn extract(figment: &Figment) -> anyhow::Result<Config> {
        figment.extract::<Config>().map_err(|e| {
            fn part<T: serde::de::DeserializeOwned>(f: &Figment) -> Option<figment::Error> {
                f.extract::<T>().err()
            }
            let named = part::<ListenerConfig>(figment)
                .or_else(|| part::<WsConfig>(figment))
                .or_else(|| part::<GatewaySettings>(figment))
                .or_else(|| part::<LimitsConfig>(figment))
                .or_else(|| part::<ClusterConfig>(figment))
                .or_else(|| part::<ApiConfig>(figment))
                .or_else(|| part::<GrpcConfig>(figment))
                // Read alone, the namespace tables refuse every other key of the file: only
                // an error of their own (a bad value) names the culprit.
                .or_else(|| {
                    part::<NamespacesConfig>(figment)
                        .filter(|e| !matches!(e.kind, figment::error::Kind::UnknownField(..)))
                });
            anyhow::anyhow!("configuration: {}", named.unwrap_or(e))
        })
    }

    /// The `WSGATE_*` variables in the environment that name no setting (and are not read
    /// elsewhere), sorted: [`Config::figment`] ignores them.
    pub fn unknown_env() -> Vec<String> {
        let known = known_keys();
        let mut unknown: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| {
                k.strip_prefix(ENV_PREFIX).is_some_and(|rest| {
                    !known.iter().any(|known| rest.eq_ignore_ascii_case(known))
                        && !READ_ELSEWHERE.iter().any(|r| rest.eq_ignore_ascii_case(r))
                })
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// The channel namespaces the file declares, checked.
    pub fn channel_namespaces(&self) -> anyhow::Result<wsgate_core::namespace::Namespaces> {
        self.namespaces.build(&self.gateway, &self.cluster)
    }

    pub fn node_id(&self) -> String {
        self.chosen_node_id()
            .unwrap_or_else(|| FALLBACK_NODE_ID.into())
    }

    /// `node_id`, else `HOSTNAME`, when either is set.
    fn chosen_node_id(&self) -> Option<String> {
        self.node_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
    }

    /// Each part's own validation, in the order an operator reads the file.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cluster.is_shared() && self.chosen_node_id().is_none() {
            anyhow::bail!(
                "cluster mode needs a unique node id: set node_id (WSGATE_NODE_ID or \
                 --node-id) or HOSTNAME (systemd does not export it); without them every \
                 node would be {FALLBACK_NODE_ID:?} and the nodes would share topics and \
                 rebuild each other's upstream connections"
            );
        }
        self.auth.validate()?;
        self.hooks.validate()?;
        self.gateway.validate()?;
        self.cluster.validate()?;
        self.limits.validate()?;
        self.listener.validate()?;
        let mut api_listeners = vec![self.listener.listen];
        api_listeners.extend(self.grpc.listen());
        self.api.validate(&api_listeners)?;
        self.channel_namespaces()?;
        self.events.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config `toml` gives, or `None` when it is refused.
    fn extract(toml: &str) -> Option<Config> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .ok()
    }

    #[test]
    fn flattened_keys_stay_top_level_and_unknown_ones_are_refused() {
        let c = extract(
            "max_connections = 7\nclose_grace_ms = 9\nredis_url = \"redis://x\"\n\
             grpc_enabled = true\n[auth]\nmode = \"jwt\"\njwt_secret = \"s\"",
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.ws.close_grace_ms, 9);
        assert_eq!(c.cluster.redis_url, "redis://x");
        assert!(c.grpc.grpc_enabled);
        assert_eq!(c.auth.mode, AuthMode::Jwt);
        assert!(extract("max_conections = 7").is_none());
        assert!(extract("[auth]\nmood = \"jwt\"").is_none());
        let keys = serde_json::to_value(Config::default()).unwrap();
        assert!(keys.get("max_connections").is_some() && keys.get("limits").is_none());
    }

    #[test]
    fn flush_lanes_is_a_top_level_key_and_at_least_one() {
        let c = extract("flush_lanes = 3").unwrap();
        assert_eq!(c.gateway.flush_lanes, 3);
        assert_eq!(c.gateway.gateway_config("n1".into()).flush_lanes, 3);
        let none = extract("flush_lanes = 0").unwrap();
        let e = none.validate().unwrap_err().to_string();
        assert!(e.contains("flush_lanes must be at least 1"), "{e}");
        assert_eq!(Config::default().gateway.flush_lanes, 1);
        assert_eq!(extract("flush_rest = 0.5").unwrap().gateway.flush_rest, 0.5);
        let e = extract("flush_rest = -1").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("flush_rest must be"), "{e}");
    }

    #[test]
    fn environment_keys_are_the_settings_and_nothing_else() {
        let known = known_keys();
        for key in [
            "max_connections",
            "auth__mode",
            "auth__jwt_secret",
            "api_key",
            "client_ip_header",
            "allow_unauthenticated_api",
            "grpc_enabled",
        ] {
            assert!(known.iter().any(|k| k == key), "{key}");
        }
        for service_link in ["port", "service_host", "port_8080_tcp_addr", "limits"] {
            assert!(!known.iter().any(|k| k == service_link), "{service_link}");
        }
    }

    #[test]
    fn cluster_mode_refuses_the_fallback_node_id_and_takes_a_chosen_one() {
        let mut c = Config::default();
        c.cluster.store = StoreKind::Redis;
        c.cluster.allow_insecure_dev_store = true;
        // HOSTNAME may be set where tests run: only `node_id` is under the test's control.
        if std::env::var("HOSTNAME").is_err() {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("cluster mode needs a unique node id"), "{e}");
        }
        c.node_id = Some("n1".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.node_id(), "n1");
        assert!(
            Config::default().validate().is_ok(),
            "one node may keep the fallback"
        );
    }
}
