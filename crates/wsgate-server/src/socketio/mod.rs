//! The Socket.IO edge: `/socket.io/` on the node's listener, for unchanged
//! `socket.io-client` v4 apps (docs/socketio.md is the contract).
//!
//! Two ways in, one behaviour (`kind: socketio` in `/connections`, metrics, presence, drain):
//!
//! - A WebSocket opened directly (`?EIO=4&transport=websocket` without `sid`: what
//!   `io(url, {transports: ['websocket']})` and the bench do) is served by the `/ws` edge's
//!   connection machinery ([`native`]): one task, the shared socket with its backlog and
//!   vectored writes, a publication's frame built once per node, the node's heartbeat sweep
//!   sending Engine.IO pings. socketioxide's per-socket channel, tasks and per-packet work
//!   were what kept this edge off its CPU and memory goals (docs/benchmarks.md).
//! - Long-polling, and a polling session upgrading to WebSocket (a request with `sid`), are
//!   served by socketioxide (Engine.IO v4 sessions, Socket.IO v5 packets, acknowledgements,
//!   Engine.IO pings); the rest of this module adapts its sockets onto the same core.
//!
//! The parts:
//!
//! - [`handshake`]: who may connect, for both ways in: the upgrade checks of `/ws` (drain,
//!   origin, per-IP, node and per-user limits, the token from `auth` or `?token=`), run as
//!   socketioxide's connect middleware or on the direct client's connect packet.
//! - [`events`]: each admitted socket becomes a gateway [`Connection`] of kind `socketio`;
//!   its events run the core [`Session`] ops through one function both ways in call, and are
//!   answered by acknowledgement.
//! - [`delivery`]: socketioxide's sockets' [`Transport`]: what the gateway sends (channel
//!   publications from any node through the broker, user and connection sends) becomes
//!   Socket.IO events.
//! - [`encoded`]: a publication as a Socket.IO event (and, for direct clients, as its whole
//!   WebSocket frame), encoded once per node for all its subscribers.
//! - [`native`]: the direct WebSocket clients (handshake, packet codec, framing, task).
//!
//! [`Connection`]: wsgate_core::gateway::Connection
//! [`Session`]: wsgate_core::gateway::Session
//! [`Transport`]: wsgate_core::gateway::Transport

mod delivery;
mod encoded;
mod events;
mod handshake;
mod native;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, TransportType};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

pub use encoded::MESSAGE;
pub use events::CLOSE;
pub use handshake::UNAUTHORIZED;

use crate::reply::json_error;
use crate::ws::WsState;

/// The `kind` of Socket.IO connections in `/connections` and in logs.
pub const KIND: &str = "socketio";

/// The path socket.io-client uses by default.
pub const PATH: &str = "/socket.io/";

/// The Socket.IO edge's share of the node: the WebSocket edge's view (the same limits,
/// authenticator, lifecycle, task tracker and settings) and the socketioxide handle.
#[derive(Clone)]
pub struct SioEdge(Arc<Parts>);

struct Parts {
    edge: WsState,
    io: SocketIo,
    closing: AtomicBool,
    encodings: Arc<encoded::Encodings>,
    /// How the direct WebSocket clients' sockets frame what the gateway sends (one per node).
    framing: Arc<dyn crate::ws::Framing>,
}

impl std::ops::Deref for SioEdge {
    type Target = WsState;
    fn deref(&self) -> &WsState {
        &self.0.edge
    }
}

impl SioEdge {
    /// Drain: closes every Socket.IO transport once (clients see `transport close` and
    /// reconnect, to another node while this one answers new handshakes with 503).
    fn close_all(&self) {
        if !self.0.closing.swap(true, Ordering::AcqRel) {
            let io = self.0.io.clone();
            // Tracked: the drain waits for the transports' close frames before the process
            // exits (untracked, a polling-upgraded client sometimes saw `transport error`).
            self.0.edge.tasks.spawn(async move { io.close().await });
        }
    }
}

