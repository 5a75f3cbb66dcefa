//! Checks of the cluster's Redis: reachability, the connection index against the records
//! (seed 000's "state store out of sync"), live instance leases, pub/sub channels in use.
//!
//! Key layout, with prefix `P` (empty = seed 000's bare names):
//! - `P:websocket-index`: the set of connection ids; `P:websocket-<id>`: one record per id.
//! - `P:alive:<node>` (and `P:instance:<node>`): one lease per live instance, with a TTL the
//!   instance renews. A lease without a TTL never expires and would keep a dead node "alive".
//! - pub/sub channels `P:*`: the broker's topics, one per node and the shared publication one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use wsgate_core::seams::upstream::redact_url;

use super::CheckResult;
use crate::cli::ms;

const OUT_OF_SYNC: &str = "state-store-out-of-sync";

/// `prefix:name`, or `name` with an empty prefix.
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}:{name}")
    }
}

/// Seed 000's runbook commands for the records, with `prefix` (its `KEYS`, plus the `SCAN`
/// form that does not block a busy Redis).
pub fn runbook_commands(prefix: &str) -> Vec<String> {
    let record = key(prefix, "websocket-");
    let index = key(prefix, "websocket-index");
    vec![
        format!("redis-cli KEYS '{record}*'"),
        format!("redis-cli --scan --pattern '{record}*'"),
        format!("redis-cli SMEMBERS {index}"),
        format!("redis-cli GET {record}<id>"),
    ]
}

/// The Redis to check: its URL, and the CA that signed its certificate (`rediss://` only).
pub struct Target<'a> {
    pub url: &'a str,
    pub ca_file: Option<&'a std::path::Path>,
}

impl Target<'_> {
    fn client(&self) -> Result<redis::Client, String> {
        let Some(ca) = self.ca_file else {
            return redis::Client::open(self.url).map_err(|e| e.to_string());
        };
        let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        };
        redis::Client::build_with_tls(self.url, certs).map_err(|e| e.to_string())
    }
}

pub async fn checks(target: &Target<'_>, prefix: &str, timeout: Duration) -> Vec<CheckResult> {
    let (c, con) = check_reachable(target, timeout).await;
    let commands = CheckResult::pass(
        "redis-commands",
        format!(
            "the records by hand (key prefix {prefix:?}): {}",
            runbook_commands(prefix).join(" ; ")
        ),
    );
    let mut out = vec![c, commands];
    let Some(mut con) = con else { return out };
    out.push(bounded("redis-index", timeout, check_index(&mut con, prefix)).await);
    out.push(bounded("redis-leases", timeout, check_leases(&mut con, prefix)).await);
    out.push(bounded("redis-pubsub", timeout, check_pubsub(&mut con, prefix)).await);
    out
}

async fn bounded(
    name: &str,
    timeout: Duration,
    f: impl Future<Output = CheckResult>,
) -> CheckResult {
    tokio::time::timeout(timeout * 4, f).await.unwrap_or_else(|_| {
        CheckResult::fail(name, format!("Redis did not answer within {:?}", timeout * 4))
            .cause("an overloaded or blocked Redis (a long SCAN on a huge keyspace, a slow disk with AOF)")
    })
}

fn redis_failed(name: &str, e: redis::RedisError) -> CheckResult {
    CheckResult::fail(name, format!("Redis error: {e}"))
}

pub async fn check_reachable(
    target: &Target<'_>,
    timeout: Duration,
) -> (CheckResult, Option<MultiplexedConnection>) {
    let url = redact_url(target.url);
    let fail = |detail: String| {
        CheckResult::fail("redis", detail)
            .cause("Redis is down, the URL or password is wrong, or a network policy blocks the port")
            .fix("check the URL (the Secret key `redis-url` / WSGATE_REDIS_URL), `redis-cli -u URL ping`, and the Redis pod; `rediss://` with a private CA: --redis-ca-file")
            .runbook(OUT_OF_SYNC)
    };
    let client = match target.client() {
        Ok(c) => c,
        Err(e) => return (fail(format!("`{url}`: {e}")), None),
    };
    let start = Instant::now();
    let con = match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return (fail(format!("cannot connect: {e}")), None),
        Err(_) => return (fail(format!("no connection within {timeout:?}")), None),
    };
    let mut con2 = con.clone();
    match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut con2)).await {
        Ok(Ok(pong)) => (
            CheckResult::pass("redis", format!("{pong} in {}", ms(start.elapsed()))),
            Some(con),
        ),
        Ok(Err(e)) => (fail(format!("PING failed: {e}")), None),
        Err(_) => (fail(format!("no PONG within {timeout:?}")), None),
    }
}

