//! Socket.IO clients that open a WebSocket directly (`GET /socket.io/?EIO=4&transport=
//! websocket` without `sid`: `io(url, {transports: ['websocket']})`, and most mobile and
//! server-side clients), served by the `/ws` edge's connection machinery instead of
//! socketioxide: the [`SharedSocket`](crate::ws::SharedSocket) with its backlog and vectored
//! writes, one task per connection, the node's heartbeat sweep for pings, the gateway
//! [`Connection`](wsgate_core::gateway::Connection) and [`Session`](wsgate_core::gateway::Session).
//!
//! Why: socketioxide keeps, per socket, an mpsc channel (a 5.4 KiB block), three tasks and
//! a timer, and pays a channel push, a task wake, a `String` and a syscall per packet per
//! socket; `/ws` shares one frame per publication per node and coalesces writes
//! (docs/benchmarks.md, "Socket.IO (issue 17)"). Polling, and a polling session upgrading to
//! WebSocket (a request with `sid`), stay on socketioxide: both look the same to the client.
//!
//! - [`codec`]: Engine.IO / Socket.IO text packets, through socketioxide's own packet crates.
//! - [`framing`]: what the gateway sends, as those packets.
//! - [`task`]: the handshake (open, connect, the admission of [`super::handshake`]) and the
//!   connection's task.

pub(super) mod codec;
pub(super) mod framing;
mod task;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::OptionFuture;

use super::SioEdge;
use crate::reply::json_error;
use crate::ws;

/// Whether `req` opens a Socket.IO WebSocket directly (no polling session before it).
pub fn is_direct(req: &Request<Body>) -> bool {
    let query = req.uri().query().unwrap_or_default();
    let has = |kv: &str| query.split('&').any(|p| p == kv);
    req.method() == Method::GET
        && req.headers().contains_key(header::UPGRADE)
        && has("EIO=4")
        && has("transport=websocket")
        && !super::has_sid(Some(query))
}

/// Answers the WebSocket handshake and hands the socket to its task (the Socket.IO
/// handshake happens over the socket: refusals are `connect_error`s, as on socketioxide).
pub fn upgrade(sio: &SioEdge, mut req: Request<Body>) -> Response {
    let key = match ws::handshake_key(req.headers()) {
        Ok(key) => key,
        Err(msg) => {
            sio.gateway.metrics.reject("bad_handshake");
            return json_error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    // Boxed, as on `/ws`: the connection's task keeps only what its life needs.
    let handshake = Box::pin(task::handshake(
        sio.clone(),
        on_upgrade,
        parts.headers,
        parts.uri,
        remote,
    ));
    sio.tasks
        .spawn(handshake.map(OptionFuture::from).flatten().map(drop));
    ws::switching_protocols(&key)
}
