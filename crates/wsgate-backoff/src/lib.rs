//! Retry delay policy: exponential growth to a cap, jitter, attempt limit.
//!
//! One implementation serves every retry loop of wsgate: the upstream client's reconnects
//! (`wsgate-client` re-exports it), the core's cluster retries (lease, record listing) and
//! the Redis engine's reconnects. It is its own crate because those three must not depend
//! on each other for it: `wsgate-client` stays usable alone (no dependency on the core),
//! and a storage engine has no business depending on a WebSocket client. The policy is
//! pure (no clock, no sleeping), so each caller sleeps its own way.
//!
//! [`Backoff`] is the immutable policy (what the user configures);
//! [`BackoffState`] is the per-connection counter that hands out delays. It
//! reads no clock and no global RNG: jitter comes from a [`JitterSource`] the
//! caller injects, so tests are deterministic.

use std::time::Duration;

/// Default first delay: 1 s (seed 002: 1 s, 2 s, 4 s … 60 s).
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// Default cap on a single delay: 60 s.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);
/// Default jitter: up to 20 % of the delay is removed at random, which
/// de-synchronises thousands of clients that lost the same upstream at once.
pub const DEFAULT_JITTER: f64 = 0.2;
/// Default attempt limit: 10 consecutive failures, then give up.
pub const DEFAULT_MAX_ATTEMPTS: Option<u32> = Some(10);

/// Source of jitter: returns a value in `[0, 1)`.
pub trait JitterSource: Send + Sync {
    /// Next uniformly distributed value in `[0, 1)`.
    fn next_unit(&mut self) -> f64;
}

/// Any source prints as its trait's name: closures have no `Debug`, and a source holds
/// nothing worth printing.
impl std::fmt::Debug for dyn JitterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JitterSource")
    }
}

/// Jitter from `rand`'s thread-local generator (the production default).
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl JitterSource for RandomJitter {
    fn next_unit(&mut self) -> f64 {
        rand::random::<f64>()
    }
}

/// A fixed jitter value, for tests (0.0 = no reduction, close to 1.0 = full).
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl JitterSource for FixedJitter {
    fn next_unit(&mut self) -> f64 {
        self.0.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

impl<F: FnMut() -> f64 + Send + Sync> JitterSource for F {
    fn next_unit(&mut self) -> f64 {
        self()
    }
}

/// Reconnect policy. Cheap to clone; see the setters for defaults.
///
/// Delay for retry `n` (1-based), before jitter: `initial * 2^(n-1)` capped at
/// `max_delay`; with `immediate_first_retry`, retry 1 is `0` and retry `n` is
/// `initial * 2^(n-2)`. Jitter is *subtractive*: a fraction `j` removes up to
/// `j` of the delay, so a jittered delay is in `[d * (1 - j), d]` and never
/// exceeds the cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max_delay: Duration,
    jitter: f64,
    max_attempts: Option<u32>,
    immediate_first_retry: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: DEFAULT_INITIAL_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            jitter: DEFAULT_JITTER,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            immediate_first_retry: false,
        }
    }
}

impl Backoff {
    /// The default policy: 1 s doubling to 60 s, 20 % jitter, 10 attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// First delay. Default 1 s.
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial = d;
        self
    }

    /// Cap on any single delay. Default 60 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Fraction of each delay removed at random, clamped to `[0, 1]`. Default 0.2.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Retries after which the caller gives up (`None` = retry forever).
    /// Default 10.
    pub fn max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// Retry once with no delay before backing off (a dropped connection is
    /// often just a load balancer recycling it). Default `false`.
    pub fn immediate_first_retry(mut self, yes: bool) -> Self {
        self.immediate_first_retry = yes;
        self
    }

    /// The cap on any single delay ([`Backoff::max_delay`]).
    pub fn delay_cap(&self) -> Duration {
        self.max_delay
    }

    /// The configured attempt limit.
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// Delay before retry `n` (1-based) without jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let exp = if self.immediate_first_retry {
            if n == 1 {
                return Duration::ZERO;
            }
            n - 2
        } else {
            n - 1
        };
        // Saturate instead of overflowing: 2^exp beyond 2^31 is past any cap.
        let factor = 1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// Delay before retry `n` with jitter `unit` in `[0, 1)` applied.
    pub fn delay_with(&self, n: u32, unit: f64) -> Duration {
        let base = self.base_delay(n);
        let cut = self.jitter * unit.clamp(0.0, 1.0);
        if cut <= 0.0 {
            return base;
        }
        // Not `mul_f64`: it panics when a huge `max_delay` rounds up past `Duration::MAX`.
        Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 - cut)).map_or(base, |d| d.min(base))
    }

    /// A fresh counter using `rand` for jitter.
    pub fn start(&self) -> BackoffState {
        self.start_with(Box::new(RandomJitter))
    }

    /// A fresh counter with an injected jitter source.
    pub fn start_with(&self, jitter: Box<dyn JitterSource>) -> BackoffState {
        BackoffState {
            policy: self.clone(),
            retries: 0,
            jitter,
        }
    }
}

