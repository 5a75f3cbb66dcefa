//! The Redis engine: implementations of the core's seams (`wsgate_core::seams`).
//!
//! - [`RedisBroker`]: the `Broker` (publish script + one subscription per node).
//! - [`RedisStore`]: the `PresenceStore` and the `UpstreamRecords` store (records sealed
//!   at rest with the [`ClusterKey`]); [`RedisStore::ownership`] gives the `Ownership`
//!   (leases, claims, hand-over) and [`RedisStore::forwarding`] the `Forwarding` channel.
//! - [`ChannelStreams`]: the `ChannelLog` (per-channel offsets, epochs, bounded history)
//!   that the NATS broker of `wsgate-nats` sequences with.
//!
//! # Key layout
//! Every key and pub/sub channel starts with a configurable prefix `P:` (default `wsgate`),
//! so several deployments can share one Redis; an empty prefix drops the `P:` and gives
//! seed 000's bare names (`websocket-<id>`, `websocket-index`).
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:{<channel>}:meta` | hash `e`, `o`, `r`, TTL | the channel's epoch, newest offset, and the run id of the Redis process that wrote them; expires `channel_ttl` after the last publication (or after a first read that created it) |
//! | `P:{<channel>}:stream` | stream, TTL | bounded history (`MAXLEN ~ history_size`), entry id `<offset>-0`, fields `d` data, `t` µs, `x` excluded user, `e` Socket.IO event; expires with the meta |
//! | `P:{<channel>}:once:<key>` | hash `f`, `o`, `e`, `t`, TTL | an idempotency key of the channel's publications: the request's fingerprint and the first publication's offset, epoch and time; expires `idempotency_window_ms` after it |
//! | `P:presence:<channel>` | hash | connection id → `<node>\n<user>` |
//! | `P:alive:<node>` | string, TTL | the node's lease: the token of the one process running under that id; renewed every TTL/3 |
//! | `P:lease-takes:<node>`, `P:instances`, `P:websocket-<id>`, `P:websocket-index` | | take counts, registered instances, upstream records and their index |
//!
//! On a Redis Cluster (`RedisConfig::cluster`) the shared keys (leases, take counts,
//! instances, records, index) become `P:{shared}:…`: one slot, so the scripts that update
//! them together stay atomic. The rule for new keys is in `keys.rs`.
//! | `P:{<channel>}:pub` | pub/sub (shard channel on a cluster) | the channel's publications, for the nodes with local subscribers (`RedisConfig::per_channel_pubsub`) |
//! | `P:pub` | pub/sub | channel publications, for every node (per-channel pub/sub off) |
//! | `P:{<user>}:user` | pub/sub (shard channel on a cluster) | sends to a user (and server-side subscription changes), for the nodes holding one of its connections (`RedisConfig::per_channel_pubsub`) |
//! | `P:user` | pub/sub | sends to a user, for every node (per-channel pub/sub off) |
//! | `P:node:<node>` | pub/sub | sends to one connection, for the node that holds it |
//! | `P:{<channel>}:occ:members` | hash | events: connection → `<process>\n<user>` of the channel's subscribers, cluster-wide ([`RedisOccupancy`]) |
//! | `P:{<channel>}:occ:users` | hash | events: user → how many of the user's connections subscribe |
//! | `P:events:{<process>}:alive`, `:conns`, `:chans`, `:reaping` | string TTL, hash, set, string TTL | events: one process's liveness (`presence_ttl`), open connections, channels, and the lock of the survivor reaping it |
//! | `P:events:processes` | set | events: every process registered for occupancy |
//! | `P:events` | stream | the Redis Stream event sink's default stream (`MAXLEN ~`) |
//!
//! Why this shape:
//! - The meta hash and the stream of a channel share a hash tag (`{<channel>}`), so they
//!   live in one slot on Redis Cluster, and one Lua script
//!   (`lua/publish.lua`) can increment the offset, append to the
//!   stream and `PUBLISH` in a single round trip. Redis runs scripts one at a time, so the
//!   order of `PUBLISH`es is the order of offsets: nodes receive every channel in order.
//! - Stream ids are the offsets themselves, so "what came after offset N" is one `XRANGE`.
//! - The epoch lives in Redis next to the offset and is made from the server clock when the
//!   meta hash is missing: a Redis that restarts without persistence (or evicts the key)
//!   loses both, and the next stream gets a new epoch. Old positions then answer
//!   `epoch_changed`, never a silently wrong "nothing missed". The meta also records the
//!   Redis run id (`lua/timeline.lua`): data that went through a restart with persistence
//!   (an AOF missing its last second, a snapshot restore) or a fail-over (a replica behind
//!   its master) may hold lower offsets than were handed out, so a different run id rotates
//!   the epoch too; offsets never go back under one epoch.
//! - Each node holds three subscriptions (`P:pub`, `P:user`, `P:node:<self>`) plus, in
//!   per-channel mode, one per channel it has local subscribers for and one per user it
//!   has connections of (so a publication, a send to a user and a channel's join/leave
//!   reach only the nodes that deliver them); the node filters locally. Sends to one
//!   connection only reach the node named in the connection id.
//! - Presence entries carry their node; a node is alive while `P:alive:<node>` exists.
//!   A SIGKILLed node stops refreshing it, so its entries drop out of every presence read
//!   (and are deleted by it) at most `presence_ttl` after its last refresh: default 15 s.
//!
//! Commands go through [`Conn`]: a `ConnectionManager` on a single Redis, a redis-rs
//! `cluster_async::ClusterConnection` on a cluster (which follows `MOVED`/`ASK` and
//! fail-overs); subscriptions through `feed::Feed`, which hides the same difference.
//!
//! # Failure behaviour
//! Commands go through a connection (see above) with connection and response
//! timeouts, so a missing Redis costs a bounded wait and an `Unavailable` error, never a
//! hang or a queue. The pub/sub connection is a separate task that reconnects with capped
//! exponential backoff, resubscribes, then re-reads every channel it had seen so that
//! publications made while it was away are delivered (in order) or counted as lost.

mod broker;
mod conn;
mod event_stream;
mod feed;
mod forwarding;
mod keys;
mod lease;
mod occupancy;
mod ownership;
mod sealed;
mod store;
mod streams;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use broker::RedisBroker;
pub(crate) use conn::Conn;
pub use event_stream::StreamSink;
pub use forwarding::RedisForwarding;
pub use keys::Keys;
pub use occupancy::RedisOccupancy;
pub use ownership::RedisOwnership;
pub use sealed::ClusterKey;
pub use store::RedisStore;
pub use streams::ChannelStreams;
use wsgate_backoff::{Backoff, BackoffState};
use wsgate_core::seams::{BrokerError, StoreError};

/// Settings shared by the Redis broker and store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0`. With `cluster`: one or more seed nodes of the
    /// Redis Cluster, comma-separated (any one reachable node is enough to find the rest).
    pub url: String,
    /// `url` names a Redis Cluster: commands follow its slot map (`MOVED`/`ASK`, fail-over),
    /// the keys shared across channels carry one hash tag (see [`Keys`]).
    pub cluster: bool,
    /// Announce each publication on its channel's own pub/sub channel, which a node
    /// subscribes to only while it has local subscribers (`SSUBSCRIBE` on a cluster),
    /// instead of on `P:pub` to every node. Default false.
    pub per_channel_pubsub: bool,
    /// Prefix of every key and pub/sub channel. Default `wsgate`.
    pub key_prefix: String,
    /// Publications kept per channel (approximately: `MAXLEN ~`). 0 keeps none.
    pub history_size: usize,
    /// A channel's meta hash and history stream expire this long after its last
    /// publication (`Duration::ZERO`: never). Default 10 minutes.
    pub channel_ttl: Duration,
    /// How long a dead node's presence entries survive it. Default 15 s.
    pub presence_ttl: Duration,
    /// Bound on one command's round trip. Default 2 s.
    pub response_timeout: Duration,
    /// An instance's lease (its `alive` key) lives this long without renewal; renewed
    /// every third of it. The `alive` key's TTL is `min(presence_ttl, lease_ttl)`.
    /// Default 3 s.
    pub lease_ttl: Duration,
    /// Seals upstream record secrets at rest (`None`: stored in clear, dev only).
    pub cluster_key: Option<ClusterKey>,
    /// `rediss://` only: the PEM certificates to trust instead of the platform's roots
    /// (the server passes the platform's roots plus `redis_ca_file`). `None`: the
    /// platform's roots.
    pub ca_bundle: Option<Vec<u8>>,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            per_channel_pubsub: false,
            key_prefix: "wsgate".into(),
            history_size: 256,
            channel_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(15),
            response_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(3),
            cluster_key: None,
            ca_bundle: None,
        }
    }

    /// The TTL of the node's `alive` key (lease and presence liveness in one).
    pub fn alive_ttl(&self) -> Duration {
        self.presence_ttl
            .min(self.lease_ttl)
            .max(Duration::from_millis(100))
    }

    /// A client for `url`: `redis://` in clear, `rediss://` over TLS (rustls).
    pub(crate) fn client(&self) -> Result<redis::Client, redis::RedisError> {
        match &self.ca_bundle {
            Some(pem) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(self.url.as_str()),
        }
    }

    /// A command connection that connects lazily and reconnects by itself (to the one
    /// Redis, or to every master of the cluster).
    pub(crate) fn conn(&self) -> Result<Conn, redis::RedisError> {
        if !self.cluster {
            return Ok(Conn::Single(self.manager()?));
        }
        let client = self.cluster_client(false)?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.response_timeout);
        Ok(Conn::Cluster(
            client.get_pending_async_connection_with_config(config),
        ))
    }

    /// The cluster's seed nodes (`url`, comma-separated).
    pub(crate) fn seeds(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// A Redis Cluster client over `url`'s seeds; `resp3` for the pub/sub connections (the
    /// cluster client delivers subscriptions as RESP3 pushes, and re-subscribes by itself
    /// after a disconnection or a slot move).
    pub(crate) fn cluster_client(
        &self,
        resp3: bool,
    ) -> Result<redis::cluster::ClusterClient, redis::RedisError> {
        let mut b = redis::cluster::ClusterClientBuilder::new(self.seeds())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(self.response_timeout)
            // A fail-over takes the cluster `cluster-node-timeout` plus an election: a
            // command retries across it (bounded) rather than failing at the first `MOVED`
            // to a node that is not there yet.
            .retries(4)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if resp3 {
            b = b.use_protocol(redis::ProtocolVersion::RESP3);
        }
        if let Some(pem) = &self.ca_bundle {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        b.build()
    }

    /// A single Redis command connection that connects lazily and reconnects by itself.
    fn manager(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        redis::aio::ConnectionManager::new_lazy_with_config(self.client()?, config)
    }
}

/// Whether a failure means "Redis is not there" (as opposed to a bad command).
pub(crate) fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A Redis failure as the broker seam reports it.
pub(crate) fn broker_error(e: redis::RedisError) -> BrokerError {
    if is_unavailable(&e) {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Other(e.to_string())
    }
}

/// A Redis failure as the store seams report it.
pub(crate) fn store_error(e: redis::RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e.to_string())
    }
}

/// A health flag fed by the outcome of each round trip.
#[derive(Debug, Default)]
pub(crate) struct Health(AtomicBool);

impl Health {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    pub fn set(&self, ok: bool) {
        self.0.store(ok, Ordering::Release);
    }
    /// Records a round trip's outcome: only unavailability makes the flag false.
    pub fn observe<T>(&self, r: &Result<T, redis::RedisError>) {
        match r {
            Ok(_) => self.set(true),
            Err(e) if is_unavailable(e) => self.set(false),
            Err(_) => {}
        }
    }
}

/// The longest wait between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Capped exponential backoff with jitter for the reconnect loops: 100 ms doubling to 2 s,
/// up to a quarter removed at random, never giving up.
pub(crate) fn reconnect_backoff() -> BackoffState {
    Backoff::new()
        .initial_delay(Duration::from_millis(100))
        .max_delay(RECONNECT_MAX_DELAY)
        .jitter(0.25)
        .max_attempts(None)
        .start()
}

/// The next reconnect delay (the policy never gives up; the cap is the fallback).
pub(crate) fn next_delay(backoff: &mut BackoffState) -> Duration {
    backoff.next_delay().unwrap_or(RECONNECT_MAX_DELAY)
}
