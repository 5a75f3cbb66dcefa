//! Who may call the control API: the API key (compared in constant time) and the API rate
//! limit, checked once here for every transport.
//!
//! Every caller is rate limited: by its API key when a key is configured and one was
//! presented, else by its client address. The rate check comes first, so a flood of wrong
//! keys is throttled too. The key itself is never logged or exported; it only names a
//! limiter bucket. The limiter is behind [`RateLimit`], so the core holds no rate-limiting
//! engine (the server's is governor's GCRA).

use std::net::IpAddr;
use std::sync::Arc;

use super::{ControlError, ErrorCode};
use crate::metrics::{Metrics, ReasonLabel};

/// The API rate limiter, keyed by caller.
pub trait RateLimit: Send + Sync + 'static {
    /// `Ok`, or the whole seconds (at least 1) until `key` may call again.
    fn check(&self, key: &str) -> Result<(), u64>;
}

/// No limit.
impl RateLimit for () {
    fn check(&self, _: &str) -> Result<(), u64> {
        Ok(())
    }
}

/// Who is calling, as the transport saw it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The API key presented (a bearer token), if any.
    pub key: Option<&'a str>,
    /// The client's address (behind trusted proxies: the forwarded one).
    pub ip: IpAddr,
}

/// The access rules of a node.
pub struct Access {
    api_key: Option<String>,
    rate: Arc<dyn RateLimit>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Message of a call over the rate limit (HTTP 429).
pub const RATE_LIMITED: &str = "Too many requests: API rate limit exceeded";
/// Message of a call without the right API key (HTTP 401, gRPC UNAUTHENTICATED).
pub const UNAUTHORIZED: &str = "Unauthorized: missing or wrong API key";

impl Access {
    /// `api_key`: when set, every call must present it. `rate`: the API rate limiter.
    pub fn new(api_key: Option<String>, rate: Arc<dyn RateLimit>) -> Self {
        Self { api_key, rate }
    }

    /// Lets `caller` through, or says why not (and counts the refusal by reason).
    pub fn authorize(&self, caller: Caller<'_>, metrics: &Metrics) -> Result<(), ControlError> {
        let refuse = |reason: &'static str, e: ControlError| {
            metrics
                .api_rejections
                .get_or_create(&ReasonLabel { reason })
                .inc();
            Err(e)
        };
        let bucket = match (&self.api_key, caller.key) {
            (Some(_), Some(given)) => format!("key:{given}"),
            _ => format!("ip:{}", caller.ip),
        };
        if let Err(retry_after_secs) = self.rate.check(&bucket) {
            let code = ErrorCode::RateLimited { retry_after_secs };
            return refuse("rate_limited", ControlError::new(code, RATE_LIMITED));
        }
        if let Some(want) = &self.api_key
            && !caller
                .key
                .is_some_and(|given| constant_time_eq(given.as_bytes(), want.as_bytes()))
        {
            let e = ControlError::new(ErrorCode::Unauthorized, UNAUTHORIZED);
            return refuse("unauthorized", e);
        }
        Ok(())
    }
}

/// Compares without an early exit, so response time does not leak how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;

    /// Lets each bucket through once, and records the buckets asked about.
    #[derive(Default)]
    struct Once(Mutex<Vec<String>>);

    impl RateLimit for Once {
        fn check(&self, key: &str) -> Result<(), u64> {
            let mut seen = self.0.lock();
            let again = seen.iter().any(|k| k == key);
            seen.push(key.to_string());
            if again { Err(7) } else { Ok(()) }
        }
    }

    fn caller(key: Option<&str>) -> Caller<'_> {
        Caller {
            key,
            ip: "10.0.0.1".parse().unwrap(),
        }
    }

    fn rejections(m: &Metrics, reason: &'static str) -> u64 {
        m.api_rejections
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    #[test]
    fn key_is_required_when_configured() {
        let m = Metrics::default();
        let access = Access::new(Some("k3y".into()), Arc::new(()));
        assert!(access.authorize(caller(Some("k3y")), &m).is_ok());
        for wrong in [None, Some("k3"), Some("k3y4"), Some("K3Y")] {
            let e = access.authorize(caller(wrong), &m).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert_eq!(e.message, "Unauthorized: missing or wrong API key");
        }
        assert_eq!(rejections(&m, "unauthorized"), 4);
        let open = Access::new(None, Arc::new(()));
        assert!(open.authorize(caller(Some("anything")), &m).is_ok());
    }

    #[test]
    fn rate_is_checked_first_by_key_or_address() {
        let m = Metrics::default();
        let rate = Arc::new(Once::default());
        let access = Access::new(Some("k3y".into()), rate.clone());
        assert!(access.authorize(caller(Some("k3y")), &m).is_ok());
        let e = access.authorize(caller(Some("k3y")), &m).unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::RateLimited {
                retry_after_secs: 7
            }
        );
        assert_eq!(e.message, "Too many requests: API rate limit exceeded");
        // Without a key the address names the bucket.
        assert_eq!(
            access.authorize(caller(None), &m).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(*rate.0.lock(), ["key:k3y", "key:k3y", "ip:10.0.0.1"]);
        assert_eq!(rejections(&m, "rate_limited"), 1);
        // No key configured: every caller is limited by address, whatever it presents.
        let open = Access::new(None, rate.clone());
        assert!(open.authorize(caller(Some("k3y")), &m).is_err());
    }
}
