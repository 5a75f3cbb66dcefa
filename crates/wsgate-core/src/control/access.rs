//! Who may call the control API: the API key (compared in constant time) and the API's
//! limits by client address, checked once here for every transport.
//!
//! Publishing through the API is wsgate's main ingest, so a caller presenting the right key
//! is never rate limited. What is limited:
//!
//! - **failed authentication**, by client address: an address over its failure limit gets
//!   429 *before* any key it sends is compared, so guessing is throttled and a right guess
//!   learns nothing while blocked. Buckets are per address, never per presented key (a
//!   guesser cannot fill memory with keys);
//! - **an open API** (no key configured, a loopback or development node), by client
//!   address, with a limit far above a backend's publishing.
//!
//! The key itself is never logged or exported. The limiter is behind [`ApiLimits`], so the
//! core holds no rate-limiting engine (the server's is governor's GCRA).

use std::net::IpAddr;
use std::sync::Arc;

use super::{ControlError, ErrorCode};
use crate::metrics::Metrics;

/// The control API's limits by client address. Each answer is `Ok`, or the whole seconds
/// (at least 1) until the address may call again.
pub trait ApiLimits: Send + Sync + 'static {
    /// One call of an open API (no API key configured) from `ip`.
    fn open_call(&self, ip: IpAddr) -> Result<(), u64>;
    /// Whether `ip` is blocked for failed authentications now; counts nothing.
    fn auth_blocked(&self, ip: IpAddr) -> Result<(), u64>;
    /// Counts one failed authentication from `ip`; `Err` when it goes over the limit (the
    /// address is then blocked).
    fn auth_failed(&self, ip: IpAddr) -> Result<(), u64>;
}

/// No limit.
impl ApiLimits for () {
    fn open_call(&self, _: IpAddr) -> Result<(), u64> {
        Ok(())
    }
    fn auth_blocked(&self, _: IpAddr) -> Result<(), u64> {
        Ok(())
    }
    fn auth_failed(&self, _: IpAddr) -> Result<(), u64> {
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
    limits: Arc<dyn ApiLimits>,
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
    /// `api_key`: when set, every call must present it. `limits`: the limits by address.
    pub fn new(api_key: Option<String>, limits: Arc<dyn ApiLimits>) -> Self {
        Self { api_key, limits }
    }

    /// Lets `caller` through, or says why not (and counts the refusal by reason).
    pub fn authorize(&self, caller: Caller<'_>, metrics: &Metrics) -> Result<(), ControlError> {
        let refuse = |reason: &'static str, e: ControlError| {
            metrics.api_reject(reason);
            Err(e)
        };
        let limited = |retry_after_secs| {
            let code = ErrorCode::RateLimited { retry_after_secs };
            refuse("rate_limited", ControlError::new(code, RATE_LIMITED))
        };
        let Some(want) = &self.api_key else {
            return self.limits.open_call(caller.ip).or_else(limited);
        };
        // Before the key is compared: a blocked address learns nothing from its guesses.
        if let Err(secs) = self.limits.auth_blocked(caller.ip) {
            return limited(secs);
        }
        if caller
            .key
            .is_some_and(|given| constant_time_eq(given.as_bytes(), want.as_bytes()))
        {
            return Ok(());
        }
        if let Err(secs) = self.limits.auth_failed(caller.ip) {
            return limited(secs);
        }
        refuse(
            "unauthorized",
            ControlError::new(ErrorCode::Unauthorized, UNAUTHORIZED),
        )
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
    use crate::metrics::ReasonLabel;

    /// Lets each address through once per kind of check, and records what was asked.
    #[derive(Default)]
    struct Once(Mutex<Vec<String>>);

    impl Once {
        fn ask(&self, what: String) -> Result<(), u64> {
            let mut seen = self.0.lock();
            let again = seen.contains(&what);
            seen.push(what);
            if again { Err(7) } else { Ok(()) }
        }
    }

    impl ApiLimits for Once {
        fn open_call(&self, ip: IpAddr) -> Result<(), u64> {
            self.ask(format!("open:{ip}"))
        }
        fn auth_blocked(&self, ip: IpAddr) -> Result<(), u64> {
            // Blocked once a failure went over the limit (the second failure here).
            let seen = self.0.lock();
            let failures = seen
                .iter()
                .filter(|k| **k == format!("failed:{ip}"))
                .count();
            if failures >= 2 { Err(7) } else { Ok(()) }
        }
        fn auth_failed(&self, ip: IpAddr) -> Result<(), u64> {
            self.ask(format!("failed:{ip}"))
        }
    }

    fn caller(key: Option<&str>) -> Caller<'_> {
        Caller {
            key,
            ip: "10.0.0.1".parse().unwrap(),
        }
    }

    fn rejections(m: &Metrics, reason: &'static str) -> u64 {
        crate::metrics::count(&m.api_rejections, ReasonLabel { reason })
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
    fn the_right_key_is_never_limited_and_failures_are_limited_by_address() {
        let m = Metrics::default();
        let limits = Arc::new(Once::default());
        let access = Access::new(Some("k3y".into()), limits.clone());
        for _ in 0..5 {
            assert!(access.authorize(caller(Some("k3y")), &m).is_ok());
        }
        // The first failure is refused for the key, the second for the rate...
        let e = access.authorize(caller(Some("guess-1")), &m).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let e = access.authorize(caller(Some("guess-2")), &m).unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::RateLimited {
                retry_after_secs: 7
            }
        );
        assert_eq!(e.message, "Too many requests: API rate limit exceeded");
        // ...and then the address is refused before its key is compared, even the right one.
        let e = access.authorize(caller(Some("k3y")), &m).unwrap_err();
        assert!(matches!(e.code, ErrorCode::RateLimited { .. }));
        // Buckets are by address, never by presented key.
        assert_eq!(*limits.0.lock(), ["failed:10.0.0.1", "failed:10.0.0.1"]);
        assert_eq!(rejections(&m, "rate_limited"), 2);
        assert_eq!(rejections(&m, "unauthorized"), 1);
    }

    #[test]
    fn an_open_api_is_limited_by_address_whatever_is_presented() {
        let m = Metrics::default();
        let limits = Arc::new(Once::default());
        let open = Access::new(None, limits.clone());
        assert!(open.authorize(caller(Some("k3y")), &m).is_ok());
        assert!(open.authorize(caller(None), &m).is_err());
        assert_eq!(*limits.0.lock(), ["open:10.0.0.1", "open:10.0.0.1"]);
    }
}
