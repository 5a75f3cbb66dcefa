//! The upstream API: seed 000's operations over HTTP/JSON.
//!
//! | route | operation | body → answer |
//! | --- | --- | --- |
//! | `POST /api/v1/upstreams` | Connect | `{url, headers?, auth?: {messages, expect?, timeout_ms?}, subscriptions?: [{key?, message, unsubscribe?}], auto_reconnect?, reconnect?: {initial_ms, max_ms, max_attempts, jitter}, breaker?: {failure_threshold, cooldown_ms}, heartbeat?: {interval_ms, timeout_ms}, correlation?: {mode: "uuid-prefix"\|"json-field", field?}, publish_topic?, offline?: "reject"\|"outbox", wait_ms?}` → `{connection_id, state}` |
//! | `GET /api/v1/upstreams` | List | → `{total, upstreams: [view]}` |
//! | `GET /api/v1/upstreams/{id}` | Get | → `{upstream: view}` |
//! | `DELETE /api/v1/upstreams/{id}` | Disconnect | → `{}` |
//! | `POST …/{id}/send` | Send (text) | `{message}` |
//! | `POST …/{id}/send-raw` | SendRaw (binary) | `{data_base64}` |
//! | `POST …/{id}/send-async` | SendAsync | `{message\|data_base64, timeout_ms}` → `{response}` or `{response_base64}` |
//! | `POST …/{id}/subscriptions` | track / untrack | `{add?: [{key?, message, unsubscribe?}], remove?: [key]}` → `{subscriptions: [key]}` |
//! | `POST …/{id}/publish/start` | StartPublish | `{topic}` → `{channel: "topic:<topic>"}` |
//! | `POST …/{id}/publish/stop` | StopPublish | `{}` |
//!
//! Messages in bodies may be JSON values (sent as their JSON text) or strings (sent as
//! they are). A subscription without `key` is keyed by its message text. `auth.expect` is
//! a string (the reply contains it) or a JSON object (the reply has those fields). Connect
//! waits up to `wait_ms` (default 10 s, 0: not at all) for the first connection and
//! reports the state; the connection is kept and follows its reconnect policy either way.
//! SendAsync replies are JSON values when they parse, else strings; binary replies come as
//! `response_base64` (UUID mode returns the payload without its 16-byte prefix).
//!
//! Every answer is `{"success":bool,"error"?}`. Status codes: 404 `Connection not found`,
//! 409 `WebSocket is not connected` and `Connection owned by different instance: <id>`,
//! 504 `Request timeout`, 400 bad input, 502 other upstream failures, 503 outbox full or
//! store unavailable.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use wsgate_client::Message;
use wsgate_cluster::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    UpstreamAuth, UpstreamSpec, UpstreamSubscription,
};
use wsgate_core::upstream::state_name;

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

/// Longest Connect waits for the first connection by default.
const DEFAULT_CONNECT_WAIT_MS: u64 = 10_000;
/// Default SendAsync timeout, and the longest one accepted.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
const MAX_REQUEST_TIMEOUT_MS: u64 = 300_000;

/// A message as a body gives it: a string is sent as is, any other JSON value as its text.
fn wire_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthBody {
    messages: Vec<Value>,
    expect: Option<Value>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    key: Option<String>,
    message: Value,
    unsubscribe: Option<Value>,
}

