//! One Socket.IO client on the gateway: its connection, its events and its end.
//!
//! The client events (`subscribe`, `unsubscribe`, `publish`, `presence`) are the `/ws` ops,
//! run by the same core [`Session`] (grants, publish policy, channel limits, recovery,
//! presence, error counting) and answered through the event's acknowledgement:
//! `{"ok": true, …}` or `{"ok": false, "error": "<code>", "message": "…"}`. Each event passes
//! the connection's rate limits first and counts as liveness.
//!
//! [`answer`] runs one event for both ways in (socketioxide's sockets here, the direct
//! WebSocket clients in [`super::native`]), with the helpers both use for what the client is
//! told (`hello`, server-side subscription events, the `close` event).
//!
//! A socketioxide connection ends once: the client leaves (the disconnect handler), or the gateway asks it
//! to close (kick, slow consumer, heartbeat, protocol abuse, drain). One task per connection,
//! tracked by the node's drain, waits for either, then forgets the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::socket::DisconnectReason;
use tokio::sync::oneshot;
use tracing::debug;
use wsgate_core::auth::Identity;
use wsgate_core::gateway::{Attention, CloseRequest, Connection, Gateway, ServerAnswer, Session};
use wsgate_core::protocol::{ProtocolError, close};
use wsgate_core::seams::{Publication, Recovery, StreamPosition};

use super::delivery::{SioTransport, emit_event};
use super::encoded::encode;
use super::{KIND, SioEdge};
use crate::hooks::Greeting;
use crate::limits::Slot;
use crate::ws::task::{Inbound, Verdict, rate_limited};

/// The event a client gets before the server disconnects it: `{code, reason}` with the
/// `/ws` close code (4003 kicked, 4029 slow consumer or rate limit, 1008, 4008, 1001).
pub const CLOSE: &str = "close";

struct Client {
    sio: SioEdge,
    conn: Arc<Connection>,
    transport: Arc<SioTransport>,
    session: tokio::sync::Mutex<Session>,
    limits: Mutex<Inbound>,
    /// Told once the client has gone, with why.
    gone: Mutex<Option<oneshot::Sender<&'static str>>>,
}

/// Who the middleware admitted: the connection's id (the connect hook was told it), its
/// identity, what the connect hook added, and the admission slot it holds.
pub struct Who {
    pub id: Arc<str>,
    pub identity: Identity,
    pub greeting: Greeting,
    pub slot: Slot,
    pub remote: SocketAddr,
}

/// The namespace's connect handler, after the middleware admitted the socket.
pub fn connected(sio: SioEdge, s: SocketRef, who: Who, ready: Ready) {
    let Who {
        id,
        identity,
        greeting,
        slot,
        remote,
    } = who;
    let edge: &crate::ws::WsState = &sio;
    let gw = edge.gateway.clone();
    let transport = Arc::new(SioTransport::new(
        s.clone(),
        edge.config.outbox_capacity,
        gw.clock,
        sio.0.encodings.clone(),
    ));
    let conn = gw.open_as(KIND, id, identity, Some(remote), transport.clone());
    transport.attach(&conn);
    let (gone, left) = oneshot::channel();
    let client = Arc::new(Client {
        sio: sio.clone(),
        conn: conn.clone(),
        transport: transport.clone(),
        session: tokio::sync::Mutex::new(Session::new(conn.clone(), edge.auth.clone())),
        limits: Mutex::new(Inbound::new(&edge.config)),
        gone: Mutex::new(Some(gone)),
    });
    let _ = s.emit(HELLO, &hello(&gw, &conn, &greeting));
    // A token that expires closes the connection with 4001 after the grace (Socket.IO has no
    // `refresh`: socket.io-client reconnects, with a fresh token when `auth` is a function).
    gw.arm_expiry(&conn);
    // The handlers registered by the middleware run from now on.
    ready.0.send_replace(Some(client.clone()));
    edge.tasks.spawn(watch(client, s, slot, left));
}

/// The client events, each the `/ws` op of the same name.
#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    /// The `/ws` `rpc` op: `{method, data}`, acknowledged `{ok: true, data}`.
    Rpc,
}

