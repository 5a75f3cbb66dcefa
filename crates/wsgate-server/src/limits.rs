//! What a node refuses, and when: connection caps (node, IP, user), connect and request rates
//! (governor), the client-IP rule behind trusted proxies, and the Origin allow-list.
//!
//! Every counter here is taken with a [`Slot`] guard that gives it back on drop, so a
//! connection that ends in any way (closed, failed upgrade, panicked task) frees its place.
//! Rate limits are governor's GCRA limiters keyed by client IP: no hand-rolled buckets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Default of `max_connections`: about 300 MiB of connection state, well under a 64k fd limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default of `max_connections_per_ip`: 0, no cap. Behind an ingress without the right
/// `trusted_proxies` every client has the ingress pod's address, and any cap below
/// `max_connections` would refuse ordinary clients; set one where clients reach the node
/// directly or their own address is known.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
/// Default of `ip_connect_rate` (per second): above the node's handshake capacity (about
/// 4,000/s on two cores, docs/benchmarks.md), so a reconnect wave arriving through one
/// ingress address is never throttled below what the node can accept; only a runaway host
/// beyond it is cut.
pub const DEFAULT_IP_CONNECT_RATE: u32 = 10_000;
/// Default of `ip_connect_burst`: a whole node's worth of clients
/// ([`DEFAULT_MAX_CONNECTIONS`]) may reconnect at once from one address (a rolling restart
/// behind an ingress).
pub const DEFAULT_IP_CONNECT_BURST: u32 = 50_000;
/// Default of `max_connections_per_user`: many tabs and devices, not a botnet on one account.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
/// Default of `api_rate` (requests per second per client IP, only when no `api_key` is
/// configured: the open API of a loopback or development node). A backend publishing
/// thousands per second from one address passes; a runaway loop beyond it is cut.
/// Callers with the right API key are not rate limited: publishing is the main ingest.
pub const DEFAULT_API_RATE: u32 = 10_000;
/// Default of `api_burst`: twice the rate, for batch jobs.
pub const DEFAULT_API_BURST: u32 = 20_000;
/// Default of `api_auth_failure_rate` (failed authentications per second per client IP):
/// a backend with a stale key keeps being told so; a key guesser gets one guess a second.
pub const DEFAULT_API_AUTH_FAILURE_RATE: u32 = 1;
/// Default of `api_auth_failure_burst`: a few failures (a deploy rolling a new key) before
/// the address is throttled.
pub const DEFAULT_API_AUTH_FAILURE_BURST: u32 = 10;

/// The one header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For` (ingress-nginx, Envoy, most cloud load balancers), read right to
    /// left.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`, read right to left. Only for a proxy that writes it and
    /// drops what clients send (ingress-nginx passes a client's own `Forwarded` through).
    #[serde(rename = "forwarded")]
    Forwarded,
    /// `X-Real-IP`: one address, set by the proxy.
    #[serde(rename = "x-real-ip")]
    XRealIp,
}

/// Protection settings (docs/operations.md, "Limits"); top-level keys of the node's config.
/// 0 disables a numeric limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Client connections this node holds at most; past it upgrades get HTTP 503 with
    /// `Retry-After`, and `/ready` turns false from 95 % on so balancers steer away first.
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Open connections per client IP (HTTP 429). Default [`DEFAULT_MAX_CONNECTIONS_PER_IP`]
    /// (0: no cap).
    pub max_connections_per_ip: usize,
    /// New connections per second per client IP (HTTP 429 with `Retry-After`), bursts of
    /// `ip_connect_burst`. Defaults [`DEFAULT_IP_CONNECT_RATE`], [`DEFAULT_IP_CONNECT_BURST`].
    pub ip_connect_rate: u32,
    pub ip_connect_burst: u32,
    /// Open connections per user (JWT `sub`). Past it the new connection is accepted and
    /// closed at once with 4029 (a browser cannot read an HTTP status of a failed upgrade,
    /// but it sees a close code). Default [`DEFAULT_MAX_CONNECTIONS_PER_USER`].
    pub max_connections_per_user: usize,
    /// Proxies whose `client_ip_header` is believed (CIDRs or addresses).
    /// Default none: the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// The one header the trusted proxies write the client's address into:
    /// `x-forwarded-for` (default), `forwarded` or `x-real-ip`. Other forwarding headers
    /// are ignored, since a client can send them through a proxy that does not manage them.
    pub client_ip_header: ClientIpHeader,
    /// Origins allowed to open a WebSocket from a browser (`https://app.example.com`).
    /// Requests without `Origin` are not browsers and are let in. Default none: browsers are
    /// refused (403) until their origin is listed, or `allow_any_origin` is set.
    pub allowed_origins: Vec<String>,
    /// Development only (`--allow-any-origin`): skip the Origin check. Default false, so that
    /// a forgotten setting fails closed (cross-site WebSocket hijacking).
    pub allow_any_origin: bool,
    /// Control API requests per second per client IP when no `api_key` is configured
    /// (HTTP 429, gRPC RESOURCE_EXHAUSTED); bursts of `api_burst`. With an `api_key`,
    /// callers presenting it are not limited. Defaults [`DEFAULT_API_RATE`],
    /// [`DEFAULT_API_BURST`].
    pub api_rate: u32,
    pub api_burst: u32,
    /// Failed authentications (missing or wrong API key) per second per client IP; past it
    /// (bursts of `api_auth_failure_burst`) the address gets 429 before any key it sends is
    /// compared, so key guessing is throttled. Defaults [`DEFAULT_API_AUTH_FAILURE_RATE`],
    /// [`DEFAULT_API_AUTH_FAILURE_BURST`].
    pub api_auth_failure_rate: u32,
    pub api_auth_failure_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            ip_connect_rate: DEFAULT_IP_CONNECT_RATE,
            ip_connect_burst: DEFAULT_IP_CONNECT_BURST,
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            api_rate: DEFAULT_API_RATE,
            api_burst: DEFAULT_API_BURST,
            api_auth_failure_rate: DEFAULT_API_AUTH_FAILURE_RATE,
            api_auth_failure_burst: DEFAULT_API_AUTH_FAILURE_BURST,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.trusted_proxies()?;
        Ok(())
    }

    fn trusted_proxies(&self) -> anyhow::Result<Vec<IpNet>> {
        self.trusted_proxies.iter().map(|s| parse_net(s)).collect()
    }
}

