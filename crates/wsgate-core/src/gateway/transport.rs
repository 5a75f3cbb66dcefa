//! How frames reach a client socket: the [`Transport`] seam between the gateway and the
//! server's WebSocket edge.
//!
//! Publishers hand the transport a frame encoded once per node; the server's implementation
//! keeps a bounded per-connection backlog that the node's flush lane ([`Flushers`]) writes out
//! after a fan-out, with one vectored write per socket and pass (see
//! `wsgate_server::ws::socket` for why, with measurements).
//!
//! [`Flushers`]: super::Flushers
//! `send` never blocks and never waits for a socket: a full backlog is `Overflow`, and the
//! gateway closes that connection as a slow consumer.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::seams::Publication;

/// A channel publication encoded once per node and shared by every local subscriber.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The complete WebSocket frame (header and payload). Server frames are unmasked, so the
    /// same bytes serve every subscriber.
    pub wire: Bytes,
    /// When this node saw the channel's epoch change with this publication: the
    /// `epoch_changed` frame followed by `wire`, in one buffer (two frames back to back).
    pub noticed: Option<Bytes>,
    pub published_at_us: u64,
    /// The publication itself (data, event: `Arc`s and `Bytes`, no copy), for transports
    /// that frame it their own way (Socket.IO); `None` for a notice (`gap`) in `wire`.
    pub publication: Option<Publication>,
    /// The publication framed for subscribers of another protocol (a direct Socket.IO
    /// WebSocket: `42["message",…]`), built once per node by the first of their transports
    /// that needs it and shared by the others, as `wire` is; `/ws` never touches it.
    pub framed: OnceLock<Bytes>,
}

impl Delivery {
    /// `wire` preceded by the `epoch_changed` frame that tells a subscriber the stream it knew
    /// is gone and this publication starts its view of the new one.
    pub fn with_notice(&self) -> Bytes {
        if let Some(n) = &self.noticed {
            return n.clone();
        }
        let notice = crate::protocol::epoch_changed(&self.channel, &self.epoch, self.offset - 1);
        let notice = crate::protocol::wire_text(notice.as_bytes());
        let mut b = bytes::BytesMut::with_capacity(notice.len() + self.wire.len());
        b.extend_from_slice(&notice);
        b.extend_from_slice(&self.wire);
        b.freeze()
    }
}

/// What is sent to a client.
#[derive(Debug, Clone)]
pub enum Outbound {
    Publication(Arc<Delivery>),
    /// Any other complete WebSocket frame (direct messages, answers, pings).
    Frame(Bytes),
}

/// The client reads too slowly: its backlog is full.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// What [`Transport::queue`] leaves to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing: sent, or on its way already.
    Done,
    /// The frame waits in a backlog that was empty: hand the transport to the node's
    /// [`Flushers`](super::Flushers) once the whole fan-out is queued.
    Flush,
}

/// A client socket as the gateway sees it.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a frame now, or keeps it in the bounded backlog; `Overflow` when that is full.
    fn send(&self, item: &Outbound) -> Result<(), Overflow>;

    /// Queues a publication of a fan-out: like [`Transport::send`], but a transport that
    /// writes better once per fan-out than once per frame answers [`Queued::Flush`] instead
    /// of waking its writer, and is written by [`Transport::flush_queued`] after the fan-out.
    fn queue(&self, item: &Outbound) -> Result<Queued, Overflow> {
        self.send(item).map(|()| Queued::Done)
    }

    /// Writes what [`Transport::queue`] left waiting, from a flusher; never waits for the
    /// socket (what the socket does not take now is left to the connection's own writer).
    fn flush_queued(&self) {}

    /// Sends a control frame (a ping); never refused for lack of room.
    fn send_control(&self, frame: Bytes);

    /// Holds publications back while a subscription is being answered, so the answer (and
    /// any recovered history) reaches the client before live messages of that channel.
    fn hold(&self);

    /// From now on, drops publications of `channel` in `epoch` at or below `offset`: the
    /// `subscribed` answer covers them. A publication of another epoch is never dropped: it
    /// ends the skip and reaches the client behind an `epoch_changed` frame.
    fn skip_through(&self, channel: Arc<str>, epoch: Arc<str>, offset: u64);

    /// Forgets `channel` (unsubscribed, or its subscription failed): its skip, and the
    /// publications of it that a hold kept back. The client was told it does not follow the
    /// channel: a held one sent after that answer would be a message it never asked for (a
    /// client resuming by offset would take it for its position, and count it twice when
    /// its next subscription replays it).
    fn forget_channel(&self, channel: &str);

    /// Frames waiting for the socket.
    fn backlog(&self) -> usize;

    /// Bytes this connection may have queued at once (answers, recovered history and
    /// publications together); a recovery larger than this is answered `gap: too_large`.
    fn byte_budget(&self) -> usize {
        usize::MAX
    }
}

