//! Events the driver emits, and the stream that carries them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::{Error, Message};

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Client::close`](crate::Client::close) was called, or every handle was dropped.
    ClientClosed,
    /// The connection ended and automatic reconnection is off.
    ConnectionLost(Error),
}

/// Something that happened to the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// First successful connection: authenticated and subscriptions sent.
    Opened,
    /// A data message from the server (correlated replies are not emitted).
    Message(Message),
    /// The connection is down; attempt `attempt` starts after `delay`.
    Reconnecting {
        /// 1-based number of the attempt about to be made.
        attempt: u32,
        /// Wait before it (backoff, or the breaker's cooldown when longer).
        delay: Duration,
        /// Why the previous connection or attempt failed.
        error: Error,
    },
    /// Connected again: authenticated and every subscription replayed.
    Reconnected,
    /// The client stopped; no more events follow.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// The reconnect policy ran out of attempts (state `Failed`); no more events follow.
    GaveUp {
        /// An [`Error::GaveUp`] carrying the last attempt's error.
        error: Error,
    },
}

/// The stream of [`Event`]s. Ends after `Closed` or `GaveUp`.
///
/// The channel is bounded: a consumer that stops reading eventually stops
/// the driver from reading the socket (backpressure, not unbounded memory).
/// Dropping `Events` is fine: events are then discarded.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// Next event, or `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
