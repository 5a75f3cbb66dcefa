//! The control API that backends call: publish, send, disconnect, presence.

use axum::Json;
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wsgate_core::protocol::MAX_CHANNEL_LEN;

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    exclude_user: Option<String>,
}

#[derive(Deserialize)]
pub struct DataBody {
    data: Box<RawValue>,
}

#[derive(Deserialize, Default)]
pub struct DisconnectQuery {
    reason: Option<String>,
}

fn payload(raw: &RawValue) -> Bytes {
    Bytes::copy_from_slice(raw.get().as_bytes())
}

fn check_channel(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty()
        || channel.len() > MAX_CHANNEL_LEN
        || channel.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "channel names are 1 to {MAX_CHANNEL_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

pub async fn publish(
    State(node): State<ApiState>,
    ApiJson(body): ApiJson<PublishBody>,
) -> ApiResult {
    check_channel(&body.channel)?;
    let (offset, epoch, delivered) = node
        .gateway
        .publish(
            &body.channel,
            payload(&body.data),
            body.exclude_user.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "success": true,
        "channel": body.channel,
        "offset": offset,
        "epoch": &*epoch,
        "delivered": delivered,
    })))
}

pub async fn send_to_user(
    State(node): State<ApiState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    let delivered = node
        .gateway
        .send_to_user(&user, payload(&body.data))
        .await?;
    Ok(Json(json!({"success": true, "delivered": delivered})))
}

pub async fn send_to_connection(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    node.gateway
        .send_to_connection(&id, payload(&body.data))
        .await?;
    Ok(Json(json!({"success": true, "delivered": 1})))
}

pub async fn disconnect(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DisconnectQuery>,
) -> ApiResult {
    let reason = q
        .reason
        .unwrap_or_else(|| "closed by the control API".into());
    node.gateway.kick(&id, &reason)?;
    Ok(Json(json!({"success": true})))
}

pub async fn presence(State(node): State<ApiState>, Path(channel): Path<String>) -> ApiResult {
    check_channel(&channel)?;
    let p = node.gateway.presence(&channel).await?;
    Ok(Json(json!({
        "success": true,
        "channel": p.channel,
        "users": p.users,
        "connections": p.connections,
    })))
}
