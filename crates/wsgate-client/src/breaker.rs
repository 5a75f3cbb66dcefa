//! Circuit breaker: stop hammering an upstream that keeps failing.
//!
//! Closed → (N consecutive failures) → Open for a cooldown → HalfOpen: one
//! probe attempt is allowed; success closes the breaker, failure re-opens it.
//! Time is injected (`now` arguments): the type never reads a clock, so tests
//! drive it with `Instant` arithmetic.

use std::time::{Duration, Instant};

/// Default consecutive failures that open the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before a probe.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5. `0` disables it.
    pub failure_threshold: u32,
    /// How long the breaker stays open. Default 30 s.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            cooldown: DEFAULT_COOLDOWN,
        }
    }
}

impl BreakerConfig {
    /// A breaker that never opens.
    pub fn disabled() -> Self {
        Self {
            failure_threshold: 0,
            cooldown: Duration::ZERO,
        }
    }
}

/// The breaker's state, as shown in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow; counts consecutive failures.
    Closed,
    /// No attempts until the cooldown ends.
    Open,
    /// One probe attempt is in flight or allowed.
    HalfOpen,
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this attempt is the half-open probe.
    Probe,
    /// Wait this long first.
    Wait(Duration),
}

/// A state change, returned so the caller can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// The breaker itself.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// Current state (does not advance Open → HalfOpen; see [`Self::admit`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// May an attempt start at `now`? Moves Open → HalfOpen once the
    /// cooldown has passed.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::HalfOpen => (Admission::Probe, None),
            BreakerState::Open => {
                let until = self.open_until.unwrap_or(now);
                if now >= until {
                    (Admission::Probe, self.set(BreakerState::HalfOpen))
                } else {
                    (Admission::Wait(until - now), None)
                }
            }
        }
    }

    /// Time left before a probe is allowed (zero unless open).
    pub fn remaining(&self, now: Instant) -> Duration {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// An attempt succeeded: close the breaker.
    pub fn record_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.open_until = None;
        self.set(BreakerState::Closed)
    }

    /// An attempt failed at `now`.
    pub fn record_failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.config.failure_threshold == 0 {
            return None;
        }
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive_failures >= self.config.failure_threshold,
            BreakerState::Open => false,
        };
        if open {
            self.open_until = Some(now + self.config.cooldown);
            self.set(BreakerState::Open)
        } else {
            None
        }
    }

    fn set(&mut self, to: BreakerState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn opens_after_threshold_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        assert_eq!(b.record_failure(t0), None);
        assert_eq!(b.record_failure(t0), None);
        assert_eq!(b.admit(t0).0, Admission::Allowed);
        let tr = b.record_failure(t0).expect("third failure opens");
        assert_eq!((tr.from, tr.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)).0,
            Admission::Wait(Duration::from_secs(6))
        );
        assert_eq!(
            b.remaining(t0 + Duration::from_secs(9)),
            Duration::from_secs(1)
        );
        let (adm, tr) = b.admit(t0 + Duration::from_secs(10));
        assert_eq!(adm, Admission::Probe);
        assert_eq!(tr.map(|t| t.to), Some(BreakerState::HalfOpen));
    }

    #[test]
    fn failed_probe_reopens_successful_probe_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1).0, Admission::Probe);
        assert_eq!(b.record_failure(t1).map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(
            b.admit(t1 + Duration::from_secs(1)).0,
            Admission::Wait(Duration::from_secs(9))
        );
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2).0, Admission::Probe);
        assert_eq!(b.record_success().map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.admit(t2).0, Admission::Allowed);
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.record_success(), None, "already closed: no transition");
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_never_opens() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::disabled());
        for _ in 0..100 {
            assert_eq!(b.record_failure(t0), None);
        }
        assert_eq!(b.admit(t0).0, Admission::Allowed);
    }
}
