//! Who may connect to the Socket.IO namespace: the checks of a `/ws` upgrade, run as the
//! namespace's connect middleware. A refusal reaches the client as `connect_error` with the
//! refusal's message (`unauthorized` for any token problem).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Uri};
use parking_lot::Mutex;
use serde::Deserialize;
use socketioxide::extract::SocketRef;
use tracing::{debug, warn};

use super::events;
use crate::hooks::Entry;
use crate::reply::bearer;
use crate::ws::WsState;

/// The message of `connect_error` when the token is missing, expired or invalid.
pub const UNAUTHORIZED: &str = "unauthorized";

/// The handshake's `auth` payload (`io(url, { auth: { token } })`).
#[derive(Debug, Default, Deserialize)]
pub struct Auth {
    pub token: Option<String>,
}

/// Why a connect was refused; its text is the `connect_error` message.
#[derive(Debug)]
pub struct Refused(pub std::borrow::Cow<'static, str>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the middleware admitted, handed to the connect handler through the socket's
/// extensions (taken once).
#[derive(Clone)]
pub struct Admitted(Arc<Mutex<Option<Admission>>>);

/// Who connected (under which connection id, with what the connect hook added), the
/// connection slot it holds, and its event handlers (registered before the client is told it
/// is connected: [`events::register`]).
pub type Admission = (events::Who, events::Ready);

impl Admitted {
    pub fn take(&self) -> Option<Admission> {
        self.0.lock().take()
    }
}

/// The connect middleware: [`admit_request`] on the socket's handshake request, then the
/// socket's event handlers, registered before the client is told it is connected.
pub async fn admit(edge: &WsState, s: &SocketRef, auth: Option<Auth>) -> Result<(), Refused> {
    let parts = s.req_parts();
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let who = admit_request(edge, &parts.headers, &parts.uri, remote, auth).await?;
    let ready = events::register(s);
    s.extensions
        .insert(Admitted(Arc::new(Mutex::new(Some((who, ready))))));
    Ok(())
}

/// Who may connect, for both ways in (socketioxide's sockets and the direct WebSocket
/// clients of [`super::native`]): drain, origin, per-IP and node limits, the token (`auth`,
/// else `?token=`, else `Authorization: Bearer`), the connect hook, the per-user limit.
pub async fn admit_request(
    edge: &WsState,
    headers: &HeaderMap,
    uri: &Uri,
    remote: SocketAddr,
    auth: Option<Auth>,
) -> Result<events::Who, Refused> {
    let reject = |reason: &'static str, message: &'static str| {
        edge.gateway.metrics.reject(reason);
        Err(Refused(message.into()))
    };
    if edge.lifecycle.is_draining() {
        return reject("draining", "server is shutting down");
    }
    if !edge.limits.origin_allowed(headers) {
        return reject("origin", "origin not allowed");
    }
    let client_ip = edge.limits.client_ip(remote, headers);
    let mut slot = match edge.limits.admit(client_ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            debug!(%remote, %client_ip, reason = refusal.reason, "Socket.IO connect refused");
            return reject(refusal.reason, refusal.message);
        }
    };
    let token = auth
        .and_then(|a| a.token)
        .or_else(|| query_token(uri))
        .or_else(|| bearer(headers));
    let entry = Entry::start(
        &edge.gateway,
        &edge.auth,
        token,
        headers,
        &edge.forward_headers,
    )
    .await;
    let entry = match entry {
        Ok(entry) => entry,
        Err(e) => {
            let reason = e.reason();
            warn!(%remote, reason, error = %e, "Socket.IO authentication failed");
            return reject(reason, UNAUTHORIZED);
        }
    };
    // The connect hook's refusal reaches the client as `connect_error` with its message
    // (Socket.IO has no close codes before the connection is admitted).
    let id = edge.gateway.new_connection_id();
    let (identity, greeting) = match entry.admit(&edge.gateway, &id, super::KIND, remote).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            edge.gateway.metrics.reject(refusal.reason);
            warn!(%remote, reason = refusal.reason, code = refusal.code, "connect hook refused the Socket.IO connection");
            return Err(Refused(refusal.message.into()));
        }
    };
    if !edge.limits.admit_user(&mut slot, &identity.user) {
        return reject("user_connections", "too many connections for this user");
    }
    // Sends to the user reach this node before the client hears `hello`.
    edge.gateway.watch_user(&identity.user).await;
    Ok(events::Who {
        id,
        identity,
        greeting,
        slot,
        remote,
    })
}

/// `?token=` of the handshake request.
fn query_token(uri: &Uri) -> Option<String> {
    axum::extract::Query::<Auth>::try_from_uri(uri)
        .ok()?
        .0
        .token
}
