//! How the gateway's frames reach a Socket.IO client: the [`Transport`] of a Socket.IO
//! connection.
//!
//! The gateway hands every transport the same [`Outbound`] items. A `/ws` transport writes
//! their pre-encoded WebSocket frames; this one emits Socket.IO events through socketioxide
//! instead: a channel publication becomes `message` with `{channel, offset, epoch, data}`
//! (or the publication's own event, with `data` as its only argument), a user or connection
//! send becomes `message` with `{data}`, a `gap` notice the event `gap`. A publication's `data` is decoded into a JSON value
//! once per node (shared by every Socket.IO subscriber); socketioxide encodes the packet per
//! socket. Emitting never waits: the socket's buffer (`outbox_capacity` packets) full is
//! [`Overflow`], and the gateway closes the connection as a slow consumer.

use std::sync::Weak;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Map, Value};
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use wsgate_core::clock::Clock;
use wsgate_core::gateway::{Connection, Outbound, Overflow, Skips, Transport};
use wsgate_core::protocol;
use wsgate_core::seams::Publication;

/// The event every channel publication without an event of its own, and every direct
/// message, is emitted as.
pub const MESSAGE: &str = "message";

/// A channel publication as the `message` event carries it.
#[derive(Serialize)]
struct ChannelMessage<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    data: &'a Value,
}

/// `data` (validated JSON text on every path into the broker) as a value.
pub(super) fn decode(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or(Value::Null)
}

/// Emits one channel publication the Socket.IO way.
pub(super) fn emit_publication(
    socket: &SocketRef,
    p: &Publication,
    data: &Value,
) -> Result<(), SendError> {
    match &p.event {
        Some(event) => socket.emit(&**event, data),
        None => socket.emit(
            MESSAGE,
            &ChannelMessage {
                channel: &p.channel,
                offset: p.offset,
                epoch: &p.epoch,
                data,
            },
        ),
    }
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
}

impl std::fmt::Debug for SioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioTransport")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SioTransport {
    pub(super) fn new(socket: SocketRef, capacity: usize, clock: Clock) -> Self {
        Self {
            state: Mutex::new(State {
                socket: Some(socket),
                ..State::default()
            }),
            capacity,
            clock,
        }
    }

    pub(super) fn attach(&self, conn: &std::sync::Arc<Connection>) {
        self.state.lock().conn = std::sync::Arc::downgrade(conn);
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
        held.iter().try_for_each(|item| emit(&mut st, item))
    }
}

fn emit(st: &mut State, item: &Outbound) -> Result<(), Overflow> {
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
                Some(p) => {
                    let data = d.decoded.get_or_init(|| decode(&p.data));
                    emit_publication(socket, p, data)
                }
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

/// A gateway frame `{"op": "<op>", …}` as the event `<op>` with the other members: a user or
/// connection send is `message` with `{data}`, a lost-publications notice `gap` with
/// `{channel, epoch, offset}`.
fn emit_frame(socket: &SocketRef, wire: &[u8]) -> Result<(), SendError> {
    let Some(Ok(mut frame)) =
        protocol::wire_payload(wire).map(serde_json::from_slice::<Map<String, Value>>)
    else {
        return Ok(());
    };
    match frame.remove("op") {
        Some(Value::String(op)) => socket.emit(op, &frame),
        _ => Ok(()),
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
        emit(&mut st, item)
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

    fn skip_through(&self, channel: std::sync::Arc<str>, epoch: std::sync::Arc<str>, offset: u64) {
        self.state.lock().skips.set(channel, epoch, offset);
    }

    fn forget_skip(&self, channel: &str) {
        self.state.lock().skips.forget(channel);
    }

    fn backlog(&self) -> usize {
        self.state.lock().held.as_ref().map_or(0, Vec::len)
    }
}
