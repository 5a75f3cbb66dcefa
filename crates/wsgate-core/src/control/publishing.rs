//! Publishing beyond one publication: idempotency keys, broadcast to many channels, batches
//! of commands, and the backend's server-side subscriptions of a user.
//!
//! Idempotency: a key is scoped to its channel (the Redis record lives in the channel's
//! slot, `{channel}`); a repeat within the window with the same request answers the first
//! publication (`replayed: true`) and publishes nothing; the same key with another request
//! (data, `exclude_user`, `exclude_connection` or `event` differ) is a 409. A broadcast
//! with a key is idempotent per channel.

use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::rules::{self, Payload};
use super::{Control, ControlError, Publish, Published};
use crate::protocol;
use crate::seams::{Idempotency, Once, PublishRequest, ServerSubscription};

/// Default `idempotency_window_ms`: 5 minutes covers a backend's retries.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
/// Idempotency keys are 1 to this many bytes, without control characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Channels one broadcast publishes to at most.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;
/// Commands one batch runs at most.
pub const MAX_BATCH_COMMANDS: usize = 100;
/// A broadcast's publications in flight at once: enough to hide round trips to Redis, few
/// enough not to crowd out other callers.
const BROADCAST_CONCURRENCY: usize = 16;

/// Broadcast: one payload to many channels.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub channels: Vec<String>,
    pub data: Payload,
    pub exclude_user: Option<String>,
    pub exclude_connection: Option<String>,
    pub event: Option<String>,
    /// Applied to each channel on its own.
    pub idempotency_key: Option<String>,
}

/// One command of a batch.
#[derive(Debug, Clone)]
pub enum Command {
    Publish(Publish),
    Broadcast(Broadcast),
    SendToUser {
        user: String,
        data: Payload,
    },
    SendToConnection {
        connection_id: String,
        data: Payload,
    },
    Disconnect {
        connection_id: String,
        reason: Option<String>,
    },
    Subscribe {
        user: String,
        channel: String,
    },
    Unsubscribe {
        user: String,
        channel: String,
    },
}

/// What one command of a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Published(Published),
    Broadcast(Vec<Result<Published, ControlError>>),
    /// Connections (or nodes, see the operation) it reached.
    Delivered(usize),
    Done,
}

impl Control {
    /// Sets `idempotency_window_ms` (default [`DEFAULT_IDEMPOTENCY_WINDOW`]).
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    pub async fn publish(&self, cmd: Publish) -> Result<Published, ControlError> {
        rules::check_channel(&cmd.channel)?;
        if let Some(event) = &cmd.event {
            rules::check_event(event)?;
        }
        let once = match &cmd.idempotency_key {
            Some(key) => Some(self.idempotency(key, &cmd)?),
            None => None,
        };
        let req = PublishRequest {
            channel: cmd.channel.as_str().into(),
            data: cmd.data.into_bytes(),
            exclude_user: cmd.exclude_user.map(Into::into),
            exclude_connection: cmd.exclude_connection.map(Into::into),
            event: cmd.event.map(Into::into),
            // The gateway sets it from the channel's namespace.
            history: Default::default(),
        };
        let (position, delivered, replayed) =
            match self.gateway.publish_request(req, once.as_ref()).await? {
                Once::Published {
                    position,
                    delivered,
                } => (position, delivered, false),
                Once::Repeat(position) => (position, 0, true),
            };
        Ok(Published {
            channel: cmd.channel,
            offset: position.offset,
            epoch: position.epoch,
            delivered,
            replayed,
        })
    }

    /// Broadcast: [`Control::publish`] to each channel, answered in the order given (a
    /// channel that fails fails alone). At most [`MAX_BROADCAST_CHANNELS`].
    pub async fn broadcast(
        &self,
        cmd: Broadcast,
    ) -> Result<Vec<Result<Published, ControlError>>, ControlError> {
        if cmd.channels.is_empty() || cmd.channels.len() > MAX_BROADCAST_CHANNELS {
            return Err(ControlError::invalid(format!(
                "channels must list 1 to {MAX_BROADCAST_CHANNELS} channels"
            )));
        }
        let Broadcast {
            channels,
            data,
            exclude_user,
            exclude_connection,
            event,
            idempotency_key,
        } = cmd;
        let publishes = channels.into_iter().map(|channel| Publish {
            channel,
            data: data.clone(),
            exclude_user: exclude_user.clone(),
            exclude_connection: exclude_connection.clone(),
            event: event.clone(),
            idempotency_key: idempotency_key.clone(),
        });
        Ok(futures_util::stream::iter(publishes)
            .map(|p| self.publish(p))
            .buffered(BROADCAST_CONCURRENCY)
            .collect()
            .await)
    }

