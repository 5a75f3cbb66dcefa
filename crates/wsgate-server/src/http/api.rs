//! The control API that backends call: publish, send, disconnect, presence. Each handler
//! decodes its body into a command of [`Control`](wsgate_core::control::Control) and
//! encodes the result; rules, defaults and errors are the façade's.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wsgate_core::control::{
    Broadcast, Command, CommandResult, ControlError, Payload, Publish, Published,
};

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct PublishBody {
    channel: String,
    data: Payload,
    exclude_user: Option<String>,
    exclude_connection: Option<String>,
    event: Option<String>,
    idempotency_key: Option<String>,
}

impl From<PublishBody> for Publish {
    fn from(b: PublishBody) -> Self {
        Publish {
            channel: b.channel,
            data: b.data,
            exclude_user: b.exclude_user,
            exclude_connection: b.exclude_connection,
            event: b.event,
            idempotency_key: b.idempotency_key,
        }
    }
}

#[derive(Deserialize)]
pub struct BroadcastBody {
    channels: Vec<String>,
    data: Payload,
    exclude_user: Option<String>,
    exclude_connection: Option<String>,
    event: Option<String>,
    idempotency_key: Option<String>,
}

impl From<BroadcastBody> for Broadcast {
    fn from(b: BroadcastBody) -> Self {
        Broadcast {
            channels: b.channels,
            data: b.data,
            exclude_user: b.exclude_user,
            exclude_connection: b.exclude_connection,
            event: b.event,
            idempotency_key: b.idempotency_key,
        }
    }
}

#[derive(Deserialize)]
pub struct ChannelBody {
    channel: String,
}

/// `{"commands": [{"op": "publish", …}, …]}`: each command kept as text, decoded on its own
/// so that a malformed one fails alone.
#[derive(Deserialize)]
pub struct BatchBody {
    commands: Vec<Box<RawValue>>,
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
    let p = node.control.publish(body.into()).await?;
    Ok(Json(published(&p)))
}

fn published(p: &Published) -> Value {
    json!({
        "success": true,
        "channel": p.channel,
        "offset": p.offset,
        "epoch": &*p.epoch,
        "delivered": p.delivered,
        "replayed": p.replayed,
    })
}

fn failed(e: &ControlError) -> Value {
    json!({"success": false, "error": e.message})
}

/// `POST /api/v1/broadcast`: one result per channel, in the order given.
pub async fn broadcast(
    State(node): State<ApiState>,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> ApiResult {
    let results = node.control.broadcast(body.into()).await?;
    Ok(Json(
        json!({"success": true, "results": broadcast_results(&results)}),
    ))
}

fn broadcast_results(results: &[Result<Published, ControlError>]) -> Vec<Value> {
    results
        .iter()
        .map(|r| r.as_ref().map_or_else(failed, published))
        .collect()
}

/// `POST /api/v1/batch`: one result per command, in order; a failing command fails alone.
pub async fn batch(State(node): State<ApiState>, ApiJson(body): ApiJson<BatchBody>) -> ApiResult {
    let commands = body.commands.iter().map(|c| command(c)).collect();
    let results = node.control.batch(commands).await?;
    let results: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Err(e) => failed(e),
            Ok(CommandResult::Published(p)) => published(p),
            Ok(CommandResult::Broadcast(rs)) => {
                json!({"success": true, "results": broadcast_results(rs)})
            }
            Ok(CommandResult::Delivered(n)) => json!({"success": true, "delivered": n}),
            Ok(CommandResult::Done) => json!({"success": true}),
        })
        .collect();
    Ok(Json(json!({"success": true, "results": results})))
}

/// One batch command: `op` names it, the other members are the body of the endpoint of the
/// same name.
fn command(raw: &RawValue) -> Result<Command, ControlError> {
    #[derive(Deserialize)]
    struct Op {
        op: String,
    }
    #[derive(Deserialize)]
    struct ToUser {
        user: String,
        data: Payload,
    }
    #[derive(Deserialize)]
    struct ToConnection {
        connection_id: String,
        data: Payload,
    }
    #[derive(Deserialize)]
    struct Disconnect {
        connection_id: String,
        reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct UserChannel {
        user: String,
        channel: String,
    }
    fn body<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ControlError> {
        serde_json::from_str(raw.get())
            .map_err(|e| ControlError::invalid(format!("invalid command: {e}")))
    }
    let Op { op } = body(raw)?;
    Ok(match op.as_str() {
        "publish" => Command::Publish(body::<PublishBody>(raw)?.into()),
        "broadcast" => Command::Broadcast(body::<BroadcastBody>(raw)?.into()),
        "send_to_user" => {
            let ToUser { user, data } = body(raw)?;
            Command::SendToUser { user, data }
        }
        "send_to_connection" => {
            let ToConnection {
                connection_id,
                data,
            } = body(raw)?;
            Command::SendToConnection {
                connection_id,
                data,
            }
        }
        "disconnect" => {
            let Disconnect {
                connection_id,
                reason,
            } = body(raw)?;
            Command::Disconnect {
                connection_id,
                reason,
            }
        }
        "subscribe" => {
            let UserChannel { user, channel } = body(raw)?;
            Command::Subscribe { user, channel }
        }
        "unsubscribe" => {
            let UserChannel { user, channel } = body(raw)?;
            Command::Unsubscribe { user, channel }
        }
        other => {
            return Err(ControlError::invalid(format!(
                "unknown command op `{other}` (publish, broadcast, send_to_user, \
                 send_to_connection, disconnect, subscribe, unsubscribe)"
            )));
        }
    })
}

/// `POST /api/v1/users/{user}/subscribe`: every connection of the user, on every node.
pub async fn subscribe_user(
    State(node): State<ApiState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> ApiResult {
    let n = node.control.subscribe_user(&user, &body.channel).await;
    delivered(n)
}

pub async fn unsubscribe_user(
    State(node): State<ApiState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> ApiResult {
    let n = node.control.unsubscribe_user(&user, &body.channel).await;
    delivered(n)
}

fn delivered(n: Result<usize, ControlError>) -> ApiResult {
    Ok(Json(json!({"success": true, "delivered": n?})))
}

pub async fn send_to_user(
    State(node): State<ApiState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<DataBody>,
) -> ApiResult {
    delivered(node.control.send_to_user(&user, body.data).await)
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
