//! The control API that backends call: publish, send, disconnect, presence. Each handler
//! decodes its body into a command of [`Control`](wsgate_core::control::Control) and
//! encodes the result; rules, defaults and errors are the façade's.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wsgate_core::control::{Payload, Publish};

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    exclude_user: Option<String>,
    event: Option<String>,
}

#[derive(Deserialize)]
pub struct DataBody {
    data: Box<RawValue>,
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
            data: Payload::from(&*body.data),
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
    let data = Payload::from(&*body.data);
    let delivered = node.control.send_to_user(&user, data).await?;
    Ok(Json(json!({"success": true, "delivered": delivered})))
}

pub async fn send_to_connection(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    let data = Payload::from(&*body.data);
    node.control.send_to_connection(&id, data).await?;
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