/// Why an upgrade (or an API call) was refused: the `reason` label, the HTTP status, and
/// how long the client should wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub status: u16,
    pub retry_after_secs: u64,
    pub message: &'static str,
}

/// A quota of `per_sec` with bursts of `burst`; `None` when `per_sec` is 0 (disabled).
pub fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

fn keyed<K: std::hash::Hash + Eq + Clone>(q: Option<Quota>) -> Option<DefaultKeyedRateLimiter<K>> {
    q.map(RateLimiter::keyed)
}

/// Seconds until a limiter would let the next request through (at least 1).
fn wait_secs(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
    wait.as_secs() + 1
}

pub struct Limits {
    max_connections: usize,
    max_per_ip: usize,
    max_per_user: usize,
    trusted_proxies: Vec<IpNet>,
    client_ip_header: ClientIpHeader,
    allowed_origins: Vec<String>,
    allow_any_origin: bool,
    ip_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    api_rate: Arc<ApiRate>,
    active: Arc<AtomicUsize>,
    per_ip: Counts<IpAddr>,
    per_user: Counts<Arc<str>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max_connections", &self.max_connections)
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// A place taken in one or more counters; given back on drop.
#[derive(Default)]
pub struct Slot {
    active: Option<Arc<AtomicUsize>>,
    ip: Option<(Counts<IpAddr>, IpAddr)>,
    user: Option<(Counts<Arc<str>>, Arc<str>)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(a) = &self.active {
            a.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some((map, ip)) = &self.ip {
            release(&mut map.lock(), ip);
        }
        if let Some((map, user)) = &self.user {
            release(&mut map.lock(), user);
        }
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> anyhow::Result<Self> {
        let trusted_proxies = config.trusted_proxies()?;
        Ok(Self {
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            max_per_user: config.max_connections_per_user,
            trusted_proxies,
            client_ip_header: config.client_ip_header,
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allow_any_origin: config.allow_any_origin,
            ip_rate: keyed(quota(config.ip_connect_rate, config.ip_connect_burst)),
            api_rate: Arc::new(ApiRate {
                open: keyed(quota(config.api_rate, config.api_burst)),
                failures: keyed(quota(
                    config.api_auth_failure_rate,
                    config.api_auth_failure_burst,
                )),
                blocked: Mutex::default(),
            }),
            active: Arc::default(),
            per_ip: Arc::default(),
            per_user: Arc::default(),
        })
    }

    /// Client connections holding a place on this node (upgraded or upgrading).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// True at 95 % of `max_connections` or more: `/ready` turns false so a balancer steers
    /// new clients elsewhere before upgrades are refused.
    pub fn near_full(&self) -> bool {
        self.max_connections > 0 && self.active() * 100 >= self.max_connections * 95
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the first
    /// address not trusted, read right to left from `client_ip_header` (only that one).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.trusted(peer) {
            return peer;
        }
        let chain = match self.client_ip_header {
            ClientIpHeader::XForwardedFor => x_forwarded_for(headers),
            ClientIpHeader::Forwarded => forwarded_for(headers),
            ClientIpHeader::XRealIp => x_real_ip(headers),
        };
        chain
            .into_iter()
            .rev()
            .map(canonical)
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// `Origin` check for browser upgrades. Requests without `Origin` are not from a browser
    /// and are let through (browsers always send it on a WebSocket upgrade).
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.allow_any_origin {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        self.allowed_origins.contains(&origin)
    }

    /// Takes a place for a new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut slot = Slot::default();
        let n = self.active.fetch_add(1, Ordering::AcqRel);
        slot.active = Some(self.active.clone());
        if self.max_connections > 0 && n >= self.max_connections {
            return Err(Refusal {
                reason: "node_full",
                status: 503,
                retry_after_secs: 5,
                message: "this node is at its connection limit; try again later",
            });
        }
        if let Some(rl) = &self.ip_rate
            && let Err(nu) = rl.check_key(&ip)
        {
            return Err(Refusal {
                reason: "ip_rate",
                status: 429,
                retry_after_secs: wait_secs(&nu),
                message: "too many connection attempts from this address",
            });
        }
        {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if self.max_per_ip > 0 && *n >= self.max_per_ip {
                if *n == 0 {
                    map.remove(&ip);
                }
                return Err(Refusal {
                    reason: "ip_connections",
                    status: 429,
                    retry_after_secs: 5,
                    message: "too many open connections from this address",
                });
            }
            *n += 1;
        }
        slot.ip = Some((self.per_ip.clone(), ip));
        Ok(slot)
    }

