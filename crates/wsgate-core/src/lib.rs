//! The logic of a wsgate node, without its sockets.
//!
//! - [`seams`]: the traits between a node and its cluster ([`seams::Broker`], presence,
//!   upstream records, ownership, forwarding, the channel log) and the values that cross
//!   them. [`memory`] is the embedded engine beside them; the Redis and NATS engines are
//!   the `wsgate-redis` and `wsgate-nats` crates, which share [`relay`].
//! - [`gateway`]: the inbound face. A [`gateway::Gateway`] owns the registry of client
//!   connections (by id, by user, by channel), speaks the client protocol, fans out
//!   publications that the [`seams::Broker`] hands it, and sweeps heartbeats.
//!   It never touches a socket: each connection is an [`gateway::Connection`] with a
//!   bounded outbox that the server's connection task drains into its WebSocket.
//! - [`protocol`]: the JSON frames of the client protocol, decoded and encoded.
//! - [`auth`]: who a connecting client is (none, or JWT HS256/RS256).
//! - [`upstream`]: the outbound face. An [`upstream::UpstreamManager`] holds WebSocket
//!   connections to backends (each a reconnecting `wsgate_client::Client`) and can publish
//!   what they receive into gateway channels.
//! - [`control`]: the control API as typed commands and results: authorization,
//!   validation, defaults, paging and routing, once for HTTP and gRPC alike.
//! - [`metrics`]: the Prometheus series every part of the node reports into.
//! - [`namespace`]: channel namespaces and the options a channel takes from its own.
//! - [`hooks`]: proxy hooks, the backend asked before a connect, subscribe, publish, rpc or
//!   refresh.
//! - [`events`]: events out to the backend (connections, channel occupancy, presence,
//!   upstream states), batched and queued per sink, once cluster-wide.
//!
//! Time is read through [`clock::Clock`], which follows tokio's clock: the gateway's tests
//! (`gateway/tests.rs`, over the memory engine and a recording transport, no sockets) run
//! the heartbeat rules on a paused runtime, in virtual time.

pub mod auth;
pub mod clock;
pub mod control;
pub mod events;
pub mod gateway;
pub mod hooks;
pub mod ids;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod namespace;
pub mod protocol;
pub mod relay;
pub mod seams;
pub mod tasks;
pub mod upstream;
