//! A publication as a Socket.IO event, encoded once per node.
//!
//! socketioxide serialises what `emit` is given for every socket. Given a [`RawValue`], that
//! serialisation is a copy of its text, so the expensive part (escaping the channel and
//! epoch, and the publication's `data`, which is never decoded) is done here once per
//! publication and the result is shared by every Socket.IO subscriber on the node.
//!
//! The gateway hands each subscriber's transport the same [`Delivery`], one after the other;
//! a few recent deliveries are remembered by address (a [`Weak`] keeps the address from being
//! reused while it is remembered), so concurrent fan-outs of different channels each find
//! their own.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use wsgate_core::gateway::Delivery;
use wsgate_core::seams::Publication;

/// The event every channel publication without an event of its own, and every direct
/// message, is emitted as.
pub const MESSAGE: &str = "message";

/// A publication's event: its name and its one argument, as JSON text.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: Arc<str>,
    pub arg: Arc<RawValue>,
}

/// A channel publication as the `message` event carries it.
#[derive(Serialize)]
struct ChannelMessage<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    data: &'a RawValue,
}

/// `p` as the Socket.IO event it is emitted as: `message` with `{channel, offset, epoch,
/// data}`, or its own event with `data` as the argument.
pub fn encode(p: &Publication) -> Event {
    // `data` is validated JSON text on every path into the broker; `null` if it were not.
    let data = std::str::from_utf8(&p.data)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_owned()).ok())
        .unwrap_or_else(null);
    match &p.event {
        Some(name) => Event {
            name: name.clone(),
            arg: data.into(),
        },
        None => {
            let arg = serde_json::value::to_raw_value(&ChannelMessage {
                channel: &p.channel,
                offset: p.offset,
                epoch: &p.epoch,
                data: &data,
            })
            .unwrap_or_else(|_| null());
            Event {
                name: MESSAGE.into(),
                arg: arg.into(),
            }
        }
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// How many fan-outs in flight at once find their encoding again.
const SLOTS: usize = 8;

/// The node's recent encodings, by delivery.
#[derive(Default)]
pub struct Encodings {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// A delivery and its event.
    recent: Vec<(Weak<Delivery>, Event)>,
    /// The slot the next new encoding replaces.
    next: usize,
}

impl std::fmt::Debug for Encodings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encodings").finish_non_exhaustive()
    }
}

impl Encodings {
    /// `d`'s publication as an event, encoded by the first subscriber that needs it.
    pub fn of(&self, d: &Arc<Delivery>, p: &Publication) -> Event {
        let mut slots = self.slots.lock();
        let i = slots.find_or_encode(d, p);
        slots.recent[i].1.clone()
    }
}

/// `d`'s publication as the whole WebSocket text frame `42["<event>",<arg>]`, built by the
/// first direct WebSocket subscriber that needs it and kept in the delivery; every other one
/// queues the same bytes (`socketio::native`), the way `/ws` subscribers share `d.wire`.
pub fn frame_of(d: &Delivery, p: &Publication) -> Bytes {
    d.framed
        .get_or_init(|| {
            let e = encode(p);
            super::native::codec::event_raw(&e.name, &e.arg)
        })
        .clone()
}

impl Slots {
    /// The slot of `d`, encoded into the oldest one when it is not remembered.
    fn find_or_encode(&mut self, d: &Arc<Delivery>, p: &Publication) -> usize {
        if let Some(i) = self
            .recent
            .iter()
            .position(|(w, ..)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(d)))
        {
            return i;
        }
        let entry = (Arc::downgrade(d), encode(p));
        let i = if self.recent.len() < SLOTS {
            self.recent.push(entry);
            self.recent.len() - 1
        } else {
            self.recent[self.next] = entry;
            self.next
        };
        self.next = (self.next + 1) % SLOTS;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn publication(data: &str, event: Option<&str>) -> Publication {
        Publication {
            channel: "room:\"1\"".into(),
            offset: 7,
            epoch: "e1".into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            exclude_user: None,
            exclude_connection: None,
            event: event.map(Into::into),
            published_at_us: 0,
        }
    }

    fn delivery(p: &Publication) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: p.channel.clone(),
            epoch: p.epoch.clone(),
            offset: p.offset,
            wire: Bytes::new(),
            noticed: None,
            published_at_us: 0,
            publication: Some(p.clone()),
            framed: OnceLock::new(),
        })
    }

    #[test]
    fn a_message_carries_the_position_and_the_data_as_published() {
        let e = encode(&publication(r#"{"a":[1,2],"b":"x"}"#, None));
        assert_eq!(&*e.name, MESSAGE);
        assert_eq!(
            e.arg.get(),
            r#"{"channel":"room:\"1\"","offset":7,"epoch":"e1","data":{"a":[1,2],"b":"x"}}"#
        );
    }

    #[test]
    fn a_named_event_carries_only_the_data() {
        let e = encode(&publication("[1,\"two\"]", Some("scores")));
        assert_eq!(&*e.name, "scores");
        assert_eq!(e.arg.get(), "[1,\"two\"]");
    }

    #[test]
    fn data_that_is_not_json_becomes_null() {
        assert_eq!(encode(&publication("{", Some("x"))).arg.get(), "null");
    }

    #[test]
    fn each_delivery_is_encoded_once_and_found_again() {
        let enc = Encodings::default();
        let (p1, p2) = (publication("1", None), publication("2", None));
        let (d1, d2) = (delivery(&p1), delivery(&p2));
        let a = enc.of(&d1, &p1);
        let b = enc.of(&d2, &p2);
        assert!(Arc::ptr_eq(&a.arg, &enc.of(&d1, &p1).arg));
        assert!(Arc::ptr_eq(&b.arg, &enc.of(&d2, &p2).arg));
        assert!(!Arc::ptr_eq(&a.arg, &b.arg));
        let frame = frame_of(&d1, &p1);
        assert_eq!(frame.as_ptr(), frame_of(&d1, &p1).as_ptr(), "built once");
        let text = wsgate_core::protocol::wire_payload(&frame).unwrap();
        assert_eq!(text, format!("42[\"message\",{}]", a.arg.get()).as_bytes());
    }

    #[test]
    fn past_the_slots_the_oldest_is_encoded_again() {
        let enc = Encodings::default();
        let p = publication("1", None);
        let ds: Vec<_> = (0..=SLOTS).map(|_| delivery(&p)).collect();
        let first = enc.of(&ds[0], &p);
        for d in &ds[1..] {
            enc.of(d, &p);
        }
        assert!(!Arc::ptr_eq(&first.arg, &enc.of(&ds[0], &p).arg));
        assert_eq!(first.arg.get(), enc.of(&ds[0], &p).arg.get());
    }
}
