//! A direct WebSocket client's handshake and its one task.
//!
//! The handshake, after the 101: the Engine.IO open packet, then the client's connect (`40`,
//! with its `auth`) admitted by the same checks as socketioxide's connect middleware
//! ([`handshake::admit_request`]); a refusal is `44{"message"}` and the socket closes. Then
//! `40{"sid"}`, `hello`, and the connection's life: the `/ws` task's loop (a close request,
//! the socket's backlog, the client's frames), with Socket.IO packets read and written, and
//! each event answered by [`events::answer`], the function socketioxide's sockets use too.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, Uri};
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::debug;
use wsgate_core::gateway::{Connection, Gateway, Session};
use wsgate_core::protocol::{ProtocolError, close};

use super::codec::{self, FromClient, NS};
use crate::limits::Slot;
use crate::socketio::encoded::encode;
use crate::socketio::events::{self, HELLO};
use crate::socketio::handshake::{self, Auth};
use crate::socketio::{CLOSE, KIND, SioEdge};
use crate::ws::task::{self, Inbound, Socket, Turn, close_gracefully, release};
use crate::ws::{self, SharedSocket, WsView};

/// A normal closure (RFC 6455): what ends the WebSocket once Socket.IO said why.
const NORMAL: u16 = 1000;

/// The answer socketioxide gives a connect to another namespace.
const INVALID_NAMESPACE: &str = "Invalid namespace";

/// The handshake once the 101 is answered: `None` when the upgrade failed or the client was
/// refused (told so), else the connection's life, to be awaited.
pub(super) async fn handshake(
    sio: SioEdge,
    on_upgrade: OnUpgrade,
    headers: HeaderMap,
    uri: Uri,
    remote: SocketAddr,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let edge: &WsView = &sio;
    let framing = sio.0.framing.clone();
    let (socket, mut ws) = ws::accept(edge, on_upgrade, remote, Some(framing)).await?;
    let gw = &edge.gateway;
    // Engine.IO's heartbeat is the gateway's: a ping each interval from the node's sweep; the
    // client gives up when one is later than the interval plus the timeout.
    let interval = gw.config.heartbeat_interval;
    let ping_timeout = super::super::ping_timeout(&gw.config);
    let max_payload = edge.config.max_message_size as u64;
    socket.write_frame(codec::open(interval, ping_timeout, max_payload));
    let auth = match tokio::time::timeout(
        gw.config.heartbeat_timeout,
        connect_packet(&socket, &mut ws),
    )
    .await
    {
        Ok(Some(auth)) => auth,
        Ok(None) | Err(_) => {
            let mut taken = VecDeque::new();
            close_gracefully(edge, &socket, &mut ws, &mut taken, NORMAL, "").await;
            return None;
        }
    };
    let auth = auth.and_then(|a| serde_json::from_value::<Auth>(a).ok());
    let admitted = handshake::admit_request(&sio, &headers, &uri, remote, auth).await;
    drop((headers, uri));
    let who = match admitted {
        Ok(who) => who,
        Err(refused) => {
            socket.write_frame(codec::connect_error(NS, &refused.to_string()));
            let mut taken = VecDeque::new();
            close_gracefully(edge, &socket, &mut ws, &mut taken, NORMAL, "").await;
            return None;
        }
    };
    let conn = gw.open_as(KIND, who.id, who.identity, Some(who.remote), socket.clone());
    socket.write_frame(codec::connected());
    socket.write_frame(codec::event(
        HELLO,
        &events::hello(gw, &conn, &who.greeting),
    ));
    // A token that expires closes the connection with 4001 after the grace, as on socketioxide.
    gw.arm_expiry(&conn);
    Some(serve(sio, socket, ws, conn, who.slot))
}

/// Reads until the client connects to `/`: `Some` with its `auth`; `None` when it left or
/// sent something else first. A connect to another namespace is refused, as socketioxide
/// refuses it.
async fn connect_packet(
    socket: &SharedSocket,
    ws: &mut Socket,
) -> Option<Option<serde_json::Value>> {
    loop {
        let text = match ws.next().await? {
            Ok(Message::Text(text)) => text,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        };
        match codec::decode(text.as_str()) {
            FromClient::Connect { ns, auth } if ns == NS => return Some(auth),
            FromClient::Connect { ns, .. } => {
                socket.write_frame(codec::connect_error(&ns, INVALID_NAMESPACE));
            }
            FromClient::Pong | FromClient::Nothing => {}
            _ => return None,
        }
    }
}

/// Why the connection's task ended.
enum Ending {
    /// The client left (`41`, Engine.IO's `1`, or a close frame).
    Left,
    /// The gateway asked it to close (kick, slow consumer, heartbeat, rate limits, drain…).
    Closed,
    /// The socket failed, or a frame broke the WebSocket rules (`/ws`'s ending: the close
    /// frame's code, if any).
    Failed(task::Ending),
}

/// The life of one connection [`handshake`] opened. As `/ws`'s `serve`, not an `async fn`:
/// its arguments would be kept twice in the future every connection keeps.
#[allow(clippy::manual_async_fn)]
fn serve(
    sio: SioEdge,
    socket: Arc<SharedSocket>,
    mut ws: Socket,
    conn: Arc<Connection>,
    slot: Slot,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let gw = sio.gateway.clone();
        let mut session = Session::new(conn.clone(), sio.auth.clone());
        let mut taken = VecDeque::new();
        let mut limits = Inbound::new(&sio.config);
        let ending = run(&gw, &socket, &mut ws, &mut session, &mut taken, &mut limits).await;
        let (reason, code) = Box::pin(end(&sio, &socket, &mut ws, &mut taken, &conn, ending)).await;
        let channels = gw.close(&conn, reason, code);
        let (id, user) = (conn.id.clone(), conn.user().clone());
        drop((ws, socket, taken, session, slot, conn));
        debug!(connection_id = %id, reason, "Socket.IO connection ended");
        Box::pin(gw.leave_channels(&id, &user, &channels)).await;
    }
}

