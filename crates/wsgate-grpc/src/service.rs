//! `wsgate.v1.WsGate` over the control façade: each RPC decodes its request into a
//! command of [`Control`], calls it and encodes the result, exactly as the HTTP handler of
//! the same name does with JSON. Failures become `success = false` replies carrying
//! [`ControlError`]'s message, which is what the HTTP API puts in `error`.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use wsgate_client::Message;
use wsgate_core::control::{
    Broadcast, Connect, ConnectAuth, ConnectionView, Control, ControlError, ListConnections,
    Payload, Publish, Published, Subscribe,
};
use wsgate_core::gateway::ConnectionInfo;
use wsgate_core::seams::upstream::{
    AuthExpect, BreakerPolicy, CorrelationMode, HeartbeatPolicy, OfflineMode, ReconnectPolicy,
    SignAlgorithm, SignEncoding, UpstreamSign, UpstreamTls,
};
use wsgate_core::upstream::UpstreamView;

use crate::pb::{self, ws_gate_server::WsGate};

/// The service: cheap to clone, shares the node's control façade.
#[derive(Clone)]
pub struct GrpcApi {
    control: Arc<Control>,
}

impl GrpcApi {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// The façade, for the interceptor's authorization.
    pub(crate) fn control(&self) -> Arc<Control> {
        self.control.clone()
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
    fn failed(error: ControlError) -> Self {
        let mut r = Self::default();
        r.set(false, error.message);
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
    pb::ReconnectReply,
    pb::ListConnectionsReply,
    pb::GetConnectionReply,
    pb::PublishReply,
    pb::BroadcastReply,
    pb::DeliveryReply,
    pb::PresenceReply,
    pb::ListChannelsReply,
    pb::GetChannelReply,
);

/// The reply for `result`: `ok` builds the success, an error becomes `success = false`
/// with the façade's message.
fn answer<T: Outcome, V>(result: Result<V, ControlError>, ok: impl FnOnce(V) -> T) -> Reply<T> {
    Ok(Response::new(match result {
        Ok(v) => {
            let mut r = ok(v);
            r.set(true, String::new());
            r
        }
        Err(e) => T::failed(e),
    }))
}

/// `call` with `data` checked as one JSON value (its error otherwise).
async fn parsed<T, F>(data: &str, call: impl FnOnce(Payload) -> F) -> Result<T, ControlError>
where
    F: std::future::Future<Output = Result<T, ControlError>>,
{
    call(Payload::parse(data)?).await
}

fn delivered(n: Result<usize, ControlError>) -> Reply<pb::DeliveryReply> {
    answer(n, |n| pb::DeliveryReply {
        delivered: n as u64,
        ..Default::default()
    })
}

fn publish_reply(p: Published) -> pb::PublishReply {
    pb::PublishReply {
        channel: p.channel,
        offset: p.offset,
        epoch: p.epoch.to_string(),
        delivered: p.delivered as u64,
        replayed: p.replayed,
        ..Default::default()
    }
}

fn subscription(s: pb::Subscription) -> Subscribe {
    Subscribe {
        key: Some(s.key).filter(|k| !k.is_empty()),
        message: s.message,
        unsubscribe: s.unsubscribe,
    }
}

fn auth_expect(a: &mut pb::AuthStep) -> Result<Option<AuthExpect>, ControlError> {
    let field = match (a.expect_field.take(), a.expect_equals_json.take()) {
        (None, None) => None,
        (Some(field), Some(equals)) => Some(AuthExpect::Field { field, equals }),
        _ => {
            return Err(ControlError::invalid(
                "auth.expect_field and auth.expect_equals_json go together",
            ));
        }
    };
    match (a.expect_contains.take(), a.expect_json_fields.take(), field) {
        (None, None, None) => Ok(None),
        (Some(s), None, None) => Ok(Some(AuthExpect::Contains(s))),
        (None, None, Some(f)) => Ok(Some(f)),
        (None, Some(j), None) => match serde_json::from_str::<serde_json::Value>(&j) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(Some(AuthExpect::JsonFields(v.to_string()))),
            _ => Err(ControlError::invalid(
                "auth.expect_json_fields must be a JSON object",
            )),
        },
        _ => Err(ControlError::invalid(
            "give at most one of auth.expect_contains and auth.expect_json_fields",
        )),
    }
}

fn sign_step(s: pb::SignStep) -> Result<UpstreamSign, ControlError> {
    Ok(UpstreamSign {
        algorithm: match s.algorithm.as_str() {
            "hmac-sha256" => SignAlgorithm::HmacSha256,
            "hmac-sha512" => SignAlgorithm::HmacSha512,
            other => {
                return Err(ControlError::invalid(format!(
                    "unknown auth.sign.algorithm {other:?} (hmac-sha256 or hmac-sha512)"
                )));
            }
        },
        secret: s.secret,
        payload: s.payload,
        encoding: match s.encoding.as_str() {
            "" | "hex" => SignEncoding::Hex,
            "base64" => SignEncoding::Base64,
            other => {
                return Err(ControlError::invalid(format!(
                    "unknown auth.sign.encoding {other:?} (hex or base64)"
                )));
            }
        },
    })
}

impl TryFrom<pb::ConnectRequest> for Connect {
    type Error = ControlError;

