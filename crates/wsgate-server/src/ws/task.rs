//! The life of one client connection after the upgrade.
//!
//! One task, one `select!`: a close request, an overflow of the byte budget, the backlog
//! (only when the client reads slower than it is sent to), and the socket's inbound frames
//! (not while more than half the budget waits: the client must read before it is read).
//! Publications pass through here only when the client reads slower than they come: the
//! node's flush lane writes them (see [`super::socket`]) and hands the task what the socket
//! did not take.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tracing::{debug, warn};
use wsgate_core::auth::{AuthError, Identity};
use wsgate_core::gateway::{Attention, CloseRequest, Connection, Gateway, Session};
use wsgate_core::protocol::{self, ProtocolError, close};

use super::WsConfig;
use super::socket::{SharedSocket, Signal, SocketIo};
use super::state::{WsState, WsView};
use crate::hooks::{Greeting, Refusal};
use crate::limits::Slot;

pub(crate) type Socket = WebSocketStream<SocketIo>;

/// The close reason of a connection whose queue overflowed (frames or bytes).
pub(crate) const OVERFLOW: &str = "slow consumer: backlog full";

/// A client whose token failed: told why in the close frame (4001), then dropped.
pub(super) async fn refuse(
    edge: WsState,
    socket: Arc<SharedSocket>,
    mut ws: Socket,
    e: AuthError,
    remote: SocketAddr,
) {
    let reason = e.reason();
    edge.gateway.metrics.reject(reason);
    warn!(%remote, reason, error = %e, "authentication failed");
    let mut taken = VecDeque::new();
    close_gracefully(
        &edge,
        &socket,
        &mut ws,
        &mut taken,
        close::AUTH_FAILED,
        &e.to_string(),
    )
    .await;
}

/// A client the connect hook refused (its close code, 4000 to 4999) or could not be asked
/// about (4503): told so in the close frame, then dropped.
pub(super) async fn refuse_hook(
    edge: WsState,
    socket: Arc<SharedSocket>,
    mut ws: Socket,
    refusal: Refusal,
    remote: SocketAddr,
) {
    edge.gateway.metrics.reject(refusal.reason);
    warn!(%remote, reason = refusal.reason, code = refusal.code, message = %refusal.message, "connect hook refused the connection");
    close_gracefully(
        &edge,
        &socket,
        &mut ws,
        &mut VecDeque::new(),
        refusal.code,
        &refusal.message,
    )
    .await;
}

/// What a connection opens with: its id (told to the connect hook), who it is, and what the
/// connect hook added.
pub(super) struct Opened {
    pub id: Arc<str>,
    pub identity: Identity,
    pub greeting: Greeting,
}

/// A user already at `max_connections_per_user`: told so in a 4029 close frame, then dropped.
pub(super) async fn refuse_user(
    edge: WsState,
    socket: Arc<SharedSocket>,
    mut ws: Socket,
    remote: SocketAddr,
) {
    edge.gateway.metrics.reject("user_connections");
    debug!(%remote, "too many connections for this user");
    close_gracefully(
        &edge,
        &socket,
        &mut ws,
        &mut VecDeque::new(),
        close::SLOW_CONSUMER,
        "too many connections for this user",
    )
    .await;
}

/// The per-connection inbound rate limits: frames and payload bytes per second.
/// A frame over either is dropped with one `rate_limited` error frame per streak; a streak
/// of `rate_limit_strikes` dropped frames closes the connection with 4029. The Socket.IO
/// edge applies the same limits to its events.
pub(crate) struct Inbound {
    messages: Option<Gcra>,
    bytes: Option<Gcra>,
    strikes: u32,
    max_strikes: u32,
    last_strike: Option<Instant>,
}

/// One limiter: GCRA as `governor` does it (the node's other limits use `governor`, with
/// the same quota: `limits::quota`), in 24 bytes instead of its 80, since every connection
/// keeps two in its task (memory per idle connection is a target, issue 16). Times are
/// nanoseconds since the process's [`epoch`].
#[derive(Debug)]
struct Gcra {
    /// Nanoseconds per cell (the replenish interval).
    t: NonZeroU64,
    /// The burst's tolerance: `t * (burst - 1)`.
    tau: u64,
    /// The theoretical arrival time of the next cell; 0 before the first one.
    tat: u64,
}

