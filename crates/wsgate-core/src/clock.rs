//! Time, the one place the node reads it.
//!
//! Two kinds, never mixed:
//! - [`Clock`]: node-local monotonic milliseconds, for timeouts (heartbeats, uptime). It is
//!   based on `tokio::time::Instant`, so a test on a paused runtime
//!   (`#[tokio::test(start_paused = true)]`) drives it with `tokio::time::advance`, and the
//!   heartbeat rules are tested in virtual time without waiting. Outside such tests (the
//!   `test-util` feature of tokio is a dev-dependency only) `tokio::time::Instant::now()` is
//!   `std::time::Instant::now()`: the read costs what it did before.
//! - [`unix_ms`] / [`unix_us`]: wall time, for humans, APIs and latencies that span nodes;
//!   never for timeouts. Binaries and tests use these rather than their own copies.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the clock was made. Per-connection timestamps are stored as these
/// `u64`s (one atomic each) instead of `Instant`s behind a lock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose zero is now (in virtual time on a paused test runtime).
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Milliseconds since [`Clock::new`].
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The instant `ms` milliseconds after [`Clock::new`] (to sleep until a due time).
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.origin + std::time::Duration::from_millis(ms)
    }
}

/// Unix time in milliseconds (for humans and APIs, never for timeouts).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Unix time in microseconds (publish→deliver latency spans nodes, so it needs wall time).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_virtual_time() {
        let clock = Clock::new();
        assert_eq!(clock.now_ms(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_ms(), 1500);
    }
}
