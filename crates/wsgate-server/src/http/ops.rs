//! Operations endpoints: what an on-call engineer and a balancer look at.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use wsgate_core::gateway::ConnectionInfo;

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
        "store": if gw.store.is_healthy() { "ok" } else { "unavailable" },
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
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `GET /connections`: filtered by user, channel and kind; sorted by id; paginated with
/// `offset` and `limit` (default 100, at most 1000). `next_offset` is null on the last page.
pub async fn list_connections(
    State(node): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let gw = &node.gateway;
    let now = gw.clock.now_ms();
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    if q.kind
        .as_deref()
        .is_some_and(|k| k != "gateway" && k != "upstream")
    {
        return Err(ApiError::bad_request("kind is gateway or upstream"));
    }
    let conns = match (&q.user, q.kind.as_deref()) {
        (_, Some("upstream")) => Vec::new(),
        (Some(user), _) => gw.registry.of_user(user),
        (None, _) => gw.registry.all(),
    };
    let mut infos: Vec<(String, Value)> = conns
        .iter()
        .filter(|c| q.channel.as_deref().is_none_or(|ch| c.is_subscribed(ch)))
        .map(|c| c.info(gw.node(), now))
        .map(|i: ConnectionInfo| (i.id.clone(), json!(i)))
        .collect();
    // Upstream connections have no user and no channels: a user or channel filter
    // excludes them.
    if q.kind.as_deref() != Some("gateway") && q.user.is_none() && q.channel.is_none() {
        infos.extend(
            node.upstreams
                .list()
                .into_iter()
                .map(|u| (u.id.clone(), json!(u))),
        );
    }
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let total = infos.len();
    let page: Vec<Value> = infos
        .into_iter()
        .skip(q.offset)
        .take(limit)
        .map(|(_, v)| v)
        .collect();
    let next = (q.offset + page.len() < total).then_some(q.offset + page.len());
    Ok(Json(json!({
        "success": true,
        "total": total,
        "offset": q.offset,
        "next_offset": next,
        "connections": page,
    })))
}

/// `GET /connections/{id}`: seed 003's debug view of one connection (gateway or upstream).
pub async fn get_connection(
    State(node): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let gw = &node.gateway;
    if let Some(conn) = gw.registry.get(&id) {
        return Ok(Json(json!({
            "success": true,
            "connection": conn.info(gw.node(), gw.clock.now_ms()),
        })));
    }
    let view = node.upstreams.get(&id).await?;
    Ok(Json(json!({"success": true, "connection": view})))
}
