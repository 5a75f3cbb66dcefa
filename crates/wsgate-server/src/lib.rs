//! The I/O edge of a wsgate node: the HTTP/JSON control API, the WebSocket listener and the
//! operations endpoints, around the socket-free logic of `wsgate-core`.
//!
//! [`run`] is the whole node: it builds the gateway on the configured store and broker, serves
//! until `shutdown` resolves, then drains (`/ready` false, 1001 to every client, bounded wait).
//! Tests start it in-process on `127.0.0.1:0`; the `wsgate` binary wraps it with signals and
//! logging.
//!
//! - [`ws`]: the upgrade and the one task each connection runs.
//! - [`http`]: routes, the control API, operations endpoints, JSON errors.
//! - [`config`]: every setting, its default and why.

pub mod config;
pub mod http;
pub mod limits;
mod listener;
mod node;
mod seams;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use node::{BuildInfo, Lifecycle, Node, bind_grpc, run, run_with};