    /// Batch: runs the commands one after the other, in order (a later command sees what an
    /// earlier one did), each answered on its own: one that fails (or that the transport
    /// could not decode: pass its error) fails alone. At most [`MAX_BATCH_COMMANDS`].
    pub async fn batch(
        &self,
        commands: Vec<Result<Command, ControlError>>,
    ) -> Result<Vec<Result<CommandResult, ControlError>>, ControlError> {
        if commands.is_empty() || commands.len() > MAX_BATCH_COMMANDS {
            return Err(ControlError::invalid(format!(
                "commands must list 1 to {MAX_BATCH_COMMANDS} commands"
            )));
        }
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            results.push(match command {
                Ok(c) => self.run_command(c).await,
                Err(e) => Err(e),
            });
        }
        Ok(results)
    }

    async fn run_command(&self, c: Command) -> Result<CommandResult, ControlError> {
        Ok(match c {
            Command::Publish(p) => CommandResult::Published(self.publish(p).await?),
            Command::Broadcast(b) => CommandResult::Broadcast(self.broadcast(b).await?),
            Command::SendToUser { user, data } => {
                CommandResult::Delivered(self.send_to_user(&user, data).await?)
            }
            Command::SendToConnection {
                connection_id,
                data,
            } => {
                self.send_to_connection(&connection_id, data).await?;
                CommandResult::Delivered(1)
            }
            Command::Disconnect {
                connection_id,
                reason,
            } => {
                self.disconnect_client(&connection_id, reason.as_deref())
                    .await?;
                CommandResult::Done
            }
            Command::Subscribe { user, channel } => {
                CommandResult::Delivered(self.subscribe_user(&user, &channel).await?)
            }
            Command::Unsubscribe { user, channel } => {
                CommandResult::Delivered(self.unsubscribe_user(&user, &channel).await?)
            }
        })
    }

    /// Subscribes every connection of `user`, on every node, to `channel` (server-side: the
    /// clients get `subscribed` with `"server":true`). Returns what the broker counts
    /// ([`Gateway::change_user_subscriptions`](crate::gateway::Gateway::change_user_subscriptions)).
    pub async fn subscribe_user(&self, user: &str, channel: &str) -> Result<usize, ControlError> {
        self.change_user(user, ServerSubscription::Subscribe(channel.into()))
            .await
    }

    /// The reverse of [`Control::subscribe_user`].
    pub async fn unsubscribe_user(&self, user: &str, channel: &str) -> Result<usize, ControlError> {
        self.change_user(user, ServerSubscription::Unsubscribe(channel.into()))
            .await
    }

    async fn change_user(
        &self,
        user: &str,
        change: ServerSubscription,
    ) -> Result<usize, ControlError> {
        rules::check_channel(change.channel())?;
        if user.is_empty() {
            return Err(ControlError::invalid("user must not be empty"));
        }
        Ok(self
            .gateway
            .change_user_subscriptions(user, &change)
            .await?)
    }

    fn idempotency(&self, key: &str, p: &Publish) -> Result<Idempotency, ControlError> {
        protocol::check_name(key, MAX_IDEMPOTENCY_KEY_LEN).map_err(|_| {
            ControlError::invalid(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes without control characters"
            ))
        })?;
        Ok(Idempotency {
            key: key.into(),
            fingerprint: fingerprint(p).into(),
            window_ms: (self.idempotency_window.as_millis() as u64).max(1),
        })
    }
}

/// What a repeat must match: every field of the publication but the channel (the key's
/// scope), each length-prefixed so that no two requests hash the same fields alike.
fn fingerprint(p: &Publish) -> String {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, v: Option<&[u8]>| match v {
        None => h.update([0u8]),
        Some(v) => {
            h.update([1u8]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    };
    field(&mut h, Some(p.data.as_bytes()));
    field(&mut h, p.exclude_user.as_deref().map(str::as_bytes));
    field(&mut h, p.exclude_connection.as_deref().map(str::as_bytes));
    field(&mut h, p.event.as_deref().map(str::as_bytes));
    h.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(data: &str) -> Publish {
        Publish {
            channel: "c".into(),
            data: Payload::parse(data).unwrap(),
            exclude_user: None,
            exclude_connection: None,
            event: None,
            idempotency_key: Some("k".into()),
        }
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = publish("1");
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&publish("2")));
        let mut user = a.clone();
        user.exclude_user = Some("x".into());
        let mut conn = a.clone();
        conn.exclude_connection = Some("x".into());
        assert_ne!(fingerprint(&user), fingerprint(&conn));
        let mut other_channel = a.clone();
        other_channel.channel = "d".into();
        assert_eq!(
            fingerprint(&a),
            fingerprint(&other_channel),
            "the key's scope"
        );
    }
}