impl Op {
    fn of(event: &str) -> Option<Op> {
        Some(match event {
            "subscribe" => Op::Subscribe,
            "unsubscribe" => Op::Unsubscribe,
            "publish" => Op::Publish,
            "presence" => Op::Presence,
            "rpc" => Op::Rpc,
            _ => return None,
        })
    }
}

/// What an op answers: the acknowledgement, then the publications it recovered.
pub(super) type Answer = (Value, Vec<Publication>);

/// The event a client gets once connected.
pub(super) const HELLO: &str = "hello";

/// The client's ids, as `/ws` says them in `hello` (with the connect hook's `data`).
pub(super) fn hello(gw: &Gateway, conn: &Connection, greeting: &Greeting) -> Value {
    let mut hello = json!({
        "connection_id": &*conn.id,
        "node": &**gw.node(),
        "user": &**conn.user(),
    });
    if let Some(data) = &greeting.data {
        hello["data"] = serde_json::from_str(data.get()).unwrap_or(Value::Null);
    }
    hello
}

/// One client event, whichever way the client came in (socketioxide's sockets and the direct
/// WebSocket clients of [`super::native`] both call this): liveness and the rate limits
/// (`check` weighs the event) first, then the op of the event's name run by the session, its
/// errors counted as `/ws` counts them. `None`: the rate limits closed the connection, and
/// the event gets no acknowledgement.
pub(super) async fn answer(
    gw: &Gateway,
    session: &mut Session,
    check: impl FnOnce(usize) -> Verdict,
    event: &str,
    args: Result<Value, ProtocolError>,
) -> Option<Answer> {
    session.conn.touch(gw.now_ms());
    let len = args.as_ref().map_or(0, |a| a.to_string().len());
    let verdict = check(len);
    session.count_in(gw, len);
    let result = match verdict {
        Verdict::Pass => match (Op::of(event), args) {
            (Some(op), Ok(args)) => run(op, gw, session, args).await,
            (Some(_), Err(e)) => Err(e),
            (None, _) => Err(ProtocolError::new("unknown_op", "unknown event")),
        },
        Verdict::Dropped { kind, .. } => Err(rate_limited(kind)),
        Verdict::Close(close) => {
            request(&session.conn, &close);
            return None;
        }
    };
    Some(match result {
        Ok(answer) => {
            session.succeeded();
            answer
        }
        Err(e) => {
            if let Err(close) = session.failed(gw, &e) {
                request(&session.conn, &close);
            }
            (error_ack(&e), Vec::new())
        }
    })
}

/// An error as an acknowledgement (or an `error` event): `{"ok": false, "error", "message"
/// [, "backend_code"]}`.
pub(super) fn error_ack(e: &ProtocolError) -> Value {
    let mut ack = json!({"ok": false, "error": e.code, "message": e.message});
    if let Some(code) = e.backend_code {
        ack["backend_code"] = code.into();
    }
    ack
}

/// Arguments that do not decode.
pub(super) fn invalid_args(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new("invalid_frame", format!("invalid arguments: {e}"))
}

/// A server-side subscription change as the event told to the client: `subscribed`,
/// `unsubscribed` or `error`, with `"server": true`.
pub(super) fn server_event(answer: ServerAnswer) -> (&'static str, Value) {
    match answer {
        ServerAnswer::Subscribed { channel, position } => (
            "subscribed",
            json!({
                "channel": &*channel,
                "offset": position.offset,
                "epoch": &*position.epoch,
                "server": true,
            }),
        ),
        ServerAnswer::Unsubscribed { channel } => (
            "unsubscribed",
            json!({"channel": &*channel, "server": true}),
        ),
        ServerAnswer::Failed { channel, error } => (
            "error",
            json!({
                "error": error.code,
                "message": error.message,
                "channel": &*channel,
                "server": true,
            }),
        ),
    }
}

/// Why the gateway closes `conn` (a drain's close when it asked for none), and the `close`
/// event's argument `{code, reason}` the client gets first.
pub(super) fn closing(conn: &Connection) -> (CloseRequest, Value) {
    let r = conn.close_request().cloned().unwrap_or(CloseRequest {
        code: close::GOING_AWAY,
        reason: "closed",
        message: String::new(),
    });
    let event = json!({"code": r.code, "reason": r.message});
    (r, event)
}

