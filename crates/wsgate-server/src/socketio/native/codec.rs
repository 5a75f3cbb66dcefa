//! The Engine.IO v4 / Socket.IO v5 text packets of the direct WebSocket clients, as whole
//! WebSocket frames.
//!
//! The grammar is socketioxide's: client packets are decoded by engineioxide's [`Eio`]
//! packet parser and socketioxide's common parser ([`CommonParser`]), the server's control
//! packets (open, connect, connect_error, disconnect, ping, acknowledgements, events) are
//! encoded by the same crates. Only the hot path, a publication framed once per node for
//! all its subscribers, is spliced by hand ([`event_raw`]): its argument is JSON text
//! already (see `super::super::encoded`), and socketioxide's encoder would re-serialise
//! it through its own serde value writer on every publication.

use std::time::Duration;

use bytes::Bytes;
use engineioxide_core::{OpenPacket, Packet as Eio, ProtocolVersion, Sid, Str};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide_core::Value as SioValue;
use socketioxide_core::packet::{ConnectPacket, Packet, PacketData};
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};
use socketioxide_parser_common::CommonParser;
use wsgate_core::protocol::{self, ProtocolError};

/// The one namespace served.
pub const NS: &str = "/";

/// A client text frame, decoded.
#[derive(Debug)]
pub enum FromClient {
    /// `3`: the answer to the heartbeat's ping.
    Pong,
    /// `40[<auth>]` (or `40/<ns>,…`): connect to a namespace, with the handshake's `auth`.
    Connect { ns: String, auth: Option<Value> },
    /// `42[<ack>]["<event>", <arg>]`; `args` is the first argument after the name, as
    /// socketioxide's `TryData` gives it to a handler.
    Event {
        event: String,
        args: Result<Value, ProtocolError>,
        ack: Option<i64>,
    },
    /// `41` (the socket leaves the namespace) or `1` (the transport closes).
    Leave,
    /// Nothing to do: a no-op, or an acknowledgement (the server never asks for one).
    Nothing,
    /// Not a packet this edge takes (malformed, binary attachments, another version).
    Invalid(ProtocolError),
}

fn invalid(message: impl Into<String>) -> FromClient {
    FromClient::Invalid(ProtocolError::new("invalid_frame", message))
}

/// Decodes one client text frame.
pub fn decode(text: &str) -> FromClient {
    let packet = match Eio::parse(ProtocolVersion::V4, Str::copy_from_slice(text)) {
        Ok(p) => p,
        Err(e) => return invalid(format!("not an Engine.IO v4 packet: {e}")),
    };
    let message = match packet {
        Eio::Pong => return FromClient::Pong,
        Eio::Close => return FromClient::Leave,
        // A v4 client never pings; a no-op is one.
        Eio::Ping | Eio::Noop => return FromClient::Nothing,
        Eio::Message(m) => m,
        Eio::Binary(_) | Eio::BinaryV3(_) => return binary(),
        other => return invalid(format!("unexpected Engine.IO packet {other:?}")),
    };
    // A fresh parser state per packet: it only keeps binary packets waiting for their
    // attachments, which this edge refuses.
    let state = ParserState::default();
    let packet = match CommonParser.decode_str(&ParseConfig::default(), &state, message) {
        Ok(p) => p,
        Err(ParseError::NeedsMoreBinaryData) => return binary(),
        Err(e) => return invalid(format!("not a Socket.IO v5 packet: {e}")),
    };
    let Packet { inner, ns } = packet;
    match inner {
        PacketData::Connect(auth) => FromClient::Connect {
            ns: ns.to_string(),
            auth: auth
                .as_ref()
                .and_then(|a| CommonParser.decode_default::<Value>(Some(a)).ok()),
        },
        _ if &*ns != NS => invalid(format!("unknown namespace {ns}")),
        PacketData::Disconnect => FromClient::Leave,
        PacketData::Event(mut value, ack) => {
            let event = match CommonParser.read_event(&value) {
                Ok(event) => event.to_owned(),
                Err(e) => return invalid(format!("an event without a name: {e}")),
            };
            let args = CommonParser
                .decode_value::<Value>(&mut value, true)
                .map_err(super::super::events::invalid_args);
            FromClient::Event { event, args, ack }
        }
        PacketData::EventAck(..) => FromClient::Nothing,
        PacketData::BinaryEvent(..) | PacketData::BinaryAck(..) => binary(),
        PacketData::ConnectError(_) => invalid("connect_error is the server's packet"),
    }
}