impl Gcra {
    /// `per_sec` cells per second in bursts of `burst` (at least `per_sec`); `None` for 0.
    fn new(per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = burst.max(rate.get());
        let t = NonZeroU64::new((1_000_000_000 / u64::from(rate.get())).max(1))?;
        Some(Self {
            t,
            tau: t.get().saturating_mul(u64::from(burst - 1)),
            tat: 0,
        })
    }

    /// Whether `n` cells pass at `now` (all or none); counted when they do. More cells than
    /// the burst never pass.
    fn check_n(&mut self, n: NonZeroU32, now: u64) -> bool {
        let t = self.t.get();
        let extra = t.saturating_mul(u64::from(n.get() - 1));
        if extra > self.tau {
            return false;
        }
        let tat = if self.tat == 0 { now } else { self.tat };
        if now < tat.saturating_add(extra).saturating_sub(self.tau) {
            return false;
        }
        self.tat = tat.max(now).saturating_add(t).saturating_add(extra);
        true
    }
}

/// Nanoseconds since the first call in this process (the limiters' clock).
fn epoch_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What [`Inbound::check`] decided about one inbound message.
pub(crate) enum Verdict {
    /// Handle it.
    Pass,
    /// Dropped by the `kind` limit (`messages` or `bytes`); `first` of its streak.
    Dropped { kind: &'static str, first: bool },
    /// Dropped, and the streak is long enough to close the connection (4029).
    Close(CloseRequest),
}

impl Inbound {
    pub(crate) fn new(config: &WsConfig) -> Self {
        let byte_burst = config
            .client_byte_burst
            .max(u32::try_from(config.max_message_size).unwrap_or(u32::MAX));
        Self {
            messages: Gcra::new(config.client_message_rate, config.client_message_burst),
            bytes: Gcra::new(config.client_byte_rate, byte_burst),
            strikes: 0,
            max_strikes: config.rate_limit_strikes.max(1),
            last_strike: None,
        }
    }

    /// `None`: the frame may be handled. `Some(kind)`: dropped by that limit.
    fn limited(&mut self, len: usize) -> Option<&'static str> {
        if self.messages.is_none() && self.bytes.is_none() {
            return None;
        }
        let now = epoch_nanos();
        if let Some(m) = &mut self.messages
            && !m.check_n(NonZeroU32::MIN, now)
        {
            return Some("messages");
        }
        if let Some(b) = &mut self.bytes {
            let n = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX));
            if let Some(n) = n
                && !b.check_n(n, now)
            {
                return Some("bytes");
            }
        }
        None
    }

    /// Checks one inbound message of `len` bytes against the limits, counting strikes.
    pub(crate) fn check(&mut self, gw: &Gateway, len: usize) -> Verdict {
        if let Some(kind) = self.limited(len) {
            gw.metrics.rate_limited_frame(kind);
            self.strikes += 1;
            self.last_strike = Some(Instant::now());
            if self.strikes >= self.max_strikes {
                return Verdict::Close(CloseRequest {
                    code: close::SLOW_CONSUMER,
                    reason: "rate_limited",
                    message: format!("rate limit exceeded ({kind})"),
                });
            }
            let first = self.strikes == 1;
            if first {
                gw.metrics.protocol_error("rate_limited");
            }
            return Verdict::Dropped { kind, first };
        }
        // A streak ends once messages pass again and a second went by without a drop.
        if self
            .last_strike
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.strikes = 0;
            self.last_strike = None;
        }
        Verdict::Pass
    }
}

/// The error a client gets for the first message of a rate-limited streak.
pub(crate) fn rate_limited(kind: &str) -> ProtocolError {
    ProtocolError::new(
        "rate_limited",
        format!("too many {kind} per second; frames are being dropped"),
    )
}