/// Drops the publications of `channel` from a hold ([`Transport::forget_channel`]);
/// returns the frame bytes they took.
pub fn drop_held(held: &mut Vec<Outbound>, channel: &str) -> usize {
    let mut dropped = 0;
    held.retain(|item| match item {
        Outbound::Publication(d) if &*d.channel == channel => {
            dropped += d.wire.len();
            false
        }
        _ => true,
    });
    dropped
}

/// Per-channel skip positions of one connection, with the epoch each position belongs to.
/// Usually empty, so the check on the hot path is one `is_empty`.
#[derive(Debug, Default)]
pub struct Skips(Vec<Skip>);

#[derive(Debug)]
struct Skip {
    channel: Arc<str>,
    epoch: Arc<str>,
    offset: u64,
}

impl Skips {
    pub fn set(&mut self, channel: Arc<str>, epoch: Arc<str>, offset: u64) {
        self.forget(&channel);
        // Exact: an idle subscriber keeps its skip until the channel's next publication.
        self.0.reserve_exact(1);
        self.0.push(Skip {
            channel,
            epoch,
            offset,
        });
    }

    pub fn forget(&mut self, channel: &str) {
        self.0.retain(|s| &*s.channel != channel);
        self.release_if_empty();
    }

    /// An idle connection keeps no capacity for skips it no longer has.
    fn release_if_empty(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            self.0 = Vec::new();
        }
    }

    /// The bytes to send this connection for `d`, or `None` when its subscription answer
    /// already covered `d` (same epoch, offset at or below the position). The first
    /// publication past the position ends the skipping for its channel; one of another epoch
    /// ends it too and goes out behind an `epoch_changed` frame, since the client knows the
    /// other epoch. Without a skip, the node's own notice (if `d` changed the epoch) applies.
    pub fn frame(&mut self, d: &Delivery) -> Option<Bytes> {
        let node_view = || d.noticed.as_ref().unwrap_or(&d.wire).clone();
        if self.0.is_empty() {
            return Some(node_view());
        }
        let Some(i) = self.0.iter().position(|s| s.channel == d.channel) else {
            return Some(node_view());
        };
        let skip = &self.0[i];
        if skip.epoch != d.epoch {
            self.0.swap_remove(i);
            self.release_if_empty();
            return Some(d.with_notice());
        }
        if d.offset <= skip.offset {
            return None;
        }
        self.0.swap_remove(i);
        self.release_if_empty();
        // The subscription answer named this epoch: no notice, whatever the node saw.
        Some(d.wire.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(channel: &str, epoch: &str, offset: u64) -> Delivery {
        Delivery {
            channel: channel.into(),
            epoch: epoch.into(),
            offset,
            wire: Bytes::from(format!("{channel}/{epoch}/{offset}")),
            noticed: None,
            published_at_us: 0,
            publication: None,
            framed: OnceLock::new(),
        }
    }

    fn skipped(s: &mut Skips, d: &Delivery) -> bool {
        s.frame(d).is_none()
    }

    #[test]
    fn skips_until_the_stream_passes_the_position() {
        let mut s = Skips::default();
        assert!(!skipped(&mut s, &d("a", "e", 1)));
        s.set("a".into(), "e".into(), 5);
        assert!(skipped(&mut s, &d("a", "e", 4)) && skipped(&mut s, &d("a", "e", 5)));
        assert!(!skipped(&mut s, &d("b", "e", 1)));
        assert_eq!(s.frame(&d("a", "e", 6)).unwrap(), "a/e/6", "no notice");
        assert!(
            !skipped(&mut s, &d("a", "e", 3)),
            "skipping ended with offset 6"
        );
        s.set("a".into(), "e".into(), 9);
        s.forget("a");
        assert!(!skipped(&mut s, &d("a", "e", 2)));
    }

    /// Redis restarted empty: the channel's new epoch starts again at offset 1. A client that
    /// subscribed at offset 5 of the old epoch must get offsets 1.. of the new one, behind a
    /// notice, not lose them to a skip that compared offsets only.
    #[test]
    fn a_new_epoch_is_never_skipped_and_is_announced() {
        let mut s = Skips::default();
        s.set("a".into(), "old".into(), 5);
        let first = s.frame(&d("a", "new", 1)).expect("not skipped");
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.contains(r#"{"op":"epoch_changed","channel":"a","epoch":"new","offset":0}"#),
            "{text}"
        );
        assert!(text.ends_with("a/new/1"), "{text}");
        assert_eq!(s.frame(&d("a", "new", 2)).unwrap(), "a/new/2");
    }

    /// A client that subscribed in the new epoch needs no notice even when this node saw the
    /// change with that publication.
    #[test]
    fn the_nodes_notice_is_left_out_for_a_client_that_joined_the_new_epoch() {
        let mut s = Skips::default();
        s.set("a".into(), "new".into(), 1);
        let mut p = d("a", "new", 2);
        p.noticed = Some(Bytes::from_static(b"notice+a/new/2"));
        assert_eq!(s.frame(&p).unwrap(), "a/new/2");
        let mut other = Skips::default();
        assert_eq!(other.frame(&p).unwrap(), "notice+a/new/2");
    }
}
