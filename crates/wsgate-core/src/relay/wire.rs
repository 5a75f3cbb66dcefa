//! The bytes that travel between nodes over Redis pub/sub or NATS.
//!
//! One line of ASCII header, then the raw fields, so that neither the Lua publish script nor
//! a receiving node has to escape or parse JSON:
//!
//! ```text
//! c <offset> <epoch> <published_at_us> <len(channel)> <len(exclude)> <len(event)> <len(exclude connection)>\n<channel><exclude><event><exclude connection><data>
//! u <len(user)>\n<user><data>
//! n <len(connection id)>\n<connection id><data>
//! s <len(channel)>\n<channel><data>
//! m <+|-> <len(user)>\n<user><channel>
//! ```
//!
//! `s` goes to a channel's subscribers outside its stream (`join`/`leave`); a node from
//! before it drops it as an unknown kind.
//!
//! `data` is the publication's JSON text, passed through untouched. A `c` header without
//! `<len(event)>` (nodes from before Socket.IO events) means no event, one without
//! `<len(exclude connection)>` (nodes from before `exclude_connection`) excludes no
//! connection. `m` subscribes (`+`) or unsubscribes (`-`) every connection of a user
//! (server-side subscriptions). The `c` form is built by
//! `wsgate-redis`'s `lua/publish.lua` (Redis broker) or by [`encode_channel`] (NATS broker).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::seams::{Envelope, Publication, Recipient, ServerSubscription};

#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct WireError(&'static str);

pub fn encode_channel(p: &Publication) -> Bytes {
    let exclude = p.exclude_user.as_deref().unwrap_or("");
    let event = p.event.as_deref().unwrap_or("");
    let exclude_connection = p.exclude_connection.as_deref().unwrap_or("");
    let header = format!(
        "c {} {} {} {} {} {} {}\n",
        p.offset,
        p.epoch,
        p.published_at_us,
        p.channel.len(),
        exclude.len(),
        event.len(),
        exclude_connection.len()
    );
    let mut b = BytesMut::with_capacity(
        header.len()
            + p.channel.len()
            + exclude.len()
            + event.len()
            + exclude_connection.len()
            + p.data.len(),
    );
    b.put_slice(header.as_bytes());
    b.put_slice(p.channel.as_bytes());
    b.put_slice(exclude.as_bytes());
    b.put_slice(event.as_bytes());
    b.put_slice(exclude_connection.as_bytes());
    b.put_slice(&p.data);
    b.freeze()
}

/// `m`: a change to every connection of `user`'s subscriptions.
pub fn encode_subscriptions(user: &str, change: &ServerSubscription) -> Bytes {
    let sign = match change {
        ServerSubscription::Subscribe(_) => '+',
        ServerSubscription::Unsubscribe(_) => '-',
    };
    let channel = change.channel();
    let header = format!("m {sign} {}\n", user.len());
    let mut b = BytesMut::with_capacity(header.len() + user.len() + channel.len());
    b.put_slice(header.as_bytes());
    b.put_slice(user.as_bytes());
    b.put_slice(channel.as_bytes());
    b.freeze()
}

