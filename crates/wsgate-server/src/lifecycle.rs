//! Whether the node takes traffic: started, then draining. The supervisor moves it forward;
//! `/ready`, the upgrade and gRPC health read it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Default of `drain_timeout_ms`: long enough for clients to read their 1001 and go, short
/// enough for a rolling restart (the Helm chart's grace period is derived from it).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;

/// Whether the node takes traffic. `/ready` reads it; the supervisor moves it forward.
#[derive(Debug, Default)]
pub struct Lifecycle {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
    pub(crate) fn start(&self) {
        self.started.store(true, Ordering::Release);
    }
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
