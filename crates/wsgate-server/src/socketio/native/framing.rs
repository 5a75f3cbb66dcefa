//! What the gateway sends a direct WebSocket client, as Socket.IO packets: the [`Framing`]
//! of its [`SharedSocket`](crate::ws::SharedSocket).
//!
//! A channel publication is the frame the node built once for all its direct subscribers
//! ([`frame_of`], kept in the delivery); a user or connection send, or a `gap` notice, is the gateway's
//! `/ws` frame turned into its event once per client (they go to one client each); the
//! heartbeat's ping is Engine.IO's `2`.

use bytes::Bytes;
use wsgate_core::gateway::Outbound;

use super::codec;
use crate::socketio::delivery::frame_event;
use crate::socketio::encoded::frame_of;
use crate::ws::Framing;

/// One per node, shared by every direct client's socket.
#[derive(Debug)]
pub struct SioFraming {
    ping: Bytes,
}

impl SioFraming {
    pub fn new() -> Self {
        Self {
            ping: codec::ping(),
        }
    }
}

impl Framing for SioFraming {
    fn item(&self, item: &Outbound, _ws: Bytes) -> Option<Bytes> {
        match item {
            Outbound::Publication(d) => match &d.publication {
                // `_ws` may carry `/ws`'s `epoch_changed` frame first: a Socket.IO client
                // sees a new epoch in the message itself (docs/socketio.md).
                Some(p) => Some(frame_of(d, p)),
                None => reframe(&d.wire),
            },
            Outbound::Frame(wire) => reframe(wire),
        }
    }

    fn ping(&self) -> Bytes {
        self.ping.clone()
    }
}

/// A gateway frame as its Socket.IO event (`message`, `gap`, `join`, …).
fn reframe(wire: &[u8]) -> Option<Bytes> {
    let (op, args) = frame_event(wire)?;
    Some(codec::event(&op, &args))
}