    fn try_from(r: pb::ConnectRequest) -> Result<Self, ControlError> {
        let auth = match r.auth {
            None => None,
            Some(mut a) => Some(ConnectAuth {
                expect: auth_expect(&mut a)?,
                sign: a.sign.map(sign_step).transpose()?,
                messages: a.messages,
                timeout_ms: a.timeout_ms,
                refresh_ms: a.refresh_ms,
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
            Err(_) => {
                return Err(ControlError::invalid(format!(
                    "unknown correlation mode {}",
                    r.correlation
                )));
            }
        };
        let offline = match pb::OfflineMode::try_from(r.offline) {
            Ok(pb::OfflineMode::Reject) => OfflineMode::Reject,
            Ok(pb::OfflineMode::Outbox) => OfflineMode::Outbox,
            Err(_) => {
                return Err(ControlError::invalid(format!(
                    "unknown offline mode {}",
                    r.offline
                )));
            }
        };
        Ok(Connect {
            url: r.url,
            headers: r.headers.into_iter().collect(),
            tls: r.tls.map(|t| UpstreamTls {
                ca_pem: t.ca_pem,
                client_cert_pem: t.client_cert_pem,
                client_key_pem: t.client_key_pem,
            }),
            auth,
            subscriptions: r.subscriptions.into_iter().map(subscription).collect(),
            auto_reconnect: r.auto_reconnect,
            reconnect: r.reconnect.map(|p| ReconnectPolicy {
                initial_ms: p.initial_ms,
                max_ms: p.max_ms,
                max_attempts: p.max_attempts,
                jitter: p.jitter,
                min_stable_ms: p.min_stable_ms,
            }),
            breaker: r.breaker.map(|b| BreakerPolicy {
                failure_threshold: b.failure_threshold,
                cooldown_ms: b.cooldown_ms,
            }),
            heartbeat: r.heartbeat.map(|h| HeartbeatPolicy {
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
            }),
            correlation: Some(correlation),
            offline: Some(offline),
            publish_topic: r.publish_topic,
            wait_ms: r.wait_ms,
        })
    }
}

fn connection_view(c: ConnectionView) -> pb::Connection {
    match c {
        ConnectionView::Gateway(i) => gateway_view(i),
        ConnectionView::Upstream(u) => upstream_view(u),
    }
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
            client_kind: i.kind.into(),
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
        let connected = match Connect::try_from(req.into_inner()) {
            Ok(cmd) => self.control.connect(cmd).await,
            Err(e) => Err(e),
        };
        answer(connected, |c| pb::ConnectReply {
            connection_id: c.connection_id.to_string(),
            state: c.state.into(),
            ..Default::default()
        })
    }

    async fn send(&self, req: Request<pb::SendRequest>) -> Reply<pb::SendReply> {
        let r = req.into_inner();
        answer(self.control.send(&r.connection_id, r.message).await, |_| {
            pb::SendReply::ok()
        })
    }

    async fn send_raw(&self, req: Request<pb::SendRawRequest>) -> Reply<pb::SendReply> {
        let r = req.into_inner();
        answer(
            self.control
                .send_raw(&r.connection_id, Bytes::from(r.data))
                .await,
            |_| pb::SendReply::ok(),
        )
    }

    async fn send_async(&self, req: Request<pb::SendAsyncRequest>) -> Reply<pb::SendAsyncReply> {
        use pb::send_async_reply::Response as Resp;
        use pb::send_async_request::Request as Req;
        let r = req.into_inner();
        let reply = match r.request {
            Some(Req::Message(t)) => Ok(Message::from(t)),
            Some(Req::Data(b)) => Ok(Message::Binary(Bytes::from(b))),
            None => Err(ControlError::invalid(
                "give exactly one of message and data",
            )),
        };
        let reply = match reply {
            Ok(msg) => {
                self.control
                    .send_async(&r.connection_id, msg, r.timeout_ms)
                    .await
            }
            Err(e) => Err(e),
        };
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
            self.control
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
        answer(
            self.control.start_publish(&r.connection_id, r.topic).await,
            |started| pb::StartPublishReply {
                channel: started.channel,
                topic: started.topic,
                ..Default::default()
            },
        )
    }

    async fn stop_publish(
        &self,
        req: Request<pb::StopPublishRequest>,
    ) -> Reply<pb::StopPublishReply> {
        let r = req.into_inner();
        answer(self.control.stop_publish(&r.connection_id).await, |_| {
            pb::StopPublishReply::ok()
        })
    }

    async fn disconnect(&self, req: Request<pb::DisconnectRequest>) -> Reply<pb::DisconnectReply> {
        let r = req.into_inner();
        answer(
            self.control.disconnect_upstream(&r.connection_id).await,
            |_| pb::DisconnectReply::ok(),
        )
    }

    async fn reconnect(&self, req: Request<pb::ReconnectRequest>) -> Reply<pb::ReconnectReply> {
        let r = req.into_inner();
        answer(
            self.control.reconnect_upstream(&r.connection_id).await,
            |_| pb::ReconnectReply::ok(),
        )
    }

    async fn list_connections(
        &self,
        req: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsReply> {
        let q = req.into_inner();
        // An empty kind is no filter (proto3 strings have no "unset").
        let kind = Some(q.kind.as_str())
            .filter(|k| !k.is_empty())
            .map(str::parse)
            .transpose();
        let scope = Some(q.scope.as_str())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .transpose();
        let query = kind.and_then(|kind| {
            Ok(ListConnections {
                user: q.user,
                channel: q.channel,
                kind,
                scope: scope?.unwrap_or_default(),
                offset: q.offset as usize,
                limit: q.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            })
        });
        let listing = match query {
            Ok(query) => self.control.list_connections(&query).await,
            Err(e) => Err(e),
        };
        answer(listing, |listing| pb::ListConnectionsReply {
            partial: listing.is_partial(),
            missing_nodes: listing.missing_nodes,
            total: listing.page.total as u64,
            offset: listing.page.offset as u64,
            next_offset: listing.page.next_offset.map(|n| n as u64),
            connections: listing
                .page
                .items
                .into_iter()
                .map(connection_view)
                .collect(),
            ..Default::default()
        })
    }

    async fn get_connection(
        &self,
        req: Request<pb::GetConnectionRequest>,
    ) -> Reply<pb::GetConnectionReply> {
        let id = req.into_inner().connection_id;
        answer(self.control.get_connection(&id).await, |c| {
            pb::GetConnectionReply {
                connection: Some(connection_view(c)),
                ..Default::default()
            }
        })
    }

    async fn publish(&self, req: Request<pb::PublishRequest>) -> Reply<pb::PublishReply> {
        let r = req.into_inner();
        let published = parsed(&r.data, |data| {
            self.control.publish(Publish {
                channel: r.channel,
                data,
                exclude_user: r.exclude_user,
                exclude_connection: r.exclude_connection,
                event: r.event,
                idempotency_key: r.idempotency_key,
            })
        })
        .await;
        answer(published, publish_reply)
    }

    async fn broadcast(&self, req: Request<pb::BroadcastRequest>) -> Reply<pb::BroadcastReply> {
        let r = req.into_inner();
        let results = parsed(&r.data, |data| {
            self.control.broadcast(Broadcast {
                channels: r.channels,
                data,
                exclude_user: r.exclude_user,
                exclude_connection: r.exclude_connection,
                event: r.event,
                idempotency_key: r.idempotency_key,
            })
        })
        .await;
        answer(results, |results| pb::BroadcastReply {
            results: results
                .into_iter()
                .map(|r| match r {
                    Ok(p) => {
                        let mut reply = publish_reply(p);
                        reply.set(true, String::new());
                        reply
                    }
                    Err(e) => pb::PublishReply::failed(e),
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn subscribe_user(
        &self,
        req: Request<pb::UserChannelRequest>,
    ) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        delivered(self.control.subscribe_user(&r.user, &r.channel).await)
    }

    async fn unsubscribe_user(
        &self,
        req: Request<pb::UserChannelRequest>,
    ) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        delivered(self.control.unsubscribe_user(&r.user, &r.channel).await)
    }

    async fn send_to_user(&self, req: Request<pb::SendToUserRequest>) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        let sent = match Payload::parse(&r.data) {
            Ok(data) => self.control.send_to_user(&r.user, data).await,
            Err(e) => Err(e),
        };
        answer(sent, |n| pb::DeliveryReply {
            delivered: n as u64,
            ..Default::default()
        })
    }

    async fn send_to_connection(
        &self,
        req: Request<pb::SendToConnectionRequest>,
    ) -> Reply<pb::DeliveryReply> {
        let r = req.into_inner();
        let sent = match Payload::parse(&r.data) {
            Ok(data) => {
                self.control
                    .send_to_connection(&r.connection_id, data)
                    .await
            }
            Err(e) => Err(e),
        };
        answer(sent, |_| pb::DeliveryReply {
            delivered: 1,
            ..Default::default()
        })
    }

    async fn disconnect_client(
        &self,
        req: Request<pb::DisconnectClientRequest>,
    ) -> Reply<pb::DisconnectReply> {
        let r = req.into_inner();
        let reason = r.reason.as_deref().filter(|s| !s.is_empty());
        answer(
            self.control
                .disconnect_client(&r.connection_id, reason)
                .await,
            |_| pb::DisconnectReply::ok(),
        )
    }

    async fn presence(&self, req: Request<pb::PresenceRequest>) -> Reply<pb::PresenceReply> {
        let channel = req.into_inner().channel;
        answer(self.control.presence(&channel).await, |p| {
            pb::PresenceReply {
                channel: p.channel,
                users: p.users,
                connections: p.connections as u64,
                ..Default::default()
            }
        })
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Reply<pb::ListChannelsReply> {
        let prefix = req.into_inner().prefix;
        answer(self.control.list_channels(&prefix).await, |l| {
            pb::ListChannelsReply {
                channels: l
                    .channels
                    .into_iter()
                    .map(|c| pb::ChannelCount {
                        channel: c.channel,
                        subscribers: c.subscribers as u64,
                    })
                    .collect(),
                truncated: l.truncated,
                missing_nodes: l.missing_nodes,
                ..Default::default()
            }
        })
    }

    async fn get_channel(&self, req: Request<pb::GetChannelRequest>) -> Reply<pb::GetChannelReply> {
        let channel = req.into_inner().channel;
        answer(self.control.channel_info(&channel).await, |c| {
            pb::GetChannelReply {
                channel: c.channel,
                subscribers: c.subscribers as u64,
                offset: c.offset,
                epoch: c.epoch.to_string(),
                missing_nodes: c.missing_nodes,
                ..Default::default()
            }
        })
    }
}
