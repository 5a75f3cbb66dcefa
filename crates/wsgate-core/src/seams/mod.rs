//! The seams between a wsgate node and the rest of its cluster, and the values that cross
//! them. The core owns them: the gateway and the upstream manager are written against these
//! traits, and every engine (the embedded [`crate::memory`] engine here, the Redis and NATS
//! engines in the `wsgate-redis` and `wsgate-nats` crates) implements them.
//!
//! - [`Broker`] moves messages between nodes: channel publications (with the per-channel
//!   offset and epoch that make gaps detectable), sends to a user or to one connection.
//!   Every publication goes *through* the broker, even on a single node, so that ordering
//!   and history have exactly one owner. A node's local delivery is the [`Deliver`] sink.
//! - [`ChannelLog`] is the part of a broker that sequences: per-channel offsets, bounded
//!   history and recovery. A broker that only moves bytes (NATS) takes one as a trait
//!   object; [`crate::relay`] holds the ordering logic such brokers share.
//! - [`PresenceStore`] keeps who is in which channel, cluster-wide.
//! - [`UpstreamRecords`] keeps the durable [`UpstreamRecord`] of every upstream connection.
//! - [`Ownership`] decides which node holds which upstream connection (leases, claims,
//!   hand-over); [`Forwarding`] carries an API call to the node that holds a connection.
//!
//! Each trait is one job, so an engine can implement some and not others (the memory engine
//! has no ownership and no forwarding: every record is its own).

mod broker;
mod forwarding;
mod history;
mod metrics;
mod model;
mod ownership;
mod presence;
mod records;
pub mod upstream;

pub use broker::{Broker, BrokerError, Deliver, Recipient};
pub use forwarding::{Forwarding, RequestHandler};
pub use history::{ChannelLog, StreamReads};
pub use metrics::ClusterMetrics;
pub use model::{
    Envelope, HistoryPolicy, Idempotency, Logged, NodeId, Once, Publication, PublishRequest,
    Recovery, RecoveryGap, ServerSubscription, StreamPosition,
};
pub use ownership::{LeaseError, Ownership, Standing, Sweep};
pub use presence::{PresenceEntry, PresenceStore, StoreError};
pub use records::UpstreamRecords;
pub use upstream::UpstreamRecord;
