//! The client protocol, one connection at a time.
//!
//! A [`Session`] is owned by the connection task: it turns each text frame into answers.
//! A subscription joins a live stream without a hole or a duplicate: the transport holds
//! publications back, the subscriber is registered (so nothing published afterwards is
//! missed), the stream position is read, and the transport is told to drop publications of
//! that channel at or below the position, because the answer (`subscribed`, plus recovered
//! history) covers them. The connection task writes the answer, then releases the hold.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::seams::{Publication, Recovery, RecoveryGap, StreamPosition};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use super::connection::{CloseRequest, Connection};
use super::{ClientPresence, ClientPublish, Gateway, Membership, ServerAnswer, ServerOp};
use crate::auth::{Authenticator, ChannelGrant};
use crate::hooks::{Caller, Data, Hook, RpcRequest};
use crate::metrics::ReasonLabel;
use crate::namespace::{NamespaceOptions, SubscribeRule, UNKNOWN_NAMESPACE};
use crate::protocol::{self, ClientOp, Frame, ProtocolError, close};

pub struct Session {
    pub conn: Arc<Connection>,
    /// Checks the tokens of `refresh`.
    auth: Authenticator,
    errors_in_row: u32,
}

impl Session {
    pub fn new(conn: Arc<Connection>, auth: Authenticator) -> Self {
        Self {
            conn,
            auth,
            errors_in_row: 0,
        }
    }

    /// Handles one text frame. `Ok` holds the frames to send back (possibly none);
    /// `Err` means the connection must close.
    pub async fn handle_text(
        &mut self,
        gw: &Gateway,
        text: &str,
    ) -> Result<Vec<Utf8Bytes>, CloseRequest> {
        self.count_in(gw, text.len());
        let (id, result) = match protocol::decode(text) {
            Ok(req) => (req.id, self.handle(gw, req.id, req.op).await),
            Err((id, e)) => (id, Err(e)),
        };
        self.answer(gw, id, result)
    }

    /// Binary frames are not part of the JSON protocol: answered with an error frame.
    pub fn handle_binary(
        &mut self,
        gw: &Gateway,
        len: usize,
    ) -> Result<Vec<Utf8Bytes>, CloseRequest> {
        self.count_in(gw, len);
        let e = ProtocolError::new(
            "unsupported",
            "binary frames are not supported; send JSON text frames",
        );
        self.answer(gw, None, Err(e))
    }

    /// Counts one inbound message of `len` bytes (the connection's and the node's).
    pub fn count_in(&self, gw: &Gateway, len: usize) {
        self.conn.stats.messages_in.fetch_add(1, Relaxed);
        self.conn.stats.bytes_in.fetch_add(len as u64, Relaxed);
        gw.metrics.messages_received.inc();
    }

    /// Turns an op's outcome into frames, counting errors and closing on repeated abuse.
    fn answer(
        &mut self,
        gw: &Gateway,
        id: Option<&RawValue>,
        result: Result<Vec<Utf8Bytes>, ProtocolError>,
    ) -> Result<Vec<Utf8Bytes>, CloseRequest> {
        let e = match result {
            Ok(frames) => {
                self.succeeded();
                return Ok(frames);
            }
            Err(e) => e,
        };
        self.failed(gw, &e)?;
        Ok(vec![protocol::error_frame(id, &e)])
    }

    /// Counts a failed op and tells whether the connection must close for repeated abuse
    /// (`max_protocol_errors` in a row). Every edge reports its errors through here.
    pub fn failed(&mut self, gw: &Gateway, e: &ProtocolError) -> Result<(), CloseRequest> {
        gw.metrics.protocol_error(e.code);
        self.conn
            .stats
            .record_error(format!("{}: {}", e.code, e.message));
        self.errors_in_row += 1;
        if self.errors_in_row >= gw.config.max_protocol_errors {
            return Err(CloseRequest {
                code: close::POLICY_VIOLATION,
                reason: "protocol_abuse",
                message: format!("{} protocol errors in a row", self.errors_in_row),
            });
        }
        Ok(())
    }

    /// An op succeeded: the run of errors is over.
    pub fn succeeded(&mut self) {
        self.errors_in_row = 0;
    }