/// `u` (to a user), `n` (to one connection) or `s` (to a channel's subscribers).
pub fn encode_direct(to: Recipient<'_>, data: &[u8]) -> Bytes {
    let (kind, target) = match to {
        Recipient::User(user) => (b'u', user),
        Recipient::Connection { id, .. } => (b'n', id),
        Recipient::Subscribers(channel) => (b's', channel),
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
    // A length that does not fit in `usize` cannot fit in the body either.
    let len = |i: usize| -> Result<usize, WireError> {
        usize::try_from(num(i)?).map_err(|_| WireError("length too large"))
    };
    let body = payload.slice(nl + 1..);
    match fields[0] {
        "c" => {
            let offset = num(1)?;
            let epoch: Arc<str> = (*fields.get(2).ok_or(WireError("no epoch"))?).into();
            let published_at_us = num(3)?;
            let ch_len = len(4)?;
            let ex_len = len(5)?;
            let ev_len = if fields.len() > 6 { len(6)? } else { 0 };
            let xc_len = if fields.len() > 7 { len(7)? } else { 0 };
            // Checked: lengths near `usize::MAX` would wrap and pass a plain `<`.
            let head = ch_len
                .checked_add(ex_len)
                .and_then(|n| n.checked_add(ev_len))
                .and_then(|n| n.checked_add(xc_len))
                .filter(|&end| end <= body.len())
                .ok_or(WireError("short body"))?;
            let channel = str_of(&body[..ch_len])?;
            let exclude = str_of(&body[ch_len..ch_len + ex_len])?;
            let event = str_of(&body[ch_len + ex_len..ch_len + ex_len + ev_len])?;
            let exclude_connection = str_of(&body[head - xc_len..head])?;
            Ok(Envelope::Channel(Publication {
                channel: channel.into(),
                offset,
                epoch,
                data: body.slice(head..),
                exclude_user: (!exclude.is_empty()).then(|| exclude.into()),
                exclude_connection: (!exclude_connection.is_empty())
                    .then(|| exclude_connection.into()),
                event: (!event.is_empty()).then(|| event.into()),
                published_at_us,
            }))
        }
        "m" => {
            let n = len(2)?;
            if body.len() < n {
                return Err(WireError("short body"));
            }
            let user: Arc<str> = str_of(&body[..n])?.into();
            let channel: Arc<str> = str_of(&body[n..])?.into();
            let change = match fields.get(1) {
                Some(&"+") => ServerSubscription::Subscribe(channel),
                Some(&"-") => ServerSubscription::Unsubscribe(channel),
                _ => return Err(WireError("bad subscription change")),
            };
            Ok(Envelope::Subscriptions { user, change })
        }
        "u" | "n" | "s" => {
            let n = len(1)?;
            if body.len() < n {
                return Err(WireError("short body"));
            }
            let target: Arc<str> = str_of(&body[..n])?.into();
            let data = body.slice(n..);
            Ok(match fields[0] {
                "u" => Envelope::User { user: target, data },
                "n" => Envelope::Connection { id: target, data },
                _ => Envelope::Subscribers {
                    channel: target,
                    data,
                },
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
            exclude_connection: Some("c1-n1".into()),
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
        assert_eq!(q.exclude_connection.as_deref(), Some("c1-n1"));
    }

    /// A header from a node that predates `exclude_connection` (six lengths) still decodes.
    #[test]
    fn older_channel_header_excludes_no_connection() {
        let Envelope::Channel(p) = decode(Bytes::from_static(b"c 3 e 9 2 0 0\nch{}")).unwrap()
        else {
            panic!("not a channel message")
        };
        assert_eq!((&*p.channel, &p.data[..]), ("ch", &b"{}"[..]));
        assert!(p.exclude_connection.is_none());
    }

    #[test]
    fn subscription_change_round_trip() {
        for change in [
            ServerSubscription::Subscribe("news:1".into()),
            ServerSubscription::Unsubscribe("a b".into()),
        ] {
            let Envelope::Subscriptions { user, change: got } =
                decode(encode_subscriptions("ann", &change)).unwrap()
            else {
                panic!("not a subscription change")
            };
            assert_eq!((&*user, got), ("ann", change));
        }
        assert!(decode(Bytes::from_static(b"m * 3\nannch")).is_err());
        assert!(decode(Bytes::from_static(b"m + 9\nann")).is_err());
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
        let Envelope::Subscribers { channel, data } =
            decode(encode_direct(Recipient::Subscribers("chat:1"), b"{}")).unwrap()
        else {
            panic!("not a subscribers message")
        };
        assert_eq!((&*channel, &data[..]), ("chat:1", &b"{}"[..]));
        assert!(decode(Bytes::from_static(b"c 1 e 2 50 0\nshort")).is_err());
        assert!(decode(Bytes::from_static(b"garbage")).is_err());
    }

    /// A peer (or anybody who can publish on the cluster channel) must not be able to
    /// panic the subscription task with lengths whose sum wraps around.
    #[test]
    fn overflowing_lengths_are_an_error_not_a_panic() {
        let max = usize::MAX;
        for header in [
            format!("c 1 e 2 {max} 1\nabc"),
            format!("c 1 e 2 1 {max}\nabc"),
            format!("c 1 e 2 {max} {max}\nabc"),
            format!("c 1 e 2 {} 0\nabc", u64::MAX),
            format!("u {}\nabc", u64::MAX),
            "c 1 e 2 99999999999999999999999 0\nabc".to_string(),
        ] {
            assert!(decode(Bytes::from(header.clone())).is_err(), "{header}");
        }
        // Empty header, unknown kind, missing fields.
        for bad in ["\n", "x 1\n", "c\n", "c 1 e 2 1\nab", "n\nab"] {
            assert!(decode(Bytes::from(bad.to_string())).is_err(), "{bad}");
        }
    }
}
