//! The WebSocket edge: the HTTP upgrade, the shared socket, and the one task each client
//! connection runs.
//!
//! - [`socket`]: the socket shared by the connection task and every publisher. Publishers
//!   queue pre-encoded frames into a bounded backlog that the node's flush lane writes out
//!   after each fan-out, and the connection task when the client reads slowly (and always
//!   over TLS, through the task's half of the split `TlsStream`).
//! - [`task`]: the connection task: reads and answers the client, drains the backlog, closes.
//!
//! The upgrade is done with hyper and tokio-tungstenite directly (not axum's `WebSocket`) so
//! that the TCP stream itself can be shared: the server's own accept loop serves HTTP/1 on
//! plain `TcpStream`s, and an upgraded connection is downcast back to its stream.

mod config;
mod socket;
mod state;
pub(crate) mod task;

pub use config::*;
pub use socket::{Bounds, Framing, SharedSocket, Signal, SocketIo};
pub use state::{WsState, WsView};

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, warn};

use crate::hooks::Entry;
use crate::limits::Slot;
use crate::reply::{bearer, json_error};
use wsgate_core::auth::AuthError;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: validates the handshake, authenticates, answers 101 and hands the socket to a
/// connection task.
pub async fn upgrade(
    State(edge): State<WsState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    mut req: Request<Body>,
) -> Response {
    let reject = |status: StatusCode, reason: &'static str, msg: &str| {
        edge.gateway.metrics.reject(reason);
        json_error(status, msg)
    };
    if edge.lifecycle.is_draining() {
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
    // Cross-site WebSocket hijacking: a browser sends its page's Origin; refuse unknown ones.
    if !edge.limits.origin_allowed(req.headers()) {
        return reject(StatusCode::FORBIDDEN, "origin", "origin not allowed");
    }
    let client_ip = edge.limits.client_ip(remote, req.headers());
    let slot = match edge.limits.admit(client_ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            debug!(%remote, %client_ip, reason = refusal.reason, "upgrade refused");
            let status =
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut r = reject(status, refusal.reason, refusal.message);
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(refusal.retry_after_secs),
            );
            return r;
        }
    };
    let token = query.token.or_else(|| bearer(req.headers()));
    let entry = Entry::start(
        &edge.gateway,
        &edge.auth,
        token,
        req.headers(),
        &edge.forward_headers,
    )
    .await;
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The handshake (the upgrade, the token's verdict, the connect hook, the refusals) runs
    // boxed and gives back the connection's `serve` future: the task's future is then the
    // size of `serve` alone, and keeps none of the handshake's state (the verdict, the hook's
    // request, the upgrade) while the connection lives.
    let handshake = Box::pin(open(edge.clone(), on_upgrade, entry, slot, remote));
    let task = handshake.map(OptionFuture::from).flatten().map(drop);
    // Every connection keeps its task's future allocated while it lives (memory per idle
    // connection is a target, issue 16): the size is worth a look after a change.
    static TASK_SIZE: std::sync::Once = std::sync::Once::new();
    TASK_SIZE.call_once(|| {
        debug!(
            bytes = std::mem::size_of_val(&task),
            ws = std::mem::size_of::<WebSocketStream<SocketIo>>(),
            inbound = std::mem::size_of::<task::Inbound>(),
            connection = std::mem::size_of::<wsgate_core::gateway::Connection>(),
            socket = std::mem::size_of::<SharedSocket>(),
            slot = std::mem::size_of::<Slot>(),
            "connection task future"
        )
    });
    edge.tasks.spawn(task);
    switching_protocols(&key)
}

/// The 101 answer to a valid WebSocket handshake with key `key`.
pub(crate) fn switching_protocols(key: &str) -> Response {
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

/// The upgraded connection as the socket shared with publishers and the task's WebSocket
/// stream over it; `framing` for a connection that is not a `/ws` client. `None` when the
/// upgrade failed.
pub(crate) async fn accept(
    edge: &WsView,
    on_upgrade: OnUpgrade,
    remote: SocketAddr,
    framing: Option<std::sync::Arc<dyn Framing>>,
) -> Option<(std::sync::Arc<SharedSocket>, task::Socket)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(%remote, error = %e, "upgrade failed");
            return None;
        }
    };
    // The accept loop serves plain TCP streams, or TLS streams over them when TLS is on.
    // Bytes the client sent right behind its handshake are copied out so that hyper's
    // whole read buffer (8 KiB or more) is not kept alive per connection by a slice.
    let capacity = socket::Bounds {
        frames: edge.config.outbox_capacity,
        bytes: edge.config.outbox_bytes,
    };
    let (socket, io) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let socket = SharedSocket::new_framed(parts.io.into_inner(), capacity, framing);
            let leftover = bytes::Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            let read_size = edge.config.read_buffer_size;
            (socket.clone(), SocketIo::new(socket, leftover, read_size))
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<socket::TlsStream>>() {
            Ok(parts) => {
                let (socket, read) =
                    SharedSocket::new_tls_framed(parts.io.into_inner(), capacity, framing);
                let leftover = bytes::Bytes::copy_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                (socket.clone(), SocketIo::tls(socket, leftover, read))
            }
            Err(_) => {
                warn!(%remote, "upgraded connection is not a TCP or TLS stream; dropped");
                return None;
            }
        },
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(socket::FRAME_READ_CHUNK)
        .max_message_size(Some(edge.config.max_message_size))
        .max_frame_size(Some(edge.config.max_message_size));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    Some((socket, ws))
}

/// The rest of the handshake once the 101 is answered: the upgraded socket, the token's
/// verdict, the connect hook and the per-user limit. `None` when the connection was refused
/// (told so) or the upgrade failed; else the connection's life, to be awaited.
async fn open(
    edge: WsState,
    on_upgrade: OnUpgrade,
    entry: Result<Entry, AuthError>,
    mut slot: Slot,
    remote: SocketAddr,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let (socket, ws) = accept(&edge, on_upgrade, remote, None).await?;
    let entry = match entry {
        Ok(entry) => entry,
        // Boxed: a refusal's close handshake is not part of the handshake's own future.
        Err(e) => {
            Box::pin(task::refuse(edge, socket, ws, e, remote)).await;
            return None;
        }
    };
    // The connect hook (if any) runs once the socket is open, so a refusal can carry
    // the backend's close code. Boxed too: the hook's HTTP call is a large future.
    let id = edge.gateway.new_connection_id();
    let admitted = Box::pin(entry.admit(&edge.gateway, &id, "gateway", remote)).await;
    let (identity, greeting) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            Box::pin(task::refuse_hook(edge, socket, ws, refusal, remote)).await;
            return None;
        }
    };
    if !edge.limits.admit_user(&mut slot, &identity.user) {
        Box::pin(task::refuse_user(edge, socket, ws, remote)).await;
        return None;
    }
    // Sends to the user reach this node before `hello` tells anyone the connection is open.
    // (Not boxed: the handshake is, and its future does not outlive it.)
    edge.gateway.watch_user(&identity.user).await;
    let opened = task::Opened {
        id,
        identity,
        greeting,
    };
    // The connection opens here, and its task's future holds only what its life needs.
    let conn = task::open(&edge, &socket, opened, remote);
    Some(task::serve(edge, socket, ws, conn, slot))
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
pub(crate) fn handshake_key(headers: &HeaderMap) -> Result<String, &'static str> {
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
