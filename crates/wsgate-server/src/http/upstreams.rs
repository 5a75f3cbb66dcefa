//! The upstream API: seed 000's operations over HTTP/JSON.
//!
//! | route | operation | body → answer |
//! | --- | --- | --- |
//! | `POST /api/v1/upstreams` | Connect | `{url, headers?, tls?: {ca_pem?, client_cert_pem?, client_key_pem?}, auth?: {messages, expect?, timeout_ms?, sign?: {algorithm: "hmac-sha256"\|"hmac-sha512", secret, payload, encoding?: "hex"\|"base64"}, refresh_ms?}, subscriptions?: [{key?, message, unsubscribe?}], auto_reconnect?, reconnect?: {initial_ms, max_ms, max_attempts, jitter, min_stable_ms?}, breaker?: {failure_threshold, cooldown_ms}, heartbeat?: {interval_ms, timeout_ms}, correlation?: {mode: "uuid-prefix"\|"json-field", field?}, publish_topic?, offline?: "reject"\|"outbox", wait_ms?}` → `{connection_id, state}` |
//! | `GET /api/v1/upstreams` | List | → `{total, upstreams: [view]}` |
//! | `GET /api/v1/upstreams/{id}` | Get | → `{upstream: view}` |
//! | `DELETE /api/v1/upstreams/{id}` | Disconnect | → `{}` |
//! | `POST …/{id}/reconnect` | Reconnect (restart, also out of `failed`) | → `{}` |
//! | `POST …/{id}/send` | Send (text) | `{message}` |
//! | `POST …/{id}/send-raw` | SendRaw (binary) | `{data_base64}` |
//! | `POST …/{id}/send-async` | SendAsync | `{message\|data_base64, timeout_ms}` → `{response}` or `{response_base64}` |
//! | `POST …/{id}/subscriptions` | track / untrack | `{add?: [{key?, message, unsubscribe?}], remove?: [key]}` → `{subscriptions: [key]}` |
//! | `POST …/{id}/publish/start` | StartPublish | `{topic}` → `{channel: "topic:<topic>"}` |
//! | `POST …/{id}/publish/stop` | StopPublish | `{}` |
//!
//! Messages in bodies may be JSON values (sent as their JSON text) or strings (sent as
//! they are). A subscription without `key` is keyed by its message text. `auth.expect` is
//! a string (the reply contains it), `{"field": f, "equals": v}` (the reply's field `f` is
//! `v`) or another JSON object (the reply has those fields). Auth messages may hold
//! `{{timestamp_ms}}`, `{{timestamp_s}}`, `{{nonce}}` and `{{signature}}`, rendered afresh
//! on every connection attempt. Connect
//! waits up to `wait_ms` (default 10 s, 0: not at all) for the first connection and
//! reports the state; the connection is kept and follows its reconnect policy either way.
//! SendAsync replies are JSON values when they parse, else strings; binary replies come as
//! `response_base64` (UUID mode returns the payload without its 16-byte prefix).
//!
//! Rules, defaults and routing are [`Control`](wsgate_core::control::Control)'s; these
//! handlers only turn JSON into its commands and its results into JSON.
//!
//! Every answer is `{"success":bool,"error"?}`. Status codes: 404 `Connection not found`,
//! 409 `WebSocket is not connected` and `Connection owned by different instance: <id>`,
//! 504 `Request timeout`, 400 bad input, 502 other upstream failures, 503 outbox full or
//! store unavailable.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wsgate_client::Message;
use wsgate_core::control::{Connect, ConnectAuth, Subscribe};
use wsgate_core::seams::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    UpstreamSign, UpstreamTls,
};

use super::ApiState;
use super::error::{ApiError, ApiJson};

type ApiResult = Result<Json<Value>, ApiError>;

/// The routes of the table above, below `/api/v1/upstreams`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", post(connect).get(list))
        .route("/{id}", routing::get(get).delete(disconnect))
        .route("/{id}/reconnect", post(reconnect))
        .route("/{id}/send", post(send))
        .route("/{id}/send-raw", post(send_raw))
        .route("/{id}/send-async", post(send_async))
        .route("/{id}/subscriptions", post(subscriptions))
        .route("/{id}/publish/start", post(publish_start))
        .route("/{id}/publish/stop", post(publish_stop))
}

/// What each `POST …/{id}/<operation>` with a body takes, in the order a handler would
/// extract it: the node, the upstream's id from the path, and the JSON body. A rejection
/// answers as that extractor's own would.
pub struct UpstreamCall<B> {
    node: ApiState,
    id: String,
    body: B,
}

impl<B: DeserializeOwned> FromRequest<ApiState> for UpstreamCall<B> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let State(node) = State::<ApiState>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ApiJson(body) = ApiJson::<B>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { node, id, body })
    }
}

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
    sign: Option<UpstreamSign>,
    refresh_ms: Option<u64>,
}

