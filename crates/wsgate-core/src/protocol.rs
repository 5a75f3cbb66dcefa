//! The client protocol: JSON text frames, each with an `op`.
//!
//! Decoding is strict about shape and generous in its answers: every malformed frame maps to
//! a [`ProtocolError`] whose code and message go back to the client in an `error` frame.
//! Encoding builds frames by hand around pre-validated JSON, so that a publication is
//! serialised once per node and its bytes shared by every subscriber.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

/// WebSocket close codes wsgate uses, and why.
pub mod close {
    /// The node is shutting down: reconnect (to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// RFC 6455 protocol error (bad framing).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: too many protocol errors in a row.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame above the configured maximum message size.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Authentication failed: missing, invalid or expired token.
    pub const AUTH_FAILED: u16 = 4001;
    /// Closed by an operator or backend through the control API.
    pub const KICKED: u16 = 4003;
    /// Neither a pong nor any frame arrived within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4008;
    /// The client read too slowly (its outbox overflowed) or exceeded a rate limit.
    pub const SLOW_CONSUMER: u16 = 4029;
}

/// A `since` position sent by a client that wants what it missed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// A decoded client frame. `id`, when the client sent one, is echoed in the answer.
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<&'a RawValue>,
    pub op: ClientOp<'a>,
}

#[derive(Debug)]
pub enum ClientOp<'a> {
    Subscribe {
        channel: Cow<'a, str>,
        since: Option<Since>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    Publish {
        channel: Cow<'a, str>,
        data: &'a RawValue,
    },
    Ping {
        ts: Option<&'a RawValue>,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    /// A new token for the same user, before (or during the grace after) the old expires.
    Refresh {
        token: Cow<'a, str>,
    },
    /// A call to the backend's rpc hook, answered `rpc_result`.
    Rpc {
        method: Cow<'a, str>,
        data: Option<&'a RawValue>,
    },
}

/// Why a frame was refused; `code` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    /// The backend's own code, when a proxy hook refused (`denied`).
    pub backend_code: Option<u16>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            backend_code: None,
        }
    }
}

pub const MAX_CHANNEL_LEN: usize = 256;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChannelBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    since: Option<Since>,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct RefreshBody<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RpcBody<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PingBody<'a> {
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
}

fn invalid(op: &str, e: serde_json::Error) -> ProtocolError {
    ProtocolError::new("invalid_frame", format!("invalid {op} frame: {e}"))
}

/// The frame `text` read as the body of `op`.
fn body<'a, T: Deserialize<'a>>(text: &'a str, op: &str) -> Result<T, ProtocolError> {
    serde_json::from_str(text).map_err(|e| invalid(op, e))
}

/// Why a name cannot be a channel name (or a topic, which becomes one). Each surface words
/// it its own way (the client protocol, the control API); the rule is [`check_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    /// Empty, or longer than allowed.
    Length,
    /// Contains a control character.
    ControlCharacter,
}

/// The channel-name rule, the only one: 1 to `max` bytes ([`MAX_CHANNEL_LEN`] for a
/// channel) without control characters.
pub fn check_name(name: &str, max: usize) -> Result<(), BadName> {
    if name.is_empty() || name.len() > max {
        return Err(BadName::Length);
    }
    if name.chars().any(char::is_control) {
        return Err(BadName::ControlCharacter);
    }
    Ok(())
}

fn check_channel(channel: Cow<'_, str>) -> Result<Cow<'_, str>, ProtocolError> {
    match check_name(&channel, MAX_CHANNEL_LEN) {
        Ok(()) => Ok(channel),
        Err(BadName::Length) => Err(ProtocolError::new(
            "invalid_channel",
            format!("channel names are 1 to {MAX_CHANNEL_LEN} bytes"),
        )),
        Err(BadName::ControlCharacter) => Err(ProtocolError::new(
            "invalid_channel",
            "channel names have no control characters",
        )),
    }
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Request<'_>, (Option<&RawValue>, ProtocolError)> {
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            "invalid_frame"
        } else {
            "invalid_json"
        };
        (
            None,
            ProtocolError::new(code, format!("frame is not a JSON object: {e}")),
        )
    })?;
    let id = head.id;
    let fail = |e| (id, e);
    let op = match head.op.as_deref() {
        None => {
            return Err(fail(ProtocolError::new(
                "invalid_frame",
                "missing field `op`",
            )));
        }
        Some(op @ ("subscribe" | "unsubscribe" | "presence")) => {
            let b: ChannelBody<'_> = body(text, op).map_err(fail)?;
            let channel = check_channel(b.channel).map_err(fail)?;
            match op {
                "subscribe" => ClientOp::Subscribe {
                    channel,
                    since: b.since,
                },
                "unsubscribe" => ClientOp::Unsubscribe { channel },
                _ => ClientOp::Presence { channel },
            }
        }
        Some(op @ "publish") => {
            let b: PublishBody<'_> = body(text, op).map_err(fail)?;
            ClientOp::Publish {
                channel: check_channel(b.channel).map_err(fail)?,
                data: b.data,
            }
        }
        Some(op @ "ping") => {
            let b: PingBody<'_> = body(text, op).map_err(fail)?;
            ClientOp::Ping { ts: b.ts }
        }
        Some(op @ "refresh") => {
            let b: RefreshBody<'_> = body(text, op).map_err(fail)?;
            ClientOp::Refresh { token: b.token }
        }
        Some(op @ "rpc") => {
            let b: RpcBody<'_> = body(text, op).map_err(fail)?;
            ClientOp::Rpc {
                method: b.method,
                data: b.data,
            }
        }
        Some(other) => {
            return Err(fail(ProtocolError::new(
                "unknown_op",
                format!("unknown op `{other}`"),
            )));
        }
    };
    Ok(Request { id, op })
}

