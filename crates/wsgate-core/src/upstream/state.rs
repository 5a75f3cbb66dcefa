//! Connection states as operators see them, and this connection's share of the
//! `wsgate_upstream_connections{state}` gauge.
//!
//! Each connection counts in exactly one state at a time. The slot remembers which, so a
//! transition is one decrement and one increment and removal takes the last one back:
//! the gauge family always sums to the number of connections held.

use std::sync::atomic::{AtomicU8, Ordering};

use wsgate_client::ConnectionState;

use crate::metrics::{Metrics, StateLabel, UPSTREAM_STATES};

pub fn state_name(s: ConnectionState) -> &'static str {
    UPSTREAM_STATES[index(s)]
}

fn index(s: ConnectionState) -> usize {
    match s {
        ConnectionState::Connecting => 0,
        ConnectionState::Connected => 1,
        ConnectionState::Reconnecting => 2,
        ConnectionState::CircuitOpen => 3,
        ConnectionState::Failed => 4,
        ConnectionState::Closed => 5,
    }
}

const NONE: u8 = u8::MAX;

/// The state a connection is counted in (or none).
#[derive(Debug)]
pub struct GaugeSlot(AtomicU8);

impl Default for GaugeSlot {
    fn default() -> Self {
        Self(AtomicU8::new(NONE))
    }
}

impl GaugeSlot {
    /// Counts the connection in `state` instead of its previous one.
    pub fn set(&self, metrics: &Metrics, state: ConnectionState) {
        let new = index(state) as u8;
        let old = self.0.swap(new, Ordering::AcqRel);
        if old != new {
            Self::dec(metrics, old);
            metrics
                .upstream_connections
                .get_or_create(&StateLabel {
                    state: UPSTREAM_STATES[new as usize],
                })
                .inc();
        }
    }

    /// Stops counting the connection. Idempotent.
    pub fn clear(&self, metrics: &Metrics) {
        Self::dec(metrics, self.0.swap(NONE, Ordering::AcqRel));
    }

    fn dec(metrics: &Metrics, old: u8) {
        if let Some(state) = UPSTREAM_STATES.get(old as usize) {
            metrics
                .upstream_connections
                .get_or_create(&StateLabel { state })
                .dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(m: &Metrics, state: &'static str) -> i64 {
        m.upstream_connections
            .get_or_create(&StateLabel { state })
            .get()
    }

    #[test]
    fn one_state_at_a_time() {
        let m = Metrics::default();
        let slot = GaugeSlot::default();
        slot.set(&m, ConnectionState::Connecting);
        slot.set(&m, ConnectionState::Connected);
        slot.set(&m, ConnectionState::Connected);
        assert_eq!(gauge(&m, "connecting"), 0);
        assert_eq!(gauge(&m, "connected"), 1);
        slot.clear(&m);
        slot.clear(&m);
        assert_eq!(gauge(&m, "connected"), 0);
        assert_eq!(state_name(ConnectionState::CircuitOpen), "circuit_open");
    }
}