/// Binary packets and attachments: this edge's events are JSON.
pub fn binary() -> FromClient {
    invalid("binary packets and attachments are not supported: events carry JSON")
}

/// The Engine.IO open packet `0{"sid", "upgrades": [], "pingInterval", "pingTimeout",
/// "maxPayload"}`: no upgrades, the client is on WebSocket already.
pub fn open(ping_interval: Duration, ping_timeout: Duration, max_payload: u64) -> Bytes {
    eio(Eio::Open(OpenPacket {
        sid: Sid::new(),
        upgrades: Default::default(),
        ping_interval,
        ping_timeout,
        max_payload,
    }))
}

/// The heartbeat's ping, `2`.
pub fn ping() -> Bytes {
    eio(Eio::Ping)
}

/// `40{"sid"}`: connected to `/`.
pub fn connected() -> Bytes {
    let sid = CommonParser
        .encode_default(&ConnectPacket { sid: Sid::new() })
        .ok();
    sio(Packet::connect(NS, sid))
}

/// `44[/<ns>,]{"message"}`: the connect is refused, with why.
pub fn connect_error(ns: &str, message: &str) -> Bytes {
    sio(Packet::connect_error(ns.to_owned(), message))
}

/// `41`: the server disconnects the socket (the client does not reconnect by itself).
pub fn disconnect() -> Bytes {
    sio(Packet::disconnect(NS))
}

/// `43<id>[<arg>]`: the acknowledgement of event `id`.
pub fn ack(id: i64, arg: &Value) -> Bytes {
    match CommonParser.encode_value(arg, None) {
        Ok(v) => sio(Packet::ack(NS, v, id)),
        Err(_) => sio(Packet::ack(NS, SioValue::Str("[null]".into(), None), id)),
    }
}

/// `42["<name>",<arg>]`: an event with one argument.
pub fn event(name: &str, arg: &impl Serialize) -> Bytes {
    match CommonParser.encode_value(arg, Some(name)) {
        Ok(v) => sio(Packet::event(NS, v)),
        // Values from serde_json always encode.
        Err(_) => event_raw(name, &RawValue::from_string("null".into()).expect("null")),
    }
}

/// `42["<name>",<arg>]` with `arg` JSON text already: the packet socketioxide's encoder makes
/// of the same event (tested), written directly, since this is built once per publication
/// per node and nothing in it needs re-serialising but the name.
pub fn event_raw(name: &str, arg: &RawValue) -> Bytes {
    // A `&str` always serialises.
    let name = serde_json::to_string(name).unwrap_or_default();
    let mut text = String::with_capacity(name.len() + arg.get().len() + 5);
    text.push_str("42[");
    text.push_str(&name);
    text.push(',');
    text.push_str(arg.get());
    text.push(']');
    protocol::wire_text(text.as_bytes())
}

fn sio(packet: Packet) -> Bytes {
    match CommonParser.encode(packet) {
        SioValue::Str(text, _) => eio(Eio::Message(text)),
        // The common parser encodes to text; binary never comes out of it for our packets.
        SioValue::Bytes(_) => eio(Eio::Noop),
    }
}

