//! HTTP routes: the control API for backends, and the operations endpoints.
//!
//! Every answer of the control API is JSON with `success`, and `error` when it is false;
//! error strings that seed 000 defined are kept to the letter (`Connection not found`).

mod admin;
mod api;
mod error;
mod ops;
mod upstreams;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};

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
        .merge(admin::routes())
        .merge(protected)
        .fallback(|| async { json_error(axum::http::StatusCode::NOT_FOUND, "Not found") })
        .with_state(node)
}

/// When an API key is configured, the control API and connection listings require it.
/// Every caller is rate limited (`api_rate`): by its API key, or by client IP without one.
async fn require_api_key(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let given = crate::ws::bearer(req.headers());
    let limit_key = match (&node.config.api_key, &given) {
        // The key itself is never logged or exported; it only names a limiter bucket.
        (Some(_), Some(g)) => format!("key:{g}"),
        _ => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0)
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            format!("ip:{}", node.limits.client_ip(peer, req.headers()))
        }
    };
    if let Err(wait) = node.limits.api_check(&limit_key) {
        node.gateway
            .metrics
            .api_rejections
            .get_or_create(&wsgate_core::metrics::ReasonLabel {
                reason: "rate_limited",
            })
            .inc();
        let mut r = json_error(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "Too many requests: API rate limit exceeded",
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(wait),
        );
        return r;
    }
    if let Some(key) = &node.config.api_key
        && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.expose().as_bytes()))
    {
        node.gateway
            .metrics
            .api_rejections
            .get_or_create(&wsgate_core::metrics::ReasonLabel {
                reason: "unauthorized",
            })
            .inc();
        return json_error(
            axum::http::StatusCode::UNAUTHORIZED,
            "Unauthorized: missing or wrong API key",
        );
    }
    next.run(req).await
}

/// Compares without an early exit, so response time does not leak how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