/// Every key matching `pattern`, by SCAN (never KEYS: it blocks Redis).
async fn scan(con: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

fn listed(ids: &BTreeSet<String>) -> String {
    let mut s: Vec<&str> = ids.iter().map(String::as_str).take(10).collect();
    if ids.len() > 10 {
        s.push("…");
    }
    s.join(", ")
}

pub async fn check_index(con: &mut MultiplexedConnection, prefix: &str) -> CheckResult {
    const NAME: &str = "redis-index";
    let index = key(prefix, "websocket-index");
    let record = key(prefix, "websocket-");
    let indexed: BTreeSet<String> = match redis::cmd("SMEMBERS").arg(&index).query_async(con).await
    {
        Ok(v) => v,
        Err(e) => return redis_failed(NAME, e),
    };
    let records: BTreeSet<String> = match scan(con, &format!("{record}*")).await {
        Ok(keys) => keys
            .into_iter()
            .filter(|k| *k != index)
            .filter_map(|k| k.strip_prefix(&record).map(str::to_string))
            .collect(),
        Err(e) => return redis_failed(NAME, e),
    };
    let missing: BTreeSet<String> = indexed.difference(&records).cloned().collect();
    let unindexed: BTreeSet<String> = records.difference(&indexed).cloned().collect();
    if !missing.is_empty() {
        return CheckResult::fail(
            NAME,
            format!(
                "out of sync: {} id(s) in {index} have no {record}<id> record: {}",
                missing.len(),
                listed(&missing)
            ),
        )
        .cause("state store out of sync (seed 000): a record was deleted or expired without its index entry, or a node died between the two writes")
        .fix(format!(
            "check wsgate_store_errors_total; confirm each id is gone (`wsgate connections show ID` answers Connection not found), then `SREM {index} ID`; last resort: CLEAR_ALL_ON_START during maintenance"
        ))
        .runbook(OUT_OF_SYNC);
    }
    if !unindexed.is_empty() {
        return CheckResult::warn(
            NAME,
            format!("{} record(s) not in {index}: {}", unindexed.len(), listed(&unindexed)),
        )
        .cause("records written without their index entry: the reclaimer will not see these connections")
        .fix(format!("`SADD {index} ID` for live ones, delete the records of dead ones"))
        .runbook(OUT_OF_SYNC);
    }
    CheckResult::pass(
        NAME,
        format!(
            "{index} and the {record}* records agree ({} connection(s))",
            indexed.len()
        ),
    )
}

pub async fn check_leases(con: &mut MultiplexedConnection, prefix: &str) -> CheckResult {
    const NAME: &str = "redis-leases";
    let mut leases = Vec::new();
    for kind in ["alive", "instance"] {
        let pattern = key(prefix, &format!("{kind}:*"));
        let keys = match scan(con, &pattern).await {
            Ok(k) => k,
            Err(e) => return redis_failed(NAME, e),
        };
        for k in keys {
            let ttl: i64 = match redis::cmd("PTTL").arg(&k).query_async(con).await {
                Ok(t) => t,
                Err(e) => return redis_failed(NAME, e),
            };
            let node = k.rsplit(':').next().unwrap_or(&k).to_string();
            leases.push((node, ttl));
        }
    }
    let where_ = format!("{} / {}", key(prefix, "alive:*"), key(prefix, "instance:*"));
    if leases.is_empty() {
        return CheckResult::warn(NAME, format!("no instance lease under {where_}"))
            .cause("no node runs in cluster mode against this Redis with this prefix: a wrong --key-prefix, or nodes on the in-memory store")
            .fix("check the nodes' key_prefix and store settings; `kubectl logs` shows `cluster mode` at start");
    }
    let shown: Vec<String> = leases
        .iter()
        .map(|(n, t)| {
            if *t >= 0 {
                format!("{n} (expires in {:.1} s)", *t as f64 / 1000.0)
            } else {
                format!("{n} (no expiry)")
            }
        })
        .collect();
    let eternal: Vec<&str> = leases
        .iter()
        .filter(|(_, t)| *t < 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if !eternal.is_empty() {
        return CheckResult::warn(
            NAME,
            format!("{} lease(s): {}", leases.len(), shown.join(", ")),
        )
        .cause(format!(
            "lease(s) without a TTL never expire: a dead {} would never be reclaimed",
            eternal.join(", ")
        ))
        .fix("delete the key if that instance is gone; leases are written with a TTL by wsgate")
        .runbook("pod-restarts-and-orphaned-connections");
    }
    CheckResult::pass(
        NAME,
        format!(
            "{} live instance lease(s): {}",
            leases.len(),
            shown.join(", ")
        ),
    )
}

pub async fn check_pubsub(con: &mut MultiplexedConnection, prefix: &str) -> CheckResult {
    const NAME: &str = "redis-pubsub";
    let pattern = key(prefix, "*");
    let channels: Vec<String> = match redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(&pattern)
        .query_async(con)
        .await
    {
        Ok(c) => c,
        Err(e) => return redis_failed(NAME, e),
    };
    if channels.is_empty() {
        return CheckResult::warn(NAME, format!("no pub/sub channel matching {pattern} has a subscriber"))
            .cause("no node listens on the Redis broker: nodes on the in-memory or NATS broker, a wrong prefix, or subscriber connections lost")
            .fix("check the nodes' broker setting and wsgate_broker_errors_total")
            .runbook("messages-not-delivered-cross-node");
    }
    let set: BTreeSet<String> = channels.into_iter().collect();
    CheckResult::pass(
        NAME,
        format!(
            "{} channel(s) with subscribers: {}",
            set.len(),
            listed(&set)
        ),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_layout() {
        assert_eq!(
            super::key("wsgate", "websocket-index"),
            "wsgate:websocket-index"
        );
        assert_eq!(super::key("", "websocket-index"), "websocket-index");
    }

    #[test]
    fn runbook_commands_follow_the_prefix() {
        assert_eq!(
            super::runbook_commands(""),
            [
                "redis-cli KEYS 'websocket-*'",
                "redis-cli --scan --pattern 'websocket-*'",
                "redis-cli SMEMBERS websocket-index",
                "redis-cli GET websocket-<id>",
            ]
        );
        assert!(super::runbook_commands("p")[2].ends_with("SMEMBERS p:websocket-index"));
    }
}
