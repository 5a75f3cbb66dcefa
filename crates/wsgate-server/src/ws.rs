//! The WebSocket edge: the HTTP upgrade, and the one task each client connection runs.
//!
//! The upgrade is done with hyper and tokio-tungstenite directly rather than through axum's
//! `WebSocket` wrapper so that outbound frames stay tungstenite's own `Utf8Bytes`: a channel
//! publication is encoded once per node and every subscriber's socket gets a clone of the same
//! buffer, with no per-subscriber copy or UTF-8 re-validation.
//!
//! Each connection is one task with one `select!`: the close request, the outbox and the
//! socket. Outbound frames are drained in batches and written with `feed` + one `flush`, so a
//! burst of publications costs one `write` syscall per connection, not one per message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, warn};
use wsgate_core::auth::{AuthError, Identity};
use wsgate_core::clock::unix_us;
use wsgate_core::gateway::{CloseRequest, Connection, Outbound, Session};
use wsgate_core::metrics::ReasonLabel;
use wsgate_core::protocol::close;

use crate::http::json_error;
use crate::node::Node;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Frames written per flush: bounds the time one connection holds its task on a burst.
const BATCH: usize = 256;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: validates the handshake, authenticates, answers 101 and hands the socket to a
/// connection task.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    mut req: Request<Body>,
) -> Response {
    let reject = |status: StatusCode, reason: &'static str, msg: &str| {
        node.gateway
            .metrics
            .connection_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
        json_error(status, msg)
    };
    if node.lifecycle.is_draining() {
        let mut r = reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server is shutting down",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let key = match handshake_key(req.headers()) {
        Ok(key) => key,
        Err(msg) => return reject(StatusCode::BAD_REQUEST, "bad_handshake", msg),
    };
    let token = query.token.or_else(|| bearer(req.headers()));
    let identity = node.auth.authenticate(token.as_deref());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_node = node.clone();
    node.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%remote, error = %e, "upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(task_node.config.read_buffer_size)
            .max_message_size(Some(task_node.config.max_message_size))
            .max_frame_size(Some(task_node.config.max_message_size));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match identity {
            Ok(identity) => serve(task_node, ws, identity, remote).await,
            Err(e) => refuse(task_node, ws, e, remote).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// RFC 6455 §4.2.1: what a client handshake must carry.
fn handshake_key(headers: &HeaderMap) -> Result<String, &'static str> {
    if !header_has(headers, header::UPGRADE, "websocket") {
        return Err("expected a WebSocket upgrade (Upgrade: websocket)");
    }
    if !header_has(headers, header::CONNECTION, "upgrade") {
        return Err("expected Connection: upgrade");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err("unsupported Sec-WebSocket-Version (expected 13)");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| k.len() == 24)
        .map(str::to_owned)
        .ok_or("missing or malformed Sec-WebSocket-Key")
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// A client whose token failed: told why in the close frame (4001), then dropped.
async fn refuse(node: Arc<Node>, mut ws: Socket, e: AuthError, remote: SocketAddr) {
    let reason = match e {
        AuthError::Missing => "auth_missing",
        AuthError::Expired => "auth_expired",
        AuthError::Invalid(_) => "auth_invalid",
    };
    node.gateway
        .metrics
        .connection_rejections
        .get_or_create(&ReasonLabel { reason })
        .inc();
    warn!(%remote, reason, error = %e, "authentication failed");
    let grace = Duration::from_millis(node.config.close_grace_ms);
    let _ = tokio::time::timeout(
        grace,
        send_close(&mut ws, close::AUTH_FAILED, &e.to_string()),
    )
    .await;
}

async fn send_close(ws: &mut Socket, code: u16, message: &str) -> Result<(), WsError> {
    // Close reasons are limited to 123 bytes by RFC 6455.
    let mut reason = message.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    })))
    .await?;
    // Wait briefly for the client's close answer so the close handshake completes.
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
    }
    Ok(())
}

