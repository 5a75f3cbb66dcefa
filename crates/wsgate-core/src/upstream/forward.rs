//! Upstream API calls forwarded to the instance that owns the connection (cluster mode).
//!
//! The caller's node serialises the operation as an [`Op`], sends it through the
//! [`Forwarding`](crate::seams::Forwarding) request/reply channel to the owner, which runs
//! it locally (never forwarding again) and answers a [`Reply`]. Errors travel as their
//! kind and text, so the caller answers exactly as the owner would have.

use crate::seams::upstream::UpstreamSubscription;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wsgate_client::Message;

use super::UpstreamError;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Send {
        id: String,
        text: String,
    },
    SendRaw {
        id: String,
        b64: String,
    },
    SendAsync {
        id: String,
        msg: WireMessage,
        timeout_ms: u64,
    },
    Subscriptions {
        id: String,
        add: Vec<UpstreamSubscription>,
        remove: Vec<String>,
    },
    StartPublish {
        id: String,
        topic: String,
    },
    StopPublish {
        id: String,
    },
    Disconnect {
        id: String,
    },
}

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
    pub fn into_message(self) -> Result<Message, UpstreamError> {
        Ok(match self {
            WireMessage::Text(t) => Message::from(t),
            WireMessage::Binary(b) => Message::Binary(Bytes::from(
                B64.decode(b)
                    .map_err(|_| UpstreamError::Remote("bad forwarded frame".into()))?,
            )),
        })
    }
}

/// The owner's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Error kind (`None`: success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SendAsync's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<WireMessage>,
    /// Subscriptions' tracked keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl Reply {
    pub fn error(e: &UpstreamError) -> Self {
        let (kind, message) = match e {
            UpstreamError::NotFound => ("not_found", String::new()),
            UpstreamError::OwnedByDifferentInstance(o) => ("owned", o.clone()),
            UpstreamError::NotConnected => ("not_connected", String::new()),
            UpstreamError::RequestTimeout => ("timeout", String::new()),
            UpstreamError::Invalid(m) => ("invalid", m.clone()),
            other => ("other", other.to_string()),
        };
        Reply {
            error: Some(kind.into()),
            message: Some(message),
            ..Reply::default()
        }
    }

    /// The error it carries, if any.
    pub fn into_result(self) -> Result<Self, UpstreamError> {
        let Some(kind) = self.error.as_deref() else {
            return Ok(self);
        };
        let m = self.message.clone().unwrap_or_default();
        Err(match kind {
            "not_found" => UpstreamError::NotFound,
            "owned" => UpstreamError::OwnedByDifferentInstance(m),
            "not_connected" => UpstreamError::NotConnected,
            "timeout" => UpstreamError::RequestTimeout,
            "invalid" => UpstreamError::Invalid(m),
            _ => UpstreamError::Remote(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_trip() {
        for e in [
            UpstreamError::NotFound,
            UpstreamError::OwnedByDifferentInstance("n9".into()),
            UpstreamError::NotConnected,
            UpstreamError::RequestTimeout,
            UpstreamError::Invalid("bad".into()),
        ] {
            let json = serde_json::to_string(&Reply::error(&e)).unwrap();
            let back: Reply = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_result().unwrap_err().to_string(), e.to_string());
        }
        let m = WireMessage::from(&Message::Binary(Bytes::from_static(b"\x00\x01")));
        let json = serde_json::to_string(&m).unwrap();
        let back: WireMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.into_message().unwrap(),
            Message::Binary(Bytes::from_static(b"\x00\x01"))
        );
    }
}