/// `auth.expect`: a string, `{"field", "equals"}`, or an object of fields to match.
fn auth_expect(v: Option<Value>) -> Result<Option<AuthExpect>, ApiError> {
    Ok(match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(AuthExpect::Contains(s)),
        Some(Value::Object(o))
            if o.len() == 2
                && o.get("field").is_some_and(Value::is_string)
                && o.contains_key("equals") =>
        {
            Some(AuthExpect::Field {
                field: o["field"].as_str().unwrap_or_default().to_string(),
                equals: o["equals"].to_string(),
            })
        }
        Some(v @ Value::Object(_)) => Some(AuthExpect::JsonFields(v.to_string())),
        Some(_) => {
            return Err(ApiError::bad_request(
                "auth.expect must be a string or a JSON object",
            ));
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    key: Option<String>,
    message: Value,
    unsubscribe: Option<Value>,
}

impl From<SubscriptionBody> for Subscribe {
    fn from(b: SubscriptionBody) -> Self {
        Subscribe {
            key: b.key,
            message: wire_text(b.message),
            unsubscribe: b.unsubscribe.map(wire_text),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    tls: Option<UpstreamTls>,
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
    wait_ms: Option<u64>,
}

impl TryFrom<ConnectBody> for Connect {
    type Error = ApiError;

    fn try_from(b: ConnectBody) -> Result<Self, ApiError> {
        let auth = match b.auth {
            None => None,
            Some(a) => Some(ConnectAuth {
                messages: a.messages.into_iter().map(wire_text).collect(),
                expect: auth_expect(a.expect)?,
                timeout_ms: a.timeout_ms,
                sign: a.sign,
                refresh_ms: a.refresh_ms,
            }),
        };
        Ok(Connect {
            url: b.url,
            headers: b.headers.into_iter().collect(),
            tls: b.tls,
            auth,
            subscriptions: b.subscriptions.into_iter().map(Into::into).collect(),
            auto_reconnect: b.auto_reconnect,
            reconnect: b.reconnect,
            breaker: b.breaker,
            heartbeat: b.heartbeat,
            correlation: b.correlation,
            offline: b.offline,
            publish_topic: b.publish_topic,
            wait_ms: b.wait_ms,
        })
    }
}

pub async fn connect(
    State(node): State<ApiState>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> ApiResult {
    let c = node.control.connect(Connect::try_from(body)?).await?;
    Ok(Json(json!({
        "success": true,
        "connection_id": &*c.connection_id,
        "state": c.state,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    message: Value,
}

pub async fn send(UpstreamCall { node, id, body }: UpstreamCall<SendBody>) -> ApiResult {
    node.control.send(&id, wire_text(body.message)).await?;
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

pub async fn send_raw(UpstreamCall { node, id, body }: UpstreamCall<SendRawBody>) -> ApiResult {
    let data = decode(&body.data_base64)?;
    node.control.send_raw(&id, data).await?;
    Ok(Json(json!({"success": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendAsyncBody {
    message: Option<Value>,
    data_base64: Option<String>,
    timeout_ms: Option<u64>,
}

pub async fn send_async(UpstreamCall { node, id, body }: UpstreamCall<SendAsyncBody>) -> ApiResult {
    let msg = match (body.message, body.data_base64) {
        (Some(m), None) => Message::from(wire_text(m)),
        (None, Some(b)) => Message::Binary(decode(&b)?),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of message and data_base64",
            ));
        }
    };
    let reply = node.control.send_async(&id, msg, body.timeout_ms).await?;
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
    UpstreamCall { node, id, body }: UpstreamCall<SubscriptionsBody>,
) -> ApiResult {
    let add = body.add.into_iter().map(Into::into).collect();
    let keys = node
        .control
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
    UpstreamCall { node, id, body }: UpstreamCall<PublishStartBody>,
) -> ApiResult {
    let started = node.control.start_publish(&id, body.topic).await?;
    Ok(Json(json!({
        "success": true,
        "topic": started.topic,
        "channel": started.channel,
    })))
}

pub async fn publish_stop(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    node.control.stop_publish(&id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn reconnect(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    node.control.reconnect_upstream(&id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn disconnect(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    node.control.disconnect_upstream(&id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn list(State(node): State<ApiState>) -> ApiResult {
    let upstreams = node.control.list_upstreams();
    Ok(Json(json!({
        "success": true,
        "total": upstreams.len(),
        "upstreams": upstreams,
    })))
}

pub async fn get(State(node): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let view = node.control.get_upstream(&id).await?;
    Ok(Json(json!({"success": true, "upstream": view})))
}
