//! The two seams between a wsgate node and the rest of its cluster.
//!
//! The gateway and the upstream manager never talk to Redis or NATS themselves. They use
//! two small traits:
//!
//! - [`Broker`] moves messages between nodes: channel publications (with the per-channel
//!   offset and epoch that make gaps detectable), sends to a user or to one connection, and
//!   upstream topics. Every publication goes *through* the broker, even on a single node, so
//!   that ordering and history have exactly one owner.
//! - [`Store`] keeps the state that must outlive one node: presence today, connection
//!   records, ownership and leases as the cluster grows.
//!
//! [`memory`] holds the embedded implementations: one process, no dependency, and no queue
//! on the publish path (a publication is handed to the local [`Deliver`] sink synchronously,
//! under the channel's own lock, which is what keeps per-channel order). [`redis`] (feature
//! `redis`) and [`nats`] (feature `nats`) make several nodes one gateway: see their module
//! docs and `docs/cluster.md`.

mod broker;
pub mod memory;
mod metrics;
mod model;
#[cfg(feature = "nats")]
pub mod nats;
pub mod ownership;
#[cfg(feature = "redis")]
pub mod redis;
mod store;
pub mod upstream;
#[cfg(feature = "redis")]
mod wire;

pub use broker::{Broker, BrokerError, Deliver};
pub use metrics::ClusterMetrics;
pub use model::{
    Envelope, NodeId, Publication, PublishRequest, Recovery, RecoveryGap, StreamPosition,
};
pub use ownership::{Ownership, RequestHandler, Sweep};
pub use store::{PresenceEntry, Store, StoreError};
pub use upstream::UpstreamRecord;
