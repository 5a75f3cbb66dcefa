//! The operations on an existing upstream connection, as one type.
//!
//! [`UpstreamOp`] is what [`UpstreamManager::execute`](super::UpstreamManager::execute)
//! takes, and also what travels to the owning instance when the connection lives
//! elsewhere (cluster mode): the same value is run here or serialised, so adding an
//! operation means one variant and one arm, not a method, a wire variant and a handler.
//! The wire form is unchanged from the per-operation forwarding it replaced (`op` tag,
//! binary as standard base64 under `b64`, timeouts as `timeout_ms`), so nodes of
//! either version forward to each other.

use std::time::Duration;

use crate::seams::upstream::UpstreamSubscription;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wsgate_client::Message;

use super::config::validate_topic;
use super::{CLOSE_WAIT, UpstreamError};

/// One operation on connection `id`, wherever it is held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UpstreamOp {
    /// Send: one text frame.
    Send { id: String, text: String },
    /// SendRaw: one binary frame.
    SendRaw {
        id: String,
        #[serde(rename = "b64", with = "wire::base64_bytes")]
        data: Bytes,
    },
    /// SendAsync: a request and its correlated reply (see the connection's correlation mode).
    SendAsync {
        id: String,
        #[serde(with = "wire::message")]
        msg: Message,
        #[serde(rename = "timeout_ms", with = "wire::millis")]
        timeout: Duration,
    },
    /// Adds (or replaces, by key) tracked subscriptions and removes others by key. Each is
    /// sent now when connected and replayed after every reconnect; the record follows.
    Subscriptions {
        id: String,
        add: Vec<UpstreamSubscription>,
        remove: Vec<String>,
    },
    /// StartPublish: from now on every received message is published to `topic:<topic>`.
    StartPublish { id: String, topic: String },
    /// StopPublish. Messages the pump already holds may still be published; none received
    /// after the pump sees the change are.
    StopPublish { id: String },
    /// Disconnect: closes the connection, waits for its pump, forgets it and its record.
    Disconnect { id: String },
    /// Reconnect: restarts the connection (open, backing off or `failed`) from its record,
    /// with the same id, subscriptions and auth, and a fresh backoff and breaker.
    Reconnect { id: String },
}

/// What an operation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, nothing to report.
    Done,
    /// SendAsync's correlated reply.
    Reply(Message),
    /// The tracked subscription keys after a Subscriptions operation.
    Keys(Vec<String>),
}

/// Bound on a forwarded call (plus the operation's own time, see [`UpstreamOp::forward_timeout`]).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl UpstreamOp {
    /// The connection it applies to.
    pub fn id(&self) -> &str {
        match self {
            Self::Send { id, .. }
            | Self::SendRaw { id, .. }
            | Self::SendAsync { id, .. }
            | Self::Subscriptions { id, .. }
            | Self::StartPublish { id, .. }
            | Self::StopPublish { id }
            | Self::Disconnect { id }
            | Self::Reconnect { id } => id,
        }
    }

    /// Rejects arguments no connection could accept, before any routing.
    pub(super) fn check(&self) -> Result<(), UpstreamError> {
        match self {
            Self::Subscriptions { add, .. } if add.iter().any(|s| s.key.is_empty()) => Err(
                UpstreamError::Invalid("subscription keys must not be empty".into()),
            ),
            Self::StartPublish { topic, .. } => validate_topic(topic),
            _ => Ok(()),
        }
    }

    /// How long a forwarded call may take: the transport's bound plus the operation's own.
    pub(super) fn forward_timeout(&self) -> Duration {
        match self {
            Self::SendAsync { timeout, .. } => *timeout + FORWARD_TIMEOUT,
            Self::Disconnect { .. } | Self::Reconnect { .. } => FORWARD_TIMEOUT + CLOSE_WAIT,
            _ => FORWARD_TIMEOUT,
        }
    }
}

/// Serde forms of the fields that are not plain JSON.
pub(super) mod wire {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use bytes::Bytes;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use wsgate_client::Message;

    /// A frame: `{"text": "…"}` or `{"binary": "<base64>"}`.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WireMessage {
        Text(String),
        Binary(String),
    }

    impl From<&Message> for WireMessage {
        fn from(m: &Message) -> Self {
            match m {
                Message::Text(t) => WireMessage::Text(t.to_string()),
                Message::Binary(b) => WireMessage::Binary(B64.encode(b)),
            }
        }
    }

    impl WireMessage {
        pub fn into_message(self) -> Result<Message, base64::DecodeError> {
            Ok(match self {
                WireMessage::Text(t) => Message::from(t),
                WireMessage::Binary(b) => Message::Binary(Bytes::from(B64.decode(b)?)),
            })
        }
    }

    pub mod message {
        use super::*;

        pub fn serialize<S: Serializer>(m: &Message, s: S) -> Result<S::Ok, S::Error> {
            WireMessage::from(m).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
            WireMessage::deserialize(d)?
                .into_message()
                .map_err(D::Error::custom)
        }
    }

    pub mod base64_bytes {
        use super::*;

        pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
            B64.encode(b).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            let text = String::deserialize(d)?;
            B64.decode(text).map(Bytes::from).map_err(D::Error::custom)
        }
    }

    pub mod millis {
        use std::time::Duration;

        use super::*;

        pub fn serialize<S: Serializer>(t: &Duration, s: S) -> Result<S::Ok, S::Error> {
            (t.as_millis() as u64).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            u64::deserialize(d).map(Duration::from_millis)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_the_one_older_nodes_speak() {
        let op = UpstreamOp::SendRaw {
            id: "n1-a".into(),
            data: Bytes::from_static(b"\x00\x01"),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"op":"send_raw","id":"n1-a","b64":"AAE="}"#);
        let op = UpstreamOp::SendAsync {
            id: "n1-a".into(),
            msg: Message::Binary(Bytes::from_static(b"\x00\x01")),
            timeout: Duration::from_millis(250),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            json,
            r#"{"op":"send_async","id":"n1-a","msg":{"binary":"AAE="},"timeout_ms":250}"#
        );
        assert_eq!(serde_json::from_str::<UpstreamOp>(&json).unwrap(), op);
    }

    #[test]
    fn checks_and_bounds() {
        let subs = UpstreamOp::Subscriptions {
            id: "x".into(),
            add: vec![UpstreamSubscription {
                key: String::new(),
                message: "m".into(),
                unsubscribe: None,
            }],
            remove: vec![],
        };
        assert_eq!(
            subs.check().unwrap_err().to_string(),
            "subscription keys must not be empty"
        );
        let publish = UpstreamOp::StartPublish {
            id: "x".into(),
            topic: String::new(),
        };
        assert!(publish.check().is_err());
        let op = UpstreamOp::SendAsync {
            id: "x".into(),
            msg: Message::from("q"),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(op.forward_timeout(), Duration::from_secs(6));
        assert_eq!(op.id(), "x");
    }
}
