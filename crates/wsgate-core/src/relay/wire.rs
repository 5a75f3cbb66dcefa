//! The bytes that travel between nodes over Redis pub/sub or NATS.
//!
//! One line of ASCII header, then the raw fields, so that neither the Lua publish script nor
//! a receiving node has to escape or parse JSON:
//!
//! ```text
//! c <offset> <epoch> <published_at_us> <len(channel)> <len(exclude)> <len(event)>\n<channel><exclude><event><data>
//! u <len(user)>\n<user><data>
//! n <len(connection id)>\n<connection id><data>
//! ```
//!
//! `data` is the publication's JSON text, passed through untouched. A `c` header without
//! `<len(event)>` (nodes from before Socket.IO events) means no event. The `c` form is built by
//! `wsgate-redis`'s `lua/publish.lua` (Redis broker) or by [`encode_channel`] (NATS broker).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::seams::{Envelope, Publication, Recipient};

#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct WireError(&'static str);

pub fn encode_channel(p: &Publication) -> Bytes {
    let exclude = p.exclude_user.as_deref().unwrap_or("");
    let event = p.event.as_deref().unwrap_or("");
    let header = format!(
        "c {} {} {} {} {} {}\n",
        p.offset,
        p.epoch,
        p.published_at_us,
        p.channel.len(),
        exclude.len(),
        event.len()
    );
    let mut b = BytesMut::with_capacity(
        header.len() + p.channel.len() + exclude.len() + event.len() + p.data.len(),
    );
    b.put_slice(header.as_bytes());
    b.put_slice(p.channel.as_bytes());
    b.put_slice(exclude.as_bytes());
    b.put_slice(event.as_bytes());
    b.put_slice(&p.data);
    b.freeze()
}

/// `u` (to a user) or `n` (to one connection).
pub fn encode_direct(to: Recipient<'_>, data: &[u8]) -> Bytes {
    let (kind, target) = match to {
        Recipient::User(user) => (b'u', user),
        Recipient::Connection { id, .. } => (b'n', id),
    };
    let header = format!("{} {}\n", kind as char, target.len());
    let mut b = BytesMut::with_capacity(header.len() + target.len() + data.len());
    b.put_slice(header.as_bytes());
    b.put_slice(target.as_bytes());
    b.put_slice(data);
    b.freeze()
}

pub fn decode(payload: Bytes) -> Result<Envelope, WireError> {
    let nl = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError("no header"))?;
    let header = std::str::from_utf8(&payload[..nl]).map_err(|_| WireError("header not utf-8"))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let num = |i: usize| -> Result<u64, WireError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or(WireError("bad number"))
    };
    let body = payload.slice(nl + 1..);
    match fields[0] {
        "c" => {
            let offset = num(1)?;
            let epoch: Arc<str> = (*fields.get(2).ok_or(WireError("no epoch"))?).into();
            let published_at_us = num(3)?;
            let ch_len = num(4)? as usize;
            let ex_len = num(5)? as usize;
            let ev_len = if fields.len() > 6 {
                num(6)? as usize
            } else {
                0
            };
            let head = ch_len + ex_len + ev_len;
            if body.len() < head {
                return Err(WireError("short body"));
            }
            let channel = str_of(&body[..ch_len])?;
            let exclude = str_of(&body[ch_len..ch_len + ex_len])?;
            let event = str_of(&body[ch_len + ex_len..head])?;
            Ok(Envelope::Channel(Publication {
                channel: channel.into(),
                offset,
                epoch,
                data: body.slice(head..),
                exclude_user: (!exclude.is_empty()).then(|| exclude.into()),
                event: (!event.is_empty()).then(|| event.into()),
                published_at_us,
            }))
        }
        "u" | "n" => {
            let len = num(1)? as usize;
            if body.len() < len {
                return Err(WireError("short body"));
            }
            let target: Arc<str> = str_of(&body[..len])?.into();
            let data = body.slice(len..);
            Ok(if fields[0] == "u" {
                Envelope::User { user: target, data }
            } else {
                Envelope::Connection { id: target, data }
            })
        }
        _ => Err(WireError("unknown kind")),
    }
}

fn str_of(b: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(b).map_err(|_| WireError("field not utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trip() {
        let p = Publication {
            channel: "team:42".into(),
            offset: 7,
            epoch: "abc123".into(),
            data: Bytes::from_static(br#"{"a":"b\nc"}"#),
            exclude_user: Some("ann".into()),
            event: Some("chat".into()),
            published_at_us: 99,
        };
        let Envelope::Channel(q) = decode(encode_channel(&p)).unwrap() else {
            panic!("not a channel message")
        };
        assert_eq!(
            (
                &*q.channel,
                q.offset,
                &*q.epoch,
                &q.data[..],
                q.exclude_user.as_deref(),
                q.event.as_deref()
            ),
            (
                "team:42",
                7,
                "abc123",
                &p.data[..],
                Some("ann"),
                Some("chat")
            )
        );
        assert_eq!(q.published_at_us, 99);
    }

    #[test]
    fn direct_round_trip_and_garbage() {
        let Envelope::User { user, data } =
            decode(encode_direct(Recipient::User("bob"), b"1")).unwrap()
        else {
            panic!("not a user message")
        };
        assert_eq!((&*user, &data[..]), ("bob", &b"1"[..]));
        assert!(matches!(
            decode(encode_direct(
                Recipient::Connection {
                    node: &crate::seams::NodeId::from("n1"),
                    id: "x-n1"
                },
                b"{}"
            ))
            .unwrap(),
            Envelope::Connection { .. }
        ));
        assert!(decode(Bytes::from_static(b"c 1 e 2 50 0\nshort")).is_err());
        assert!(decode(Bytes::from_static(b"garbage")).is_err());
    }
}