    /// Adds the user to a slot; `false` when the user already has `max_connections_per_user`.
    pub fn admit_user(&self, slot: &mut Slot, user: &Arc<str>) -> bool {
        let mut map = self.per_user.lock();
        let n = map.entry(user.clone()).or_insert(0);
        if self.max_per_user > 0 && *n >= self.max_per_user {
            if *n == 0 {
                map.remove(user);
            }
            return false;
        }
        *n += 1;
        slot.user = Some((self.per_user.clone(), user.clone()));
        true
    }

    /// The control API rate limit (`api_rate`), for the control façade to check.
    pub fn api_rate(&self) -> Arc<ApiRate> {
        self.api_rate.clone()
    }

    /// Forgets idle limiter keys (call now and then: keyed limiters grow with distinct keys).
    pub fn housekeeping(&self) {
        if let Some(rl) = &self.ip_rate {
            rl.retain_recent();
            rl.shrink_to_fit();
        }
        self.api_rate.housekeeping();
    }
}

/// The control API's limits by client IP: calls of an open API (no `api_key`), and failed
/// authentications. An address over its failure limit stays blocked until the limiter
/// would take its next failure; that is looked up without counting, before a key is
/// compared.
pub struct ApiRate {
    open: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over the failure limit, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl ApiRate {
    fn housekeeping(&self) {
        for rl in [&self.open, &self.failures].into_iter().flatten() {
            rl.retain_recent();
            rl.shrink_to_fit();
        }
        let now = Instant::now();
        self.blocked.lock().retain(|_, until| *until > now);
    }
}

impl wsgate_core::control::ApiLimits for ApiRate {
    fn open_call(&self, ip: IpAddr) -> Result<(), u64> {
        match &self.open {
            Some(rl) => rl.check_key(&ip).map_err(|nu| wait_secs(&nu)),
            None => Ok(()),
        }
    }

    fn auth_blocked(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        match self.blocked.lock().get(&ip) {
            Some(until) if *until > now => Err((*until - now).as_secs() + 1),
            _ => Ok(()),
        }
    }

    fn auth_failed(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(rl) = &self.failures else {
            return Ok(());
        };
        rl.check_key(&ip).map_err(|nu| {
            let wait: Duration = nu.wait_time_from(DefaultClock::default().now());
            self.blocked.lock().insert(ip, Instant::now() + wait);
            wait.as_secs() + 1
        })
    }
}

/// `10.0.0.0/8` or a single address (`10.1.2.3`).
pub fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| anyhow::anyhow!("trusted_proxies: `{s}` is not an address or CIDR"))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn x_real_ip(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_node(v.trim()))
        .into_iter()
        .collect()
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| parse_node(s.trim()))
        .collect()
}

