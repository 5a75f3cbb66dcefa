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

use crate::seams::{Recovery, StreamPosition};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use super::connection::{CloseRequest, Connection};
use super::{ClientPublish, Gateway, Presence};
use crate::metrics::ReasonLabel;
use crate::protocol::{self, ClientOp, Frame, ProtocolError, close};

pub struct Session {
    pub conn: Arc<Connection>,
    errors_in_row: u32,
}

impl Session {
    pub fn new(conn: Arc<Connection>) -> Self {
        Self {
            conn,
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
            ClientOp::Presence { channel } => {
                let p = self.presence(gw, &channel).await?;
                let users = serde_json::to_string(&p.users).unwrap_or_else(|_| "[]".into());
                Ok(vec![
                    Frame::op("presence")
                        .id(id)
                        .str("channel", &channel)
                        .raw("users", &users)
                        .num("connections", p.connections as u64)
                        .finish(),
                ])
            }
        }
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
        let allowed = match gw.config.client_publish {
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

    /// `presence` of a channel the token grants, cluster-wide.
    pub async fn presence(&self, gw: &Gateway, channel: &str) -> Result<Presence, ProtocolError> {
        self.check_grant(channel)?;
        gw.presence(channel)
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
        let answer = match &since {
            Some(since) => gw.broker.recover(&channel, since).await,
            None => gw.broker.position(&channel).await.map(|position| Recovery {
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
