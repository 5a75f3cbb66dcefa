//! Server-side subscriptions: channels a connection is subscribed to without asking.
//!
//! Three sources, one mechanism: the token's `subs` claim (at connect), the connect hook's
//! `channels`, and the backend's `POST /api/v1/users/{user}/subscribe` / `unsubscribe`
//! (every connection of the user, on every node, through the broker's user addressing).
//!
//! A change is *queued* on the connection ([`Gateway::subscribe_server_side`]) and run by
//! the connection's own task between client ops ([`Session::server_op`]), so it takes the
//! exact path of a client `subscribe`: same channel limit, same hold-answer-release order
//! (no publication before the `subscribed` frame, none lost between), same presence. The
//! client is told with the frames it knows, marked `"server":true`. The backend decides:
//! the token's `channels` grant is not checked (publishing still is).
//!
//! [`Session::server_op`]: super::Session::server_op

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use super::{Connection, Gateway, GatewayError};
use crate::protocol::{Frame, ProtocolError};
use crate::seams::{ServerSubscription, StreamPosition};

/// A server-side subscription change, as a connection's queue holds it.
pub type ServerOp = ServerSubscription;

/// What a server-side change did to one connection, for its edge to tell the client.
#[derive(Debug, Clone)]
pub enum ServerAnswer {
    Subscribed {
        channel: Arc<str>,
        position: StreamPosition,
    },
    Unsubscribed {
        channel: Arc<str>,
    },
    /// The subscription could not be made (`too_many_channels`, `unavailable`).
    Failed {
        channel: Arc<str>,
        error: ProtocolError,
    },
}

impl ServerAnswer {
    /// The `/ws` frame: `subscribed` / `unsubscribed` / `error`, with `"server":true`.
    pub fn frame(&self) -> Utf8Bytes {
        match self {
            ServerAnswer::Subscribed { channel, position } => Frame::op("subscribed")
                .str("channel", channel)
                .num("offset", position.offset)
                .str("epoch", &position.epoch)
                .bool("server", true)
                .finish(),
            ServerAnswer::Unsubscribed { channel } => Frame::op("unsubscribed")
                .str("channel", channel)
                .bool("server", true)
                .finish(),
            ServerAnswer::Failed { channel, error } => Frame::op("error")
                .str("code", error.code)
                .str("message", &error.message)
                .str("channel", channel)
                .bool("server", true)
                .finish(),
        }
    }
}

impl Gateway {
    /// Subscribes `conn` to `channel` on behalf of the server. Returns at once: the
    /// connection's task makes the subscription (after `hello` for a new connection) and
    /// sends the client `{"op":"subscribed",…,"server":true}`, or an `error` frame with the
    /// channel and `"server":true` when it cannot (channel limit, broker down). Nothing is
    /// sent when the connection already subscribes to the channel. The caller checks the
    /// channel name (`protocol::check_name`). False when the connection has too many
    /// changes waiting (`MAX_PENDING_SERVER_OPS`).
    pub fn subscribe_server_side(&self, conn: &Connection, channel: &str) -> bool {
        conn.push_server_op(ServerSubscription::Subscribe(channel.into()))
    }

    /// The reverse of [`Gateway::subscribe_server_side`]: `{"op":"unsubscribed",…,
    /// "server":true}`, nothing when the connection does not subscribe to the channel.
    pub fn unsubscribe_server_side(&self, conn: &Connection, channel: &str) -> bool {
        conn.push_server_op(ServerSubscription::Unsubscribe(channel.into()))
    }

    /// Applies `change` to every connection of `user` on every node. Returns what the
    /// broker counts (connections here for the embedded broker, nodes reached for Redis, 0
    /// for NATS).
    pub async fn change_user_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, GatewayError> {
        Ok(self
            .broker
            .change_subscriptions(user, change)
            .await
            .inspect_err(|_| {
                self.metrics.broker_errors.inc();
            })?)
    }

    /// Queues the `subs` claim's channels of a new connection.
    pub(super) fn subscribe_from_token(&self, conn: &Connection) {
        for channel in conn.identity.subscribe.iter() {
            let _queued = self.subscribe_server_side(conn, channel);
        }
    }
}
