//! Who may connect to the Socket.IO namespace: the checks of a `/ws` upgrade, run as the
//! namespace's connect middleware. A refusal reaches the client as `connect_error` with the
//! refusal's message (`unauthorized` for any token problem).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
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
    token: Option<String>,
}

/// Why a connect was refused; its text is the `connect_error` message.
#[derive(Debug)]
pub struct Refused(std::borrow::Cow<'static, str>);

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

/// The connect middleware: drain, origin, per-IP and node limits, the token, per-user limit.
pub async fn admit(edge: &WsState, s: &SocketRef, auth: Option<Auth>) -> Result<(), Refused> {
    let reject = |reason: &'static str, message: &'static str| {
        edge.gateway.metrics.reject(reason);
        Err(Refused(message.into()))
    };
    if edge.lifecycle.is_draining() {
        return reject("draining", "server is shutting down");
    }
    let parts = s.req_parts();
    if !edge.limits.origin_allowed(&parts.headers) {
        return reject("origin", "origin not allowed");
    }
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let client_ip = edge.limits.client_ip(remote, &parts.headers);
    let mut slot = match edge.limits.admit(client_ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            debug!(%remote, %client_ip, reason = refusal.reason, "Socket.IO connect refused");
            return reject(refusal.reason, refusal.message);
        }
    };
    let token = auth
        .and_then(|a| a.token)
        .or_else(|| query_token(&parts.uri))
        .or_else(|| bearer(&parts.headers));
    let entry = Entry::start(
        &edge.gateway,
        &edge.auth,
        token,
        &parts.headers,
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
    let ready = events::register(s);
    let who = events::Who {
        id,
        identity,
        greeting,
        slot,
        remote,
    };
    s.extensions
        .insert(Admitted(Arc::new(Mutex::new(Some((who, ready))))));
    Ok(())
}

/// `?token=` of the handshake request.
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    axum::extract::Query::<Auth>::try_from_uri(uri)
        .ok()?
        .0
        .token
}
