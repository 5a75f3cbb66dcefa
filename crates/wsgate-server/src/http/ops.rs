//! Operations endpoints: what an on-call engineer and a balancer look at.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use wsgate_core::control::ListConnections;

use super::ApiState;
use super::error::ApiError;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(node): State<ApiState>) -> Response {
    let gw = &node.gateway;
    let body = json!({
        "ready": node.is_ready(),
        "started": node.lifecycle.is_started(),
        "draining": node.lifecycle.is_draining(),
        "broker": if gw.broker.is_healthy() { "ok" } else { "unavailable" },
        "store": if gw.presence.is_healthy() { "ok" } else { "unavailable" },
        "connections": gw.registry.len(),
    });
    let status = if node.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(node): State<ApiState>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &node.metrics_registry) {
        return crate::reply::json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

pub async fn version(State(node): State<ApiState>) -> Json<Value> {
    Json(serde_json::to_value(&node.build).unwrap_or_default())
}

#[derive(Deserialize)]
pub struct ListQuery {
    user: Option<String>,
    channel: Option<String>,
    kind: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `GET /connections`: the connections of every live node (`scope=node`: this node's),
/// filtered by user, channel and kind; sorted by id; paginated with `offset` and `limit`
/// (default 100, at most 1000). `next_offset` is null on the last page. `partial` is true,
/// and `missing_nodes` names them, when some live node did not answer in time.
pub async fn list_connections(
    State(node): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let query = ListConnections {
        kind: q.kind.as_deref().map(str::parse).transpose()?,
        scope: q
            .scope
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default(),
        user: q.user,
        channel: q.channel,
        offset: q.offset,
        limit: q.limit,
    };
    let listing = node.control.list_connections(&query).await?;
    let partial = listing.is_partial();
    let page = listing.page;
    Ok(Json(json!({
        "success": true,
        "partial": partial,
        "missing_nodes": listing.missing_nodes,
        "total": page.total,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "connections": page.items,
    })))
}

/// `GET /connections/{id}`: seed 003's debug view of one connection (gateway or upstream).
pub async fn get_connection(
    State(node): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let connection = node.control.get_connection(&id).await?;
    Ok(Json(json!({"success": true, "connection": connection})))
}
