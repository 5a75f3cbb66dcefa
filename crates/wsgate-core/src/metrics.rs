//! The Prometheus series of a node.
//!
//! Names follow seed 003 where it names them (`websocket_connections_total`,
//! `websocket_disconnections_total`, `websocket_heartbeat_failures_total`); the rest is
//! what an operator needs at 3 AM. Every handle is resolved once and shared, so the hot path
//! is an atomic add. Label values are `&'static str`: no allocation per increment.
//!
//! Every labelled family starts with each known label value at 0 (Prometheus's guidance):
//! a healthy node exports `wsgate_recoveries_total{reason="epoch_changed"} 0`, so alerts and
//! dashboard panels over `rate()` and `increase()` have a series before the first event.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookOutcomeLabel {
    pub hook: &'static str,
    pub outcome: &'static str,
}

/// A histogram per label set, all with the buckets of [`hook_latency_buckets`].
pub type HookLatency = Family<HookLabel, Histogram, fn() -> Histogram>;

/// 1 ms to ~16 s: a backend on the same host at the bottom, a hook's timeout times its
/// retries at the top.
fn hook_latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every state an upstream connection can be in, as the `state` label spells it.
pub const UPSTREAM_STATES: [&str; 6] = [
    "connecting",
    "connected",
    "reconnecting",
    "circuit_open",
    "failed",
    "closed",
];

/// Why an upstream connection or attempt failed, as the `reason` label spells it
/// ([`crate::upstream::telemetry`] maps the client's errors onto these).
pub const UPSTREAM_FAILURE_REASONS: [&str; 9] = [
    "connect",
    "tls",
    "auth",
    "server_closed",
    "heartbeat_timeout",
    "write_timeout",
    "transport",
    "connection_lost",
    "other",
];

/// Why an upstream's login failed (`rejected` by the server, or no answer in time).
pub const AUTH_FAILURE_REASONS: [&str; 2] = ["rejected", "timeout"];

/// Why connections closed (`websocket_disconnections_total{reason}`).
pub const DISCONNECT_REASONS: [&str; 10] = [
    "client_closed",
    "client_gone",
    "closed",
    "io_error",
    "kicked",
    "shutdown",
    "heartbeat_timeout",
    "slow_consumer",
    "rate_limited",
    "protocol_abuse",
];
/// Why upgrades were refused (`websocket_connection_rejections_total{reason}`).
pub const REJECTION_REASONS: [&str; 13] = [
    "bad_handshake",
    "origin",
    "draining",
    "node_full",
    "ip_rate",
    "ip_connections",
    "auth_missing",
    "auth_expired",
    "auth_invalid",
    "user_connections",
    "handshake_timeout",
    "hook_denied",
    "hook_unavailable",
];
/// Why control API calls were refused (`wsgate_api_rejections_total{reason}`).
pub const API_REJECTION_REASONS: [&str; 2] = ["rate_limited", "unauthorized"];
/// Error codes of refused client frames (`websocket_protocol_errors_total{code}`).
pub const PROTOCOL_ERROR_CODES: [&str; 13] = [
    "invalid_json",
    "invalid_frame",
    "invalid_channel",
    "unknown_op",
    "unsupported",
    "forbidden",
    "not_subscribed",
    "too_many_channels",
    "unavailable",
    "rate_limited",
    "unknown_namespace",
    "backend_unavailable",
    "denied",
];
/// Outcomes of subscriptions with `since` (`wsgate_recoveries_total{reason}`).
pub const RECOVERY_OUTCOMES: [&str; 5] = [
    "recovered",
    "epoch_changed",
    "history_truncated",
    "offset_ahead",
    "recovery_disabled",
];
/// Kinds of publication (`wsgate_publications_total{kind}`).
pub const PUBLICATION_KINDS: [&str; 3] = ["channel", "user", "connection"];
/// Kinds of per-connection rate limit (`wsgate_rate_limited_frames_total{kind}`).
pub const FRAME_LIMIT_KINDS: [&str; 2] = ["messages", "bytes"];

/// A family with a series at 0 for each of `values`.
fn zeroed<L, M>(values: &[&'static str], label: impl Fn(&'static str) -> L) -> Family<L, M>
where
    L: Clone + std::hash::Hash + Eq,
    M: Default,
{
    let f = Family::<L, M>::default();
    for v in values {
        let _ = f.get_or_create(&label(v));
    }
    f
}