fn request(conn: &Connection, r: &CloseRequest) {
    conn.request_close(r.code, r.reason, r.message.clone());
}

/// The connection behind a socket's event handlers, once the connect handler opened it.
///
/// socketioxide sends the client its `40` (connected) before it runs the (spawned) connect
/// handler, and `socket.io-client` sends the events emitted before that at once: handlers
/// registered by the connect handler would miss them (an event without a handler is dropped).
/// So the middleware registers the handlers, before `40`, and they wait for this.
pub struct Ready(tokio::sync::watch::Sender<Option<Arc<Client>>>);

/// Registers the client events and the disconnect handler on an admitted socket (from the
/// connect middleware, before the client is told it is connected); [`connected`] makes them
/// run.
///
/// One handler takes every event and picks the op by name: socketioxide keeps handlers per
/// socket, so each registered event would cost every connection a boxed handler and a map
/// entry.
pub fn register(s: &SocketRef) -> Ready {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let ready = rx.clone();
    s.on_fallback(
        async move |s: SocketRef,
                    Event(event): Event,
                    TryData(args): TryData<Value>,
                    ack: AckSender| {
            if let Some(client) = client_of(ready).await {
                client.event(&s, &event, args, ack).await;
            }
        },
    );
    // Here too: a client that leaves before the connect handler ran is still seen leaving.
    s.on_disconnect(async move |reason: DisconnectReason| {
        let Some(c) = client_of(rx).await else { return };
        if let Some(gone) = c.gone.lock().take() {
            let _ = gone.send(reason_of(reason));
        }
    });
    Ready(tx)
}

/// The socket's connection, once ready; `None` when it never will be (the connect failed and
/// the sender is gone).
async fn client_of(
    mut rx: tokio::sync::watch::Receiver<Option<Arc<Client>>>,
) -> Option<Arc<Client>> {
    rx.wait_for(Option::is_some).await.ok()?.clone()
}

async fn run(
    op: Op,
    gw: &Gateway,
    session: &mut Session,
    args: Value,
) -> Result<Answer, ProtocolError> {
    match op {
        Op::Subscribe => subscribe(gw, session, args).await,
        Op::Unsubscribe => {
            let channel = channel_of(args)?;
            session.unsubscribe(gw, &channel).await?;
            Ok((json!({"ok": true, "channel": channel}), Vec::new()))
        }
        Op::Publish => {
            #[derive(Deserialize)]
            struct Args {
                channel: String,
                data: Value,
            }
            let Args { channel, data } = parse(args)?;
            let offset = session.publish(gw, &channel, &data.to_string()).await?;
            let ack = json!({"ok": true, "channel": channel, "offset": offset});
            Ok((ack, Vec::new()))
        }
        Op::Rpc => {
            #[derive(Deserialize)]
            struct Args {
                method: String,
                #[serde(default)]
                data: Value,
            }
            let Args { method, data } = parse(args)?;
            let data = serde_json::value::to_raw_value(&data)
                .map_err(|e| ProtocolError::new("invalid_frame", e.to_string()))?;
            let answer = session.rpc(gw, &method, Some(&data)).await?;
            let data: Value = serde_json::from_str(answer.get()).unwrap_or(Value::Null);
            Ok((json!({"ok": true, "data": data}), Vec::new()))
        }
        Op::Presence => {
            let channel = channel_of(args)?;
            let p = session.presence(gw, &channel).await?;
            let users: serde_json::Value =
                serde_json::from_str(&p.users_json).unwrap_or_else(|_| json!([]));
            let mut ack = json!({
                "ok": true,
                "channel": channel,
                "users": users,
                "connections": p.connections,
            });
            if p.truncated {
                ack["truncated"] = json!(true);
            }
            Ok((ack, Vec::new()))
        }
    }
}

impl Client {
    /// One client event ([`answer`]), acknowledged, then what the op recovered and what its
    /// hold kept back: all through the socket's one queue, so the client gets them in this
    /// order.
    async fn event(
        &self,
        s: &SocketRef,
        event: &str,
        args: Result<Value, ParserError>,
        ack: AckSender,
    ) {
        let gw = &self.sio.gateway;
        let mut session = self.session.lock().await;
        let check = |len| self.limits.lock().check(gw, len);
        let Some((answer, recovered)) =
            answer(gw, &mut session, check, event, args.map_err(invalid_args)).await
        else {
            return;
        };
        let _ = ack.send(&answer);
        for p in &recovered {
            let _ = emit_event(s, &encode(p));
        }
        self.release();
    }

