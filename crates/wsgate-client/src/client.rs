//! The user-facing handle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::driver::{Command, Driver, Request};
use crate::stats::Shared;
use crate::{ClientConfig, ConnectionState, Error, Events, Message, Snapshot, Subscription};

/// A cheap, cloneable handle to one reconnecting connection.
///
/// All methods talk to the connection's driver task over a channel. When the
/// last handle is dropped the driver closes the connection gracefully.
#[derive(Debug, Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnectionState>,
}

impl Client {
    /// Starts the driver task and returns at once; the first connection is
    /// made in the background (watch [`Events`] or [`Client::watch_state`]).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(config: ClientConfig) -> (Client, Events) {
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let shared = Arc::new(Shared::new(config.id.clone(), config.url.clone()));
        let driver = Driver::new(config, shared.clone(), state_tx, cmd_rx, ev_tx);
        tokio::spawn(driver.run());
        (
            Client {
                cmd: cmd_tx,
                shared,
                state: state_rx,
            },
            Events { rx: ev_rx },
        )
    }

    /// Like [`Client::spawn`], but waits until the first connection is ready
    /// (authenticated, subscriptions sent). Fails with the give-up error if
    /// the backoff policy runs out first.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), Error> {
        let (client, events) = Self::spawn(config);
        client.wait_connected().await?;
        Ok((client, events))
    }

    /// Waits until the state is `Connected`; fails if the client stops first.
    pub async fn wait_connected(&self) -> Result<(), Error> {
        let mut rx = self.state.clone();
        let state = *rx
            .wait_for(|s| *s == ConnectionState::Connected || s.is_terminal())
            .await
            .map_err(|_| Error::Closed)?;
        match state {
            ConnectionState::Connected => Ok(()),
            ConnectionState::Failed => Err(self
                .shared
                .status()
                .last_error
                .clone()
                .unwrap_or(Error::NotConnected)),
            _ => Err(Error::Closed),
        }
    }

    /// Sends a message. Resolves once it is written to the socket, or queued
    /// while disconnected (outbox mode). Errors: `WebSocket is not connected`
    /// (reject mode, or the client has stopped), [`Error::OutboxFull`], or the
    /// write error (the connection is then re-established).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<(), Error> {
        let msg = msg.into();
        self.ask(|ack| Command::Send { msg, ack }).await
    }

    /// Sends a request and waits for its correlated reply (see
    /// [`Correlation`](crate::Correlation)). In UUID-prefix mode the message
    /// payload is prefixed with a fresh UUID and the reply is returned without
    /// it; in JSON mode the message must be a JSON object (an id is added when
    /// missing) and the whole reply is returned. Fails with `Request timeout`
    /// when no reply arrives within `timeout`.
    pub async fn request(
        &self,
        msg: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let deadline = Instant::now() + timeout;
        let msg = msg.into();
        let work = self.ask(|reply| {
            Command::Request(Request {
                msg,
                deadline,
                reply,
            })
        });
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| Error::RequestTimeout)?
    }

    /// Tracks a subscription: sent now if connected, and replayed (in
    /// insertion order) after every reconnect. Re-adding an identical
    /// subscription does nothing; a changed one replaces it in place.
    pub async fn subscribe(&self, sub: Subscription) -> Result<(), Error> {
        self.ask(|ack| Command::Subscribe { sub, ack }).await
    }

    /// Stops tracking `key`, sending its unsubscribe message if connected.
    /// Returns whether it was tracked.
    pub async fn unsubscribe(&self, key: impl Into<String>) -> Result<bool, Error> {
        let key = key.into();
        self.ask(|ack| Command::Unsubscribe { key, ack }).await
    }

    /// Drops the current connection (gracefully) and lets the reconnect loop
    /// establish a new one. No-op while already reconnecting.
    pub async fn reconnect(&self) -> Result<(), Error> {
        self.command(Command::Reconnect).await
    }

    /// Closes gracefully (close frame, driver ends, events end with
    /// `Closed`). Waits until the driver has stopped. Idempotent.
    pub async fn close(&self) -> Result<(), Error> {
        let (ack, rx) = oneshot::channel();
        if self.cmd.send(Command::Close { ack }).await.is_err() {
            return Ok(()); // already stopped
        }
        let _ = rx.await;
        Ok(())
    }

    /// Current state.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// A receiver that sees every state change (latest value wins).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Counters and state for operators. Never waits for the driver.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// The id from the config.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    async fn command(&self, cmd: Command) -> Result<(), Error> {
        self.cmd.send(cmd).await.map_err(|_| Error::NotConnected)
    }

    /// Sends the command that `make` builds around a fresh answer channel and waits for the
    /// driver's answer (`WebSocket is not connected` when the driver has stopped).
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.command(make(tx)).await?;
        rx.await.map_err(|_| Error::NotConnected)?
    }
}
