//! Values that cross the seams: what is published, where a stream stands, what recovery found.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The id of a wsgate instance (`HOSTNAME` unless configured).
pub type NodeId = Arc<str>;

/// Where a channel's stream stands: the offset of its newest message, and the epoch that
/// names this incarnation of the stream. An epoch changes whenever history is lost, so
/// "offset 42 of epoch A" can never be mistaken for "offset 42 of epoch B".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A publish as a backend or client asked for it; the broker turns it into a [`Publication`].
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: Arc<str>,
    /// The `data` member as JSON text, already validated by the caller.
    pub data: Bytes,
    /// Seed 003's "broadcast to a team excluding a user".
    pub exclude_user: Option<Arc<str>>,
    /// One connection that does not get it (the publisher's own, typically). Live delivery
    /// only: history does not keep it, so a recovery replays the publication to anyone.
    pub exclude_connection: Option<Arc<str>>,
    /// The Socket.IO event name it is emitted as (`message` when `None`); `/ws` clients
    /// always get a `message` frame.
    pub event: Option<Arc<str>>,
    /// The channel's namespace's history bounds ([`HistoryPolicy::default`]: the engine's).
    pub history: HistoryPolicy,
}

/// How much history a publication's channel keeps, as its namespace says. A bound left
/// `None` is the engine's own (the node's `history_size`, `history_ttl_ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Publications kept (0: none).
    pub size: Option<usize>,
    /// How long the channel's history (and its offset and epoch) outlive its last
    /// publication.
    pub ttl_ms: Option<u64>,
}

/// What makes a publish happen once: the key a backend sent, scoped to the channel, and a
/// fingerprint of everything else it asked (data, exclusions, event). A repeat of the key
/// within `window_ms` answers the first publication's position and publishes nothing; a
/// repeat with another fingerprint is refused ([`BrokerError::IdempotencyConflict`]).
///
/// [`BrokerError::IdempotencyConflict`]: super::BrokerError::IdempotencyConflict
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: Arc<str>,
    /// Hex SHA-256 of the request's other fields (see `control::idempotency`).
    pub fingerprint: Arc<str>,
    pub window_ms: u64,
}

/// What an idempotent publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// First time: published at `position`, `delivered` as [`Broker::publish`] counts it.
    ///
    /// [`Broker::publish`]: super::Broker::publish
    Published {
        position: StreamPosition,
        delivered: usize,
    },
    /// The key was seen within the window: nothing published; the first one's position.
    Repeat(StreamPosition),
}

/// What an idempotent append to a [`ChannelLog`](super::ChannelLog) did.
#[derive(Debug, Clone)]
pub enum Logged {
    /// Appended: the caller announces it.
    New(Publication),
    /// The key was seen within the window: nothing appended.
    Repeat(StreamPosition),
}

/// A change to the subscriptions of every connection of a user, made by the backend (not the
/// client): `POST /api/v1/users/{user}/subscribe` and `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSubscription {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

impl ServerSubscription {
    pub fn channel(&self) -> &Arc<str> {
        match self {
            Self::Subscribe(c) | Self::Unsubscribe(c) => c,
        }
    }
}

/// One message of a channel's stream, with its place in that stream.
#[derive(Debug, Clone)]
pub struct Publication {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: Bytes,
    pub exclude_user: Option<Arc<str>>,
    /// See [`PublishRequest::exclude_connection`].
    pub exclude_connection: Option<Arc<str>>,
    /// See [`PublishRequest::event`].
    pub event: Option<Arc<str>>,
    /// Unix time in microseconds when the broker accepted it: the start of the
    /// publish→deliver latency that nodes report.
    pub published_at_us: u64,
}

/// What a broker hands to a node for local delivery.
#[derive(Debug, Clone)]
pub enum Envelope {
    Channel(Publication),
    /// To every connection of a user on this node.
    User {
        user: Arc<str>,
        data: Bytes,
    },
    /// To one connection, by id.
    Connection {
        id: Arc<str>,
        data: Bytes,
    },
    /// To every subscriber of a channel on this node, outside the channel's stream (no
    /// offset, no history): `data` is the whole frame (`join`/`leave`).
    Subscribers {
        channel: Arc<str>,
        data: Bytes,
    },
    /// Subscribe or unsubscribe every connection of a user on this node.
    Subscriptions {
        user: Arc<str>,
        change: ServerSubscription,
    },
}

/// What a subscriber that asked for `since` gets back.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The stream's position at the moment the subscription became live.
    pub position: StreamPosition,
    /// Messages after `since`, oldest first. Empty when nothing was missed or on a gap.
    pub publications: Vec<Publication>,
    /// `None` when every missed message is in `publications`.
    pub gap: Option<RecoveryGap>,
}

/// Why a recovery could not be complete. Reported to the client, never hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryGap {
    /// The stream the client knew is gone (history lost, store restarted): its epoch changed.
    EpochChanged,
    /// The client is further behind than the retained history reaches.
    HistoryTruncated,
    /// The client claims an offset the stream has not reached.
    OffsetAhead,
    /// What was missed is more than the connection's byte budget may queue at once: nothing
    /// is replayed; the client goes on from the current offset (and fetches the rest
    /// elsewhere if it needs it).
    TooLarge,
    /// The channel's namespace has `recover = false`: `since` is ignored.
    Disabled,
}

impl RecoveryGap {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryGap::EpochChanged => "epoch_changed",
            RecoveryGap::HistoryTruncated => "history_truncated",
            RecoveryGap::OffsetAhead => "offset_ahead",
            RecoveryGap::TooLarge => "too_large",
            RecoveryGap::Disabled => "recovery_disabled",
        }
    }
}