    async fn handle(
        &mut self,
        gw: &Gateway,
        id: Option<&RawValue>,
        op: ClientOp<'_>,
    ) -> Result<Vec<Utf8Bytes>, ProtocolError> {
        match op {
            ClientOp::Ping { ts } => {
                let mut f = Frame::op("pong").id(id);
                if let Some(ts) = ts {
                    f = f.raw("ts", ts.get());
                }
                Ok(vec![f.finish()])
            }
            ClientOp::Subscribe { channel, since } => {
                let since = since.map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.as_str().into(),
                });
                let asked = since.is_some();
                let (recovery, data) = self.client_subscribe(gw, &channel, since).await?;
                Ok(subscribed_frames(
                    id,
                    &channel,
                    asked,
                    recovery,
                    data.as_deref(),
                ))
            }
            ClientOp::Unsubscribe { channel } => {
                self.unsubscribe(gw, &channel).await?;
                Ok(vec![
                    Frame::op("unsubscribed")
                        .id(id)
                        .str("channel", &channel)
                        .finish(),
                ])
            }
            ClientOp::Publish { channel, data } => {
                let offset = self.publish(gw, &channel, data.get()).await?;
                Ok(vec![
                    Frame::op("published")
                        .id(id)
                        .str("channel", &channel)
                        .num("offset", offset)
                        .finish(),
                ])
            }
            ClientOp::Refresh { token } => self.refresh(gw, id, &token).await,
            ClientOp::Rpc { method, data } => {
                let data = self.rpc(gw, &method, data).await?;
                let f = Frame::op("rpc_result").id(id).raw("data", data.get());
                Ok(vec![f.finish()])
            }
            ClientOp::Presence { channel } => {
                let p = self.presence(gw, &channel).await?;
                let mut f = Frame::op("presence")
                    .id(id)
                    .str("channel", &channel)
                    .raw("users", &p.users_json)
                    .num("connections", p.connections as u64);
                if p.truncated {
                    f = f.bool("truncated", true);
                }
                Ok(vec![f.finish()])
            }
        }
    }

    /// `refresh`: a valid token for the same user and the same channel grant moves the
    /// connection's expiry (and ends a grace). Grants change only by reconnecting.
    async fn refresh(
        &self,
        gw: &Gateway,
        id: Option<&RawValue>,
        token: &str,
    ) -> Result<Vec<Utf8Bytes>, ProtocolError> {
        if matches!(self.auth, Authenticator::None) {
            return Err(ProtocolError::new(
                "unsupported",
                "refresh needs auth.mode = jwt",
            ));
        }
        let identity = self
            .auth
            .authenticate(Some(token))
            .await
            .map_err(|e| ProtocolError::new(e.reason(), e.to_string()))?;
        if identity.user != self.conn.identity.user {
            return Err(ProtocolError::new(
                "forbidden",
                "the refresh token names another user",
            ));
        }
        if identity.channels != self.conn.identity.channels {
            return Err(ProtocolError::new(
                "forbidden",
                "the refresh token grants other channels; reconnect to change them",
            ));
        }
        gw.refresh_token(&self.conn, identity.expires_at);
        let mut f = Frame::op("refreshed").id(id);
        if let Some(exp) = identity.expires_at {
            f = f.num("exp", exp);
        }
        Ok(vec![f.finish()])
    }

    /// `unsubscribe`: leaves the channel (and its presence).
    pub async fn unsubscribe(&mut self, gw: &Gateway, channel: &str) -> Result<(), ProtocolError> {
        if !gw.registry.unsubscribe(channel, &self.conn) {
            return Err(ProtocolError::new(
                "not_subscribed",
                format!("not subscribed to `{channel}`"),
            ));
        }
        gw.metrics.subscriptions.dec();
        self.conn.transport.forget_channel(channel);
        // Left whatever the namespace says now: a reload may have turned presence off
        // after this connection's entry was written.
        if let Err(e) = gw.presence.presence_leave(channel, &self.conn.id).await {
            gw.metrics.store_errors.inc();
            tracing::warn!(connection_id = %self.conn.id, error = %e, "presence leave failed");
        }
        gw.announce(Membership::Leave, channel, &self.conn).await;
        if let Some(events) = gw.events() {
            events.left(channel, &self.conn.id).await;
        }
        Ok(())
    }

    /// `publish` from the client, under the namespace's `client_publish` (and the token's
    /// grants where the namespace's subscriptions follow them); `data` is one JSON value
    /// as text. Returns the publication's offset.
    pub async fn publish(
        &mut self,
        gw: &Gateway,
        channel: &str,
        data: &str,
    ) -> Result<u64, ProtocolError> {
        let ns = namespace(gw, channel)?;
        if ns.subscribe == SubscribeRule::Token {
            self.check_grant(channel)?;
        }
        // `topic:*` (built in, `client_publish = deny`) carries what upstream servers said:
        // only their pumps publish there.
        let allowed = match ns.client_publish {
            ClientPublish::Deny => false,
            ClientPublish::Subscribed => self.conn.is_subscribed(channel),
            // Where subscriptions follow the backend, so does publishing to channels this
            // connection is not subscribed to: the token must grant them.
            ClientPublish::Any => {
                ns.subscribe != SubscribeRule::Proxy
                    || self.conn.is_subscribed(channel)
                    || self.check_grant(channel).is_ok()
            }
        };
        if !allowed {
            return Err(ProtocolError::new(
                "forbidden",
                format!("publishing to `{channel}` is not allowed"),
            ));
        }
        let replaced = match ns.publish_proxy {
            true => super::proxy::publish_proxy(gw, &self.conn, channel, data).await?,
            false => None,
        };
        let data = bytes::Bytes::from(replaced.unwrap_or_else(|| data.to_string()));
        let (offset, _, _) = gw
            .publish(channel, data, None, None)
            .await
            .map_err(|e| ProtocolError::new("unavailable", e.to_string()))?;
        Ok(offset)
    }

    /// `presence` of a channel this connection subscribes to (or its token grants),
    /// cluster-wide, capped and cached ([`Gateway::client_presence`]).
    pub async fn presence(
        &self,
        gw: &Gateway,
        channel: &str,
    ) -> Result<Arc<ClientPresence>, ProtocolError> {
        if !namespace(gw, channel)?.presence {
            return Err(ProtocolError::new(
                "unsupported",
                format!("presence is off in the namespace of `{channel}`"),
            ));
        }
        self.check_presence(channel)?;
        gw.client_presence(channel)
            .await
            .map_err(|e| ProtocolError::new("unavailable", e.to_string()))
    }

    /// Whether this connection may subscribe to `channel`, by its namespace's rule.
    async fn check_subscribe(
        &self,
        gw: &Gateway,
        ns: &NamespaceOptions,
        channel: &str,
    ) -> Result<Option<Data>, ProtocolError> {
        match ns.subscribe {
            SubscribeRule::Token => self.check_grant(channel).map(|()| None),
            SubscribeRule::Any => Ok(None),
            SubscribeRule::Proxy => super::proxy::subscribe_proxy(gw, &self.conn, channel).await,
        }
    }

    fn check_grant(&self, channel: &str) -> Result<(), ProtocolError> {
        if self.conn.identity.channels.allows(channel) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                "forbidden",
                format!("token does not grant channel `{channel}`"),
            ))
        }
    }

    /// Presence names users: only for subscribers of the channel, or for a token whose
    /// `channels` claim grants it explicitly (a backend's monitoring client, say).
    fn check_presence(&self, channel: &str) -> Result<(), ProtocolError> {
        let granted = matches!(&self.conn.identity.channels, ChannelGrant::Only(_))
            && self.conn.identity.channels.allows(channel);
        if granted || self.conn.is_subscribed(channel) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                "forbidden",
                format!("presence of `{channel}` needs a subscription to it"),
            ))
        }
    }

    /// `subscribe` (with `since`: recovery). On success the transport holds this
    /// connection's publications back and skips those the answer covers: the caller sends
    /// the answer and the recovered publications, then releases the hold.
    pub async fn subscribe(
        &mut self,
        gw: &Gateway,
        channel: &str,
        since: Option<StreamPosition>,
    ) -> Result<Recovery, ProtocolError> {
        let (recovery, _) = self.client_subscribe(gw, channel, since).await?;
        Ok(recovery)
    }

    /// A subscription the client asked for, under its namespace's rule; in a namespace with
    /// `subscribe = "proxy"` the subscribe hook decides and may give `data` for the
    /// `subscribed` answer.
    pub async fn client_subscribe(
        &mut self,
        gw: &Gateway,
        channel: &str,
        since: Option<StreamPosition>,
    ) -> Result<(Recovery, Option<Data>), ProtocolError> {
        let ns = namespace(gw, channel)?;
        let data = self.check_subscribe(gw, &ns, channel).await?;
        Ok((self.join(gw, &ns, channel, since).await?, data))
    }

    /// `rpc`: the backend's rpc hook answers; its `data` (`null` when it gave none) goes
    /// back in `rpc_result`.
    pub async fn rpc(
        &mut self,
        gw: &Gateway,
        method: &str,
        data: Option<&RawValue>,
    ) -> Result<Data, ProtocolError> {
        let Some(proxy) = gw.proxy().filter(|p| p.has(Hook::Rpc)) else {
            return Err(ProtocolError::new(
                "unsupported",
                "rpc needs a backend: configure hooks.rpc",
            ));
        };
        let req = RpcRequest {
            caller: Caller::of(&self.conn, gw.node()),
            method: method.to_string(),
            data: raw(data.map_or("null", RawValue::get))?,
        };
        let reply = proxy.rpc(&req).await.map_err(|e| e.to_protocol())?;
        Ok(reply.data.unwrap_or_else(null))
    }

    /// Runs the server-side subscription changes waiting on this connection (see
    /// `server_subs.rs`), in order. Like [`Session::subscribe`], a subscription leaves the
    /// transport holding publications: the caller sends the answers, then releases the hold.
    /// A change that changes nothing (already subscribed, not subscribed) answers nothing.
    pub async fn server_ops(&mut self, gw: &Gateway) -> Vec<ServerAnswer> {
        let mut answers = Vec::new();
        for op in self.conn.take_server_ops() {
            let answer = match op {
                ServerOp::Subscribe(channel) if !self.conn.is_subscribed(&channel) => {
                    // The backend chose the channel: its word stands in for the token's
                    // grant, not for the channel-name rule or the namespace.
                    let joined = match protocol::check_name(&channel, protocol::MAX_CHANNEL_LEN) {
                        Err(_) => Err(ProtocolError::new(
                            "invalid_channel",
                            format!(
                                "channel names are 1 to {} bytes without control characters",
                                protocol::MAX_CHANNEL_LEN
                            ),
                        )),
                        Ok(()) => match namespace(gw, &channel) {
                            Ok(ns) => self.join(gw, &ns, &channel, None).await,
                            Err(e) => Err(e),
                        },
                    };
                    match joined {
                        Ok(r) => ServerAnswer::Subscribed {
                            channel,
                            position: r.position,
                        },
                        Err(error) => ServerAnswer::Failed { channel, error },
                    }
                }
                ServerOp::Unsubscribe(channel) if self.conn.is_subscribed(&channel) => {
                    match self.unsubscribe(gw, &channel).await {
                        Ok(()) => ServerAnswer::Unsubscribed { channel },
                        Err(error) => ServerAnswer::Failed { channel, error },
                    }
                }
                _ => continue,
            };
            answers.push(answer);
        }
        answers
    }

    /// Subscribes under `ns` without asking who may (the caller decided). With `since`,
    /// recovery, unless the namespace turns it off (`recovered: false`, `gap: "disabled"`).
    async fn join(
        &mut self,
        gw: &Gateway,
        ns: &NamespaceOptions,
        channel: &str,
        since: Option<StreamPosition>,
    ) -> Result<Recovery, ProtocolError> {
        // `recover = false`: the client is told so (`recovered: false`), not replayed to.
        let asked = since.is_some();
        let since = since.filter(|_| ns.recover);
        let channel: Arc<str> = channel.into();
        let fresh = !self.conn.is_subscribed(&channel);
        if fresh && self.conn.channel_count() >= gw.config.max_channels_per_connection {
            return Err(ProtocolError::new(
                "too_many_channels",
                format!(
                    "at most {} channels per connection",
                    gw.config.max_channels_per_connection
                ),
            ));
        }
        self.conn.transport.hold();
        if fresh {
            gw.registry.subscribe(&channel, &self.conn);
            gw.metrics.subscriptions.inc();
        }
        // Receiving the channel first, reading its position second: whatever is published
        // after the read reaches this node.
        let answer = match (gw.broker.watch(&channel).await, &since) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(since)) => gw.broker.recover(&channel, since).await,
            (Ok(()), None) => gw.broker.position(&channel).await.map(|position| Recovery {
                position,
                publications: Vec::new(),
                gap: None,
            }),
        };
        let recovery = match answer {
            Ok(r) => r,
            Err(e) => {
                gw.metrics.broker_errors.inc();
                if fresh {
                    gw.registry.unsubscribe(&channel, &self.conn);
                    gw.metrics.subscriptions.dec();
                    // What reached the hold while the channel was registered is not the
                    // client's: it is told the subscription failed.
                    self.conn.transport.forget_channel(&channel);
                }
                return Err(ProtocolError::new("unavailable", e.to_string()));
            }
        };
        if fresh {
            if ns.presence {
                gw.presence_join(&channel, &self.conn).await;
            }
            gw.announce(Membership::Join, &channel, &self.conn).await;
            // Occupancy events whatever the namespace's presence setting says.
            if let Some(events) = gw.events() {
                events
                    .joined(&channel, &self.conn.id, self.conn.user())
                    .await;
            }
        }
        self.conn.transport.skip_through(
            channel.clone(),
            recovery.position.epoch.clone(),
            recovery.position.offset,
        );
        let mut recovery = recovery;
        if recovery_bytes(&recovery.publications) > self.conn.transport.byte_budget() {
            // More than the connection may queue: replaying it would only close the
            // connection as a slow consumer (or let a client that never reads make the node
            // hold it). The client goes on from the current offset.
            recovery.publications = Vec::new();
            recovery.gap = Some(RecoveryGap::TooLarge);
        }
        if asked && since.is_none() {
            recovery.gap = Some(RecoveryGap::Disabled);
        }
        if asked {
            let outcome = recovery.gap.map_or("recovered", |g| g.as_str());
            gw.metrics
                .recoveries
                .get_or_create(&ReasonLabel { reason: outcome })
                .inc();
        }
        Ok(recovery)
    }
}

