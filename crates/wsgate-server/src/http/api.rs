//! The control API that backends call: publish, send, disconnect, presence. Each handler
//! decodes its body into a command of [`Control`](wsgate_core::control::Control) and
//! encodes the result; rules, defaults and errors are the façade's.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use wsgate_core::control::{Payload, Publish};

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct PublishBody {
    channel: String,
    data: Payload,
    exclude_user: Option<String>,
    event: Option<String>,
}

#[derive(Deserialize)]
pub struct DataBody {
    data: Payload,
}

#[derive(Deserialize, Default)]
pub struct ChannelsQuery {
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize, Default)]
pub struct DisconnectQuery {
    reason: Option<String>,
}

pub async fn publish(
    State(node): State<ApiState>,
    ApiJson(body): ApiJson<PublishBody>,
) -> ApiResult {
    let p = node
        .control
        .publish(Publish {
            channel: body.channel,
            data: body.data,
            exclude_user: body.exclude_user,
            event: body.event,
        })
        .await?;
    Ok(Json(json!({
        "success": true,
        "channel": p.channel,
        "offset": p.offset,
        "epoch": &*p.epoch,
        "delivered": p.delivered,
    })))
}

pub async fn send_to_user(
    State(node): State<ApiState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    let delivered = node.control.send_to_user(&user, body.data).await?;
    Ok(Json(json!({"success": true, "delivered": delivered})))
}

pub async fn send_to_connection(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    node.control.send_to_connection(&id, body.data).await?;
    Ok(Json(json!({"success": true, "delivered": 1})))
}

pub async fn disconnect(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DisconnectQuery>,
) -> ApiResult {
    node.control
        .disconnect_client(&id, q.reason.as_deref())
        .await?;
    Ok(Json(json!({"success": true})))
}

pub async fn presence(State(node): State<ApiState>, Path(channel): Path<String>) -> ApiResult {
    let p = node.control.presence(&channel).await?;
    Ok(Json(json!({
        "success": true,
        "channel": p.channel,
        "users": p.users,
        "connections": p.connections,
    })))
}

/// `GET /api/v1/channels?prefix=`: channels with subscribers, cluster-wide.
pub async fn list_channels(
    State(node): State<ApiState>,
    Query(q): Query<ChannelsQuery>,
) -> ApiResult {
    let l = node.control.list_channels(&q.prefix).await?;
    Ok(Json(json!({
        "success": true,
        "channels": l.channels.iter().map(|c| json!({
            "channel": c.channel,
            "subscribers": c.subscribers,
        })).collect::<Vec<_>>(),
        "truncated": l.truncated,
        "missing_nodes": l.missing_nodes,
    })))
}

/// `GET /api/v1/channels/{channel}`: subscribers (cluster-wide), offset and epoch.
pub async fn channel_info(State(node): State<ApiState>, Path(channel): Path<String>) -> ApiResult {
    let c = node.control.channel_info(&channel).await?;
    Ok(Json(json!({
        "success": true,
        "channel": c.channel,
        "subscribers": c.subscribers,
        "offset": c.offset,
        "epoch": &*c.epoch,
        "missing_nodes": c.missing_nodes,
    })))
}
