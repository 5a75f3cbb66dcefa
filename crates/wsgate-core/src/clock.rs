//! Node-local monotonic time in milliseconds, cheap to store in an atomic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn elapsed_since(&self, ms: u64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(ms))
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