#[derive(Clone)]
struct Svc {
    sio: SioEdge,
    svc: BoxCloneSyncService<Request<Body>, Response, Infallible>,
}

/// The `/socket.io/` route, served by socketioxide over `edge`'s parts.
pub fn routes(edge: WsState) -> Router {
    let gw = &edge.gateway.config;
    let ping_timeout = ping_timeout(gw);
    let (svc, io) = SocketIo::builder()
        .req_path(PATH.trim_end_matches('/'))
        .ping_interval(gw.heartbeat_interval)
        .ping_timeout(ping_timeout)
        .max_buffer_size(edge.config.outbox_capacity)
        .max_payload(edge.config.max_message_size as u64)
        .ws_max_message_size(edge.config.max_message_size)
        .ws_max_frame_size(edge.config.max_message_size)
        .ws_read_buffer_size(edge.config.read_buffer_size)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_svc();
    let encodings = Arc::<encoded::Encodings>::default();
    let sio = SioEdge(Arc::new(Parts {
        edge,
        io: io.clone(),
        closing: AtomicBool::new(false),
        framing: Arc::new(native::framing::SioFraming::new()),
        encodings,
    }));
    let admit = {
        let sio = sio.clone();
        move |s: SocketRef, TryData(auth): TryData<handshake::Auth>| {
            let sio = sio.clone();
            async move { handshake::admit(&sio, &s, auth.ok()).await }
        }
    };
    let connect = {
        let sio = sio.clone();
        move |s: SocketRef| {
            let sio = sio.clone();
            async move {
                let admitted = s
                    .extensions
                    .remove::<handshake::Admitted>()
                    .and_then(|a| a.take());
                match admitted {
                    Some((who, ready)) => events::connected(sio, s, who, ready),
                    None => {
                        let _ = s.disconnect();
                    }
                }
            }
        }
    };
    io.ns("/", connect.with(admit));
    Router::new().route(PATH, any(serve)).with_state(Svc {
        sio,
        svc: BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_response(
            svc,
            IntoResponse::into_response,
        )),
    })
}

/// Engine.IO pings are the heartbeat: a ping each interval, and the client is closed when
/// its pong is later than the rest of the gateway's silence bound.
fn ping_timeout(gw: &wsgate_core::gateway::GatewayConfig) -> Duration {
    gw.heartbeat_timeout
        .saturating_sub(gw.heartbeat_interval)
        .max(Duration::from_secs(1))
}

/// Hands the request to the direct WebSocket path ([`native`]) or to socketioxide; while the
/// node drains, a new session (a request without `sid`) gets 503 so the client's manager
/// retries, against another node.
async fn serve(State(s): State<Svc>, req: Request<Body>) -> Response {
    if s.sio.lifecycle.is_draining() && !has_sid(req.uri().query()) {
        s.sio.gateway.metrics.reject("draining");
        let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    if native::is_direct(&req) {
        return native::upgrade(&s.sio, req);
    }
    match s.svc.oneshot(owned_parts(req)).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// The request with its URI and headers copied out of hyper's connection read buffer.
///
/// engineioxide keeps the handshake request's parts for the whole life of the socket
/// (`req_parts`), and hyper parses the URI and header values as slices of its 8 KiB read
/// buffer: one slice kept is the whole buffer kept, per socket (measured with heaptrack:
/// 6.8 KiB per idle connection). Copies are a few hundred bytes.
fn owned_parts(req: Request<Body>) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse::<Uri>() {
        parts.uri = uri;
    }
    if let Some(original) = parts.extensions.get_mut::<OriginalUri>() {
        original.0 = parts.uri.clone();
    }
    let headers: HeaderMap = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let mut copy = HeaderValue::from_bytes(value.as_bytes()).ok()?;
            copy.set_sensitive(value.is_sensitive());
            Some((name, copy))
        })
        .collect();
    parts.headers = headers;
    Request::from_parts(parts, body)
}

fn has_sid(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")))
}
