//! Request/response correlation.
//!
//! Two wire conventions (seed 000):
//! - [`Correlation::UuidPrefix`]: a request is a binary frame whose first 16
//!   bytes are a fresh UUID; the reply is a binary frame starting with the
//!   same 16 bytes. The caller gets the reply with the prefix stripped.
//! - [`Correlation::JsonField`]: a request is a JSON object text frame with an
//!   id field (added as a UUID string when absent); the reply is a JSON object
//!   with the same field and value. The caller gets the whole reply.
//!
//! A frame counts as a reply only if its id matches a request in flight or one
//! that recently expired; anything else is an ordinary message. Replies are
//! never emitted as [`Event::Message`](crate::Event::Message). A reply for an
//! expired request ("late") is dropped and counted, so it can never be handed
//! to the next caller.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;
use tracing::info;

use crate::{Error, Message};

/// How expired ids are remembered to recognise late replies.
const EXPIRED_MEMORY: usize = 1024;

/// Correlation mode for [`Client::request`](crate::Client::request).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Correlation {
    /// `request` is unavailable. Default.
    #[default]
    None,
    /// 16-byte UUID prefix on binary frames.
    UuidPrefix,
    /// A JSON object field (e.g. `"id"`) on text frames.
    JsonField(String),
}

/// A request's correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CorrelationId {
    Uuid([u8; 16]),
    /// The field's value, serialised as JSON (so `1` and `"1"` differ).
    Json(String),
}

/// As logs show it (`correlation_id=…`): the UUID's hex, or the field's JSON text.
impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uuid(id) => id.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Self::Json(text) => f.write_str(text),
        }
    }
}

impl Correlation {
    /// Tags an outgoing request. Returns the frame to send and its id.
    pub(crate) fn tag(&self, msg: Message) -> Result<(Message, CorrelationId), Error> {
        match self {
            Correlation::None => Err(Error::InvalidRequest(
                "no correlation mode configured".into(),
            )),
            Correlation::UuidPrefix => {
                let id = *uuid::Uuid::new_v4().as_bytes();
                let payload = msg.as_bytes();
                let mut buf = BytesMut::with_capacity(16 + payload.len());
                buf.put_slice(&id);
                buf.put_slice(payload);
                Ok((Message::Binary(buf.freeze()), CorrelationId::Uuid(id)))
            }
            Correlation::JsonField(field) => {
                let text = msg.as_text().ok_or_else(|| {
                    Error::InvalidRequest("JSON correlation needs a text frame".into())
                })?;
                let mut value: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| Error::InvalidRequest(format!("not JSON: {e}")))?;
                let obj = value.as_object_mut().ok_or_else(|| {
                    Error::InvalidRequest("JSON correlation needs an object".into())
                })?;
                match obj.get(field) {
                    Some(id) if !id.is_null() => {
                        let id = CorrelationId::Json(id.to_string());
                        Ok((msg, id))
                    }
                    _ => {
                        let id = serde_json::Value::String(uuid::Uuid::new_v4().to_string());
                        obj.insert(field.clone(), id.clone());
                        Ok((Message::from(value), CorrelationId::Json(id.to_string())))
                    }
                }
            }
        }
    }

    /// The id an incoming frame would carry if it were a reply.
    pub(crate) fn id_of(&self, msg: &Message) -> Option<CorrelationId> {
        match (self, msg) {
            (Correlation::UuidPrefix, Message::Binary(b)) if b.len() >= 16 => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&b[..16]);
                Some(CorrelationId::Uuid(id))
            }
            (Correlation::JsonField(field), Message::Text(t)) => {
                // Cheap pre-check before parsing: the field name must appear.
                if !t.as_str().contains(field.as_str()) {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(t.as_str()).ok()?;
                let id = v.as_object()?.get(field)?;
                (!id.is_null()).then(|| CorrelationId::Json(id.to_string()))
            }
            _ => None,
        }
    }

    /// What the caller receives for a reply frame.
    pub(crate) fn reply_payload(&self, msg: Message) -> Message {
        match (self, msg) {
            (Correlation::UuidPrefix, Message::Binary(b)) => Message::Binary(b.slice(16..)),
            (_, m) => m,
        }
    }
}

