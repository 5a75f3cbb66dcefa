//! The data message type users send and receive.
//!
//! Control frames (ping, pong, close) never reach users: the driver handles
//! them. Text is kept as tungstenite's [`Utf8Bytes`] so a received frame is
//! handed over without copying, and a broadcast can be cloned cheaply.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message as WsMessage;
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A text or binary WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A UTF-8 text frame.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The raw payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    pub(crate) fn into_ws(self) -> WsMessage {
        match self {
            Message::Text(t) => WsMessage::Text(t),
            Message::Binary(b) => WsMessage::Binary(b),
        }
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Self {
        Message::Text(Utf8Bytes::from_static(s))
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<serde_json::Value> for Message {
    fn from(v: serde_json::Value) -> Self {
        Message::Text(v.to_string().into())
    }
}
