//! How the gateway's frames reach a Socket.IO client: the [`Transport`] of a Socket.IO
//! connection.
//!
//! The gateway hands every transport the same [`Outbound`] items. A `/ws` transport writes
//! their pre-encoded WebSocket frames; this one emits Socket.IO events through socketioxide
//! instead: a channel publication becomes `message` with `{channel, offset, epoch, data}`
//! (or the publication's own event, with `data` as its only argument), a user or connection
//! send becomes `message` with `{data}`, a `gap` notice the event `gap`. A publication's
//! event is encoded once per node ([`encoded`](super::encoded)) and shared by every Socket.IO
//! subscriber; socketioxide only copies it into each socket's packet. Emitting never waits:
//! the socket's buffer (`outbox_capacity` packets) full is [`Overflow`], and the gateway
//! closes the connection as a slow consumer.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde_json::{Map, Value};
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use wsgate_core::clock::Clock;
use wsgate_core::gateway::{Connection, Outbound, Overflow, Skips, Transport, drop_held};
use wsgate_core::protocol;

use super::encoded::{Encodings, Event};

/// Emits one publication, already encoded, the Socket.IO way.
pub(super) fn emit_event(socket: &SocketRef, e: &Event) -> Result<(), SendError> {
    socket.emit(&*e.name, &*e.arg)
}

#[derive(Default)]
struct State {
    /// Cleared when the connection ends, which also breaks the cycle socket → its event
    /// handlers → connection → transport → socket.
    socket: Option<SocketRef>,
    /// `Some` while a subscription is being answered.
    held: Option<Vec<Outbound>>,
    skips: Skips,
    /// The connection, to count Engine.IO's liveness as the gateway's (see `send_control`).
    conn: Weak<Connection>,
}

pub struct SioTransport {
    state: Mutex<State>,
    /// Items a hold may keep (`outbox_capacity`).
    capacity: usize,
    clock: Clock,
    /// The node's encodings of the publications being fanned out.
    encodings: Arc<Encodings>,
}

impl std::fmt::Debug for SioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioTransport")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SioTransport {
    pub(super) fn new(
        socket: SocketRef,
        capacity: usize,
        clock: Clock,
        encodings: Arc<Encodings>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                socket: Some(socket),
                ..State::default()
            }),
            capacity,
            clock,
            encodings,
        }
    }

    pub(super) fn attach(&self, conn: &Arc<Connection>) {
        self.state.lock().conn = Arc::downgrade(conn);
    }

    /// The connection ended: nothing more is emitted, and the socket is let go.
    pub(super) fn detach(&self) {
        let mut st = self.state.lock();
        st.socket = None;
        st.held = None;
    }

    /// Emits what a hold kept, minus what the answer covered.
    pub(super) fn release(&self) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        let Some(held) = st.held.take() else {
            return Ok(());
        };
        held.iter()
            .try_for_each(|item| emit(&mut st, &self.encodings, item))
    }
}

fn emit(st: &mut State, encodings: &Encodings, item: &Outbound) -> Result<(), Overflow> {
    let Some(socket) = &st.socket else {
        return Ok(());
    };
    let sent = match item {
        Outbound::Publication(d) => {
            // The skips' frame is the `/ws` bytes; here only whether the answer covered `d`
            // counts (a new epoch shows in each message's `epoch`).
            if st.skips.frame(d).is_none() {
                return Ok(());
            }
            match &d.publication {
                Some(p) => emit_event(socket, &encodings.of(d, p)),
                None => emit_frame(socket, &d.wire),
            }
        }
        Outbound::Frame(wire) => emit_frame(socket, wire),
    };
    match sent {
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(Overflow),
        // Closed: the disconnect handler ends the connection. A value that does not encode
        // cannot happen (it came out of serde_json).
        _ => Ok(()),
    }
}

/// Emits a gateway frame as the Socket.IO event [`frame_event`] makes of it.
fn emit_frame(socket: &SocketRef, wire: &[u8]) -> Result<(), SendError> {
    match frame_event(wire) {
        Some((op, args)) => socket.emit(op, &args),
        None => Ok(()),
    }
}

/// A gateway frame `{"op": "<op>", …}` as the event `<op>` with the other members: a user or
/// connection send is `message` with `{data}`, a lost-publications notice `gap` with
/// `{channel, epoch, offset}`. `None` for what is not such a frame.
pub(super) fn frame_event(wire: &[u8]) -> Option<(String, Map<String, Value>)> {
    let mut frame =
        serde_json::from_slice::<Map<String, Value>>(protocol::wire_payload(wire)?).ok()?;
    match frame.remove("op") {
        Some(Value::String(op)) => Some((op, frame)),
        _ => None,
    }
}

impl Transport for SioTransport {
    fn send(&self, item: &Outbound) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        if let Some(held) = &mut st.held {
            if held.len() >= self.capacity {
                return Err(Overflow);
            }
            held.push(item.clone());
            return Ok(());
        }
        emit(&mut st, &self.encodings, item)
    }

    /// The gateway's ping. Engine.IO pings Socket.IO clients itself and closes a socket that
    /// stops answering; while the socket is connected, it is alive for the gateway too.
    fn send_control(&self, _frame: bytes::Bytes) {
        let st = self.state.lock();
        if st.socket.as_ref().is_some_and(|s| s.connected())
            && let Some(conn) = st.conn.upgrade()
        {
            conn.touch(self.clock.now_ms());
        }
    }

    fn hold(&self) {
        let mut st = self.state.lock();
        if st.held.is_none() {
            st.held = Some(Vec::new());
        }
    }

    fn skip_through(&self, channel: Arc<str>, epoch: Arc<str>, offset: u64) {
        self.state.lock().skips.set(channel, epoch, offset);
    }

    fn forget_channel(&self, channel: &str) {
        let mut st = self.state.lock();
        st.skips.forget(channel);
        if let Some(held) = &mut st.held {
            drop_held(held, channel);
        }
    }

    fn backlog(&self) -> usize {
        self.state.lock().held.as_ref().map_or(0, Vec::len)
    }
}