fn eio(packet: Eio) -> Bytes {
    protocol::wire_text(String::from(packet).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The text of a frame made here.
    fn text(frame: &Bytes) -> &str {
        std::str::from_utf8(protocol::wire_payload(frame).expect("a whole frame")).unwrap()
    }

    // Client frames as socket.io-client 4.8 sends them (captured from the driver's sockets).

    #[test]
    fn a_connect_with_and_without_auth() {
        match decode("40") {
            FromClient::Connect { ns, auth } => assert_eq!((ns.as_str(), auth), ("/", None)),
            other => panic!("{other:?}"),
        }
        match decode(r#"40{"token":"abc"}"#) {
            FromClient::Connect { ns, auth } => {
                assert_eq!((ns.as_str(), auth), ("/", Some(json!({"token": "abc"}))))
            }
            other => panic!("{other:?}"),
        }
        match decode("40/admin,") {
            FromClient::Connect { ns, .. } => assert_eq!(ns, "/admin"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_with_an_ack_id_and_its_first_argument() {
        match decode(r#"420["subscribe","news"]"#) {
            FromClient::Event { event, args, ack } => {
                assert_eq!(
                    (event.as_str(), args.unwrap(), ack),
                    ("subscribe", json!("news"), Some(0))
                )
            }
            other => panic!("{other:?}"),
        }
        match decode(r#"4217["publish",{"channel":"c","data":{"x":[1]}}]"#) {
            FromClient::Event { event, args, ack } => assert_eq!(
                (event.as_str(), args.unwrap(), ack),
                (
                    "publish",
                    json!({"channel": "c", "data": {"x": [1]}}),
                    Some(17)
                )
            ),
            other => panic!("{other:?}"),
        }
        match decode(r#"42["dance"]"#) {
            FromClient::Event { event, ack, .. } => {
                assert_eq!((event.as_str(), ack), ("dance", None))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pongs_leaves_and_noops() {
        assert!(matches!(decode("3"), FromClient::Pong));
        assert!(matches!(decode("41"), FromClient::Leave));
        assert!(matches!(decode("1"), FromClient::Leave));
        assert!(matches!(decode("6"), FromClient::Nothing));
        assert!(matches!(decode(r#"431[{"ok":true}]"#), FromClient::Nothing));
    }

    #[test]
    fn malformed_binary_and_foreign_packets_are_invalid() {
        for bad in [
            "",
            "x",
            "4",
            "42[",
            "49",
            r#"42[1,2]"#,
            r#"451-["up",{"_placeholder":true,"num":0}]"#,
            r#"42/admin,["x"]"#,
            "bAQID",
            "2probe",
        ] {
            match decode(bad) {
                FromClient::Invalid(e) => assert_eq!(e.code, "invalid_frame", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn server_packets() {
        let open = open(
            Duration::from_millis(25_000),
            Duration::from_millis(20_000),
            65536,
        );
        let open: Value = serde_json::from_str(text(&open).strip_prefix('0').unwrap()).unwrap();
        assert_eq!(open["upgrades"], json!([]));
        assert_eq!(
            (
                open["pingInterval"].clone(),
                open["pingTimeout"].clone(),
                open["maxPayload"].clone()
            ),
            (json!(25_000), json!(20_000), json!(65536))
        );
        assert!(open["sid"].as_str().is_some_and(|s| !s.is_empty()));
        let connected = connected();
        let sid: Value =
            serde_json::from_str(text(&connected).strip_prefix("40").unwrap()).unwrap();
        assert!(sid["sid"].is_string());
        assert_eq!(
            text(&connect_error("/", "unauthorized")),
            r#"44{"message":"unauthorized"}"#
        );
        assert_eq!(
            text(&connect_error("/admin", "x")),
            r#"44/admin,{"message":"x"}"#
        );
        assert_eq!(text(&disconnect()), "41");
        assert_eq!(text(&ping()), "2");
        assert_eq!(text(&ack(3, &json!({"ok": true}))), r#"433[{"ok":true}]"#);
        assert_eq!(
            text(&event("hello", &json!({"a": 1}))),
            r#"42["hello",{"a":1}]"#
        );
    }

    #[test]
    fn the_spliced_event_is_the_encoders_packet() {
        for (name, arg) in [
            (
                "message",
                json!({"channel": "room:\"1\"", "offset": 7, "data": [1, "é"]}),
            ),
            ("a \"quoted\" name", json!("text")),
            ("n", json!(null)),
        ] {
            let raw = serde_json::value::to_raw_value(&arg).unwrap();
            assert_eq!(event_raw(name, &raw), event(name, &arg), "{name}");
        }
    }
}