/// Builds server frames. Every frame is one JSON object written into one buffer.
pub struct Frame {
    buf: String,
}

impl Frame {
    pub fn op(op: &str) -> Self {
        let mut buf = String::with_capacity(96);
        buf.push_str("{\"op\":\"");
        buf.push_str(op);
        buf.push('"');
        Self { buf }
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        // Serialising a &str to a String cannot fail.
        self.buf
            .push_str(&serde_json::to_string(value).unwrap_or_default());
        self
    }

    pub fn num(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// `raw` must be valid JSON (it came from a parsed frame or a validated API body).
    pub fn raw(mut self, key: &str, raw: &str) -> Self {
        self.key(key);
        self.buf.push_str(raw);
        self
    }

    pub fn id(self, id: Option<&RawValue>) -> Self {
        match id {
            Some(id) => self.raw("id", id.get()),
            None => self,
        }
    }

    fn key(&mut self, key: &str) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    pub fn finish(mut self) -> Utf8Bytes {
        self.buf.push('}');
        Utf8Bytes::from(self.buf)
    }
}

/// `{"op":"error","code":…,"message":…}`.
pub fn error_frame(id: Option<&RawValue>, e: &ProtocolError) -> Utf8Bytes {
    let f = Frame::op("error")
        .id(id)
        .str("code", e.code)
        .str("message", &e.message);
    match e.backend_code {
        Some(code) => f.num("backend_code", code.into()).finish(),
        None => f.finish(),
    }
}

/// `{"op":"message","channel":…,"offset":…,"data":…}` for a channel publication.
pub fn channel_message(channel: &str, offset: u64, data: &Bytes) -> Utf8Bytes {
    Frame::op("message")
        .str("channel", channel)
        .num("offset", offset)
        .raw("data", json_text(data))
        .finish()
}

/// `{"op":"epoch_changed","channel","epoch","offset"}`: the stream this subscriber knew is
/// gone (its history was lost); it follows `epoch` from `offset`, and the next `message` of
/// the channel is the first of that epoch it gets.
pub fn epoch_changed(channel: &str, epoch: &str, offset: u64) -> Utf8Bytes {
    Frame::op("epoch_changed")
        .str("channel", channel)
        .str("epoch", epoch)
        .num("offset", offset)
        .finish()
}

/// `{"op":"gap","channel","epoch","offset"}`: publications of `epoch` up to `offset` that
/// this subscriber has not received are lost (the node could not get them, history no longer
/// holds them); the stream goes on after `offset`.
pub fn gap(channel: &str, epoch: &str, offset: u64) -> Utf8Bytes {
    Frame::op("gap")
        .str("channel", channel)
        .str("epoch", epoch)
        .num("offset", offset)
        .finish()
}

/// `{"op":"message","data":…}` for a message sent to a user or one connection.
pub fn direct_message(data: &Bytes) -> Utf8Bytes {
    Frame::op("message").raw("data", json_text(data)).finish()
}

/// The JSON text of a validated payload. Payloads enter only through validated paths
/// (client frames, API bodies, broker messages checked on receipt); anything else becomes
/// `null` rather than a broken frame.
fn json_text(data: &Bytes) -> &str {
    std::str::from_utf8(data).unwrap_or("null")
}

/// A complete server→client text frame (header and payload) as it goes on the wire. Server
/// frames are unmasked, so one encoding serves every subscriber. Framing is tungstenite's.
pub fn wire_text(payload: &[u8]) -> Bytes {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Text),
        true,
    );
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    Bytes::from(out)
}