/// The options of `channel`'s namespace, or the client's `unknown_namespace` error.
fn namespace(gw: &Gateway, channel: &str) -> Result<Arc<NamespaceOptions>, ProtocolError> {
    gw.namespace_of(channel)
        .map_err(|_| ProtocolError::new("unknown_namespace", UNKNOWN_NAMESPACE))
}

/// The answer to a subscription: `subscribed` (with `data` from the subscribe hook, and
/// the recovery outcome when the client `asked` for one), then the recovered publications.
fn subscribed_frames(
    id: Option<&RawValue>,
    channel: &str,
    asked: bool,
    recovery: Recovery,
    data: Option<&RawValue>,
) -> Vec<Utf8Bytes> {
    let mut f = Frame::op("subscribed")
        .id(id)
        .str("channel", channel)
        .num("offset", recovery.position.offset)
        .str("epoch", &recovery.position.epoch);
    if asked {
        f = f.bool("recovered", recovery.gap.is_none());
        if let Some(gap) = recovery.gap {
            f = f.str("gap", gap.as_str());
        }
    }
    if let Some(data) = data {
        f = f.raw("data", data.get());
    }
    let mut frames = Vec::with_capacity(1 + recovery.publications.len());
    frames.push(f.finish());
    frames.extend(
        recovery
            .publications
            .iter()
            .map(|p| protocol::channel_message(&p.channel, p.offset, &p.data)),
    );
    frames
}

/// Client JSON (already validated by the decoder) as a hook's `data`.
pub(super) fn raw(json: &str) -> Result<Data, ProtocolError> {
    RawValue::from_string(json.to_string())
        .map_err(|e| ProtocolError::new("invalid_frame", format!("invalid data: {e}")))
}

fn null() -> Data {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// What replaying `publications` costs in frame bytes, estimated before encoding them (the
/// envelope `{"op":"message","channel":…,"offset":…,"data":…}` and the frame header).
fn recovery_bytes(publications: &[Publication]) -> usize {
    publications
        .iter()
        .map(|p| p.data.len() + p.channel.len() + 64)
        .sum()
}
