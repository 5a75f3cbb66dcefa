//! `join` and `leave`: subscribers of a channel whose namespace has `join_leave` are told
//! who subscribes and who leaves, on every node.
//!
//! The frames go through the broker to the channel's subscribers on every node
//! ([`Recipient::Subscribers`]), outside the channel's stream: they take no offset, history
//! never holds them, and a recovering client does not get them again. A subscriber may miss
//! one while its node's broker link is down, as it may miss a `presence` change; `presence`
//! is the state to trust, join/leave the news.

use crate::protocol::Frame;
use crate::seams::Recipient;

use super::{Connection, Gateway};

/// What happened to a channel's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Join,
    Leave,
}

impl Membership {
    pub fn op(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// `{"op":"join"|"leave","channel":…,"user":…,"connection_id":…}`.
pub fn membership_frame(
    what: Membership,
    channel: &str,
    user: &str,
    connection_id: &str,
) -> tungstenite::Utf8Bytes {
    Frame::op(what.op())
        .str("channel", channel)
        .str("user", user)
        .str("connection_id", connection_id)
        .finish()
}

impl Gateway {
    /// Tells `channel`'s subscribers, on every node, that `conn` joined or left it, when
    /// the channel's namespace (as configured now) has `join_leave`. A broker that fails
    /// loses the news, never the subscription.
    pub async fn announce(&self, what: Membership, channel: &str, conn: &Connection) {
        self.announce_for(what, channel, conn.user(), &conn.id)
            .await;
    }

    /// [`Gateway::announce`] for a connection that is already gone (its user and id kept).
    pub async fn announce_for(
        &self,
        what: Membership,
        channel: &str,
        user: &str,
        connection_id: &str,
    ) {
        let wanted = self
            .namespaces()
            .resolve(channel)
            .is_ok_and(|ns| ns.join_leave);
        if !wanted {
            return;
        }
        let frame = membership_frame(what, channel, user, connection_id);
        let data = bytes::Bytes::copy_from_slice(frame.as_bytes());
        if let Err(e) = self
            .broker
            .send(Recipient::Subscribers(channel), data)
            .await
        {
            self.metrics.broker_errors.inc();
            tracing::warn!(channel, connection_id, op = what.op(), error = %e, "join/leave not announced");
        }
    }
}
