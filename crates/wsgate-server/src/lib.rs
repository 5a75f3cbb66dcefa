//! The I/O edge of a wsgate node: the HTTP/JSON control API, the WebSocket listener and the
//! operations endpoints, around the socket-free logic of `wsgate-core`.
//!
//! [`run`] is the whole node: it builds the gateway on the configured store and broker, serves
//! until `shutdown` resolves, then drains (`/ready` false, 1001 to every client, bounded wait).
//! Tests start it in-process on `127.0.0.1:0`; the `wsgate` binary wraps it with signals and
//! logging.
//!
//! - [`node`]: the parts built once; [`supervisor`]: their start and stop order.
//! - [`ws`]: the upgrade and the one task each connection runs ([`ws::WsState`]).
//! - [`hooks`]: proxy hooks to the application's backend (HTTP), and the connect hook's
//!   part of a handshake.
//! - [`socketio`]: `/socket.io/` (socketioxide) adapted onto the same gateway core.
//! - [`http`]: routes, the control API, operations endpoints ([`http::ApiState`]).
//! - [`reply`]: JSON errors and bearer tokens, shared by both edges.
//! - [`process`]: the process's own resources (`process_*`), read at scrape time.
//! - [`config`]: the top-level settings, composed of each part's own.
//!
//! Modules depend downwards only: `supervisor` → `node` → `http` → `socketio` → `ws` → `reply`, `limits`,
//! `lifecycle`; `config` composes the parts' settings and none of them imports it.

pub mod auth;
pub mod config;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod hooks;
pub mod http;
mod jwks;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod namespaces;
mod node;
mod outbound;
pub mod process;
pub mod reply;
pub mod seams;
mod secret;
pub mod socketio;
pub mod supervisor;
pub mod tls;
#[cfg(feature = "redis")]
mod trust;
pub mod view;
pub mod ws;

pub use config::Config;
pub use http::BuildInfo;
pub use lifecycle::Lifecycle;
pub use node::Node;
pub use supervisor::{bind_grpc, run, run_with};
