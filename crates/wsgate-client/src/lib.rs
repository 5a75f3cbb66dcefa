//! # wsgate-client
//!
//! A reconnecting WebSocket client for services and trading bots, and the
//! engine behind wsgate's upstream manager. It makes the failure modes of
//! hand-rolled reconnect logic (duplicate reconnect loops, subscriptions or
//! auth not restored, leaked sockets and tasks, reconnect storms) impossible
//! by construction.
//!
//! ## Architecture
//!
//! ```text
//!  Client (Clone) ──Command──▶ ┌──────────── driver task ────────────┐ ──Event──▶ Events (Stream)
//!  Client ─────────Command──▶  │ state machine:                       │
//!  snapshot() ◀── Arc<Shared> ─│ Connecting → Connected → Reconnecting│
//!                 (atomics)    │      ↘ CircuitOpen ↗   ↘ Failed      │
//!                              │ owns: socket, subscriptions, outbox, │
//!                              │ pending requests, backoff, breaker   │
//!                              └──────────────────────────────────────┘
//! ```
//!
//! - **One owner.** Each client is exactly one tokio task (the driver) that
//!   owns the socket. Read errors, write errors, heartbeat timeouts and server
//!   closes all return to the same loop, which is the only code that
//!   reconnects: there cannot be two reconnect loops. Handles talk to it over
//!   a bounded channel; there is no global state, so thousands of clients
//!   cost one task and one socket each (and a 4 KiB read buffer).
//! - **Explicit state machine.** The driver's decisions (connect,
//!   authenticate, replay, serve, back off, give up, close) are a pure
//!   transition function, inputs in and actions out, unit-tested without
//!   sockets; the task only performs the actions (`machine.rs`, `driver.rs`).
//! - **Ready means restored.** On every (re)connect the driver runs the
//!   [`Auth`] step, then replays every tracked [`Subscription`] in insertion
//!   order, then flushes the offline outbox, and only then reports `Opened`
//!   / `Reconnected` and serves user commands. Subscriptions changed while
//!   disconnected are just edits of the list that the next replay sends.
//! - **Pure policies.** [`Backoff`] (exponential, capped, jittered, attempt
//!   limit) and [`CircuitBreaker`] are plain types with injected jitter and
//!   time, unit- and property-tested without sockets.
//! - **Request/response.** [`Client::request`] correlates by a 16-byte UUID
//!   prefix on binary frames or by a JSON id field ([`Correlation`]). Replies
//!   go to their caller only and are never emitted as
//!   [`Event::Message`]; late replies are dropped and counted.
//! - **No leaks.** The socket and timers of a connection are locals of one
//!   function in the driver, dropped before the next attempt starts.
//!
//! ## Example
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use wsgate_client::{Auth, Client, ClientConfig, Event, Matcher, Subscription};
//!
//! # async fn demo() -> Result<(), wsgate_client::Error> {
//! let config = ClientConfig::new("ws://127.0.0.1:9000/feed")
//!     .header("x-api-key", "secret")
//!     .auth(Auth::new().send(r#"{"op":"auth","token":"t"}"#).expect(Matcher::contains("auth_ok")));
//! let (client, mut events) = Client::connect(config).await?;
//! client.subscribe(Subscription::new("trades", r#"{"op":"subscribe","channel":"trades"}"#)).await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("{:?}", m.as_text()),
//!         Event::Reconnecting { attempt, delay, .. } => println!("retry {attempt} in {delay:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! - **`wss://`** through rustls: platform roots plus `SSL_CERT_FILE` / `SSL_CERT_DIR`,
//!   an optional CA bundle and client certificate per connection ([`TlsOptions`]).
//! - **Flapping.** A connection counts as a success only once it stayed up for
//!   [`ClientConfig::min_stable`]; `Retry-After` on a 429/503 handshake is honoured.
//!
//! ## Features
//! - `test-support`: [`test_support`], a scriptable upstream test server.

#![warn(missing_docs)]

mod breaker;
mod client;
mod config;
mod correlation;
mod driver;
mod error;
mod event;
mod machine;
mod message;
mod sign;
mod stats;
mod subscriptions;
mod tls;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use breaker::{
    Admission, BreakerConfig, BreakerState, CircuitBreaker, DEFAULT_COOLDOWN,
    DEFAULT_FAILURE_THRESHOLD, Transition,
};
pub use client::Client;
pub use config::{
    Auth, ClientConfig, DEFAULT_AUTH_TIMEOUT, DEFAULT_CLOSE_TIMEOUT, DEFAULT_COMMAND_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_READ_BUFFER, DEFAULT_WRITE_TIMEOUT, Heartbeat,
    HeartbeatPing, Matcher, OfflinePolicy,
};
pub use correlation::{Correlation, uuid_prefixed};
pub use error::{Error, Result};
pub use event::{CloseReason, Event, Events};
pub use message::{Message, Utf8Bytes};
pub use sign::{SignAlgorithm, SignEncoding, Signer, Values};
pub use stats::{ConnectionState, Snapshot};
pub use subscriptions::{Added, Subscription, Subscriptions};
pub use tls::{TlsOptions, describe as describe_tls_error, platform_roots};
pub use wsgate_backoff::{
    Backoff, BackoffState, DEFAULT_INITIAL_DELAY, DEFAULT_JITTER, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_DELAY, FixedJitter, JitterSource, RandomJitter,
};

/// This library's version (`/version` reports it as `library_version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The names of handshake headers, for logs and `Debug` (their values may be secrets).
pub fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(k, _)| k.as_str()).collect()
}

/// A URL without the parts that commonly carry secrets: user info, query string, fragment.
pub fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(host_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}
