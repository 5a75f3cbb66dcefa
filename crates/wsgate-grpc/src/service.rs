//! `wsgate.v1.WsGate` over the gateway and the upstream manager: each RPC is the HTTP
//! handler of the same name with protobuf in place of JSON. Failures become
//! `success = false` replies carrying the error's `Display` string, which is what the HTTP
//! API puts in `error`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tonic::{Request, Response, Status};
use wsgate_client::Message;
use wsgate_core::gateway::{ConnectionInfo, Gateway};
use wsgate_core::protocol::MAX_CHANNEL_LEN;
use wsgate_core::seams::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    UpstreamAuth, UpstreamSpec, UpstreamSubscription,
};
use wsgate_core::upstream::{TOPIC_PREFIX, UpstreamManager, UpstreamView, state_name};

use crate::pb::{self, ws_gate_server::WsGate};

/// Longest Connect waits for the first connection by default (as the HTTP API).
const DEFAULT_CONNECT_WAIT_MS: u64 = 10_000;
/// Default SendAsync timeout, and the longest one accepted (as the HTTP API).
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
const MAX_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// ListConnections page size: default and maximum (as `GET /connections`).
const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

/// The service: cheap to clone, shares the node's gateway and upstream manager.
#[derive(Clone)]
pub struct GrpcApi {
    gateway: Arc<Gateway>,
    upstreams: Arc<UpstreamManager>,
}