/// Sends a close frame after everything already queued, then waits (bounded) for the
/// client's answer so the close handshake completes.
pub(crate) async fn close_gracefully(
    edge: &WsView,
    socket: &SharedSocket,
    ws: &mut Socket,
    taken: &mut VecDeque<Bytes>,
    code: u16,
    message: &str,
) {
    // A slow consumer's queue is dropped, so that it gets the close frame at all.
    socket.stop_publications(code == close::SLOW_CONSUMER);
    // Close reasons are limited to 123 bytes by RFC 6455.
    let mut reason = message.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let grace = edge.config.close_grace();
    let _ = tokio::time::timeout(grace, async {
        ws.send(Message::Close(Some(frame))).await?;
        socket.flush(taken).await?;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
        Ok::<_, WsError>(())
    })
    .await;
}

/// The client is leaving: what is queued goes out, then the answer to its close frame, which
/// tungstenite queued when it read it; `send` when the client left without a WebSocket close
/// (Socket.IO's `41`) and the close frame is ours to send. Bounded by the close grace.
pub(crate) async fn answer_close(
    edge: &WsView,
    socket: &SharedSocket,
    ws: &mut Socket,
    taken: &mut VecDeque<Bytes>,
    send: bool,
) {
    socket.stop_publications(false);
    let _ = tokio::time::timeout(edge.config.close_grace(), async {
        if send {
            let _ = ws.send(Message::Close(None)).await;
        }
        let _ = ws.flush().await;
        socket.flush(taken).await
    })
    .await;
}

/// Why a connection task ended.
pub(crate) struct Ending {
    pub(crate) reason: &'static str,
    /// Close frame we send, if any.
    pub(crate) close: Option<(u16, String)>,
}

impl Ending {
    fn quiet(reason: &'static str) -> Self {
        Self {
            reason,
            close: None,
        }
    }
    fn from_request(r: &CloseRequest) -> Self {
        Self {
            reason: r.reason,
            close: Some((r.code, r.message.clone())),
        }
    }
}

/// Opens an authenticated connection: registers it and sends `hello`. The caller then
/// awaits [`serve`] at once (nothing may come between, or the connection would stay
/// registered without a task).
pub(super) fn open(
    edge: &WsView,
    socket: &Arc<SharedSocket>,
    opened: Opened,
    remote: SocketAddr,
) -> Arc<Connection> {
    let gw = &edge.gateway;
    let Opened {
        id,
        identity,
        greeting,
    } = opened;
    let conn = gw.open_as("gateway", id, identity, Some(remote), socket.clone());
    let hello = gw.hello_with(&conn, greeting.data.as_deref().map(|d| d.get()));
    socket.write_frame(protocol::wire_text(hello.as_bytes()));
    gw.arm_expiry(&conn);
    conn
}

/// The life of one connection [`open`] opened. `slot` (its admission) is released with the
/// socket, before the presence entries are removed: a store outage holds neither.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see the body
pub(super) fn serve(
    edge: WsState,
    socket: Arc<SharedSocket>,
    mut ws: Socket,
    conn: Arc<Connection>,
    slot: Slot,
) -> impl Future<Output = ()> + use<> {
    // Not an `async fn`: its arguments would be kept twice in the future, as arguments and
    // as the body's locals (rust-lang/rust#62958), and every connection keeps this future.
    async move {
        let gw = edge.gateway.clone();
        let mut session = Session::new(conn.clone(), edge.auth.clone());
        let mut taken = VecDeque::new();
        let mut limits = Inbound::new(&edge.config);
        let ending = run(&gw, &socket, &mut ws, &mut session, &mut taken, &mut limits).await;
        if let Some((code, message)) = &ending.close {
            Box::pin(close_gracefully(
                &edge, &socket, &mut ws, &mut taken, *code, message,
            ))
            .await;
        } else if ending.reason == "client_closed" {
            // Boxed like the rest of the ending: this task's future stays the size of its
            // idle state.
            Box::pin(answer_close(&edge, &socket, &mut ws, &mut taken, false)).await;
        }
        let channels = gw.close(&conn, ending.reason, ending.close.as_ref().map(|c| c.0));
        let (id, user) = (conn.id.clone(), conn.user().clone());
        drop((ws, socket, taken, session, slot, conn));
        Box::pin(gw.leave_channels(&id, &user, &channels)).await;
    }
}