struct Waiter {
    tx: oneshot::Sender<Result<Message, Error>>,
    deadline: Instant,
}

/// What happened to an incoming frame.
#[derive(Debug)]
pub(crate) enum Routed {
    /// Delivered to its requester.
    Delivered,
    /// A reply to an expired request: dropped.
    Late,
    /// Not a reply: give it to the user.
    NotAReply(Message),
}

/// Requests in flight, owned by the driver.
#[derive(Default)]
pub(crate) struct Pending {
    waiting: HashMap<CorrelationId, Waiter>,
    expired: VecDeque<CorrelationId>,
    expired_set: HashSet<CorrelationId>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn contains(&self, id: &CorrelationId) -> bool {
        self.waiting.contains_key(id)
    }

    pub fn insert(
        &mut self,
        id: CorrelationId,
        tx: oneshot::Sender<Result<Message, Error>>,
        deadline: Instant,
    ) {
        self.waiting.insert(id, Waiter { tx, deadline });
    }

    /// Routes an incoming data frame.
    pub fn route(&mut self, mode: &Correlation, msg: Message) -> Routed {
        if self.waiting.is_empty() && self.expired.is_empty() {
            return Routed::NotAReply(msg);
        }
        let Some(id) = mode.id_of(&msg) else {
            return Routed::NotAReply(msg);
        };
        if let Some(w) = self.waiting.remove(&id) {
            // The requester may have given up (timeout) before the sweep ran:
            // the send then fails and the reply counts as late.
            return match w.tx.send(Ok(mode.reply_payload(msg))) {
                Ok(()) => Routed::Delivered,
                Err(_) => {
                    info!(correlation_id = %id, "late reply dropped: its request had timed out");
                    self.remember_expired(id);
                    Routed::Late
                }
            };
        }
        if self.expired_set.contains(&id) {
            info!(correlation_id = %id, "late reply dropped: its request had timed out");
            return Routed::Late;
        }
        Routed::NotAReply(msg)
    }

    /// Drops requests past their deadline (their callers already got
    /// `Request timeout`), remembering the ids to recognise late replies.
    pub fn sweep(&mut self, now: Instant) {
        let dead: Vec<CorrelationId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now || w.tx.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(w) = self.waiting.remove(&id) {
                info!(correlation_id = %id, "request timed out");
                let _ = w.tx.send(Err(Error::RequestTimeout));
            }
            self.remember_expired(id);
        }
    }

    /// Earliest deadline among requests in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.deadline).min()
    }

    /// Fails every request in flight (connection lost or client closing).
    pub fn fail_all(&mut self, err: Error) {
        for (id, w) in std::mem::take(&mut self.waiting) {
            let _ = w.tx.send(Err(err.clone()));
            self.remember_expired(id);
        }
    }

    fn remember_expired(&mut self, id: CorrelationId) {
        if self.expired_set.insert(id.clone()) {
            self.expired.push_back(id);
            if self.expired.len() > EXPIRED_MEMORY
                && let Some(old) = self.expired.pop_front()
            {
                self.expired_set.remove(&old);
            }
        }
    }
}