impl GrpcApi {
    pub fn new(gateway: Arc<Gateway>, upstreams: Arc<UpstreamManager>) -> Self {
        Self { gateway, upstreams }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Every reply type has `success` and `error`; this builds the failure of any of them.
trait Outcome: Default {
    fn set(&mut self, success: bool, error: String);
    fn ok() -> Self {
        let mut r = Self::default();
        r.set(true, String::new());
        r
    }
    fn failed(error: impl ToString) -> Self {
        let mut r = Self::default();
        r.set(false, error.to_string());
        r
    }
}

macro_rules! outcome {
    ($($t:ty),* $(,)?) => {$(
        impl Outcome for $t {
            fn set(&mut self, success: bool, error: String) {
                self.success = success;
                self.error = error;
            }
        }
    )*};
}

outcome!(
    pb::ConnectReply,
    pb::SendReply,
    pb::SendAsyncReply,
    pb::UpdateSubscriptionsReply,
    pb::StartPublishReply,
    pb::StopPublishReply,
    pb::DisconnectReply,
    pb::ListConnectionsReply,
    pb::GetConnectionReply,
    pb::PublishReply,
    pb::DeliveryReply,
    pb::PresenceReply,
);

/// The reply for `result`: `ok` builds the success, an error becomes `success = false`.
fn answer<T: Outcome, V, E: ToString>(result: Result<V, E>, ok: impl FnOnce(V) -> T) -> Reply<T> {
    Ok(Response::new(match result {
        Ok(v) => {
            let mut r = ok(v);
            r.set(true, String::new());
            r
        }
        Err(e) => T::failed(e),
    }))
}

/// The HTTP API's channel rule.
fn check_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty()
        || channel.len() > MAX_CHANNEL_LEN
        || channel.chars().any(char::is_control)
    {
        return Err(format!(
            "channel names are 1 to {MAX_CHANNEL_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// Gateway payloads are one JSON value, as the HTTP API's `data` field.
fn payload(data: &str) -> Result<Bytes, String> {
    let raw: Box<RawValue> =
        serde_json::from_str(data).map_err(|e| format!("data is not one JSON value: {e}"))?;
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

fn subscription(s: pb::Subscription) -> UpstreamSubscription {
    UpstreamSubscription {
        key: if s.key.is_empty() {
            s.message.clone()
        } else {
            s.key
        },
        message: s.message,
        unsubscribe: s.unsubscribe,
    }
}

fn spec(r: pb::ConnectRequest) -> Result<(UpstreamSpec, Duration), String> {
    let auth = match r.auth {
        None => None,
        Some(a) => Some(UpstreamAuth {
            messages: a.messages,
            expect: match (a.expect_contains, a.expect_json_fields) {
                (None, None) => None,
                (Some(s), None) => Some(AuthExpect::Contains(s)),
                (None, Some(j)) => match serde_json::from_str::<serde_json::Value>(&j) {
                    Ok(v @ serde_json::Value::Object(_)) => {
                        Some(AuthExpect::JsonFields(v.to_string()))
                    }
                    _ => return Err("auth.expect_json_fields must be a JSON object".into()),
                },
                (Some(_), Some(_)) => {
                    return Err(
                        "give at most one of auth.expect_contains and auth.expect_json_fields"
                            .into(),
                    );
                }
            },
            timeout_ms: a.timeout_ms.unwrap_or(10_000),
        }),
    };
    let correlation = match pb::CorrelationMode::try_from(r.correlation) {
        Ok(pb::CorrelationMode::None) => CorrelationMode::None,
        Ok(pb::CorrelationMode::UuidPrefix) => CorrelationMode::UuidPrefix,
        Ok(pb::CorrelationMode::JsonField) => CorrelationMode::JsonField {
            field: r
                .correlation_field
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| "id".into()),
        },
        Err(_) => return Err(format!("unknown correlation mode {}", r.correlation)),
    };
    let offline = match pb::OfflineMode::try_from(r.offline) {
        Ok(pb::OfflineMode::Reject) => OfflineMode::Reject,
        Ok(pb::OfflineMode::Outbox) => OfflineMode::Outbox,
        Err(_) => return Err(format!("unknown offline mode {}", r.offline)),
    };
    let spec = UpstreamSpec {
        url: r.url,
        headers: r.headers.into_iter().collect(),
        auth,
        subscriptions: r.subscriptions.into_iter().map(subscription).collect(),
        auto_reconnect: r.auto_reconnect.unwrap_or(true),
        reconnect: r
            .reconnect
            .map(|p| ReconnectPolicy {
                initial_ms: p.initial_ms,
                max_ms: p.max_ms,
                max_attempts: p.max_attempts,
                jitter: p.jitter,
            })
            .unwrap_or_default(),
        breaker: r.breaker.map(|b| BreakerPolicy {
            failure_threshold: b.failure_threshold,
            cooldown_ms: b.cooldown_ms,
        }),
        heartbeat: r.heartbeat.map(|h| HeartbeatPolicy {
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
        }),
        correlation,
        offline,
        publish_topic: r.publish_topic,
    };
    let wait = Duration::from_millis(r.wait_ms.unwrap_or(DEFAULT_CONNECT_WAIT_MS));
    Ok((spec, wait))
}

fn gateway_view(i: ConnectionInfo) -> pb::Connection {
    pb::Connection {
        kind: Some(pb::connection::Kind::Gateway(pb::GatewayConnection {
            id: i.id,
            user: i.user,
            channels: i.channels,
            connected_at_ms: i.connected_at_ms,
            uptime_ms: i.uptime_ms,
            last_heartbeat_ms_ago: i.last_heartbeat_ms_ago,
            messages_sent: i.messages_sent,
            messages_received: i.messages_received,
            bytes_sent: i.bytes_sent,
            bytes_received: i.bytes_received,
            errors: i.errors,
            last_error: i.last_error,
            queue_depth: i.queue_depth as u64,
            state: i.state.into(),
            node: i.node,
            remote: i.remote,
        })),
    }
}

fn upstream_view(u: UpstreamView) -> pb::Connection {
    pb::Connection {
        kind: Some(pb::connection::Kind::Upstream(pb::UpstreamConnection {
            id: u.id,
            url: u.url,
            state: u.state.into(),
            node: u.node,
            attempts: u.attempts,
            total_attempts: u.total_attempts,
            reconnects: u.reconnects,
            last_error: u.last_error,
            connected_since: u.connected_since,
            created_at_ms: u.created_at_ms,
            messages_sent: u.messages_sent,
            messages_received: u.messages_received,
            bytes_sent: u.bytes_sent,
            bytes_received: u.bytes_received,
            late_replies: u.late_replies,
            pending_requests: u.pending_requests as u64,
            outbox_len: u.outbox_len as u64,
            breaker: u.breaker.into(),
            subscriptions: u.subscriptions,
            publish_topic: u.publish_topic,
            published: u.published,
            publish_errors: u.publish_errors,
            auto_reconnect: u.auto_reconnect,
            correlation: u.correlation.into(),
            headers: u.headers,
        })),
    }
}

#[tonic::async_trait]
impl WsGate for GrpcApi {
    async fn connect(&self, req: Request<pb::ConnectRequest>) -> Reply<pb::ConnectReply> {
        let (spec, wait) = match spec(req.into_inner()) {
            Ok(s) => s,
            Err(e) => return answer(Err::<(), _>(e), |_| pb::ConnectReply::ok()),
        };
        answer(self.upstreams.connect(spec, wait).await, |c| {
            pb::ConnectReply {
                connection_id: c.id.to_string(),
                state: state_name(c.state).into(),
                ..Default::default()
            }
        })
    }

    async fn send(&self, req: Request<pb::SendRequest>) -> Reply<pb::SendReply> {
        let r = req.into_inner();
        answer(
            self.upstreams.send(&r.connection_id, r.message).await,
            |_| pb::SendReply::ok(),
        )
    }

    async fn send_raw(&self, req: Request<pb::SendRawRequest>) -> Reply<pb::SendReply> {
        let r = req.into_inner();
        answer(
            self.upstreams
                .send_raw(&r.connection_id, Bytes::from(r.data))
                .await,
            |_| pb::SendReply::ok(),
        )
    }

    async fn send_async(&self, req: Request<pb::SendAsyncRequest>) -> Reply<pb::SendAsyncReply> {
        use pb::send_async_reply::Response as Resp;
        use pb::send_async_request::Request as Req;
        let r = req.into_inner();
        let msg = match r.request {
            Some(Req::Message(t)) => Message::from(t),
            Some(Req::Data(b)) => Message::Binary(Bytes::from(b)),
            None => {
                return answer(Err::<(), _>("give exactly one of message and data"), |_| {
                    pb::SendAsyncReply::ok()
                });
            }
        };
        let timeout_ms = r.timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_REQUEST_TIMEOUT_MS {
            return answer(
                Err::<(), _>(format!(
                    "timeout_ms must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"
                )),
                |_| pb::SendAsyncReply::ok(),
            );
        }
        let reply = self
            .upstreams
            .send_async(&r.connection_id, msg, Duration::from_millis(timeout_ms))
            .await;
        answer(reply, |m| pb::SendAsyncReply {
            response: Some(match m {
                Message::Text(t) => Resp::Text(t.as_str().to_owned()),
                Message::Binary(b) => Resp::Data(b.to_vec()),
            }),
            ..Default::default()
        })
    }

    async fn update_subscriptions(
        &self,
        req: Request<pb::UpdateSubscriptionsRequest>,
    ) -> Reply<pb::UpdateSubscriptionsReply> {
        let r = req.into_inner();
        let add = r.add.into_iter().map(subscription).collect();
        answer(
            self.upstreams
                .update_subscriptions(&r.connection_id, add, r.remove)
                .await,
            |keys| pb::UpdateSubscriptionsReply {
                subscriptions: keys,
                ..Default::default()
            },
        )
    }

    async fn start_publish(
        &self,
        req: Request<pb::StartPublishRequest>,
    ) -> Reply<pb::StartPublishReply> {
        let r = req.into_inner();
        let topic = r.topic;
        answer(
            self.upstreams
                .start_publish(&r.connection_id, topic.clone())
                .await,
            |_| pb::StartPublishReply {
                channel: format!("{TOPIC_PREFIX}{topic}"),
                topic,
                ..Default::default()
            },
        )
    }

    async fn stop_publish(
        &self,
        req: Request<pb::StopPublishRequest>,
    ) -> Reply<pb::StopPublishReply> {
        let r = req.into_inner();
        answer(self.upstreams.stop_publish(&r.connection_id).await, |_| {
            pb::StopPublishReply::ok()
        })
    }

    async fn disconnect(&self, req: Request<pb::DisconnectRequest>) -> Reply<pb::DisconnectReply> {
        let r = req.into_inner();
        answer(self.upstreams.disconnect(&r.connection_id).await, |_| {
            pb::DisconnectReply::ok()
        })
    }

    async fn list_connections(
        &self,
        req: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsReply> {
        let q = req.into_inner();
        let kind = q.kind.as_str();
        if !matches!(kind, "" | "gateway" | "upstream") {
            return answer(Err::<(), _>("kind is gateway or upstream"), |_| {
                pb::ListConnectionsReply::ok()
            });
        }
        let gw = &self.gateway;
        let now = gw.clock.now_ms();
        let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize;
        let offset = q.offset as usize;
        let conns = match (&q.user, kind) {
            (_, "upstream") => Vec::new(),
            (Some(user), _) => gw.registry.of_user(user),
            (None, _) => gw.registry.all(),
        };
        let mut all: Vec<(String, pb::Connection)> = conns
            .iter()
            .filter(|c| q.channel.as_deref().is_none_or(|ch| c.is_subscribed(ch)))
            .map(|c| c.info(gw.node(), now))
            .map(|i| (i.id.clone(), gateway_view(i)))
            .collect();
        // Upstream connections have no user and no channels: a user or channel filter
        // excludes them (as GET /connections).
        if kind != "gateway" && q.user.is_none() && q.channel.is_none() {
            all.extend(
                self.upstreams
                    .list()
                    .into_iter()
                    .map(|u| (u.id.clone(), upstream_view(u))),
            );
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let total = all.len();
        let page: Vec<pb::Connection> = all
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, c)| c)
            .collect();
        let next = (offset + page.len() < total).then_some((offset + page.len()) as u64);
        answer(Ok::<_, String>(page), |connections| {
            pb::ListConnectionsReply {
                total: total as u64,
                offset: offset as u64,
                next_offset: next,
                connections,
                ..Default::default()
            }
        })
    }

    async fn get_connection(
        &self,
        req: Request<pb::GetConnectionRequest>,
    ) -> Reply<pb::GetConnectionReply> {
        let id = req.into_inner().connection_id;
        let gw = &self.gateway;
        let view = match gw.registry.get(&id) {
            Some(conn) => Ok(gateway_view(conn.info(gw.node(), gw.clock.now_ms()))),
            None => self.upstreams.get(&id).await.map(upstream_view),
        };
        answer(view, |c| pb::GetConnectionReply {
            connection: Some(c),
            ..Default::default()
        })
    }

    async fn publish(&self, req: Request<pb::PublishRequest>) -> Reply<pb::PublishReply> {
        let r = req.into_inner();
        let data = match check_channel(&r.channel).and_then(|_| payload(&r.data)) {
            Ok(d) => d,
            Err(e) => return answer(Err::<(), _>(e), |_| pb::PublishReply::ok()),
        };
        let published = self
            .gateway
            .publish(&r.channel, data, r.exclude_user.as_deref())
            .await;
        answer(published, |(offset, epoch, delivered)| pb::PublishReply {
            channel: r.channel,
            offset,
            epoch: epoch.to_string(),
            delivered: delivered as u64,
            ..Default::default()
        })
    }

    async fn send_to_user(&self, req: Request<pb::SendToUserRequest>) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        let data = match payload(&r.data) {
            Ok(d) => d,
            Err(e) => return answer(Err::<(), _>(e), |_| pb::DeliveryReply::ok()),
        };
        answer(self.gateway.send_to_user(&r.user, data).await, |n| {
            pb::DeliveryReply {
                delivered: n as u64,
                ..Default::default()
            }
        })
    }

    async fn send_to_connection(
        &self,
        req: Request<pb::SendToConnectionRequest>,
    ) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        let data = match payload(&r.data) {
            Ok(d) => d,
            Err(e) => return answer(Err::<(), _>(e), |_| pb::DeliveryReply::ok()),
        };
        answer(
            self.gateway
                .send_to_connection(&r.connection_id, data)
                .await,
            |_| pb::DeliveryReply {
                delivered: 1,
                ..Default::default()
            },
        )
    }

    async fn disconnect_client(
        &self,
        req: Request<pb::DisconnectClientRequest>,
    ) -> Reply<pb::DisconnectReply> {
        let r = req.into_inner();
        let reason = r
            .reason
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "closed by the control API".into());
        answer(self.gateway.kick(&r.connection_id, &reason), |_| {
            pb::DisconnectReply::ok()
        })
    }

    async fn presence(&self, req: Request<pb::PresenceRequest>) -> Reply<pb::PresenceReply> {
        let channel = req.into_inner().channel;
        if let Err(e) = check_channel(&channel) {
            return answer(Err::<(), _>(e), |_| pb::PresenceReply::ok());
        }
        answer(self.gateway.presence(&channel).await, |p| {
            pb::PresenceReply {
                channel: p.channel,
                users: p.users,
                connections: p.connections as u64,
                ..Default::default()
            }
        })
    }
}
