//! Proxy hooks: wsgate asks the application's backend before it acts.
//!
//! Five events go to the backend, each only when configured: `connect` (who a new client is,
//! its initial channels, data for `hello`, when it expires), `subscribe` (channels of
//! namespaces with `subscribe = "proxy"`), `publish` (client publications into namespaces
//! with `publish_proxy`), `rpc` (a client's `{"op":"rpc"}`) and `refresh` (a connection
//! reaching its `expire_at`). The transport to the backend (HTTP in `wsgate-server`, or an
//! in-process one in the benchmark) implements [`Hooks`]; [`Proxy`] wraps it with what every
//! transport shares: which channels a hook applies to, latency and outcome metrics.
//!
//! Every call is bounded (the transport's timeout times its retry budget): a backend that
//! fails answers the client `backend_unavailable` ([`BACKEND_UNAVAILABLE`]), never a hung
//! connection.

mod wire;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

pub use wire::{
    Caller, ConnectReply, ConnectRequest, PublishReply, PublishRequest, RefreshReply,
    RefreshRequest, Rejection, Reply, RpcReply, RpcRequest, SubscribeReply, SubscribeRequest,
    parse, transport_of,
};

use crate::metrics::Metrics;
use crate::namespace::{NamespaceOptions, SubscribeRule};
use crate::protocol::ProtocolError;

/// The error code a client gets when a hook could not be asked (timeout, 5xx, malformed
/// answer, backend down).
pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
/// The error code a client gets when the backend refused (its own code rides along as
/// `backend_code`).
pub const DENIED: &str = "denied";
/// The close code of a connection whose connect hook could not be asked.
pub const CLOSE_BACKEND_UNAVAILABLE: u16 = 4503;

/// The events wsgate asks the backend about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect,
    Subscribe,
    Publish,
    Rpc,
    Refresh,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Subscribe,
        Hook::Publish,
        Hook::Rpc,
        Hook::Refresh,
    ];

    /// The name in configuration, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
            Hook::Refresh => "refresh",
        }
    }

    /// Whether asking twice is harmless, so a failed attempt may be retried. A publication
    /// or an rpc asked twice could act twice in the backend.
    pub fn idempotent(self) -> bool {
        matches!(self, Hook::Connect | Hook::Subscribe | Hook::Refresh)
    }
}

/// Why a hook gave no usable answer. Each becomes `backend_unavailable` for the client; the
/// kind labels the outcome metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the backend did not answer in time")]
    Timeout,
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    #[error("the backend's answer is malformed: {0}")]
    Malformed(String),
    #[error("the backend is unreachable: {0}")]
    Down(String),
}

impl Failure {
    /// The `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::Malformed(_) => "malformed",
            Failure::Down(_) => "down",
        }
    }
}

/// What a hook call ended with, short of an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The backend answered `{"error":{…}}`.
    #[error("{0}")]
    Rejected(Rejection),
    #[error(transparent)]
    Unavailable(#[from] Failure),
}

impl HookError {
    /// The `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            HookError::Rejected(_) => "rejected",
            HookError::Unavailable(f) => f.outcome(),
        }
    }

    /// The error frame a client gets.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            HookError::Rejected(r) => {
                let mut e = ProtocolError::new(DENIED, r.message.clone());
                e.backend_code = Some(r.code);
                e
            }
            HookError::Unavailable(f) => ProtocolError::new(BACKEND_UNAVAILABLE, f.to_string()),
        }
    }
}

/// Every outcome label a hook call can have (metrics start each at 0).
pub const OUTCOMES: [&str; 6] = ["ok", "rejected", "timeout", "status", "malformed", "down"];

/// A way to reach the backend. Each method is one hook; a transport asked about a hook it
/// has no configuration for is never called (see [`Hooks::configured`]).
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// Whether `hook` has an endpoint.
    fn configured(&self, hook: Hook) -> bool;
    async fn connect(&self, req: &ConnectRequest) -> Result<ConnectReply, HookError>;
    async fn subscribe(&self, req: &SubscribeRequest) -> Result<SubscribeReply, HookError>;
    async fn publish(&self, req: &PublishRequest) -> Result<PublishReply, HookError>;
    async fn rpc(&self, req: &RpcRequest) -> Result<RpcReply, HookError>;
    async fn refresh(&self, req: &RefreshRequest) -> Result<RefreshReply, HookError>;
}

/// Whether the subscribe hook decides a subscription to a channel of this namespace.
pub fn subscribe_proxied(ns: &NamespaceOptions) -> bool {
    ns.subscribe == SubscribeRule::Proxy
}

/// Whether a client's publication into a channel of this namespace goes through the publish
/// hook first.
pub fn publish_proxied(ns: &NamespaceOptions) -> bool {
    ns.publish_proxy
}