/// The payload of a frame made by [`wire_text`] (an unmasked server frame); `None` if `wire`
/// is not one whole such frame. For transports that do not speak WebSocket frames.
pub fn wire_payload(wire: &[u8]) -> Option<&[u8]> {
    let (&len7, rest) = wire.get(1..)?.split_first()?;
    let (len, rest) = match len7 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            &rest[8..],
        ),
        n => (u64::from(n), rest),
    };
    (len7 & 0x80 == 0 && rest.len() as u64 == len).then_some(rest)
}

/// A server→client ping frame with an empty payload.
pub fn wire_ping() -> Bytes {
    use tungstenite::protocol::frame::Frame;
    let mut out = Vec::with_capacity(2);
    let _ = Frame::ping(Bytes::new()).format(&mut out);
    Bytes::from(out)
}

/// Validates that `data` is one JSON value and returns it as bytes for the broker (the
/// control API's payload rule).
pub fn validate_json(data: &str) -> Result<Bytes, ProtocolError> {
    serde_json::from_str::<&RawValue>(data)
        .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
        .map_err(|e| ProtocolError::new("invalid_json", format!("data is not one JSON value: {e}")))
}

/// A shared channel name, as stored in indexes.
pub type Channel = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_payload_reads_back_what_wire_text_framed() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let text = "x".repeat(n);
            assert_eq!(
                wire_payload(&wire_text(text.as_bytes())),
                Some(text.as_bytes())
            );
        }
        assert_eq!(wire_payload(&wire_text(b"abc")[..4]), None);
        assert_eq!(wire_payload(b""), None);
    }

    fn err(text: &str) -> &'static str {
        decode(text).unwrap_err().1.code
    }

    #[test]
    fn decodes_every_op() {
        let r = decode(r#"{"op":"subscribe","channel":"team:42","id":7}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "7");
        assert!(
            matches!(r.op, ClientOp::Subscribe { ref channel, since: None } if channel == "team:42")
        );
        let r =
            decode(r#"{"op":"subscribe","channel":"a","since":{"offset":3,"epoch":"e"}}"#).unwrap();
        assert!(matches!(
            r.op,
            ClientOp::Subscribe {
                since: Some(Since { offset: 3, .. }),
                ..
            }
        ));
        let r = decode(r#"{"op":"publish","channel":"a","data":{"x":[1,2]}}"#).unwrap();
        assert!(matches!(r.op, ClientOp::Publish { data, .. } if data.get() == r#"{"x":[1,2]}"#));
        let r = decode(r#"{"op":"ping","ts":123}"#).unwrap();
        assert!(matches!(r.op, ClientOp::Ping { ts: Some(t) } if t.get() == "123"));
        assert!(matches!(
            decode(r#"{"op":"presence","channel":"a"}"#).unwrap().op,
            ClientOp::Presence { .. }
        ));
        assert!(matches!(
            decode(r#"{"op":"unsubscribe","channel":"a"}"#).unwrap().op,
            ClientOp::Unsubscribe { .. }
        ));
    }

    #[test]
    fn every_malformed_frame_has_a_code() {
        assert_eq!(err("not json"), "invalid_json");
        assert_eq!(err("[1,2]"), "invalid_frame");
        assert_eq!(err(r#"{"channel":"a"}"#), "invalid_frame");
        assert_eq!(err(r#"{"op":"dance"}"#), "unknown_op");
        assert_eq!(err(r#"{"op":"subscribe"}"#), "invalid_frame");
        assert_eq!(err(r#"{"op":"publish","channel":"a"}"#), "invalid_frame");
        assert_eq!(err(r#"{"op":"subscribe","channel":""}"#), "invalid_channel");
        let long = format!(r#"{{"op":"subscribe","channel":"{}"}}"#, "x".repeat(300));
        assert_eq!(err(&long), "invalid_channel");
        assert_eq!(
            decode(r#"{"op":"dance","id":"q"}"#)
                .unwrap_err()
                .0
                .unwrap()
                .get(),
            "\"q\""
        );
    }

    #[test]
    fn wire_frames_are_unmasked_websocket_frames() {
        let w = wire_text(b"hi");
        assert_eq!(&w[..], &[0x81, 2, b'h', b'i']);
        let long = wire_text(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        assert_eq!(&wire_ping()[..], &[0x89, 0]);
    }

    #[test]
    fn frames_are_valid_json() {
        let f = channel_message("a\"b", 5, &Bytes::from_static(b"{\"k\":1}"));
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["channel"], "a\"b");
        assert_eq!(v["offset"], 5);
        assert_eq!(v["data"]["k"], 1);
        let e = error_frame(None, &ProtocolError::new("x", "line\nbreak"));
        let v: serde_json::Value = serde_json::from_str(e.as_str()).unwrap();
        assert_eq!(v["message"], "line\nbreak");
        assert!(validate_json("{").is_err());
        assert_eq!(&validate_json(" [1] ").unwrap()[..], b"[1]");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::io::Cursor;
        use tungstenite::protocol::{Role, WebSocket};

        /// Any JSON value the client may send as `data`, `id` or `ts`.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                ".*".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(".*", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever a client sends, decoding answers (a request or an error with a code),
            /// and never panics.
            #[test]
            fn decode_never_panics(text in ".*") {
                if let Err((_, e)) = decode(&text) {
                    prop_assert!(!e.code.is_empty());
                }
            }

            /// Near-valid frames: real ops with arbitrary fields.
            #[test]
            fn decode_never_panics_on_near_valid_frames(
                op in prop_oneof![
                    Just("subscribe"), Just("unsubscribe"), Just("publish"),
                    Just("ping"), Just("presence"), Just("other")
                ],
                channel in json_value(),
                data in json_value(),
                since in json_value(),
                id in json_value(),
            ) {
                let text = serde_json::json!({
                    "op": op, "channel": channel, "data": data, "since": since, "id": id
                }).to_string();
                let _ = decode(&text);
            }

            /// A decoded publish keeps channel, data and id exactly.
            #[test]
            fn publish_round_trips(channel in "[a-z:0-9]{1,64}", data in json_value(), id in any::<u32>()) {
                let text = serde_json::json!({
                    "op":"publish","channel":channel,"data":data,"id":id
                }).to_string();
                let r = decode(&text).unwrap();
                prop_assert_eq!(r.id.unwrap().get(), id.to_string());
                match r.op {
                    ClientOp::Publish { channel: c, data: d } => {
                        prop_assert_eq!(c.as_ref(), channel.as_str());
                        let back: serde_json::Value = serde_json::from_str(d.get()).unwrap();
                        prop_assert_eq!(back, data);
                    }
                    other => prop_assert!(false, "decoded as {other:?}"),
                }
            }

            /// Encoded frames are JSON objects with the fields that were put in.
            #[test]
            fn encoded_frames_parse_back(
                op in "[a-z_]{1,12}",
                s in ".*",
                n in any::<u64>(),
                b in any::<bool>(),
                code in "[a-z_]{1,12}",
                channel in ".*",
                data in json_value(),
            ) {
                let f = Frame::op(&op).str("s", &s).num("n", n).bool("b", b).finish();
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                prop_assert_eq!(&v["op"], &serde_json::Value::from(op));
                prop_assert_eq!(&v["s"], &serde_json::Value::from(s.clone()));
                prop_assert_eq!(v["n"].as_u64(), Some(n));
                prop_assert_eq!(v["b"].as_bool(), Some(b));
                let code: &'static str = Box::leak(code.into_boxed_str());
                let e = error_frame(None, &ProtocolError::new(code, s.clone()));
                let v: serde_json::Value = serde_json::from_str(e.as_str()).unwrap();
                prop_assert_eq!(v["code"].as_str(), Some(code));
                prop_assert_eq!(v["message"].as_str(), Some(s.as_str()));
                let raw = Bytes::from(data.to_string());
                let m = channel_message(&channel, n, &raw);
                let v: serde_json::Value = serde_json::from_str(m.as_str()).unwrap();
                prop_assert_eq!(v["channel"].as_str(), Some(channel.as_str()));
                prop_assert_eq!(v["offset"].as_u64(), Some(n));
                prop_assert_eq!(&v["data"], &data);
            }

            /// `wire_text` frames are what tungstenite (as a client) reads back.
            #[test]
            fn wire_text_decodes_with_tungstenite(payloads in prop::collection::vec(".{0,300}", 1..4), big in 0usize..70_000) {
                let mut wire = Vec::new();
                let mut expected: Vec<String> = payloads.clone();
                expected.push("x".repeat(big));
                for p in &expected {
                    wire.extend_from_slice(&wire_text(p.as_bytes()));
                }
                let mut ws = WebSocket::from_raw_socket(Cursor::new(wire), Role::Client, None);
                for p in &expected {
                    match ws.read().unwrap() {
                        tungstenite::Message::Text(t) => prop_assert_eq!(t.as_str(), p.as_str()),
                        other => prop_assert!(false, "got {other:?}"),
                    }
                }
            }
        }
    }
}