    /// Publications held back while a subscription was answered go out after the answer.
    fn release(&self) {
        if self.transport.release().is_err() {
            let slow = self.conn.request_close(
                close::SLOW_CONSUMER,
                "slow_consumer",
                "slow consumer: backlog full",
            );
            if slow {
                self.sio.gateway.metrics.slow_consumer();
            }
        }
    }

    /// Runs the server-side subscription changes waiting on the connection, told to the
    /// client as `subscribed` / `unsubscribed` / `error` events with `"server": true`, then
    /// releases what the hold kept back.
    async fn server_ops(&self, s: &SocketRef) {
        let mut session = self.session.lock().await;
        for answer in session.server_ops(&self.sio.gateway).await {
            let (event, arg) = server_event(answer);
            let _ = s.emit(event, &arg);
        }
        self.release();
    }
}

/// `subscribe` with `"<channel>"` or `{"channel", "since": {"offset", "epoch"}}`.
async fn subscribe(
    gw: &Gateway,
    session: &mut Session,
    args: Value,
) -> Result<Answer, ProtocolError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Args {
        Channel(String),
        Full {
            channel: String,
            since: Option<StreamPosition>,
        },
    }
    let (channel, since) = match parse(args)? {
        Args::Channel(channel) => (channel, None),
        Args::Full { channel, since } => (channel, since),
    };
    let asked = since.is_some();
    let (
        Recovery {
            position,
            publications,
            gap,
        },
        data,
    ) = session.client_subscribe(gw, &channel, since).await?;
    let mut ack = json!({
        "ok": true,
        "channel": channel,
        "offset": position.offset,
        "epoch": &*position.epoch,
        "recovered": asked && gap.is_none(),
    });
    if let (true, Some(gap)) = (asked, gap) {
        ack["gap"] = gap.as_str().into();
    }
    if let Some(data) = data {
        ack["data"] = serde_json::from_str(data.get()).unwrap_or(Value::Null);
    }
    Ok((ack, publications))
}

/// `"<channel>"` or `{"channel": "<channel>"}`.
fn channel_of(args: Value) -> Result<String, ProtocolError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Args {
        Channel(String),
        Full { channel: String },
    }
    Ok(match parse(args)? {
        Args::Channel(c) | Args::Full { channel: c } => c,
    })
}

fn parse<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, ProtocolError> {
    serde_json::from_value(args).map_err(invalid_args)
}

fn reason_of(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose | DisconnectReason::ClientNSDisconnect => "client_closed",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClosingServer => "shutdown",
        DisconnectReason::ServerNSDisconnect => "closed",
        _ => "io_error",
    }
}

/// The connection's one task: waits for the client to leave or for a close request, then
/// forgets the connection (the drain waits for this task).
async fn watch(
    client: Arc<Client>,
    s: SocketRef,
    slot: Slot,
    left: oneshot::Receiver<&'static str>,
) {
    let gw = client.sio.gateway.clone();
    let conn = client.conn.clone();
    let mut left = left;
    let (reason, code) = loop {
        tokio::select! {
        left = &mut left => break (left.unwrap_or("io_error"), None),
        attention = conn.attention() => {
            if attention == Attention::ServerOps {
                client.server_ops(&s).await;
                continue;
            }
            let (r, event) = closing(&conn);
            let _ = s.emit(CLOSE, &event);
            if r.code == close::GOING_AWAY {
                // Drain: close the transports (the client reconnects, to another node).
                client.sio.close_all();
            } else {
                let _ = s.clone().disconnect();
            }
            break (r.reason, Some(r.code));
        }
        }
    };
    client.transport.detach();
    s.extensions.clear();
    drop(slot);
    debug!(connection_id = %conn.id, reason, "Socket.IO connection ended");
    let channels = gw.close(&conn, reason, code);
    gw.leave_channels(&conn.id, conn.user(), &channels).await;
}
