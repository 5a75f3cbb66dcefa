//! HTTP routes: the control API for backends, and the operations endpoints.
//!
//! Every answer of the control API is JSON with `success`, and `error` when it is false;
//! error strings that seed 000 defined are kept to the letter (`Connection not found`).

mod admin;
mod api;
mod config;
mod error;
mod ops;
mod state;
mod upstreams;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use wsgate_core::control::Caller;

pub use config::{ApiConfig, DEFAULT_API_BODY_LIMIT};
pub use error::{ApiError, ApiJson};
pub use state::{ApiState, ApiView, BuildInfo};

use crate::reply::{bearer, json_error};
use crate::ws::WsState;

/// Every route of the listener: `/ws` and `/socket.io/` on the WebSocket edge's view, the rest
/// on the API's.
pub fn router(api: ApiState, ws: WsState) -> Router {
    let protected = Router::new()
        .route("/api/v1/publish", post(api::publish))
        .route("/api/v1/broadcast", post(api::broadcast))
        .route("/api/v1/batch", post(api::batch))
        .route("/api/v1/users/{user}/send", post(api::send_to_user))
        .route("/api/v1/users/{user}/subscribe", post(api::subscribe_user))
        .route(
            "/api/v1/users/{user}/unsubscribe",
            post(api::unsubscribe_user),
        )
        .route(
            "/api/v1/connections/{id}/send",
            post(api::send_to_connection),
        )
        .route("/api/v1/connections/{id}", delete(api::disconnect))
        .route("/api/v1/channels/{channel}/presence", get(api::presence))
        .route("/api/v1/channels", get(api::list_channels))
        .route("/api/v1/channels/{channel}", get(api::channel_info))
        .nest("/api/v1/upstreams", upstreams::routes())
        .route("/connections", get(ops::list_connections))
        .route("/connections/{id}", get(ops::get_connection))
        .layer(middleware::from_fn_with_state(api.clone(), require_api_key))
        .layer(DefaultBodyLimit::max(api.config.api_body_limit));
    let socketio = crate::socketio::routes(ws.clone());
    let edge = Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .with_state(ws)
        .merge(socketio);
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/version", get(ops::version))
        .merge(admin::routes())
        .merge(protected)
        .fallback(|| async { json_error(axum::http::StatusCode::NOT_FOUND, "Not found") })
        .with_state(api)
        .merge(edge)
}

/// The control API and connection listings pass
/// [`Control::authorize`](wsgate_core::control::Control::authorize): the API key when one is
/// configured, and the limits by client IP (failed authentications, an open API).
async fn require_api_key(State(api): State<ApiState>, req: Request, next: Next) -> Response {
    let key = bearer(req.headers());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let caller = Caller {
        key: key.as_deref(),
        ip: api.limits.client_ip(peer, req.headers()),
    };
    if let Err(e) = api.control.authorize(caller) {
        return ApiError::from(e).into_response();
    }
    next.run(req).await
}
