//! When the node pings its clients and notices silent ones.
//!
//! One [`Heartbeat`] serves the whole node (no per-connection timer): it ticks four times per
//! ping interval, so a timeout is noticed within a quarter interval, and each tick runs one
//! [`Gateway::sweep`], pinging only when a whole interval has passed since the last ping.
//! The ticker is tokio's and the time is the gateway's [`Clock`](crate::clock::Clock), so a
//! paused test runtime drives both (see the gateway's tests).

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use super::{Gateway, SweepReport};

/// Ticks are never shorter than this, whatever the configuration.
const MIN_TICK: Duration = Duration::from_millis(5);

pub struct Heartbeat {
    ticker: Interval,
    interval_ms: u64,
    last_ping_ms: u64,
}

impl Heartbeat {
    /// A heartbeat for `gw`'s configured interval and timeout; the first ping is one interval
    /// from now.
    pub fn new(gw: &Gateway) -> Self {
        let interval = gw.config.heartbeat_interval;
        let tick = (interval.min(gw.config.heartbeat_timeout) / 4).max(MIN_TICK);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            ticker,
            interval_ms: interval.as_millis() as u64,
            last_ping_ms: gw.clock.now_ms(),
        }
    }

    /// Waits for the next tick, then sweeps (pinging when an interval has passed).
    pub async fn tick(&mut self, gw: &Gateway) -> SweepReport {
        self.ticker.tick().await;
        let now = gw.clock.now_ms();
        let ping = now.saturating_sub(self.last_ping_ms) >= self.interval_ms;
        if ping {
            self.last_ping_ms = now;
        }
        gw.sweep(ping)
    }
}