/// A counter family with every `reason` of `reasons` exported from the start (at 0), so
/// rates and alerts see 0 rather than nothing.
fn reasons(reasons: &[&'static str]) -> Family<ReasonLabel, Counter> {
    zeroed(reasons, |reason| ReasonLabel { reason })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Every series a node exports. Cheap to clone (handles are `Arc`s).
#[derive(Clone)]
pub struct Metrics {
    pub connections: Counter,
    pub disconnections: Family<ReasonLabel, Counter>,
    pub heartbeat_failures: Counter,
    pub active_connections: Gauge,
    pub connection_rejections: Family<ReasonLabel, Counter>,
    /// Control API requests refused before their handler (`rate_limited`, `unauthorized`).
    pub api_rejections: Family<ReasonLabel, Counter>,
    /// Client frames dropped by the per-connection rate limit, by `kind` (`messages`,
    /// `bytes`).
    pub rate_limited_frames: Family<KindLabel, Counter>,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    pub publications: Family<KindLabel, Counter>,
    pub protocol_errors: Family<CodeLabel, Counter>,
    pub slow_consumers: Counter,
    /// Channel epoch changes this node announced to its subscribers (`epoch_changed`).
    pub epoch_notices: Counter,
    /// Losses on the way to this node announced to its subscribers (`gap` frames).
    pub gap_notices: Counter,
    pub delivery_latency: Histogram,
    pub subscriptions: Gauge,
    pub broker_errors: Counter,
    pub store_errors: Counter,
    pub recoveries: Family<ReasonLabel, Counter>,
    /// Upstream connections re-established after a loss (the first connection not counted).
    pub upstream_reconnections: Counter,
    /// Upstream connections that ran out of reconnect attempts.
    pub upstream_give_ups: Counter,
    /// Times an upstream connection's circuit breaker opened.
    pub upstream_breaker_opens: Counter,
    /// SendAsync calls that got no reply in time.
    pub upstream_request_timeouts: Counter,
    /// Upstream connections this node took over from a dead or departing instance.
    pub upstream_reclaimed: Counter,
    /// Upstream API calls this node forwarded to the owning instance.
    pub upstream_forwarded: Counter,
    /// Data messages received from upstreams (correlated replies excluded).
    pub upstream_messages_received: Counter,
    /// Upstream messages published to a gateway channel.
    pub upstream_published: Counter,
    /// Upstream connections held by this node, by state.
    pub upstream_connections: Family<StateLabel, Gauge>,
    /// Upstream reconnect attempts, by why the connection or the previous attempt failed.
    pub upstream_reconnect_attempts: Family<ReasonLabel, Counter>,
    /// Upstream reconnect attempts that failed (and give-ups), by reason.
    pub upstream_reconnect_failures: Family<ReasonLabel, Counter>,
    /// Seconds from an upstream connection's drop to ready again (authenticated and
    /// subscribed).
    pub upstream_reconnect_duration: Histogram,
    /// Seconds an upstream connection stayed ready, observed when it drops or closes.
    pub upstream_connection_duration: Histogram,
    /// Upstream logins that failed, by reason (`rejected`, `timeout`).
    pub upstream_auth_failures: Family<ReasonLabel, Counter>,
    /// Seconds each proxy hook call took (all attempts), by hook.
    pub hook_latency: HookLatency,
    /// Proxy hook calls, by hook and outcome (`ok`, `rejected`, `timeout`, `status`,
    /// `malformed`, `down`).
    pub hook_calls: Family<HookOutcomeLabel, Counter>,
    /// Events out to the backend (`wsgate_events_*`, per sink).
    pub events: crate::events::EventMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        // 50 µs to ~13 s: loopback fan-out sits at the bottom, a stalled broker at the top.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 19);
        Self {
            connections: Counter::default(),
            disconnections: zeroed(&DISCONNECT_REASONS, |reason| ReasonLabel { reason }),
            heartbeat_failures: Counter::default(),
            active_connections: Gauge::default(),
            connection_rejections: zeroed(&REJECTION_REASONS, |reason| ReasonLabel { reason }),
            api_rejections: zeroed(&API_REJECTION_REASONS, |reason| ReasonLabel { reason }),
            rate_limited_frames: zeroed(&FRAME_LIMIT_KINDS, |kind| KindLabel { kind }),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            publications: zeroed(&PUBLICATION_KINDS, |kind| KindLabel { kind }),
            protocol_errors: zeroed(&PROTOCOL_ERROR_CODES, |code| CodeLabel { code }),
            slow_consumers: Counter::default(),
            epoch_notices: Counter::default(),
            gap_notices: Counter::default(),
            delivery_latency: Histogram::new(buckets),
            subscriptions: Gauge::default(),
            broker_errors: Counter::default(),
            store_errors: Counter::default(),
            recoveries: zeroed(&RECOVERY_OUTCOMES, |reason| ReasonLabel { reason }),
            upstream_reconnections: Counter::default(),
            upstream_give_ups: Counter::default(),
            upstream_breaker_opens: Counter::default(),
            upstream_request_timeouts: Counter::default(),
            upstream_reclaimed: Counter::default(),
            upstream_forwarded: Counter::default(),
            upstream_messages_received: Counter::default(),
            upstream_published: Counter::default(),
            upstream_connections: zeroed(&UPSTREAM_STATES, |state| StateLabel { state }),
            upstream_reconnect_attempts: reasons(&UPSTREAM_FAILURE_REASONS),
            upstream_reconnect_failures: reasons(&UPSTREAM_FAILURE_REASONS),
            // 10 ms to ~20 min: a loopback reconnect at the bottom, a breaker cooldown at the
            // top; seed 002's 30 s threshold falls between buckets 12 and 13.
            upstream_reconnect_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 18),
            ),
            // 1 s to ~9 days.
            upstream_connection_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 11),
            ),
            upstream_auth_failures: reasons(&AUTH_FAILURE_REASONS),
            hook_latency: Family::new_with_constructor(hook_latency_buckets),
            hook_calls: {
                let f = Family::default();
                for hook in crate::hooks::Hook::ALL {
                    for outcome in crate::hooks::OUTCOMES {
                        let _ = f.get_or_create(&HookOutcomeLabel {
                            hook: hook.name(),
                            outcome,
                        });
                    }
                }
                f
            },
            events: crate::events::EventMetrics::default(),
        }
    }
}

