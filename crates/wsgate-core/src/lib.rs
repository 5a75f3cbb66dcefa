//! The logic of a wsgate node, without its sockets.
//!
//! - [`gateway`]: the inbound face. A [`gateway::Gateway`] owns the registry of client
//!   connections (by id, by user, by channel), speaks the client protocol, fans out
//!   publications that the [`wsgate_cluster::Broker`] hands it, and sweeps heartbeats.
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
//!
//! Time is passed in as a [`clock::Clock`], so the heartbeat sweep can be tested without
//! waiting.

pub mod auth;
pub mod clock;
pub mod control;
pub mod gateway;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod upstream;