/// `taken` holds frames a flush took from the backlog and has not written yet; it outlives
/// this loop so the close path writes them (in order) before the close frame.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see the body
fn run<'a>(
    gw: &'a Gateway,
    socket: &'a SharedSocket,
    ws: &'a mut Socket,
    session: &'a mut Session,
    taken: &'a mut VecDeque<Bytes>,
    limits: &'a mut Inbound,
) -> impl Future<Output = Ending> + 'a {
    // Not an `async fn`, like `serve`: its arguments would be kept twice.
    async move {
        let conn = session.conn.clone();
        loop {
            match next(gw, &conn, socket, ws, taken).await {
                Turn::Close => {
                    return conn
                        .close_request()
                        .map_or(Ending::quiet("closed"), Ending::from_request);
                }
                // Boxed like `inbound`: a server-side subscription is a large future too.
                Turn::ServerOps => Box::pin(server_ops(gw, socket, session)).await,
                Turn::Failed => return Ending::quiet("io_error"),
                Turn::Gone => return Ending::quiet("client_gone"),
                Turn::Broken(ending) => return ending,
                Turn::Message(msg) => {
                    // Boxed: the handling of a frame (subscribe, recovery, the store) is a
                    // large future, and this task's state is kept by every idle connection.
                    if let Some(ending) = Box::pin(inbound(gw, socket, session, limits, msg)).await
                    {
                        return ending;
                    }
                }
            }
        }
    }
}

/// What a connection's loop handles in its own protocol ([`next`] does the socket's work).
pub(crate) enum Turn {
    /// A close was requested: by the gateway, or by the byte budget (4029, asked for here).
    Close,
    /// Server-side subscription changes wait.
    ServerOps,
    /// Writing failed (recorded in the connection's stats): the connection ends, `io_error`.
    Failed,
    /// The client sent a message (which counts as liveness: the connection is touched).
    Message(Message),
    /// The client's stream ended without a close frame.
    Gone,
    /// The client's stream failed (too large, not UTF-8, not WebSocket): how it ends.
    Broken(Ending),
}

/// Waits for the next [`Turn`] of a connection, writing its backlog meanwhile: the loop of
/// every protocol the `/ws` machinery speaks (`/ws` JSON here, Socket.IO's direct
/// WebSocket in `socketio::native`). One `select!`: a close request, the byte budget's
/// overflow, the backlog (only when the client reads slower than it is sent to), and the
/// client's frames (not while more than half the budget waits: the client must read before
/// it is read).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`, like `serve`
pub(crate) fn next<'a>(
    gw: &'a Gateway,
    conn: &'a Connection,
    socket: &'a SharedSocket,
    ws: &'a mut Socket,
    taken: &'a mut VecDeque<Bytes>,
) -> impl Future<Output = Turn> + 'a {
    async move {
        loop {
            let (backlog, paused) = socket.backlog_state();
            tokio::select! {
                biased;
                attention = conn.attention() => return match attention {
                    Attention::Close => Turn::Close,
                    Attention::ServerOps => Turn::ServerOps,
                },
                signal = socket.signal(!backlog) => match signal {
                    Signal::Overflow => {
                        if conn.request_close(close::SLOW_CONSUMER, "slow_consumer", OVERFLOW) {
                            gw.metrics.slow_consumer();
                        }
                        return Turn::Close;
                    }
                    Signal::Backlog => {
                        if let Err(e) = socket.write_now(taken) {
                            conn.stats.record_error(e.to_string());
                            return Turn::Failed;
                        }
                    }
                },
                flushed = socket.flush(taken), if backlog => {
                    if let Err(e) = flushed {
                        conn.stats.record_error(e.to_string());
                        return Turn::Failed;
                    }
                }
                frame = ws.next(), if !paused => return match frame {
                    Some(Ok(msg)) => {
                        conn.touch(gw.now_ms());
                        Turn::Message(msg)
                    }
                    None => Turn::Gone,
                    Some(Err(e)) => Turn::Broken(read_error(conn, e)),
                },
            }
        }
    }
}

