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

use crate::auth::ChannelGrant;
use crate::seams::{Publication, Recovery, RecoveryGap, StreamPosition};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use super::connection::{CloseRequest, Connection};
use super::{ClientPublish, Gateway};
use crate::metrics::ReasonLabel;
use crate::protocol::{self, ClientOp, Frame, ProtocolError, Since, close};

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

    fn count_in(&self, gw: &Gateway, len: usize) {
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
                self.errors_in_row = 0;
                return Ok(frames);
            }
            Err(e) => e,
        };
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
        Ok(vec![protocol::error_frame(id, &e)])
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
            ClientOp::Subscribe { channel, since } => self.subscribe(gw, id, &channel, since).await,
            ClientOp::Unsubscribe { channel } => {
                if !gw.registry.unsubscribe(&channel, &self.conn) {
                    return Err(ProtocolError::new(
                        "not_subscribed",
                        format!("not subscribed to `{channel}`"),
                    ));
                }
                gw.metrics.subscriptions.dec();
                self.conn.transport.forget_skip(&channel);
                if let Err(e) = gw.presence.presence_leave(&channel, &self.conn.id).await {
                    gw.metrics.store_errors.inc();
                    tracing::warn!(connection_id = %self.conn.id, error = %e, "presence leave failed");
                }
                Ok(vec![
                    Frame::op("unsubscribed")
                        .id(id)
                        .str("channel", &channel)
                        .finish(),
                ])
            }
            ClientOp::Publish { channel, data } => {
                self.check_grant(&channel)?;
                let allowed = match gw.config.client_publish {
                    ClientPublish::Deny => false,
                    ClientPublish::Subscribed => self.conn.is_subscribed(&channel),
                    ClientPublish::Any => true,
                };
                if !allowed {
                    return Err(ProtocolError::new(
                        "forbidden",
                        format!("publishing to `{channel}` is not allowed"),
                    ));
                }
                let data = bytes::Bytes::copy_from_slice(data.get().as_bytes());
                let (offset, _, _) = gw
                    .publish(&channel, data, None)
                    .await
                    .map_err(|e| ProtocolError::new("unavailable", e.to_string()))?;
                Ok(vec![
                    Frame::op("published")
                        .id(id)
                        .str("channel", &channel)
                        .num("offset", offset)
                        .finish(),
                ])
            }
            ClientOp::Presence { channel } => {
                self.check_presence(&channel)?;
                let p = gw
                    .client_presence(&channel)
                    .await
                    .map_err(|e| ProtocolError::new("unavailable", e.to_string()))?;
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

    async fn subscribe(
        &mut self,
        gw: &Gateway,
        id: Option<&RawValue>,
        channel: &str,
        since: Option<Since>,
    ) -> Result<Vec<Utf8Bytes>, ProtocolError> {
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
            Some(s) => {
                let since = StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.as_str().into(),
                };
                gw.broker.recover(&channel, &since).await
            }
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
        self.conn
            .transport
            .skip_through(channel.clone(), recovery.position.offset);

        let mut f = Frame::op("subscribed")
            .id(id)
            .str("channel", &channel)
            .num("offset", recovery.position.offset)
            .str("epoch", &recovery.position.epoch);
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
}

/// What replaying `publications` costs in frame bytes, estimated before encoding them (the
/// envelope `{"op":"message","channel":…,"offset":…,"data":…}` and the frame header).
fn recovery_bytes(publications: &[Publication]) -> usize {
    publications
        .iter()
        .map(|p| p.data.len() + p.channel.len() + 64)
        .sum()
}