/// The node's hooks: the transport and the metrics every call reports into. Which channels
/// are proxied is their namespace's say ([`subscribe_proxied`], [`publish_proxied`]).
pub struct Proxy {
    backend: Arc<dyn Hooks>,
    metrics: Metrics,
}

impl Proxy {
    pub fn new(backend: Arc<dyn Hooks>, metrics: Metrics) -> Self {
        Self { backend, metrics }
    }

    pub fn has(&self, hook: Hook) -> bool {
        self.backend.configured(hook)
    }

    /// Times one call and counts its outcome.
    async fn measured<T>(
        &self,
        hook: Hook,
        call: impl Future<Output = Result<T, HookError>>,
    ) -> Result<T, HookError> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => {
                tracing::debug!(hook = hook.name(), error = %e, "hook failed");
                e.outcome()
            }
        };
        self.metrics
            .hook_called(hook.name(), outcome, started.elapsed());
        result
    }

    pub async fn connect(&self, req: &ConnectRequest) -> Result<ConnectReply, HookError> {
        self.measured(Hook::Connect, self.backend.connect(req))
            .await
    }

    pub async fn subscribe(&self, req: &SubscribeRequest) -> Result<SubscribeReply, HookError> {
        self.measured(Hook::Subscribe, self.backend.subscribe(req))
            .await
    }

    pub async fn publish(&self, req: &PublishRequest) -> Result<PublishReply, HookError> {
        self.measured(Hook::Publish, self.backend.publish(req))
            .await
    }

    pub async fn rpc(&self, req: &RpcRequest) -> Result<RpcReply, HookError> {
        self.measured(Hook::Rpc, self.backend.rpc(req)).await
    }

    pub async fn refresh(&self, req: &RefreshRequest) -> Result<RefreshReply, HookError> {
        self.measured(Hook::Refresh, self.backend.refresh(req))
            .await
    }
}

/// JSON the backend sent, kept as text (it is only copied into frames).
pub type Data = Box<RawValue>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Namespaces;

    fn namespaces() -> Namespaces {
        let proxied = NamespaceOptions {
            subscribe: SubscribeRule::Proxy,
            publish_proxy: true,
            ..Default::default()
        };
        Namespaces::new(
            NamespaceOptions::default(),
            [
                ("chat".to_string(), proxied),
                ("news".to_string(), NamespaceOptions::default()),
            ]
            .into(),
        )
        .unwrap()
    }

    struct Configured(&'static [Hook]);

    #[async_trait]
    impl Hooks for Configured {
        fn configured(&self, hook: Hook) -> bool {
            self.0.contains(&hook)
        }
        async fn connect(&self, _: &ConnectRequest) -> Result<ConnectReply, HookError> {
            unreachable!()
        }
        async fn subscribe(&self, _: &SubscribeRequest) -> Result<SubscribeReply, HookError> {
            unreachable!()
        }
        async fn publish(&self, _: &PublishRequest) -> Result<PublishReply, HookError> {
            unreachable!()
        }
        async fn rpc(&self, _: &RpcRequest) -> Result<RpcReply, HookError> {
            unreachable!()
        }
        async fn refresh(&self, _: &RefreshRequest) -> Result<RefreshReply, HookError> {
            unreachable!()
        }
    }

    #[test]
    fn the_namespace_decides_which_channels_go_to_their_hooks() {
        let ns = namespaces();
        let chat = ns.resolve("chat:room1").unwrap();
        assert!(subscribe_proxied(chat) && publish_proxied(chat));
        let news = ns.resolve("news:today").unwrap();
        assert!(!subscribe_proxied(news) && !publish_proxied(news));
        let topic = ns.resolve("topic:btc").unwrap();
        assert!(!publish_proxied(topic), "topic is never proxied");
        let only_connect = Proxy::new(Arc::new(Configured(&[Hook::Connect])), Metrics::default());
        assert!(only_connect.has(Hook::Connect) && !only_connect.has(Hook::Subscribe));
    }

    #[test]
    fn only_idempotent_hooks_may_be_retried() {
        let retried: Vec<_> = Hook::ALL.iter().filter(|h| h.idempotent()).collect();
        assert_eq!(retried, [&Hook::Connect, &Hook::Subscribe, &Hook::Refresh]);
    }

    #[test]
    fn failures_reach_the_client_as_backend_unavailable_and_refusals_with_their_code() {
        let e = HookError::Unavailable(Failure::Status(500)).to_protocol();
        assert_eq!(e.code, BACKEND_UNAVAILABLE);
        let e = HookError::Rejected(Rejection {
            code: 4403,
            message: "no".into(),
        })
        .to_protocol();
        assert_eq!(
            (e.code, e.backend_code, e.message.as_str()),
            (DENIED, Some(4403), "no")
        );
    }
}
