//! The events themselves, as backends receive them (docs/events.md is their catalogue).
//!
//! One JSON object per event: `{"id","type","time","node","payload"}`. The `type` and the
//! shape of `payload` come together from [`Payload`] (serde's adjacent tagging), so a type
//! with the wrong payload cannot be built.

use std::sync::Arc;

use serde::Serialize;

use crate::seams::NodeId;

/// One event. `id` is unique cluster-wide (a UUID): a backend that receives an event twice
/// (a webhook retried after a timeout whose request had in fact arrived) drops the repeat.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    /// Unix time in milliseconds when the node made the event.
    pub time: u64,
    /// The node that made (and sends) the event.
    pub node: NodeId,
    #[serde(flatten)]
    pub payload: Payload,
}

impl Event {
    pub fn new(node: NodeId, payload: Payload) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            time: crate::clock::unix_ms(),
            node,
            payload,
        }
    }

    /// The `type` field (`connection.opened`, ...).
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }

    pub fn to_json(&self) -> String {
        // Strings, numbers and options only: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What happened, with the fields each type carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "payload")]
pub enum Payload {
    /// A client connection was accepted (after auth).
    #[serde(rename = "connection.opened")]
    ConnectionOpened {
        connection_id: Arc<str>,
        user: Arc<str>,
        /// `gateway` (`/ws`) or `socketio`.
        transport: &'static str,
        /// The client's address as the node saw it (`null` when unknown).
        remote: Option<String>,
    },
    /// A client connection ended.
    #[serde(rename = "connection.closed")]
    ConnectionClosed {
        connection_id: Arc<str>,
        user: Arc<str>,
        /// `client_closed`, `heartbeat_timeout`, `kicked`, `shutdown`, ... (the
        /// `websocket_disconnections_total` reasons), or `node_lost` when a surviving node
        /// reports the connections of a node that died.
        reason: Arc<str>,
        /// The WebSocket close code the node sent, when it sent one.
        code: Option<u16>,
    },
    /// A channel got its first subscriber, cluster-wide.
    #[serde(rename = "channel.occupied")]
    ChannelOccupied {
        channel: Arc<str>,
        connection_id: Arc<str>,
        user: Arc<str>,
    },
    /// A channel lost its last subscriber, cluster-wide.
    #[serde(rename = "channel.vacated")]
    ChannelVacated { channel: Arc<str> },
    /// A user's first connection subscribed to a channel, cluster-wide.
    #[serde(rename = "presence.joined")]
    PresenceJoined {
        channel: Arc<str>,
        user: Arc<str>,
        connection_id: Arc<str>,
    },
    /// A user's last connection left a channel, cluster-wide.
    #[serde(rename = "presence.left")]
    PresenceLeft {
        channel: Arc<str>,
        user: Arc<str>,
        connection_id: Arc<str>,
    },
    /// An upstream connection changed state (`from` is `null` for its first state).
    #[serde(rename = "upstream.state_changed")]
    UpstreamStateChanged {
        upstream_id: Arc<str>,
        from: Option<&'static str>,
        to: &'static str,
    },
}

/// Every `type`, in catalogue order.
pub const EVENT_TYPES: [&str; 7] = [
    "connection.opened",
    "connection.closed",
    "channel.occupied",
    "channel.vacated",
    "presence.joined",
    "presence.left",
    "upstream.state_changed",
];

impl Payload {
    pub fn kind(&self) -> &'static str {
        let i = match self {
            Payload::ConnectionOpened { .. } => 0,
            Payload::ConnectionClosed { .. } => 1,
            Payload::ChannelOccupied { .. } => 2,
            Payload::ChannelVacated { .. } => 3,
            Payload::PresenceJoined { .. } => 4,
            Payload::PresenceLeft { .. } => 5,
            Payload::UpstreamStateChanged { .. } => 6,
        };
        EVENT_TYPES[i]
    }
}

/// The JSON body of a batch: `{"events":[...]}`, the same for every sink that sends batches.
pub fn batch_json(events: &[Arc<Event>]) -> String {
    let mut out = String::with_capacity(events.len() * 200 + 16);
    out.push_str("{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.to_json());
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_has_type_and_payload_side_by_side() {
        let e = Event::new(
            "n1".into(),
            Payload::ConnectionClosed {
                connection_id: "abc-n1".into(),
                user: "42".into(),
                reason: "heartbeat_timeout".into(),
                code: Some(4008),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "connection.closed");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["payload"]["code"], 4008);
        assert_eq!(v["payload"]["reason"], "heartbeat_timeout");
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert!(v["time"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(e.kind(), "connection.closed");
        let body: serde_json::Value =
            serde_json::from_str(&batch_json(&[Arc::new(e.clone()), Arc::new(e)])).unwrap();
        assert_eq!(body["events"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn every_type_names_itself() {
        let vacated = Payload::ChannelVacated {
            channel: "c".into(),
        };
        let state = Payload::UpstreamStateChanged {
            upstream_id: "u".into(),
            from: None,
            to: "connected",
        };
        assert_eq!(vacated.kind(), "channel.vacated");
        assert_eq!(state.kind(), "upstream.state_changed");
        let v = serde_json::to_value(&state).unwrap();
        assert_eq!(v["payload"]["from"], serde_json::Value::Null);
    }
}