/// Handles one inbound message; `Some` ends the connection.
async fn inbound(
    gw: &Gateway,
    socket: &SharedSocket,
    session: &mut Session,
    limits: &mut Inbound,
    msg: Message,
) -> Option<Ending> {
    let conn = session.conn.clone();
    // Pings count too: each one makes tungstenite queue a pong.
    let len = match &msg {
        Message::Text(t) => Some(t.len()),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => Some(b.len()),
        _ => None,
    };
    if let Some(len) = len {
        match limits.check(gw, len) {
            Verdict::Pass => {}
            Verdict::Close(close) => return Some(Ending::from_request(&close)),
            Verdict::Dropped { kind, first } => {
                if first {
                    let e = rate_limited(kind);
                    socket.write_frame(protocol::wire_text(
                        protocol::error_frame(None, &e).as_bytes(),
                    ));
                }
                return None;
            }
        }
    }
    let answer = match msg {
        Message::Text(text) => session.handle_text(gw, text.as_str()).await,
        Message::Binary(data) => session.handle_binary(gw, data.len()),
        Message::Close(_) => return Some(Ending::quiet("client_closed")),
        // Pings are answered by tungstenite; both only prove liveness.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    let frames: Vec<Utf8Bytes> = match answer {
        Ok(frames) => frames,
        Err(close) => return Some(Ending::from_request(&close)),
    };
    for f in frames {
        socket.write_frame(protocol::wire_text(f.as_bytes()));
    }
    release(gw, socket, &conn);
    None
}

/// Runs the server-side subscription changes waiting on the connection (see
/// `wsgate_core::gateway::server_subs`): their frames first, then what the hold kept back.
async fn server_ops(gw: &Gateway, socket: &SharedSocket, session: &mut Session) {
    for answer in session.server_ops(gw).await {
        socket.write_frame(protocol::wire_text(answer.frame().as_bytes()));
    }
    release(gw, socket, &session.conn);
}

/// Publications held back while a subscription was answered go out after the answer.
pub(crate) fn release(gw: &Gateway, socket: &SharedSocket, conn: &Connection) {
    if socket.release().is_err() {
        let slow = conn.request_close(close::SLOW_CONSUMER, "slow_consumer", OVERFLOW);
        if slow {
            gw.metrics.slow_consumer();
        }
    }
}

fn read_error(conn: &Connection, e: WsError) -> Ending {
    conn.stats.record_error(e.to_string());
    let (reason, code) = match &e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            ("message_too_big", close::MESSAGE_TOO_BIG)
        }
        WsError::Capacity(_) => ("message_too_big", close::MESSAGE_TOO_BIG),
        WsError::Utf8(_) => ("invalid_utf8", close::INVALID_PAYLOAD),
        WsError::Protocol(_) => ("protocol_error", close::PROTOCOL_ERROR),
        _ => return Ending::quiet("io_error"),
    };
    Ending {
        reason,
        close: Some((code, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gcra_lets_a_burst_through_then_the_rate() {
        let one = NonZeroU32::MIN;
        let mut g = Gcra::new(10, 20).unwrap();
        let start = 5 * SEC;
        assert!((0..20).all(|_| g.check_n(one, start)));
        assert!(!g.check_n(one, start));
        // One cell per 100 ms comes back.
        assert!(!g.check_n(one, start + SEC / 10 - 1));
        assert!(g.check_n(one, start + SEC / 10));
        assert!(!g.check_n(one, start + SEC / 10));
        // After a long pause the whole burst again, never more.
        let later = start + 100 * SEC;
        assert!((0..20).all(|_| g.check_n(one, later)));
        assert!(!g.check_n(one, later));
    }

    #[test]
    fn gcra_weighs_cells_all_or_none() {
        let mut g = Gcra::new(100, 1000).unwrap();
        assert!(
            !g.check_n(NonZeroU32::new(1001).unwrap(), SEC),
            "over the burst"
        );
        assert!(g.check_n(NonZeroU32::new(600).unwrap(), SEC));
        assert!(
            !g.check_n(NonZeroU32::new(500).unwrap(), SEC),
            "only 400 left"
        );
        assert!(g.check_n(NonZeroU32::new(400).unwrap(), SEC));
        assert!(Gcra::new(0, 10).is_none());
    }
}