/// Builds a UUID-prefixed reply frame, for servers and tests.
pub fn uuid_prefixed(id: &[u8; 16], payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(16 + payload.len());
    buf.put_slice(id);
    buf.put_slice(payload);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn uuid_prefix_roundtrip_strips_prefix() {
        let mode = Correlation::UuidPrefix;
        let (frame, id) = mode.tag(Message::binary(&b"ping"[..])).unwrap();
        let CorrelationId::Uuid(raw) = id.clone() else {
            panic!("uuid id")
        };
        assert_eq!(&frame.as_bytes()[..16], &raw);
        assert_eq!(&frame.as_bytes()[16..], b"ping");
        let reply = Message::binary(uuid_prefixed(&raw, b"pong"));
        assert_eq!(mode.id_of(&reply), Some(id));
        assert_eq!(mode.reply_payload(reply), Message::binary(&b"pong"[..]));
    }

    #[test]
    fn json_field_keeps_given_id_or_adds_one() {
        let mode = Correlation::JsonField("id".into());
        let (frame, id) = mode.tag(Message::from(r#"{"id":7,"op":"x"}"#)).unwrap();
        assert_eq!(id, CorrelationId::Json("7".into()));
        assert_eq!(frame.as_text(), Some(r#"{"id":7,"op":"x"}"#));
        let (frame, id) = mode.tag(Message::from(r#"{"op":"x"}"#)).unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.as_text().unwrap()).unwrap();
        assert_eq!(CorrelationId::Json(v["id"].to_string()), id);
        assert!(mode.tag(Message::from("[1]")).is_err());
        assert!(mode.tag(Message::binary(vec![1])).is_err());
        assert_eq!(
            mode.id_of(&Message::from(r#"{"id":"7"}"#)),
            Some(CorrelationId::Json("\"7\"".into()))
        );
        assert_eq!(mode.id_of(&Message::from(r#"{"op":"tick"}"#)), None);
    }

    /// A writer into a shared buffer, for reading back log lines.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timeouts_and_late_replies_are_logged_with_both_ids() {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Another test thread may have cached these callsites as uninteresting (no
            // subscriber there) while this one was being set: ask again.
            tracing::callsite::rebuild_interest_cache();
            // The driver runs inside this span: every line names the connection.
            let _span = tracing::info_span!("wsgate_client", id = %"up-1").entered();
            let mode = Correlation::UuidPrefix;
            let mut p = Pending::default();
            let now = Instant::now();
            let (tx, _rx) = oneshot::channel();
            p.insert(CorrelationId::Uuid([0xab; 16]), tx, now);
            p.sweep(now + Duration::from_millis(1));
            let mut reply = vec![0xab; 16];
            reply.extend_from_slice(b"late");
            assert!(matches!(
                p.route(&mode, Message::Binary(reply.into())),
                Routed::Late
            ));
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.to_lowercase().contains("correlation"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, what) in lines
            .iter()
            .zip(["request timed out", "late reply dropped"])
        {
            assert!(line.contains(" INFO "), "{line}");
            assert!(line.contains("id=up-1"), "{line}");
            assert!(
                line.contains(&format!("correlation_id={}", "ab".repeat(16))),
                "{line}"
            );
            assert!(line.contains(what), "{line}");
        }
    }

    #[test]
    fn late_reply_is_dropped_not_delivered() {
        let mode = Correlation::JsonField("id".into());
        let mut p = Pending::default();
        let now = Instant::now();
        let (tx1, mut rx1) = oneshot::channel();
        p.insert(
            CorrelationId::Json("1".into()),
            tx1,
            now + Duration::from_millis(10),
        );
        p.sweep(now + Duration::from_millis(20));
        assert_eq!(rx1.try_recv().unwrap(), Err(Error::RequestTimeout));
        let (tx2, mut rx2) = oneshot::channel();
        p.insert(
            CorrelationId::Json("2".into()),
            tx2,
            now + Duration::from_secs(10),
        );
        assert!(matches!(
            p.route(&mode, Message::from(r#"{"id":1}"#)),
            Routed::Late
        ));
        assert!(
            rx2.try_recv().is_err(),
            "late reply must not reach request 2"
        );
        assert!(matches!(
            p.route(&mode, Message::from(r#"{"id":3}"#)),
            Routed::NotAReply(_)
        ));
        assert!(matches!(
            p.route(&mode, Message::from(r#"{"id":2}"#)),
            Routed::Delivered
        ));
        assert_eq!(
            rx2.try_recv().unwrap().unwrap().as_text(),
            Some(r#"{"id":2}"#)
        );
    }
}