impl Metrics {
    /// Registers every series under its exported name.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "websocket_connections",
            "WebSocket connections accepted",
            self.connections.clone(),
        );
        r.register(
            "websocket_disconnections",
            "WebSocket connections closed, by reason",
            self.disconnections.clone(),
        );
        r.register(
            "websocket_heartbeat_failures",
            "Connections closed because no pong or frame arrived within the heartbeat timeout",
            self.heartbeat_failures.clone(),
        );
        r.register(
            "websocket_active_connections",
            "WebSocket connections open now",
            self.active_connections.clone(),
        );
        r.register(
            "websocket_connection_rejections",
            "Upgrade requests refused, by reason",
            self.connection_rejections.clone(),
        );
        r.register(
            "wsgate_api_rejections",
            "Control API requests refused before their handler, by reason",
            self.api_rejections.clone(),
        );
        r.register(
            "wsgate_rate_limited_frames",
            "Client frames dropped by the per-connection rate limit, by kind",
            self.rate_limited_frames.clone(),
        );
        r.register(
            "websocket_messages_received",
            "Frames received from clients",
            self.messages_received.clone(),
        );
        r.register(
            "websocket_messages_sent",
            "Frames written to clients",
            self.messages_sent.clone(),
        );
        r.register(
            "websocket_bytes_sent",
            "Payload bytes written to clients",
            self.bytes_sent.clone(),
        );
        r.register(
            "wsgate_publications",
            "Publications accepted, by kind (channel, user, connection)",
            self.publications.clone(),
        );
        r.register(
            "websocket_protocol_errors",
            "Client frames refused, by error code",
            self.protocol_errors.clone(),
        );
        r.register(
            "websocket_slow_consumers",
            "Connections closed because their outbox overflowed",
            self.slow_consumers.clone(),
        );
        r.register(
            "websocket_epoch_notices",
            "Channel epoch changes announced to local subscribers (epoch_changed frames)",
            self.epoch_notices.clone(),
        );
        r.register(
            "websocket_gap_notices",
            "Publications lost on their way to this node, announced to local subscribers (gap frames)",
            self.gap_notices.clone(),
        );
        r.register(
            "websocket_delivery_latency_seconds",
            "Time from a publication's acceptance to its write on a client socket",
            self.delivery_latency.clone(),
        );
        r.register(
            "websocket_subscriptions",
            "Channel subscriptions held now",
            self.subscriptions.clone(),
        );
        r.register(
            "wsgate_broker_errors",
            "Broker operations that failed",
            self.broker_errors.clone(),
        );
        r.register(
            "wsgate_store_errors",
            "Store operations that failed",
            self.store_errors.clone(),
        );
        r.register(
            "wsgate_recoveries",
            "Subscriptions with `since`, by outcome",
            self.recoveries.clone(),
        );
        r.register(
            "wsgate_upstream_reconnections",
            "Upstream connections re-established after a loss",
            self.upstream_reconnections.clone(),
        );
        r.register(
            "wsgate_upstream_give_ups",
            "Upstream connections that ran out of reconnect attempts (state failed)",
            self.upstream_give_ups.clone(),
        );
        r.register(
            "wsgate_upstream_breaker_opens",
            "Times an upstream connection's circuit breaker opened",
            self.upstream_breaker_opens.clone(),
        );
        r.register(
            "wsgate_upstream_reclaimed",
            "Upstream connections taken over from a dead or departing instance",
            self.upstream_reclaimed.clone(),
        );
        r.register(
            "wsgate_upstream_forwarded",
            "Upstream API calls forwarded to the owning instance",
            self.upstream_forwarded.clone(),
        );
        r.register(
            "wsgate_upstream_request_timeouts",
            "SendAsync requests that got no reply within their timeout",
            self.upstream_request_timeouts.clone(),
        );
        r.register(
            "wsgate_upstream_messages_received",
            "Data messages received from upstream connections",
            self.upstream_messages_received.clone(),
        );
        r.register(
            "wsgate_upstream_published",
            "Upstream messages published to a gateway channel (topic:<name>)",
            self.upstream_published.clone(),
        );
        r.register(
            "wsgate_upstream_connections",
            "Upstream connections held by this node, by state",
            self.upstream_connections.clone(),
        );
        r.register(
            "wsgate_upstream_reconnect_attempts",
            "Upstream reconnect attempts, by why the connection or previous attempt failed",
            self.upstream_reconnect_attempts.clone(),
        );
        r.register(
            "wsgate_upstream_reconnect_failures",
            "Upstream reconnect attempts that failed, and give-ups, by reason",
            self.upstream_reconnect_failures.clone(),
        );
        r.register_with_unit(
            "wsgate_upstream_reconnect_duration",
            "Time from an upstream connection's drop to ready again (authenticated, subscribed)",
            prometheus_client::registry::Unit::Seconds,
            self.upstream_reconnect_duration.clone(),
        );
        r.register_with_unit(
            "wsgate_upstream_connection_duration",
            "How long upstream connections stayed ready, observed when they drop or close",
            prometheus_client::registry::Unit::Seconds,
            self.upstream_connection_duration.clone(),
        );
        r.register(
            "wsgate_upstream_auth_failures",
            "Upstream logins that failed, by reason (rejected, timeout)",
            self.upstream_auth_failures.clone(),
        );
        self.events.register(r);
        r.register_with_unit(
            "wsgate_hook_latency",
            "Time proxy hook calls to the backend took (every attempt), by hook",
            prometheus_client::registry::Unit::Seconds,
            self.hook_latency.clone(),
        );
        r.register(
            "wsgate_hook_calls",
            "Proxy hook calls to the backend, by hook and outcome",
            self.hook_calls.clone(),
        );
    }

    /// One proxy hook call ended with `outcome` after `took`.
    pub fn hook_called(
        &self,
        hook: &'static str,
        outcome: &'static str,
        took: std::time::Duration,
    ) {
        self.hook_latency
            .get_or_create(&HookLabel { hook })
            .observe(took.as_secs_f64());
        bump(&self.hook_calls, HookOutcomeLabel { hook, outcome });
    }

    pub fn disconnected(&self, reason: &'static str) {
        bump(&self.disconnections, ReasonLabel { reason });
    }

    pub fn reject(&self, reason: &'static str) {
        bump(&self.connection_rejections, ReasonLabel { reason });
    }

    /// The counter of upgrades refused for `reason`, for a caller that counts on its own
    /// (the accept loop's handshake timeouts).
    pub fn rejections(&self, reason: &'static str) -> Counter {
        self.connection_rejections
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    /// A control API request refused before its handler (`rate_limited`, `unauthorized`).
    pub fn api_reject(&self, reason: &'static str) {
        bump(&self.api_rejections, ReasonLabel { reason });
    }

    /// A client frame dropped by the per-connection rate limit (`messages`, `bytes`).
    pub fn rate_limited_frame(&self, kind: &'static str) {
        bump(&self.rate_limited_frames, KindLabel { kind });
    }

    /// A connection closed because its outbox overflowed.
    pub fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    pub fn protocol_error(&self, code: &'static str) {
        bump(&self.protocol_errors, CodeLabel { code });
    }
}

/// `family{label}` += 1.
fn bump<L>(family: &Family<L, Counter>, label: L)
where
    L: Clone + std::hash::Hash + Eq,
{
    family.get_or_create(&label).inc();
}

/// `family{label}`'s count now.
pub fn count<L>(family: &Family<L, Counter>, label: L) -> u64
where
    L: Clone + std::hash::Hash + Eq,
{
    family.get_or_create(&label).get()
}