/// The connection's loop, `/ws`'s (see `ws::task::run`) with Socket.IO packets.
async fn run(
    gw: &Gateway,
    socket: &SharedSocket,
    ws: &mut Socket,
    session: &mut Session,
    taken: &mut VecDeque<Bytes>,
    limits: &mut Inbound,
) -> Ending {
    let conn = session.conn.clone();
    loop {
        match task::next(gw, &conn, socket, ws, taken).await {
            Turn::Close => return Ending::Closed,
            Turn::ServerOps => Box::pin(server_ops(gw, socket, session)).await,
            Turn::Failed => return failed("io_error"),
            Turn::Gone => return failed("client_gone"),
            Turn::Broken(ending) => return Ending::Failed(ending),
            Turn::Message(msg) => {
                // Boxed: an event's op is a large future, and every idle connection keeps
                // this one.
                if let Some(ending) = Box::pin(inbound(gw, socket, session, limits, msg)).await {
                    return ending;
                }
            }
        }
    }
}

/// One client message; `Some` ends the connection.
async fn inbound(
    gw: &Gateway,
    socket: &SharedSocket,
    session: &mut Session,
    limits: &mut Inbound,
    msg: Message,
) -> Option<Ending> {
    let conn = session.conn.clone();
    let packet = match msg {
        Message::Text(text) => codec::decode(text.as_str()),
        Message::Binary(_) => codec::binary(),
        Message::Close(_) => return Some(Ending::Left),
        // WebSocket pings are answered by tungstenite; they only prove liveness.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    match packet {
        FromClient::Pong | FromClient::Nothing => {}
        FromClient::Leave => return Some(Ending::Left),
        FromClient::Connect { ns, .. } if ns != NS => {
            socket.write_frame(codec::connect_error(&ns, INVALID_NAMESPACE));
        }
        // Connected already.
        FromClient::Connect { .. } => {}
        FromClient::Event { event, args, ack } => {
            let check = |len| limits.check(gw, len);
            // `None`: the rate limits closed the connection (the loop sees the request).
            let (answer, recovered) = events::answer(gw, session, check, &event, args).await?;
            if let Some(id) = ack {
                socket.write_frame(codec::ack(id, &answer));
            }
            for p in &recovered {
                let e = encode(p);
                socket.write_frame(codec::event_raw(&e.name, &e.arg));
            }
            release(gw, socket, &conn);
        }
        FromClient::Invalid(e) => invalid(gw, socket, session, &e),
    }
    None
}

/// A packet this edge does not take: the `error` event `{ok: false, error: "invalid_frame",
/// message}`, counted like a bad `/ws` frame (`max_protocol_errors` in a row close the
/// connection with 1008).
fn invalid(gw: &Gateway, socket: &SharedSocket, session: &mut Session, e: &ProtocolError) {
    socket.write_frame(codec::event("error", &events::error_ack(e)));
    if let Err(close) = session.failed(gw, e) {
        session
            .conn
            .request_close(close.code, close.reason, close.message);
    }
}

fn failed(reason: &'static str) -> Ending {
    Ending::Failed(task::Ending {
        reason,
        close: None,
    })
}

/// The server-side subscription changes waiting on the connection, as events, then what the
/// hold kept back.
async fn server_ops(gw: &Gateway, socket: &SharedSocket, session: &mut Session) {
    for answer in session.server_ops(gw).await {
        let (event, arg) = events::server_event(answer);
        socket.write_frame(codec::event(event, &arg));
    }
    release(gw, socket, &session.conn);
}

/// Ends the socket the way the client expects it: a close asked by the gateway is the
/// `close` event `{code, reason}`, then `41` (the client does not reconnect by itself) and
/// a normal close; a drain's (1001) skips the `41`, so the client reconnects (to another
/// node: this one answers new handshakes with 503). Returns the reason and the close code
/// for the gateway.
async fn end(
    edge: &WsView,
    socket: &SharedSocket,
    ws: &mut Socket,
    taken: &mut VecDeque<Bytes>,
    conn: &Connection,
    ending: Ending,
) -> (&'static str, Option<u16>) {
    match ending {
        Ending::Closed => {
            let (r, event) = events::closing(conn);
            // A slow consumer's queue is dropped, so that it gets the `close` event at all.
            socket.stop_publications(r.code == close::SLOW_CONSUMER);
            socket.write_frame(codec::event(CLOSE, &event));
            let code = if r.code == close::GOING_AWAY {
                close::GOING_AWAY
            } else {
                socket.write_frame(codec::disconnect());
                NORMAL
            };
            close_gracefully(edge, socket, ws, taken, code, "").await;
            (r.reason, Some(r.code))
        }
        Ending::Left => {
            // A close frame was answered by tungstenite's queue; a `41` gets one of ours.
            task::answer_close(edge, socket, ws, taken, true).await;
            ("client_closed", None)
        }
        Ending::Failed(task::Ending {
            reason,
            close: Some((code, message)),
        }) => {
            close_gracefully(edge, socket, ws, taken, code, &message).await;
            (reason, Some(code))
        }
        Ending::Failed(task::Ending { reason, .. }) => (reason, None),
    }
}
