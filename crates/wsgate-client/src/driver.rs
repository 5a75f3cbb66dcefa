//! The driver: the one task that owns the socket and the reconnect loop.
//!
//! Everything that can fail (handshake, auth, read, write, heartbeat, server
//! close) ends up as a return value of [`Driver::establish`] or
//! [`Driver::session`], and only [`Driver::run`] decides what happens next.
//! That is what makes a second, competing reconnect loop impossible (seed
//! 002, failure 1): there is no other place that could start one.
//!
//! Old connection resources are released by construction: the socket is a
//! local of `session`, dropped when it returns, and the heartbeat timers are
//! locals too; no task is spawned per connection.

use std::collections::VecDeque;
use std::sync::Arc;
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

use crate::breaker::{Admission, CircuitBreaker, Transition};
use crate::correlation::{CorrelationId, Pending, Routed};
use crate::stats::Shared;
use crate::subscriptions::{Added, Subscriptions};
use crate::{
    BackoffState, ClientConfig, CloseReason, ConnectionState, Error, Event, HeartbeatPing, Message,
    OfflinePolicy, Subscription,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ReplyTx = oneshot::Sender<Result<Message, Error>>;

/// Requests from handles to the driver.
pub(crate) enum Command {
    Send {
        msg: Message,
        ack: oneshot::Sender<Result<(), Error>>,
    },
    Request {
        msg: Message,
        deadline: Instant,
        reply: oneshot::Sender<Result<Message, Error>>,
    },
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

/// How a connection attempt ended when it did not produce a ready socket.
enum AttemptEnd {
    Failed(Error),
    Stop,
}

/// How a ready connection ended.
enum SessionEnd {
    Lost(Error),
    Stop,
}

pub(crate) struct Driver {
    cfg: ClientConfig,
    shared: Arc<Shared>,
    state_tx: watch::Sender<ConnectionState>,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    subs: Subscriptions,
    outbox: VecDeque<Message>,
    pending: Pending,
    backoff: BackoffState,
    breaker: CircuitBreaker,
    ever_connected: bool,
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
        let backoff = cfg.backoff.start_with((cfg.jitter)());
        let breaker = CircuitBreaker::new(cfg.breaker);
        Self {
            cfg,
            shared,
            state_tx,
            cmd_rx,
            events,
            subs: Subscriptions::default(),
            outbox: VecDeque::new(),
            pending: Pending::default(),
            backoff,
            breaker,
            ever_connected: false,
            close_acks: Vec::new(),
        }
    }

    /// The reconnect loop. Returns when the client is closed or gives up.
    pub async fn run(mut self) {
        let span = info_span!("wsgate_client", id = %self.shared.id, url = %self.shared.url);
        async move {
            loop {
                let attempt = self.backoff.retries();
                self.set_state(ConnectionState::Connecting);
                self.shared
                    .total_attempts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(attempt, "connection attempt");
                let error = match self.establish().await {
                    Ok((ws, early)) => {
                        self.on_ready(early).await;
                        match self.session(ws).await {
                            SessionEnd::Stop => {
                                return self.finish_closed(CloseReason::ClientClosed).await;
                            }
                            SessionEnd::Lost(err) => {
                                warn!(error = %err, "connection lost");
                                self.pending.fail_all(Error::ConnectionLost);
                                self.record_error(&err);
                                if !self.cfg.auto_reconnect {
                                    return self
                                        .finish_closed(CloseReason::ConnectionLost(err))
                                        .await;
                                }
                                err
                            }
                        }
                    }
                    Err(AttemptEnd::Stop) => {
                        return self.finish_closed(CloseReason::ClientClosed).await;
                    }
                    Err(AttemptEnd::Failed(err)) => {
                        warn!(attempt, error = %err, "connection attempt failed");
                        self.record_error(&err);
                        let tr = self.breaker.record_failure(Instant::now().into_std());
                        self.log_breaker(tr);
                        err
                    }
                };
                let Some(delay) = self.backoff.next_delay() else {
                    return self.give_up(error).await;
                };
                let retry = self.backoff.retries();
                self.shared.status().attempts = retry;
                if self.wait_before(retry, delay, error).await == Flow::Stop {
                    return self.finish_closed(CloseReason::ClientClosed).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Sleeps out the backoff delay (or the breaker's cooldown if longer),
    /// still serving commands so `close`, `subscribe` and queued sends work
    /// while disconnected.
    async fn wait_before(&mut self, retry: u32, delay: Duration, error: Error) -> Flow {
        let now = Instant::now();
        let cooldown = self.breaker.remaining(now.into_std());
        // Capped so `now + wait` cannot overflow with absurd settings.
        let wait = delay.max(cooldown).min(Duration::from_secs(86_400 * 365));
        self.set_state(if cooldown > Duration::ZERO {
            ConnectionState::CircuitOpen
        } else {
            ConnectionState::Reconnecting
        });
        info!(retry, ?wait, "reconnecting");
        self.emit(Event::Reconnecting {
            attempt: retry,
            delay: wait,
            error,
        })
        .await;
        let until = now + wait;
        loop {
            tokio::select! {
                _ = sleep_until(until) => break,
                cmd = self.cmd_rx.recv() => {
                    if self.handle_offline(cmd) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
        // Open → HalfOpen happens here; the attempt that follows is the probe.
        let (admission, tr) = self.breaker.admit(Instant::now().into_std());
        self.log_breaker(tr);
        if let Admission::Wait(left) = admission {
            debug!(?left, "breaker still open after wait");
        }
        Flow::Continue
    }

    /// Connect, authenticate, replay subscriptions, flush the outbox.
    /// Returns the ready socket and data frames that arrived during auth.
    async fn establish(&mut self) -> Result<(Ws, Vec<Message>), AttemptEnd> {
        let request = self.build_request().map_err(AttemptEnd::Failed)?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(self.cfg.read_buffer_size)
            .max_message_size(self.cfg.max_message_size);
        let connect = tokio::time::timeout(
            self.cfg.connect_timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true),
        );
        tokio::pin!(connect);
        // The handshake is the one slow step that commands must not wait for.
        let mut ws = loop {
            tokio::select! {
                res = &mut connect => match res {
                    Ok(Ok((ws, _resp))) => break ws,
                    Ok(Err(e)) => return Err(AttemptEnd::Failed(Error::Connect(e.to_string()))),
                    Err(_) => return Err(AttemptEnd::Failed(Error::Connect(format!(
                        "handshake timed out after {:?}", self.cfg.connect_timeout
                    )))),
                },
                cmd = self.cmd_rx.recv() => {
                    if self.handle_offline(cmd) == Flow::Stop {
                        return Err(AttemptEnd::Stop);
                    }
                }
            }
        };
        // From here on, commands wait in the channel: they are handled once
        // the connection is ready, so user traffic always follows auth and
        // the subscription replay. Each step below is bounded by a timeout.
        let early = self
            .authenticate(&mut ws)
            .await
            .map_err(AttemptEnd::Failed)?;
        let subs: Vec<Message> = self
            .subs
            .iter()
            .map(|s| s.subscribe_message().clone())
            .collect();
        for msg in subs {
            self.write(&mut ws, msg).await.map_err(AttemptEnd::Failed)?;
        }
        // Pop only after a successful write: a failed flush keeps the message.
        while let Some(msg) = self.outbox.front().cloned() {
            self.write(&mut ws, msg).await.map_err(AttemptEnd::Failed)?;
            self.outbox.pop_front();
        }
        self.shared.status().outbox_len = 0;
        Ok((ws, early))
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
        for msg in auth.messages {
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

    async fn on_ready(&mut self, early: Vec<Message>) {
        self.backoff.reset();
        let tr = self.breaker.record_success();
        self.log_breaker(tr);
        {
            let mut st = self.shared.status();
            st.attempts = 0;
            st.connected_since = Some(SystemTime::now());
        }
        self.set_state(ConnectionState::Connected);
        let event = if self.ever_connected {
            self.shared
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!("reconnected");
            Event::Reconnected
        } else {
            info!("connected");
            Event::Opened
        };
        self.ever_connected = true;
        self.emit(event).await;
        for msg in early {
            self.emit(Event::Message(msg)).await;
        }
    }

    /// Serves a ready connection until it fails or the client stops.
    async fn session(&mut self, mut ws: Ws) -> SessionEnd {
        let hb = self.cfg.heartbeat.clone();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut ping = hb.as_ref().map(|h| {
            let mut i = tokio::time::interval_at(Instant::now() + h.interval, h.interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let silence_limit = hb.as_ref().map(|h| h.timeout);
        let mut last_rx = Instant::now();
        // Re-armed only when it fires (not per frame): cheap on busy sockets.
        let silence = sleep_until(silence_limit.map_or(far, |t| last_rx + t));
        tokio::pin!(silence);
        // Requests queued while offline already have deadlines.
        let mut sweep_armed: Option<Instant> = self.pending.next_deadline().map(Instant::from_std);
        let sweep = sleep_until(sweep_armed.unwrap_or(far));
        tokio::pin!(sweep);
        let mut server_close: Option<Error> = None;

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
                        Some(Err(e)) => break SessionEnd::Lost(server_close.take().unwrap_or_else(|| Error::transport(e))),
                        None => break SessionEnd::Lost(server_close.take().unwrap_or_else(|| Error::Transport("connection closed".into()))),
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
                            break SessionEnd::Stop;
                        }
                        Err(Error::ReconnectRequested) => {
                            self.graceful_close(&mut ws).await;
                            break SessionEnd::Lost(Error::ReconnectRequested);
                        }
                        Err(e) => break SessionEnd::Lost(e),
                    }
                }
                _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                    let frame = match hb.as_ref().map(|h| &h.ping) {
                        Some(HeartbeatPing::Message(m)) => m.clone().into_ws(),
                        _ => WsMessage::Ping(bytes::Bytes::new()),
                    };
                    if let Err(e) = self.write_raw(&mut ws, frame).await {
                        break SessionEnd::Lost(e);
                    }
                }
                _ = &mut silence, if silence_limit.is_some() => {
                    let limit = silence_limit.unwrap_or_default();
                    if last_rx + limit <= Instant::now() {
                        warn!(?limit, "heartbeat timeout");
                        break SessionEnd::Lost(Error::HeartbeatTimeout(limit));
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
                self.shared
                    .late_replies
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            Command::Request {
                msg,
                deadline,
                reply,
            } => {
                let Some((frame, id, reply)) = self.tag_request(msg, reply) else {
                    return Ok(Flow::Continue);
                };
                self.pending.insert(id, reply, deadline.into_std());
                self.shared.status().pending_requests = self.pending.len();
                if sweep_armed.is_none_or(|at| deadline < at) {
                    *sweep_armed = Some(deadline);
                }
                // On failure the request is failed with the rest (ConnectionLost).
                self.write(ws, frame).await?;
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
                let _ = ack.send(self.enqueue(msg));
            }
            Command::Request {
                msg,
                deadline,
                reply,
            } => {
                let Some((frame, id, reply)) = self.tag_request(msg, reply) else {
                    return Flow::Continue;
                };
                match self.enqueue(frame) {
                    // The sweep is armed when the session starts (see `session`).
                    Ok(()) => self.pending.insert(id, reply, deadline.into_std()),
                    Err(e) => {
                        let _ = reply.send(Err(e));
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
    fn tag_request(
        &self,
        msg: Message,
        reply: ReplyTx,
    ) -> Option<(Message, CorrelationId, ReplyTx)> {
        match self.cfg.correlation.tag(msg) {
            Ok((frame, id)) if !self.pending.contains(&id) => Some((frame, id, reply)),
            Ok(_) => {
                let _ = reply.send(Err(Error::InvalidRequest(
                    "duplicate correlation id in flight".into(),
                )));
                None
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    fn enqueue(&mut self, msg: Message) -> Result<(), Error> {
        match self.cfg.offline {
            OfflinePolicy::Reject => Err(Error::NotConnected),
            OfflinePolicy::Outbox { capacity } if self.outbox.len() >= capacity => {
                Err(Error::OutboxFull { capacity })
            }
            OfflinePolicy::Outbox { .. } => {
                self.outbox.push_back(msg);
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

    fn set_state(&self, state: ConnectionState) {
        {
            let mut st = self.shared.status();
            st.state = state;
            st.breaker = self.breaker.state();
        }
        self.state_tx.send_replace(state);
    }

    fn record_error(&self, err: &Error) {
        self.shared.status().last_error = Some(err.clone());
    }

    fn log_breaker(&self, tr: Option<Transition>) {
        if let Some(t) = tr {
            info!(from = ?t.from, to = ?t.to, "circuit breaker state change");
            self.shared.status().breaker = t.to;
        }
    }

    async fn emit(&self, event: Event) {
        // A dropped `Events` is allowed: the event is discarded.
        let _ = self.events.send(event).await;
    }

    async fn give_up(mut self, last: Error) {
        let attempts = self.backoff.retries();
        let error = Error::GaveUp {
            attempts,
            last_error: Box::new(last),
        };
        warn!(attempts, error = %error, "giving up");
        self.record_error(&error);
        self.pending.fail_all(Error::NotConnected);
        self.drop_outbox();
        self.set_state(ConnectionState::Failed);
        self.emit(Event::GaveUp { error }).await;
        self.ack_close();
    }

    async fn finish_closed(mut self, reason: CloseReason) {
        info!(?reason, "closed");
        self.pending.fail_all(Error::NotConnected);
        self.drop_outbox();
        self.set_state(ConnectionState::Closed);
        self.emit(Event::Closed { reason }).await;
        self.ack_close();
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