/// Why a connection task ended.
struct Ending {
    reason: &'static str,
    /// Close frame we send, if any.
    close: Option<(u16, String)>,
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

/// The life of one authenticated connection.
async fn serve(node: Arc<Node>, mut ws: Socket, identity: Identity, remote: SocketAddr) {
    let gw = node.gateway.clone();
    let conn = gw.open(identity, Some(remote));
    let mut session = Session::new(conn.clone());
    let ending = match ws.send(Message::Text(gw.hello(&conn))).await {
        Ok(()) => run(&node, &mut ws, &mut session).await,
        Err(_) => Ending::quiet("io_error"),
    };
    let grace = Duration::from_millis(node.config.close_grace_ms);
    if let Some((code, message)) = &ending.close {
        let _ = tokio::time::timeout(grace, send_close(&mut ws, *code, message)).await;
    } else if ending.reason == "client_closed" {
        // tungstenite queued the answer to the client's close frame; send it.
        let _ = tokio::time::timeout(grace, ws.flush()).await;
    }
    gw.close(&conn, ending.reason, ending.close.as_ref().map(|c| c.0))
        .await;
}

async fn run(node: &Node, ws: &mut Socket, session: &mut Session) -> Ending {
    let gw = &node.gateway;
    let conn = session.conn.clone();
    let mut batch: Vec<Outbound> = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = conn.closing() => {
                return conn.close_request().map_or(Ending::quiet("closed"), Ending::from_request);
            }
            () = conn.outbox.ready() => {
                loop {
                    batch.clear();
                    if conn.outbox.drain_into(&mut batch, BATCH) == 0 {
                        break;
                    }
                    let written = tokio::select! {
                        biased;
                        () = conn.closing() => None,
                        r = write_batch(gw, ws, session, &batch) => Some(r),
                    };
                    match written {
                        None => {
                            return conn.close_request().map_or(Ending::quiet("closed"), Ending::from_request);
                        }
                        Some(Err(e)) => {
                            conn.stats.record_error(e.to_string());
                            return Ending::quiet("io_error");
                        }
                        Some(Ok(())) => {}
                    }
                }
                if batch.capacity() > BATCH {
                    batch = Vec::new();
                }
            }
            frame = ws.next() => {
                if let Some(ending) = inbound(gw, ws, session, frame).await {
                    return ending;
                }
            }
        }
    }
}

/// Handles one inbound frame; `Some` ends the connection.
async fn inbound(
    gw: &wsgate_core::gateway::Gateway,
    ws: &mut Socket,
    session: &mut Session,
    frame: Option<Result<Message, WsError>>,
) -> Option<Ending> {
    let conn = &session.conn;
    let msg = match frame {
        None => return Some(Ending::quiet("client_gone")),
        Some(Ok(msg)) => msg,
        Some(Err(e)) => return Some(read_error(conn, e)),
    };
    conn.touch(gw.clock.now_ms());
    let answer = match msg {
        Message::Text(text) => session.handle_text(gw, text.as_str()).await,
        Message::Binary(data) => session.handle_binary(gw, data.len()),
        Message::Close(_) => return Some(Ending::quiet("client_closed")),
        // Pings are answered by tungstenite on the next flush; both only prove liveness.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    let frames = match answer {
        Ok(frames) => frames,
        Err(close) => return Some(Ending::from_request(&close)),
    };
    for f in frames {
        if ws.feed(Message::Text(f)).await.is_err() {
            return Some(Ending::quiet("io_error"));
        }
    }
    ws.flush().await.err().map(|_| Ending::quiet("io_error"))
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

/// Writes a drained batch with one flush.
async fn write_batch(
    gw: &wsgate_core::gateway::Gateway,
    ws: &mut Socket,
    session: &mut Session,
    batch: &[Outbound],
) -> Result<(), WsError> {
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let mut oldest_us = None;
    for item in batch {
        let msg = match item {
            Outbound::Publication(d) => {
                if session.skips(d) {
                    continue;
                }
                oldest_us.get_or_insert(d.published_at_us);
                bytes += d.frame.len() as u64;
                Message::Text(d.frame.clone())
            }
            Outbound::Frame(f) => {
                bytes += f.len() as u64;
                Message::Text(f.clone())
            }
            Outbound::Ping => Message::Ping(Bytes::new()),
        };
        messages += 1;
        ws.feed(msg).await?;
    }
    ws.flush().await?;
    let conn = &session.conn;
    conn.stats.messages_out.fetch_add(messages, Relaxed);
    conn.stats.bytes_out.fetch_add(bytes, Relaxed);
    gw.metrics.messages_sent.inc_by(messages);
    gw.metrics.bytes_sent.inc_by(bytes);
    // One observation per batch, for its oldest publication: the worst latency of the batch,
    // at the cost of one clock read per flush rather than per message.
    if let Some(t) = oldest_us {
        let us = unix_us().saturating_sub(t);
        gw.metrics.delivery_latency.observe(us as f64 / 1e6);
    }
    Ok(())
}
