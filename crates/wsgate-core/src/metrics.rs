//! The Prometheus series of a node.
//!
//! Names follow seed 003 where it names them (`websocket_connections_total`,
//! `websocket_disconnections_total`, `websocket_heartbeat_failures_total`); the rest is
//! what an operator needs at 3 AM. Every handle is resolved once and shared, so the hot path
//! is an atomic add. Label values are `&'static str`: no allocation per increment.

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
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    pub publications: Family<KindLabel, Counter>,
    pub protocol_errors: Family<CodeLabel, Counter>,
    pub slow_consumers: Counter,
    pub delivery_latency: Histogram,
    pub subscriptions: Gauge,
    pub broker_errors: Counter,
    pub store_errors: Counter,
    pub recoveries: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        // 50 µs to ~13 s: loopback fan-out sits at the bottom, a stalled broker at the top.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 19);
        Self {
            connections: Counter::default(),
            disconnections: Family::default(),
            heartbeat_failures: Counter::default(),
            active_connections: Gauge::default(),
            connection_rejections: Family::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            publications: Family::default(),
            protocol_errors: Family::default(),
            slow_consumers: Counter::default(),
            delivery_latency: Histogram::new(buckets),
            subscriptions: Gauge::default(),
            broker_errors: Counter::default(),
            store_errors: Counter::default(),
            recoveries: Family::default(),
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
    }

    pub fn disconnected(&self, reason: &'static str) {
        self.disconnections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn protocol_error(&self, code: &'static str) {
        self.protocol_errors
            .get_or_create(&CodeLabel { code })
            .inc();
    }
}
