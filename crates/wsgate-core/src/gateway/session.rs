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
use super::{ClientPresence, ClientPublish, Gateway};
use crate::auth::{Authenticator, ChannelGrant};
use crate::metrics::ReasonLabel;
use crate::protocol::{self, ClientOp, Frame, ProtocolError, close};
use crate::upstream::TOPIC_PREFIX;

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
                let recovery = self.subscribe(gw, &channel, since).await?;
                let mut f = Frame::op("subscribed")
                    .id(id)
                    .str("channel", &channel)
                    .num("offset", recovery.position.offset)
                    .str("epoch", &recovery.position.epoch);
                if asked {
                    f = f.bool("recovered", recovery.gap.is_none());
                    if let Some(gap) = recovery.gap {
                        f = f.str("gap", gap.as_str());
                    }
                }
                let mut frames = Vec::with_capacity(1 + recovery.publications.len());
                frames.push(f.finish());
                frames.extend(
                    recovery
                        .publications
                        .iter()
                        .map(|p| protocol::channel_message(&p.channel, p.offset, &p.data)),
                );
                Ok(frames)
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
        self.conn.transport.forget_skip(channel);
        if let Err(e) = gw.presence.presence_leave(channel, &self.conn.id).await {
            gw.metrics.store_errors.inc();
            tracing::warn!(connection_id = %self.conn.id, error = %e, "presence leave failed");
        }
        Ok(())
    }

    /// `publish` from the client, under the token's grants and `client_publish`; `data` is
    /// one JSON value as text. Returns the publication's offset.
    pub async fn publish(
        &mut self,
        gw: &Gateway,
        channel: &str,
        data: &str,
    ) -> Result<u64, ProtocolError> {
        self.check_grant(channel)?;
        // `topic:*` carries what upstream servers said: only their pumps publish there.
        let allowed = !channel.starts_with(TOPIC_PREFIX)
            && match gw.config.client_publish {
                ClientPublish::Deny => false,
                ClientPublish::Subscribed => self.conn.is_subscribed(channel),
                ClientPublish::Any => true,
            };
        if !allowed {
            return Err(ProtocolError::new(
                "forbidden",
                format!("publishing to `{channel}` is not allowed"),
            ));
        }
        let data = bytes::Bytes::copy_from_slice(data.as_bytes());
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
        self.check_presence(channel)?;
        gw.client_presence(channel)
            .await
            .map_err(|e| ProtocolError::new("unavailable", e.to_string()))
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
        self.check_grant(channel)?;
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
                }
                return Err(ProtocolError::new("unavailable", e.to_string()));
            }
        };
        if fresh {
            gw.presence_join(&channel, &self.conn).await;
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
        if since.is_some() {
            let outcome = recovery.gap.map_or("recovered", |g| g.as_str());
            gw.metrics
                .recoveries
                .get_or_create(&ReasonLabel { reason: outcome })
                .inc();
        }
        Ok(recovery)
    }
}

/// What replaying `publications` costs in frame bytes, estimated before encoding them (the
/// envelope `{"op":"message","channel":…,"offset":…,"data":…}` and the frame header).
fn recovery_bytes(publications: &[Publication]) -> usize {
    publications
        .iter()
        .map(|p| p.data.len() + p.channel.len() + 64)
        .sum()
}
