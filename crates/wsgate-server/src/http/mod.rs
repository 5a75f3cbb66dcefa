//! HTTP routes: the control API for backends, and the operations endpoints.
//!
//! Every answer of the control API is JSON with `success`, and `error` when it is false;
//! error strings that seed 000 defined are kept to the letter (`Connection not found`).

mod api;
mod error;
mod ops;
mod upstreams;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use wsgate_core::control::Caller;

pub use error::{ApiError, ApiJson, json_error};

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    let protected = Router::new()
        .route("/api/v1/publish", post(api::publish))
        .route("/api/v1/users/{user}/send", post(api::send_to_user))
        .route(
            "/api/v1/connections/{id}/send",
            post(api::send_to_connection),
        )
        .route("/api/v1/connections/{id}", delete(api::disconnect))
        .route("/api/v1/channels/{channel}/presence", get(api::presence))
        .route(
            "/api/v1/upstreams",
            post(upstreams::connect).get(upstreams::list),
        )
        .route(
            "/api/v1/upstreams/{id}",
            get(upstreams::get).delete(upstreams::disconnect),
        )
        .route("/api/v1/upstreams/{id}/send", post(upstreams::send))
        .route("/api/v1/upstreams/{id}/send-raw", post(upstreams::send_raw))
        .route(
            "/api/v1/upstreams/{id}/send-async",
            post(upstreams::send_async),
        )
        .route(
            "/api/v1/upstreams/{id}/subscriptions",
            post(upstreams::subscriptions),
        )
        .route(
            "/api/v1/upstreams/{id}/publish/start",
            post(upstreams::publish_start),
        )
        .route(
            "/api/v1/upstreams/{id}/publish/stop",
            post(upstreams::publish_stop),
        )
        .route("/connections", get(ops::list_connections))
        .route("/connections/{id}", get(ops::get_connection))
        .layer(middleware::from_fn_with_state(
            node.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(node.config.api_body_limit));
    Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/version", get(ops::version))
        .merge(protected)
        .fallback(|| async { json_error(axum::http::StatusCode::NOT_FOUND, "Not found") })
        .with_state(node)
}

/// The control API and connection listings pass
/// [`Control::authorize`](wsgate_core::control::Control::authorize): the API rate limit
/// (by API key, or by client IP without one), then the API key when one is configured.
async fn require_api_key(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let key = crate::ws::bearer(req.headers());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let caller = Caller {
        key: key.as_deref(),
        ip: node.limits.client_ip(peer, req.headers()),
    };
    if let Err(e) = node.control.authorize(caller) {
        return ApiError::from(e).into_response();
    }
    next.run(req).await
}