/// Per-connection backoff counter.
///
/// Counts *retries* since the last successful connection. The first connect
/// of a client is not a retry; losing an established connection is not a
/// failed attempt either: it starts retry 1.
#[derive(Debug)]
pub struct BackoffState {
    policy: Backoff,
    retries: u32,
    jitter: Box<dyn JitterSource>,
}

impl BackoffState {
    /// Starts the next retry: returns the delay before it, or `None` when
    /// `max_attempts` retries have already been made (give up).
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.retries >= max)
        {
            return None;
        }
        self.retries = self.retries.saturating_add(1);
        let unit = self.jitter.next_unit();
        Some(self.policy.delay_with(self.retries, unit))
    }

    /// Retries started since the last success.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// A successful connection resets the count.
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn delays(policy: &Backoff, n: usize) -> Vec<Duration> {
        let mut s = policy.start_with(Box::new(FixedJitter(0.0)));
        (0..n).map_while(|_| s.next_delay()).collect()
    }

    #[test]
    fn delays_double_then_cap() {
        let p = Backoff::new().max_attempts(None).jitter(0.0);
        let secs: Vec<u64> = delays(&p, 8).iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn immediate_first_retry_then_backoff() {
        let p = Backoff::new()
            .initial_delay(10 * MS)
            .max_delay(35 * MS)
            .immediate_first_retry(true)
            .max_attempts(None);
        assert_eq!(
            delays(&p, 5),
            vec![Duration::ZERO, 10 * MS, 20 * MS, 35 * MS, 35 * MS]
        );
    }

    #[test]
    fn gives_up_after_max_attempts_and_reset_restarts() {
        let p = Backoff::new().max_attempts(Some(3)).jitter(0.0);
        let mut s = p.start_with(Box::new(FixedJitter(0.0)));
        assert_eq!(s.next_delay(), Some(Duration::from_secs(1)));
        assert_eq!(s.next_delay(), Some(Duration::from_secs(2)));
        assert_eq!(s.next_delay(), Some(Duration::from_secs(4)));
        assert_eq!(
            s.next_delay(),
            None,
            "a limit of 3 allows exactly 3 retries"
        );
        assert_eq!(s.retries(), 3);
        s.reset();
        assert_eq!(s.next_delay(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn jitter_is_subtractive() {
        let p = Backoff::new().jitter(0.5);
        assert_eq!(p.delay_with(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay_with(1, 0.5), Duration::from_millis(750));
        assert_eq!(
            p.delay_with(1, 0.999_999),
            Duration::from_secs(1).mul_f64(1.0 - 0.5 * 0.999_999)
        );
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_cap() {
        let p = Backoff::new();
        assert_eq!(p.base_delay(u32::MAX), DEFAULT_MAX_DELAY);
        assert_eq!(p.base_delay(40), DEFAULT_MAX_DELAY);
        let unbounded = Backoff::new()
            .max_delay(Duration::MAX)
            .initial_delay(Duration::MAX);
        assert!(unbounded.delay_with(3, 0.5) <= Duration::MAX);
    }

    proptest! {
        #[test]
        fn jittered_delay_within_bounds(
            initial_ms in 0u64..10_000,
            cap_ms in 0u64..120_000,
            jitter in 0.0f64..=1.0,
            n in 1u32..200,
            unit in 0.0f64..1.0,
        ) {
            let p = Backoff::new()
                .initial_delay(Duration::from_millis(initial_ms))
                .max_delay(Duration::from_millis(cap_ms))
                .jitter(jitter);
            let base = p.base_delay(n);
            let d = p.delay_with(n, unit);
            prop_assert!(base <= Duration::from_millis(cap_ms));
            prop_assert!(d <= base);
            // Allow 1 ns of float rounding.
            prop_assert!(d + Duration::from_nanos(1) >= base.mul_f64(1.0 - jitter));
        }

        #[test]
        fn base_delays_never_shrink(initial_ms in 1u64..5_000, cap_ms in 1u64..120_000, immediate: bool) {
            let p = Backoff::new()
                .initial_delay(Duration::from_millis(initial_ms))
                .max_delay(Duration::from_millis(cap_ms))
                .immediate_first_retry(immediate);
            let mut prev = Duration::ZERO;
            for n in 1..64 {
                let d = p.base_delay(n);
                prop_assert!(d >= prev, "retry {} shrank: {:?} < {:?}", n, d, prev);
                prev = d;
            }
            prop_assert_eq!(prev, Duration::from_millis(cap_ms), "reaches the cap");
        }
    }
}
