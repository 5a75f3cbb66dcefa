//! How frames reach a client socket: the [`Transport`] seam between the gateway and the
//! server's WebSocket edge.
//!
//! Publishers hand the transport a frame encoded once per node; the server's implementation
//! keeps a bounded per-connection backlog that its connection task writes out with one
//! vectored write per burst (see `wsgate_server::ws::socket` for why, with measurements).
//! `send` never blocks and never waits for a socket: a full backlog is `Overflow`, and the
//! gateway closes that connection as a slow consumer.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::seams::Publication;

/// A channel publication encoded once per node and shared by every local subscriber.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub offset: u64,
    /// The complete WebSocket frame (header and payload). Server frames are unmasked, so the
    /// same bytes serve every subscriber.
    pub wire: Bytes,
    pub published_at_us: u64,
    /// The publication itself (epoch, data, event: `Arc`s and `Bytes`, no copy), for
    /// transports that frame it their own way (Socket.IO).
    pub publication: Publication,
    /// `data` as a JSON value, decoded once per node by the first transport that needs it;
    /// `/ws` never touches it.
    pub decoded: OnceLock<serde_json::Value>,
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

/// A client socket as the gateway sees it.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a frame now, or keeps it in the bounded backlog; `Overflow` when that is full.
    fn send(&self, item: &Outbound) -> Result<(), Overflow>;

    /// Sends a control frame (a ping); never refused for lack of room.
    fn send_control(&self, frame: Bytes);

    /// Holds publications back while a subscription is being answered, so the answer (and
    /// any recovered history) reaches the client before live messages of that channel.
    fn hold(&self);

    /// From now on, drops publications of `channel` at or below `offset`: the `subscribed`
    /// answer covers them.
    fn skip_through(&self, channel: Arc<str>, offset: u64);

    /// Forgets the skip of `channel` (unsubscribed).
    fn forget_skip(&self, channel: &str);

    /// Frames waiting for the socket.
    fn backlog(&self) -> usize;
}

/// Per-channel skip positions of one connection. Usually empty, so the check on the hot path
/// is one `is_empty`.
#[derive(Debug, Default)]
pub struct Skips(Vec<(Arc<str>, u64)>);

impl Skips {
    pub fn set(&mut self, channel: Arc<str>, offset: u64) {
        self.forget(&channel);
        self.0.push((channel, offset));
    }

    pub fn forget(&mut self, channel: &str) {
        self.0.retain(|(c, _)| &**c != channel);
    }

    /// Whether `d` is already covered. The first publication past the position ends the
    /// skipping for its channel.
    pub fn skips(&mut self, d: &Delivery) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let Some(i) = self.0.iter().position(|(c, _)| *c == d.channel) else {
            return false;
        };
        if d.offset <= self.0[i].1 {
            return true;
        }
        self.0.swap_remove(i);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(channel: &str, offset: u64) -> Delivery {
        Delivery {
            channel: channel.into(),
            offset,
            wire: Bytes::new(),
            published_at_us: 0,
            publication: Publication {
                channel: channel.into(),
                offset,
                epoch: "e".into(),
                data: Bytes::new(),
                exclude_user: None,
                event: None,
                published_at_us: 0,
            },
            decoded: OnceLock::new(),
        }
    }

    #[test]
    fn skips_until_the_stream_passes_the_position() {
        let mut s = Skips::default();
        assert!(!s.skips(&d("a", 1)));
        s.set("a".into(), 5);
        assert!(s.skips(&d("a", 4)) && s.skips(&d("a", 5)));
        assert!(!s.skips(&d("b", 1)));
        assert!(!s.skips(&d("a", 6)));
        assert!(!s.skips(&d("a", 3)), "skipping ended with offset 6");
        s.set("a".into(), 9);
        s.forget("a");
        assert!(!s.skips(&d("a", 2)));
    }
}