/// RFC 7239 `Forwarded: for=1.2.3.4;proto=https, for="[2001:db8::1]:443"`.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
                    .flatten()
            })
        })
        .collect()
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tune: impl FnOnce(&mut LimitsConfig)) -> Limits {
        let mut c = LimitsConfig::default();
        tune(&mut c);
        Limits::new(&c).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let l = limits(|c| c.trusted_proxies = vec!["10.0.0.0/8".into(), "192.168.1.1".into()]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let stranger: SocketAddr = "8.8.8.8:5000".parse().unwrap();
        // Right to left, the first untrusted hop: a client cannot forge its way past it.
        assert_eq!(l.client_ip(proxy, &h), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(l.client_ip(stranger, &h), stranger.ip());
        let f = headers(&[(
            "forwarded",
            "for=9.9.9.9, for=\"[2001:db8::1]:443\";proto=https",
        )]);
        // `Forwarded` is not the configured header: a client may have sent it itself.
        let gw: SocketAddr = "192.168.1.1:1".parse().unwrap();
        assert_eq!(l.client_ip(gw, &f), gw.ip());
        // Only proxies in the chain: the proxy itself.
        let h = headers(&[("x-forwarded-for", "10.0.0.2")]);
        assert_eq!(l.client_ip(proxy, &h), proxy.ip());
        assert!(parse_net("not-an-ip").is_err());
    }

    #[test]
    fn only_the_configured_client_ip_header_is_read() {
        let trusted = |header| {
            limits(|c| {
                c.trusted_proxies = vec!["192.168.1.1".into()];
                c.client_ip_header = header;
            })
        };
        let gw: SocketAddr = "192.168.1.1:1".parse().unwrap();
        let both = headers(&[
            (
                "forwarded",
                "for=9.9.9.9, for=\"[2001:db8::1]:443\";proto=https",
            ),
            ("x-forwarded-for", "5.5.5.5"),
            ("x-real-ip", "7.7.7.7"),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let l = trusted(ClientIpHeader::Forwarded);
        assert_eq!(l.client_ip(gw, &both), ip("2001:db8::1"));
        let l = trusted(ClientIpHeader::XForwardedFor);
        assert_eq!(l.client_ip(gw, &both), ip("5.5.5.5"));
        let l = trusted(ClientIpHeader::XRealIp);
        assert_eq!(l.client_ip(gw, &both), ip("7.7.7.7"));
        let parsed: LimitsConfig =
            serde_json::from_value(serde_json::json!({"client_ip_header": "forwarded"})).unwrap();
        assert_eq!(parsed.client_ip_header, ClientIpHeader::Forwarded);
    }

    #[test]
    fn failed_authentications_block_an_address_until_its_limiter_recovers() {
        use wsgate_core::control::ApiLimits;
        let l = limits(|c| {
            c.api_auth_failure_rate = 1;
            c.api_auth_failure_burst = 2;
        });
        let rate = l.api_rate();
        let (a, b) = ("1.1.1.1".parse().unwrap(), "2.2.2.2".parse().unwrap());
        assert!(rate.auth_failed(a).is_ok() && rate.auth_failed(a).is_ok());
        assert!(rate.auth_blocked(a).is_ok());
        assert!(rate.auth_failed(a).unwrap_err() >= 1);
        assert!(rate.auth_blocked(a).unwrap_err() >= 1);
        assert!(rate.auth_blocked(b).is_ok());
        assert!(rate.open_call(a).is_ok());
    }

    #[test]
    fn origins_are_matched_exactly_and_missing_origin_is_allowed() {
        let l = limits(|c| c.allowed_origins = vec!["https://App.example.com/".into()]);
        assert!(l.origin_allowed(&headers(&[])));
        assert!(l.origin_allowed(&headers(&[("origin", "https://app.example.com")])));
        assert!(!l.origin_allowed(&headers(&[("origin", "https://evil.example.com")])));
        assert!(!l.origin_allowed(&headers(&[("origin", "http://app.example.com")])));
        let any = limits(|c| c.allow_any_origin = true);
        assert!(any.origin_allowed(&headers(&[("origin", "https://evil.example.com")])));
    }

    #[test]
    fn slots_give_their_places_back() {
        let l = limits(|c| {
            c.max_connections = 2;
            c.max_connections_per_ip = 1;
            c.max_connections_per_user = 1;
            c.ip_connect_rate = 0;
        });
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let b: IpAddr = "2.2.2.2".parse().unwrap();
        let mut s1 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err().unwrap().reason, "ip_connections");
        let user: Arc<str> = "u".into();
        assert!(l.admit_user(&mut s1, &user));
        let mut s2 = l.admit(b).unwrap();
        assert!(!l.admit_user(&mut s2, &user));
        assert_eq!(
            l.admit("3.3.3.3".parse().unwrap()).err().unwrap().status,
            503
        );
        assert!(l.near_full());
        drop(s1);
        assert!(l.admit_user(&mut s2, &user));
        drop(s2);
        assert_eq!(l.active(), 0);
        assert!(l.per_ip.lock().is_empty() && l.per_user.lock().is_empty());
    }
}
