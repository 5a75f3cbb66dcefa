//! The embedded engine's memory of idempotency keys: bounded, expiring.
//!
//! Keys are scoped to their channel. Entries expire after the window they were recorded
//! with; at most [`MAX_KEYS`] are kept, and beyond that the oldest are forgotten early (a
//! repeat of a forgotten key publishes again), which bounds what a backend sending keys
//! faster than they expire can make the node hold.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::seams::{BrokerError, Idempotency, StreamPosition};

/// 100 000 keys: a 5-minute window at 330 keyed publications per second, a few MB.
pub const MAX_KEYS: usize = 100_000;

type Key = (Arc<str>, Arc<str>);

struct Seen {
    fingerprint: Arc<str>,
    position: StreamPosition,
    expires: Instant,
}

#[derive(Default)]
pub(super) struct Remembered {
    seen: HashMap<Key, Seen>,
    /// Keys in the order they were recorded: the front expires (or is evicted) first.
    order: VecDeque<(Instant, Key)>,
}

impl Remembered {
    /// The first publication's position when `once.key` was seen on `channel` and has not
    /// expired; [`BrokerError::IdempotencyConflict`] when it was seen with another request.
    pub(super) fn check(
        &mut self,
        channel: &Arc<str>,
        once: &Idempotency,
        now: Instant,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.expire(now);
        let key = (channel.clone(), once.key.clone());
        match self.seen.get(&key) {
            Some(s) if s.expires > now => {
                if s.fingerprint == once.fingerprint {
                    Ok(Some(s.position.clone()))
                } else {
                    Err(BrokerError::IdempotencyConflict)
                }
            }
            _ => Ok(None),
        }
    }

    pub(super) fn record(
        &mut self,
        channel: &Arc<str>,
        once: &Idempotency,
        position: StreamPosition,
        now: Instant,
    ) {
        let expires = now + Duration::from_millis(once.window_ms);
        let key = (channel.clone(), once.key.clone());
        while self.seen.len() >= MAX_KEYS {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&oldest);
        }
        self.order.push_back((expires, key.clone()));
        self.seen.insert(
            key,
            Seen {
                fingerprint: once.fingerprint.clone(),
                position,
                expires,
            },
        );
    }

    /// Forgets the expired keys at the front. Windows differ only across a reload, so the
    /// front is (nearly) the earliest to expire; a later one waits behind it, harmlessly.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            if self.seen.get(&key).is_some_and(|s| s.expires <= now) {
                self.seen.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn once(key: &str, fp: &str) -> Idempotency {
        Idempotency {
            key: key.into(),
            fingerprint: fp.into(),
            window_ms: 1000,
        }
    }

    fn at(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    #[test]
    fn repeat_conflict_expiry_and_channel_scope() {
        let mut r = Remembered::default();
        let t0 = Instant::now();
        let ch: Arc<str> = "a".into();
        assert_eq!(r.check(&ch, &once("k", "f"), t0).unwrap(), None);
        r.record(&ch, &once("k", "f"), at(7), t0);
        assert_eq!(r.check(&ch, &once("k", "f"), t0).unwrap(), Some(at(7)));
        assert!(matches!(
            r.check(&ch, &once("k", "other"), t0),
            Err(BrokerError::IdempotencyConflict)
        ));
        assert_eq!(r.check(&"b".into(), &once("k", "other"), t0).unwrap(), None);
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(r.check(&ch, &once("k", "f"), later).unwrap(), None);
        assert_eq!(r.len(), 0, "expired keys are forgotten");
    }

    #[test]
    fn bounded() {
        let mut r = Remembered::default();
        let t0 = Instant::now();
        let ch: Arc<str> = "a".into();
        for i in 0..MAX_KEYS + 10 {
            r.record(&ch, &once(&i.to_string(), "f"), at(1), t0);
        }
        assert_eq!(r.len(), MAX_KEYS);
        assert_eq!(
            r.check(&ch, &once("0", "f"), t0).unwrap(),
            None,
            "oldest forgotten"
        );
        assert!(
            r.check(&ch, &once(&MAX_KEYS.to_string(), "f"), t0)
                .unwrap()
                .is_some()
        );
    }
}
