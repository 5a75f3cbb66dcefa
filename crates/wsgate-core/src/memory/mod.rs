//! The embedded default: one node, no dependency, nothing leaves the process.

mod broker;
mod once;
mod store;

pub use broker::{MemoryBroker, recover_from};
pub use once::MAX_KEYS as MAX_IDEMPOTENCY_KEYS;
pub use store::MemoryStore;

/// A fresh epoch: random, so a restarted process never reuses one.
pub(crate) fn new_epoch() -> std::sync::Arc<str> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].into()
}
