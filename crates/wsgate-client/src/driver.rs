//! The driver: the one task that owns the socket, and performs what the connection's state
//! machine decides.
//!
//! [`Machine`] (in `machine.rs`) decides every step of a connection's life (connect,
//! authenticate, replay, serve, back off, give up, close) and reads no socket. This task is
//! its thin I/O side: [`Driver::run`] performs each [`Action`] and feeds what came of it
//! (an [`Input`]) back to the machine. Everything that can fail (handshake, auth, read,
//! write, heartbeat, server close) becomes such an input, and only the machine decides what
//! happens next: there is no other place that could start a second, competing reconnect
//! loop (seed 002, failure 1). Handle commands (send, request, subscribe, ...) are
//! bookkeeping of this task: served offline while connecting or backing off, on the socket
//! while active.
//!
//! Old connection resources are released by construction: the socket is a local of `run`
//! handed from step to step of one attempt, dropped by the step that fails, and owned by
//! `session` once ready (dropped when it returns); the heartbeat timers are locals of
//! `session`; no task is spawned per connection.
//!
//! The handshake is ours down to TCP: the TLS step (`tls.rs`) sets the trust store and the
//! error strings, and a 429/503 answer's `Retry-After` becomes [`Error::Throttled`] for the
//! machine to honour. Auth messages are rendered afresh for every attempt and every
//! refresh (`sign.rs`). A request queued offline whose caller has given up is dropped from
//! the outbox, never sent late.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::correlation::{CorrelationId, Pending, Routed};
use crate::machine::{Action, Input, Machine, Settings};
use crate::stats::Shared;
use crate::subscriptions::{Added, Subscriptions};
use crate::{
    ClientConfig, ConnectionState, Error, Event, HeartbeatPing, Message, OfflinePolicy,
    Subscription,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A message waiting in the offline outbox; a request's id, to drop it once its caller
/// has given up.
struct Queued {
    msg: Message,
    request: Option<CorrelationId>,
}
type ReplyTx = oneshot::Sender<Result<Message, Error>>;

/// A request from a handle: the message, when it times out, where its reply goes.
pub(crate) struct Request {
    pub msg: Message,
    pub deadline: Instant,
    pub reply: ReplyTx,
}

/// A request whose message has been tagged with a free correlation id.
struct Tagged {
    frame: Message,
    id: CorrelationId,
    deadline: Instant,
    reply: ReplyTx,
}

/// Requests from handles to the driver.
pub(crate) enum Command {
    Send {
        msg: Message,
        ack: oneshot::Sender<Result<(), Error>>,
    },
    Request(Request),
    Subscribe {
        sub: Subscription,
        ack: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        key: String,
        ack: oneshot::Sender<Result<bool, Error>>,
    },
    Reconnect,
    Close {
        ack: oneshot::Sender<()>,
    },
}

/// Whether the driver should keep going after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(crate) struct Driver {
    cfg: ClientConfig,
    shared: Arc<Shared>,
    state_tx: watch::Sender<ConnectionState>,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    subs: Subscriptions,
    outbox: VecDeque<Queued>,
    /// The rustls configuration, built at the first `wss://` attempt.
    tls: Option<Arc<rustls::ClientConfig>>,
    pending: Pending,
    machine: Machine,
    /// Data frames that arrived during auth, emitted once the connection is ready.
    early: Vec<Message>,
    close_acks: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub fn new(
        cfg: ClientConfig,
        shared: Arc<Shared>,
        state_tx: watch::Sender<ConnectionState>,
        cmd_rx: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let cap = cfg.backoff.delay_cap();
        let machine = Machine::new(
            cfg.backoff.start_with((cfg.jitter)()),
            CircuitBreaker::new(cfg.breaker),
            Settings {
                auto_reconnect: cfg.auto_reconnect,
                has_auth: cfg.auth.is_some(),
                min_stable: cfg.min_stable.unwrap_or(cap),
                retry_after_cap: cap,
            },
        );
        Self {
            cfg,
            shared,
            state_tx,
            cmd_rx,
            events,
            subs: Subscriptions::default(),
            outbox: VecDeque::new(),
            tls: None,
            pending: Pending::default(),
            machine,
            early: Vec::new(),
            close_acks: Vec::new(),
        }
    }

    /// Performs the machine's actions until it finishes: the client is closed or gave up.
    pub async fn run(mut self) {
        let span = info_span!("wsgate_client", id = %self.shared.id, url = %crate::redact_url(&self.shared.url));
        async move {
            // The socket of the attempt in progress; `Serve` takes it for the session.
            let mut ws: Option<Ws> = None;
            let mut actions = self.machine.start();
            loop {
                let mut next = None;
                for action in actions {
                    debug_assert!(next.is_none(), "an action with an outcome ends its batch");
                    next = self.perform(action, &mut ws).await;
                }
                let Some(input) = next else {
                    return; // `Finish`
                };
                actions = self.machine.on(input, Instant::now());
            }
        }
        .instrument(span)
        .await
    }

    /// One action. Those that do I/O return what came of it, the machine's next input.
    async fn perform(&mut self, action: Action, ws: &mut Option<Ws>) -> Option<Input> {
        match action {
            Action::SetState(state, breaker) => self.set_state(state, breaker),
            Action::Connect { attempt } => {
                self.shared.total_attempts.fetch_add(1, Relaxed);
                info!(attempt, "connection attempt");
                return Some(match self.handshake().await {
                    Ok(socket) => {
                        *ws = Some(socket);
                        Input::Opened
                    }
                    Err(end) => end,
                });
            }
            // A failed step drops the socket here, before any backoff wait.
            Action::Authenticate => {
                let mut socket = ws.take().expect("authenticate follows the handshake");
                return Some(match self.authenticate(&mut socket).await {
                    Ok(early) => {
                        self.early = early;
                        *ws = Some(socket);
                        Input::Authenticated
                    }
                    Err(e) => Input::AttemptFailed(e),
                });
            }
            Action::Restore => {
                let mut socket = ws.take().expect("restore follows the handshake");
                return Some(match self.restore(&mut socket).await {
                    Ok(()) => {
                        *ws = Some(socket);
                        Input::Restored
                    }
                    Err(e) => Input::AttemptFailed(e),
                });
            }
            Action::Serve { stable_at } => {
                let socket = ws.take().expect("serve follows the restore");
                return Some(self.session(socket, stable_at).await);
            }
            Action::Wait(until) => return Some(self.wait(until).await),
            Action::Breaker(t) => {
                info!(from = ?t.from, to = ?t.to, "circuit breaker state change");
                self.shared.status().breaker = t.to;
            }
            Action::RecordError(err) => self.shared.status().last_error = Some(err),
            Action::Attempts(n) => self.shared.status().attempts = n,
            Action::MarkConnected { reconnected } => {
                {
                    let mut st = self.shared.status();
                    st.attempts = 0;
                    st.connected_since = Some(SystemTime::now());
                }
                if reconnected {
                    self.shared.reconnects.fetch_add(1, Relaxed);
                }
            }
            Action::Emit(event) => self.emit(event).await,
            Action::EmitEarly => {
                for msg in std::mem::take(&mut self.early) {
                    self.emit(Event::Message(msg)).await;
                }
            }
            Action::FailPending(err) => self.pending.fail_all(err),
            Action::DropOutbox => self.drop_outbox(),
            Action::Finish => self.ack_close(),
        }
        None
    }

    /// Sleeps out the backoff delay (or the breaker's cooldown), still serving commands so
    /// `close`, `subscribe` and queued sends work while disconnected.
    async fn wait(&mut self, until: Instant) -> Input {
        loop {
            tokio::select! {
                _ = sleep_until(until) => return Input::WaitOver,
                cmd = self.cmd_rx.recv() => {
                    if self.handle_offline(cmd) == Flow::Stop {
                        return Input::Stop;
                    }
                }
            }
        }
    }

    /// The WebSocket handshake, serving commands offline meanwhile: it is the one slow step
    /// that they must not wait for.
    async fn handshake(&mut self) -> Result<Ws, Input> {
        let failed = |e| Input::AttemptFailed(e);
        let request = self.build_request().map_err(failed)?;
        let tls = match request.uri().scheme_str() {
            Some("wss") => Some(self.tls_config().map_err(failed)?),
            _ => None,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(self.cfg.read_buffer_size)
            .max_message_size(self.cfg.max_message_size);
        let connect = tokio::time::timeout(self.cfg.connect_timeout, open(request, tls, ws_config));
        tokio::pin!(connect);
        loop {
            tokio::select! {
                res = &mut connect => return match res {
                    Ok(res) => res.map_err(failed),
                    Err(_) => Err(failed(Error::Connect(format!(
                        "handshake timed out after {:?}", self.cfg.connect_timeout
                    )))),
                },
                cmd = self.cmd_rx.recv() => {
                    if self.handle_offline(cmd) == Flow::Stop {
                        return Err(Input::Stop);
                    }
                }
            }
        }
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(c) = &self.tls {
            return Ok(c.clone());
        }
        let c = self.cfg.tls.client_config()?;
        self.tls = Some(c.clone());
        Ok(c)
    }

    /// Replays every subscription in insertion order, then flushes the outbox. Commands
    /// wait in the channel meanwhile (as during auth), so user traffic always follows the
    /// replay. Each write is bounded by the write timeout.
    async fn restore(&mut self, ws: &mut Ws) -> Result<(), Error> {
        let subs: Vec<Message> = self
            .subs
            .iter()
            .map(|s| s.subscribe_message().clone())
            .collect();
        for msg in subs {
            self.write(ws, msg).await?;
        }
        // Requests whose callers gave up (timed out) while queued are never sent.
        self.pending.sweep(std::time::Instant::now());
        self.outbox.retain(|q| {
            q.request
                .as_ref()
                .is_none_or(|id| self.pending.contains(id))
        });
        self.shared.status().pending_requests = self.pending.len();
        // Pop only after a successful write: a failed flush keeps the message.
        while let Some(msg) = self.outbox.front().map(|q| q.msg.clone()) {
            self.write(ws, msg).await?;
            self.outbox.pop_front();
        }
        self.shared.status().outbox_len = 0;
        Ok(())
    }

    fn build_request(&self) -> Result<tungstenite::handshake::client::Request, Error> {
        let mut req = self
            .cfg
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidConfig(format!("url: {e}")))?;
        let headers = req.headers_mut();
        for (name, value) in &self.cfg.headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::InvalidConfig(format!("header name {name:?}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| Error::InvalidConfig(format!("header {name}: {e}")))?;
            headers.append(name, value);
        }
        if let Some(p) = &self.cfg.subprotocol {
            let value = HeaderValue::from_str(p)
                .map_err(|e| Error::InvalidConfig(format!("subprotocol: {e}")))?;
            headers.insert("Sec-WebSocket-Protocol", value);
        }
        Ok(req)
    }

    async fn authenticate(&mut self, ws: &mut Ws) -> Result<Vec<Message>, Error> {
        let Some(auth) = self.cfg.auth.clone() else {
            return Ok(Vec::new());
        };
        for msg in crate::sign::render(&auth.messages, auth.signer.as_ref()) {
            self.write(ws, msg)
                .await
                .map_err(|e| Error::Auth(e.to_string()))?;
        }
        let Some(expect) = auth.expect else {
            return Ok(Vec::new());
        };
        let deadline = Instant::now() + auth.timeout;
        let mut early = Vec::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| Error::Auth(format!("no reply within {:?}", auth.timeout)))?;
            let msg = match frame {
                Some(Ok(WsMessage::Text(t))) => Message::Text(t),
                Some(Ok(WsMessage::Binary(b))) => Message::Binary(b),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(Error::Auth(format!(
                        "server closed: {}",
                        close_text(frame.as_ref())
                    )));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Error::Auth(e.to_string())),
                None => return Err(Error::Auth("connection closed".into())),
            };
            self.shared.count_in(msg.len());
            if auth.reject.as_ref().is_some_and(|m| m.matches(&msg)) {
                return Err(Error::Auth(format!("rejected: {}", preview(&msg))));
            }
            if expect.matches(&msg) {
                return Ok(early);
            }
            early.push(msg);
        }
    }

    /// Serves a ready connection until it fails or the client stops. At `stable_at` the
    /// machine hears that the connection proved stable; its answer is bookkeeping only.
    async fn session(&mut self, mut ws: Ws, stable_at: Option<Instant>) -> Input {
        let hb = self.cfg.heartbeat.clone();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut ping = hb.as_ref().map(|h| {
            let mut i = tokio::time::interval_at(Instant::now() + h.interval, h.interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let silence_limit = hb.as_ref().map(|h| h.timeout);
        let auth = self.cfg.auth.clone();
        let mut refresh = auth.as_ref().and_then(|a| a.refresh).map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut last_rx = Instant::now();
        // Re-armed only when it fires (not per frame): cheap on busy sockets.
        let silence = sleep_until(silence_limit.map_or(far, |t| last_rx + t));
        tokio::pin!(silence);
        // Requests queued while offline already have deadlines.
        let mut sweep_armed: Option<Instant> = self.pending.next_deadline().map(Instant::from_std);
        let sweep = sleep_until(sweep_armed.unwrap_or(far));
        tokio::pin!(sweep);
        let mut server_close: Option<Error> = None;
        let mut unproven = stable_at.is_some();
        let stable = sleep_until(stable_at.unwrap_or(far));
        tokio::pin!(stable);

        let end = loop {
            tokio::select! {
                frame = ws.next() => {
                    last_rx = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(t))) => self.on_data(Message::Text(t)).await,
                        Some(Ok(WsMessage::Binary(b))) => self.on_data(Message::Binary(b)).await,
                        Some(Ok(WsMessage::Close(frame))) => {
                            // tungstenite queues our close reply; the next read ends the stream.
                            let (code, reason) = frame.as_ref().map_or((1005, String::new()), |f| {
                                (u16::from(f.code), f.reason.to_string())
                            });
                            server_close = Some(Error::ServerClosed { code, reason });
                        }
                        Some(Ok(_)) => {} // ping (auto-answered), pong: liveness only
                        Some(Err(e)) => break Input::Lost(server_close.take().unwrap_or_else(|| Error::transport(e))),
                        None => break Input::Lost(server_close.take().unwrap_or_else(|| Error::Transport("connection closed".into()))),
                    }
                }
                cmd = self.cmd_rx.recv() => {
                    match self.handle_connected(&mut ws, cmd, &mut sweep_armed).await {
                        Ok(Flow::Continue) => {
                            if let Some(at) = sweep_armed
                                && sweep.deadline() != at
                            {
                                sweep.as_mut().reset(at);
                            }
                        }
                        Ok(Flow::Stop) => {
                            self.graceful_close(&mut ws).await;
                            break Input::Stop;
                        }
                        Err(Error::ReconnectRequested) => {
                            self.graceful_close(&mut ws).await;
                            break Input::Lost(Error::ReconnectRequested);
                        }
                        Err(e) => break Input::Lost(e),
                    }
                }
                _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                    let frame = match hb.as_ref().map(|h| &h.ping) {
                        Some(HeartbeatPing::Message(m)) => m.clone().into_ws(),
                        _ => WsMessage::Ping(bytes::Bytes::new()),
                    };
                    if let Err(e) = self.write_raw(&mut ws, frame).await {
                        break Input::Lost(e);
                    }
                }
                _ = async { refresh.as_mut().expect("guarded").tick().await }, if refresh.is_some() => {
                    let auth = auth.as_ref().expect("refresh comes with auth");
                    debug!("refreshing the login");
                    let mut res = Ok(());
                    for msg in crate::sign::render(&auth.messages, auth.signer.as_ref()) {
                        res = self.write(&mut ws, msg).await;
                        if res.is_err() {
                            break;
                        }
                    }
                    if let Err(e) = res {
                        break Input::Lost(e);
                    }
                }
                _ = &mut stable, if unproven => {
                    unproven = false;
                    for action in self.machine.on(Input::Stable, Instant::now()) {
                        let next = Box::pin(self.perform(action, &mut None)).await;
                        debug_assert!(next.is_none(), "stability changes bookkeeping only");
                    }
                }
                _ = &mut silence, if silence_limit.is_some() => {
                    let limit = silence_limit.unwrap_or_default();
                    if last_rx + limit <= Instant::now() {
                        warn!(?limit, "heartbeat timeout");
                        break Input::Lost(Error::HeartbeatTimeout(limit));
                    }
                    silence.as_mut().reset(last_rx + limit);
                }
                _ = &mut sweep, if sweep_armed.is_some() => {
                    self.pending.sweep(Instant::now().into_std());
                    self.shared.status().pending_requests = self.pending.len();
                    sweep_armed = self.pending.next_deadline().map(Instant::from_std);
                    sweep.as_mut().reset(sweep_armed.unwrap_or(far));
                }
            }
        };
        self.shared.status().connected_since = None;
        // `ws`, the interval and the sleeps are dropped here: nothing of this
        // connection outlives the function.
        end
    }

    async fn on_data(&mut self, msg: Message) {
        self.shared.count_in(msg.len());
        match self.pending.route(&self.cfg.correlation, msg) {
            Routed::Delivered => {
                self.shared.status().pending_requests = self.pending.len();
            }
            Routed::Late => {
                self.shared.late_replies.fetch_add(1, Relaxed);
                debug!("late reply dropped");
            }
            Routed::NotAReply(msg) => self.emit(Event::Message(msg)).await,
        }
    }

    async fn handle_connected(
        &mut self,
        ws: &mut Ws,
        cmd: Option<Command>,
        sweep_armed: &mut Option<Instant>,
    ) -> Result<Flow, Error> {
        let Some(cmd) = cmd else {
            return Ok(Flow::Stop);
        };
        match cmd {
            Command::Send { msg, ack } => {
                let res = self.write(ws, msg).await;
                let _ = ack.send(res.clone());
                res?;
            }
            Command::Request(req) => {
                let Some(t) = self.tag_request(req) else {
                    return Ok(Flow::Continue);
                };
                self.pending.insert(t.id, t.reply, t.deadline.into_std());
                self.shared.status().pending_requests = self.pending.len();
                if sweep_armed.is_none_or(|at| t.deadline < at) {
                    *sweep_armed = Some(t.deadline);
                }
                // On failure the request is failed with the rest (ConnectionLost).
                self.write(ws, t.frame).await?;
            }
            Command::Subscribe { sub, ack } => {
                let msg = sub.subscribe_message().clone();
                let added = self.subs.add(sub);
                self.sync_subs();
                let res = if added == Added::Unchanged {
                    Ok(())
                } else {
                    self.write(ws, msg).await
                };
                let _ = ack.send(res.clone());
                res?;
            }
            Command::Unsubscribe { key, ack } => {
                let removed = self.subs.remove(&key);
                self.sync_subs();
                let res = match removed.as_ref().and_then(|s| s.unsubscribe_message()) {
                    Some(msg) => self.write(ws, msg.clone()).await,
                    None => Ok(()),
                };
                let _ = ack.send(res.clone().map(|()| removed.is_some()));
                res?;
            }
            Command::Reconnect => return Err(Error::ReconnectRequested),
            Command::Close { ack } => {
                self.close_acks.push(ack);
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Commands while not connected: bookkeeping only, no socket.
    fn handle_offline(&mut self, cmd: Option<Command>) -> Flow {
        let Some(cmd) = cmd else { return Flow::Stop };
        match cmd {
            Command::Send { msg, ack } => {
                let _ = ack.send(self.enqueue(msg, None));
            }
            Command::Request(req) => {
                let Some(t) = self.tag_request(req) else {
                    return Flow::Continue;
                };
                match self.enqueue(t.frame, Some(t.id.clone())) {
                    // The sweep is armed when the session starts (see `session`).
                    Ok(()) => self.pending.insert(t.id, t.reply, t.deadline.into_std()),
                    Err(e) => {
                        let _ = t.reply.send(Err(e));
                    }
                }
                self.shared.status().pending_requests = self.pending.len();
            }
            Command::Subscribe { sub, ack } => {
                self.subs.add(sub);
                self.sync_subs();
                let _ = ack.send(Ok(()));
            }
            Command::Unsubscribe { key, ack } => {
                let removed = self.subs.remove(&key).is_some();
                self.sync_subs();
                let _ = ack.send(Ok(removed));
            }
            Command::Reconnect => {} // already reconnecting
            Command::Close { ack } => {
                self.close_acks.push(ack);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Tags a request for the wire; on error the requester is answered here.
    fn tag_request(&self, req: Request) -> Option<Tagged> {
        let Request {
            msg,
            deadline,
            reply,
        } = req;
        match self.cfg.correlation.tag(msg) {
            Ok((frame, id)) if !self.pending.contains(&id) => Some(Tagged {
                frame,
                id,
                deadline,
                reply,
            }),
            Ok(_) => {
                let _ = reply.send(Err(Error::RequestIdPending));
                None
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    fn enqueue(&mut self, msg: Message, request: Option<CorrelationId>) -> Result<(), Error> {
        match self.cfg.offline {
            OfflinePolicy::Reject => Err(Error::NotConnected),
            OfflinePolicy::Outbox { capacity } if self.outbox.len() >= capacity => {
                Err(Error::OutboxFull { capacity })
            }
            OfflinePolicy::Outbox { .. } => {
                self.outbox.push_back(Queued { msg, request });
                self.shared.status().outbox_len = self.outbox.len();
                Ok(())
            }
        }
    }

    async fn write(&mut self, ws: &mut Ws, msg: Message) -> Result<(), Error> {
        let len = msg.len();
        self.write_raw(ws, msg.into_ws()).await?;
        self.shared.count_out(len);
        Ok(())
    }

    async fn write_raw(&mut self, ws: &mut Ws, frame: WsMessage) -> Result<(), Error> {
        match tokio::time::timeout(self.cfg.write_timeout, ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::transport(e)),
            Err(_) => Err(Error::WriteTimeout(self.cfg.write_timeout)),
        }
    }

    async fn graceful_close(&mut self, ws: &mut Ws) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(self.cfg.close_timeout, async {
            if ws.close(Some(frame)).await.is_ok() {
                // Drain until the server's close frame ends the stream.
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }

    fn sync_subs(&self) {
        self.shared.status().subscriptions = self.subs.keys();
    }

    fn set_state(&self, state: ConnectionState, breaker: BreakerState) {
        {
            let mut st = self.shared.status();
            st.state = state;
            st.breaker = breaker;
        }
        self.state_tx.send_replace(state);
    }

    async fn emit(&self, event: Event) {
        // A dropped `Events` is allowed: the event is discarded.
        let _ = self.events.send(event).await;
    }

    fn drop_outbox(&mut self) {
        if !self.outbox.is_empty() {
            warn!(
                dropped = self.outbox.len(),
                "client stopped with messages still queued"
            );
            self.outbox.clear();
            self.shared.status().outbox_len = 0;
        }
    }

    fn ack_close(&mut self) {
        for ack in self.close_acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// TCP, TLS for `wss://`, then the WebSocket handshake.
async fn open(
    request: tungstenite::handshake::client::Request,
    tls: Option<Arc<rustls::ClientConfig>>,
    ws_config: WebSocketConfig,
) -> Result<Ws, Error> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidConfig("url has no host".into()))?
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addr = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((addr, port))
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        Some(config) => MaybeTlsStream::Rustls(crate::tls::connect(config, &host, tcp).await?),
        None => MaybeTlsStream::Plain(tcp),
    };
    match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await {
        Ok((ws, _resp)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(rejected(&resp)),
        Err(e) => Err(Error::Connect(e.to_string())),
    }
}

/// A handshake answered with an HTTP error: 429/503 with a `Retry-After` (seconds or an
/// HTTP date) is [`Error::Throttled`].
fn rejected(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> Error {
    let status = resp.status().as_u16();
    let retry_after = (status == 429 || status == 503)
        .then(|| resp.headers().get("retry-after")?.to_str().ok())
        .flatten()
        .and_then(parse_retry_after);
    match retry_after {
        Some(retry_after) => Error::Throttled {
            status,
            retry_after,
        },
        None => Error::Connect(format!("HTTP error: {}", resp.status())),
    }
}

/// `Retry-After`: delta-seconds or an HTTP date (a date in the past is no wait).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn close_text(frame: Option<&CloseFrame>) -> String {
    frame.map_or_else(
        || "no close frame".into(),
        |f| format!("{} {}", u16::from(f.code), f.reason),
    )
}

fn preview(msg: &Message) -> String {
    let s = String::from_utf8_lossy(msg.as_bytes());
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        let got = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            got > Duration::from_secs(27) && got <= Duration::from_secs(30),
            "{got:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
