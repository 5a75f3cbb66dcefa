//! The WebSocket edge's settings: frame sizes, buffers, the close grace and the inbound rate
//! limits of one connection. Top-level keys of the node's config (`max_message_size`, ...).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default of `max_message_size`: 64 KiB, far above a control frame or a typical
/// publication, small enough that one client cannot make the node buffer megabytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default of `outbox_capacity` (frames): about a second of a busy channel, so a client
/// that merely hiccups is not cut, one that stopped reading is.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 1024;
/// Default of `outbox_bytes`: 256 KiB, every queued frame counted (publications, answers,
/// recovered history, pongs). A thousand 100-byte messages, or four of the largest client
/// frames; a client that stops reading costs the node at most this (plus the kernel's
/// socket buffer), however it floods. Recoveries larger than this answer `gap: too_large`.
pub const DEFAULT_OUTBOX_BYTES: usize = 256 * 1024;
/// Default of `close_grace_ms`: a close frame to a live client takes milliseconds; a dead
/// one must not hold its task for long.
pub const DEFAULT_CLOSE_GRACE_MS: u64 = 2_000;
/// Default of `read_buffer_size`: 2 KiB. Clients send small frames. On `/ws` it is how much
/// one read from the kernel takes, into the worker thread's scratch buffer, not a buffer kept
/// per connection (an idle `/ws` connection keeps none, see `socket.rs`); the Socket.IO edge's
/// tungstenite keeps one of this size per connection (tungstenite's 128 KiB default costs
/// both memory and CPU).
pub const DEFAULT_READ_BUFFER_SIZE: usize = 2048;
/// Default of `client_message_rate` (frames per second per connection): far above an
/// interactive client, far below a flood.
pub const DEFAULT_CLIENT_MESSAGE_RATE: u32 = 100;
/// Default of `client_message_burst`: twice the rate, for a client catching up.
pub const DEFAULT_CLIENT_MESSAGE_BURST: u32 = 200;
/// Default of `client_byte_rate`: 1 MiB/s per connection.
pub const DEFAULT_CLIENT_BYTE_RATE: u32 = 1024 * 1024;
/// Default of `client_byte_burst`: 2 MiB (never below `max_message_size`, so one largest
/// frame always fits).
pub const DEFAULT_CLIENT_BYTE_BURST: u32 = 2 * 1024 * 1024;
/// Default of `rate_limit_strikes`: a client that keeps sending through 50 refusals in a
/// row is not going to slow down.
pub const DEFAULT_RATE_LIMIT_STRIKES: u32 = 50;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WsConfig {
    /// Largest client frame; larger ones close the connection with 1009.
    /// Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// Frames a connection's backlog may hold (the kernel's send buffer being full) before it
    /// is closed as a slow consumer (4029). Default [`DEFAULT_OUTBOX_CAPACITY`].
    pub outbox_capacity: usize,
    /// Bytes a connection may have queued at once, its own answers included; beyond it the
    /// connection is closed as a slow consumer (4029), and it is not read while more than
    /// half of it waits. Default [`DEFAULT_OUTBOX_BYTES`].
    pub outbox_bytes: usize,
    /// How long a close frame may take to write before the socket is dropped.
    /// Default [`DEFAULT_CLOSE_GRACE_MS`].
    pub close_grace_ms: u64,
    /// Bytes one socket read takes (`/ws`: into the worker's scratch buffer; Socket.IO: the
    /// read buffer kept per connection). Default [`DEFAULT_READ_BUFFER_SIZE`].
    pub read_buffer_size: usize,
    /// Inbound frames per second per connection (`rate_limited` error frame, the frame is
    /// dropped), bursts of `client_message_burst`. 0: no limit.
    /// Defaults [`DEFAULT_CLIENT_MESSAGE_RATE`], [`DEFAULT_CLIENT_MESSAGE_BURST`].
    pub client_message_rate: u32,
    pub client_message_burst: u32,
    /// Inbound payload bytes per second per connection, bursts of `client_byte_burst`.
    /// 0: no limit. Defaults [`DEFAULT_CLIENT_BYTE_RATE`], [`DEFAULT_CLIENT_BYTE_BURST`].
    pub client_byte_rate: u32,
    pub client_byte_burst: u32,
    /// Frames in a row refused by the rate limit before the connection is closed with 4029.
    /// Default [`DEFAULT_RATE_LIMIT_STRIKES`].
    pub rate_limit_strikes: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            close_grace_ms: DEFAULT_CLOSE_GRACE_MS,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            client_message_rate: DEFAULT_CLIENT_MESSAGE_RATE,
            client_message_burst: DEFAULT_CLIENT_MESSAGE_BURST,
            client_byte_rate: DEFAULT_CLIENT_BYTE_RATE,
            client_byte_burst: DEFAULT_CLIENT_BYTE_BURST,
            rate_limit_strikes: DEFAULT_RATE_LIMIT_STRIKES,
        }
    }
}

impl WsConfig {
    pub fn close_grace(&self) -> Duration {
        Duration::from_millis(self.close_grace_ms)
    }
}