impl SubscriptionBody {
    /// Without a key, the subscribe message's text is the key.
    fn into_spec(self) -> UpstreamSubscription {
        let message = wire_text(self.message);
        UpstreamSubscription {
            key: self.key.unwrap_or_else(|| message.clone()),
            message,
            unsubscribe: self.unsubscribe.map(wire_text),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    auth: Option<AuthBody>,
    #[serde(default)]
    subscriptions: Vec<SubscriptionBody>,
    auto_reconnect: Option<bool>,
    reconnect: Option<ReconnectPolicy>,
    breaker: Option<BreakerPolicy>,
    heartbeat: Option<HeartbeatPolicy>,
    correlation: Option<CorrelationMode>,
    publish_topic: Option<String>,
    offline: Option<OfflineMode>,
    /// How long Connect waits for the first connection (0: return at once). Default 10 s.
    wait_ms: Option<u64>,
}

impl ConnectBody {
    fn into_spec(self) -> Result<(UpstreamSpec, Duration), ApiError> {
        let auth = match self.auth {
            None => None,
            Some(a) => Some(UpstreamAuth {
                messages: a.messages.into_iter().map(wire_text).collect(),
                expect: match a.expect {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(AuthExpect::Contains(s)),
                    Some(v @ Value::Object(_)) => Some(AuthExpect::JsonFields(v.to_string())),
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "auth.expect must be a string or a JSON object",
                        ));
                    }
                },
                timeout_ms: a.timeout_ms.unwrap_or(10_000),
            }),
        };
        let spec = UpstreamSpec {
            url: self.url,
            headers: self.headers.into_iter().collect(),
            auth,
            subscriptions: self
                .subscriptions
                .into_iter()
                .map(SubscriptionBody::into_spec)
                .collect(),
            auto_reconnect: self.auto_reconnect.unwrap_or(true),
            reconnect: self.reconnect.unwrap_or_default(),
            breaker: self.breaker,
            heartbeat: self.heartbeat,
            correlation: self.correlation.unwrap_or_default(),
            offline: self.offline.unwrap_or_default(),
            publish_topic: self.publish_topic,
        };
        let wait = Duration::from_millis(self.wait_ms.unwrap_or(DEFAULT_CONNECT_WAIT_MS));
        Ok((spec, wait))
    }
}

pub async fn connect(
    State(node): State<ApiState>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> ApiResult {
    let (spec, wait) = body.into_spec()?;
    let c = node.upstreams.connect(spec, wait).await?;
    Ok(Json(json!({
        "success": true,
        "connection_id": &*c.id,
        "state": state_name(c.state),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    message: Value,
}

pub async fn send(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendBody>,
) -> ApiResult {
    node.upstreams.send(&id, wire_text(body.message)).await?;
    Ok(Json(json!({"success": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRawBody {
    data_base64: String,
}

fn decode(b64: &str) -> Result<Bytes, ApiError> {
    B64.decode(b64)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("data_base64 is not base64: {e}")))
}

pub async fn send_raw(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendRawBody>,
) -> ApiResult {
    let data = decode(&body.data_base64)?;
    node.upstreams.send_raw(&id, data).await?;
    Ok(Json(json!({"success": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendAsyncBody {
    message: Option<Value>,
    data_base64: Option<String>,
    timeout_ms: Option<u64>,
}

pub async fn send_async(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendAsyncBody>,
) -> ApiResult {
    let msg = match (body.message, body.data_base64) {
        (Some(m), None) => Message::from(wire_text(m)),
        (None, Some(b)) => Message::Binary(decode(&b)?),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of message and data_base64",
            ));
        }
    };
    let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_REQUEST_TIMEOUT_MS {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"
        )));
    }
    let reply = node
        .upstreams
        .send_async(&id, msg, Duration::from_millis(timeout_ms))
        .await?;
    Ok(Json(match reply {
        Message::Text(t) => {
            let response = serde_json::from_str::<Value>(t.as_str())
                .unwrap_or_else(|_| Value::String(t.as_str().to_owned()));
            json!({"success": true, "response": response})
        }
        Message::Binary(b) => json!({"success": true, "response_base64": B64.encode(&b)}),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsBody {
    #[serde(default)]
    add: Vec<SubscriptionBody>,
    #[serde(default)]
    remove: Vec<String>,
}

pub async fn subscriptions(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubscriptionsBody>,
) -> ApiResult {
    let add = body
        .add
        .into_iter()
        .map(SubscriptionBody::into_spec)
        .collect();
    let keys = node
        .upstreams
        .update_subscriptions(&id, add, body.remove)
        .await?;
    Ok(Json(json!({"success": true, "subscriptions": keys})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishStartBody {
    topic: String,
}

pub async fn publish_start(
    State(node): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PublishStartBody>,
) -> ApiResult {
    node.upstreams
        .start_publish(&id, body.topic.clone())
        .await?;
    Ok(Json(json!({
        "success": true,
        "topic": body.topic,
        "channel": format!("{}{}", wsgate_core::upstream::TOPIC_PREFIX, body.topic),
    })))
}

pub async fn publish_stop(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    node.upstreams.stop_publish(&id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn disconnect(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    node.upstreams.disconnect(&id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn list(State(node): State<ApiState>) -> ApiResult {
    let upstreams = node.upstreams.list();
    Ok(Json(json!({
        "success": true,
        "total": upstreams.len(),
        "upstreams": upstreams,
    })))
}

pub async fn get(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let view = node.upstreams.get(&id).await?;
    Ok(Json(json!({"success": true, "upstream": view})))
}
