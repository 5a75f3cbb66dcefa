//! Checks through the HTTP API: `/ready`, `/version`, counts and rates from `/metrics`
//! (seed 003's alert thresholds and success targets), upstream connections.
//!
//! Rates: `/metrics` is read twice `--sample` apart; the difference over the interval gives
//! per-second rates comparable to the alert rules. Lifetime totals give ratios (heartbeat
//! failures per accepted connection, refused upgrades per attempt) compared with the success
//! targets. A short sample sees only what happens in it: the totals catch the rest.

use std::time::Duration;

use super::{CheckResult, fields};
use crate::cli::{Api, api_error};

pub async fn checks(api: &Api, sample: Duration) -> Vec<CheckResult> {
    let mut out = vec![check_ready(api).await];
    if out[0].status == super::Status::Fail && out[0].detail.starts_with("cannot reach") {
        return out;
    }
    out.push(check_version(api).await);
    out.extend(check_metrics(api, sample).await);
    out.push(check_upstreams(api).await);
    out
}

pub async fn check_ready(api: &Api) -> CheckResult {
    match api.get("/ready").await {
        Ok((200, v)) => CheckResult::pass(
            "ready",
            format!(
                "ready, {} connection(s) on the node behind {}",
                v["connections"], api.base
            ),
        ),
        Ok((status, v)) => {
            let why = if v["draining"] == true {
                "the node is draining (shutting down)"
            } else if v["started"] == false {
                "the node is still starting"
            } else if v["store"] != "ok" || v["broker"] != "ok" {
                "the store or broker is unavailable"
            } else {
                "unknown"
            };
            CheckResult::fail("ready", format!("/ready answered {status}: {v}"))
                .cause(why)
                .fix("draining or starting passes by itself; for the store/broker, check Redis connectivity (WSGATE_REDIS_URL) and wsgate_store_errors_total / wsgate_broker_errors_total")
                .runbook("state-store-out-of-sync")
        }
        Err(e) => CheckResult::fail("ready", e.to_string())
            .cause("the API address is wrong or the server is down")
            .fix("check --api (the HTTP port, e.g. `kubectl port-forward deploy/wsgate 8080`)"),
    }
}

pub async fn check_version(api: &Api) -> CheckResult {
    match api.get("/version").await {
        Ok((200, v)) => {
            let name = v["name"].as_str().unwrap_or("wsgate");
            let [version, commit, built, node] =
                fields(&v, ["version", "git_commit", "build_time", "node"]);
            CheckResult::pass(
                "version",
                format!("{name} {version} (commit {commit}, built {built}) on node {node}"),
            )
        }
        Ok((status, v)) => CheckResult::warn("version", format!("/version answered {status}: {v}"))
            .cause("an older wsgate, or a proxy in front of the API"),
        Err(e) => CheckResult::fail("version", e.to_string()),
    }
}

/// The sum of every sample of `name` (all label sets).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// `(label value, sample)` for every sample of `name` carrying `label`.
pub fn metric_by_label(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            let start = labels.find(&key)? + key.len();
            let l = labels[start..].split('"').next()?.to_string();
            Some((l, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Totals and rates, as read from two scrapes.
pub struct Sample {
    pub before: String,
    pub after: String,
    pub secs: f64,
}

impl Sample {
    fn total(&self, name: &str) -> f64 {
        metric_sum(&self.after, name).unwrap_or(0.0)
    }
    fn rate(&self, name: &str) -> Option<f64> {
        if self.secs <= 0.0 {
            return None;
        }
        let d = metric_sum(&self.after, name)? - metric_sum(&self.before, name).unwrap_or(0.0);
        Some(d.max(0.0) / self.secs)
    }
}

async fn check_metrics(api: &Api, sample: Duration) -> Vec<CheckResult> {
    let scrape = || async {
        match api.get_text("/metrics").await {
            Ok((200, t)) => Ok(t),
            Ok((s, t)) => Err(format!("/metrics answered {s}: {t}")),
            Err(e) => Err(e.to_string()),
        }
    };
    let before = match scrape().await {
        Ok(t) => t,
        Err(e) => return vec![CheckResult::fail("metrics", e)],
    };
    let started = std::time::Instant::now();
    tokio::time::sleep(sample).await;
    let after = match scrape().await {
        Ok(t) => t,
        Err(e) => return vec![CheckResult::fail("metrics", e)],
    };
    judge(&Sample {
        before,
        after,
        secs: if sample.is_zero() {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        },
    })
}

fn per_s(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}/s"))
        .unwrap_or_else(|| "n/a".into())
}

/// A threshold of [`judge`]; crossed, the check warns with this cause, fix and runbook section.
struct Alarm {
    crossed: bool,
    cause: &'static str,
    fix: Option<&'static str>,
    runbook: &'static str,
}

/// The check `name`: a warning for the first crossed alarm, else a pass.
fn verdict<const N: usize>(name: &str, detail: String, alarms: [Alarm; N]) -> CheckResult {
    let Some(a) = alarms.into_iter().find(|a| a.crossed) else {
        return CheckResult::pass(name, detail);
    };
    let warn = CheckResult::warn(name, detail)
        .cause(a.cause)
        .runbook(a.runbook);
    match a.fix {
        Some(fix) => warn.fix(fix),
        None => warn,
    }
}

/// The reasons that counted, as " (reason=count, …)" in their order; "" when none did.
fn reasons(by_reason: Vec<(String, f64)>) -> String {
    let listed = by_reason
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(r, v)| format!("{r}={v}"))
        .collect::<Vec<_>>();
    if listed.is_empty() {
        String::new()
    } else {
        format!(" ({})", listed.join(", "))
    }
}

/// Seed 003's alert thresholds and success targets, applied to a sample.
pub fn judge(s: &Sample) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let accepted = s.total("websocket_connections_total");
    let active = s.total("websocket_active_connections");
    let refused = s.total("websocket_connection_rejections_total");
    let connect_rate = s.rate("websocket_connections_total");

    // Connections: counts, refused upgrades (connection success > 99.5 %), storms (> 100/s).
    let refusals = reasons(metric_by_label(
        &s.after,
        "websocket_connection_rejections_total",
        "reason",
    ));
    let detail = format!(
        "{active} open, {accepted} accepted since start ({} now), {refused} upgrades refused{refusals}",
        per_s(connect_rate),
    );
    let attempts = accepted + refused;
    out.push(verdict(
        "connections",
        detail,
        [
            Alarm {
                crossed: connect_rate.is_some_and(|r| r > 100.0),
                cause: "a reconnection storm (seed 003 alert: > 100 new connections/s): a node stopped, an ingress reload, or clients retrying without backoff",
                fix: None,
                runbook: "reconnection-storms",
            },
            Alarm {
                crossed: attempts > 0.0 && refused / attempts > 0.005,
                cause: "more than 0.5 % of upgrades are refused (target: connection success > 99.5 %)",
                fix: Some("see the reasons: auth_* = tokens, bad_handshake = a proxy dropping Upgrade, draining = deploys"),
                runbook: "connection-refused-or-closed-with-4001",
            },
        ],
    ));

    // Heartbeat failures: > 50 in 5 minutes (alert), or > 0.5 % of connections (target).
    let hb = s.total("websocket_heartbeat_failures_total");
    let hb_rate = s.rate("websocket_heartbeat_failures_total");
    let detail = format!(
        "{hb} heartbeat failure(s) since start ({:.2} % of connections), {} now",
        if accepted > 0.0 {
            hb / accepted * 100.0
        } else {
            0.0
        },
        per_s(hb_rate)
    );
    out.push(verdict(
        "heartbeats",
        detail,
        [
            Alarm {
                crossed: hb_rate.is_some_and(|r| r * 300.0 > 50.0),
                cause: "more than 50 heartbeat failures per 5 minutes (seed 003 alert)",
                fix: Some("spread over many users: the network path, proxy or node CPU; one user: that client"),
                runbook: "heartbeat-failures-4008",
            },
            Alarm {
                crossed: accepted >= 100.0 && hb / accepted > 0.005,
                cause: "more than 0.5 % of connections ended in a heartbeat timeout (target: heartbeat success > 99.5 %)",
                fix: None,
                runbook: "heartbeat-failures-4008",
            },
        ],
    ));

    // Disconnections: > 10/s (alert), with the reasons.
    let disc_rate = s.rate("websocket_disconnections_total");
    let mut by_reason = metric_by_label(&s.after, "websocket_disconnections_total", "reason");
    by_reason.sort_by(|a, b| b.1.total_cmp(&a.1));
    let detail = format!(
        "{} disconnection(s) since start{}, {} now (doctor's own test clients included)",
        s.total("websocket_disconnections_total"),
        reasons(by_reason),
        per_s(disc_rate)
    );
    out.push(verdict(
        "disconnections",
        detail,
        [
            Alarm {
                crossed: disc_rate.is_some_and(|r| r > 10.0),
                cause: "more than 10 disconnections/s (seed 003 alert): client_gone/io_error at a regular interval = proxy timeout, heartbeat_timeout = network, shutdown = a deploy",
                fix: None,
                runbook: "connection-drops-immediately-or-proxy-timeouts",
            },
        ],
    ));

    // Slow consumers.
    let slow = s.total("websocket_slow_consumers_total");
    let slow_rate = s.rate("websocket_slow_consumers_total");
    let detail = format!(
        "{slow} closed as slow consumers (4029) since start, {} now",
        per_s(slow_rate)
    );
    out.push(verdict(
        "slow-consumers",
        detail,
        [
            Alarm {
                crossed: slow_rate.is_some_and(|r| r > 0.0) || (accepted > 0.0 && slow / accepted > 0.001),
                cause: "clients read slower than messages arrive and their outbox overflowed",
                fix: Some("find them (`wsgate connections` — high QUEUE), make the client read continuously or subscribe to less"),
                runbook: "slow-consumers-4029",
            },
        ],
    ));
    out
}

pub async fn check_upstreams(api: &Api) -> CheckResult {
    match api.get("/connections?kind=upstream&limit=1000").await {
        Ok((200, v)) => {
            let conns = v["connections"].as_array().cloned().unwrap_or_default();
            let down: Vec<String> = conns
                .iter()
                .filter(|c| c["state"] != "connected")
                .map(|c| {
                    let [id, state] = fields(c, ["id", "state"]);
                    format!("{id} ({state})")
                })
                .collect();
            if conns.is_empty() {
                CheckResult::pass("upstreams", "no upstream connections on this node")
            } else if down.is_empty() {
                CheckResult::pass(
                    "upstreams",
                    format!("all {} upstream connection(s) connected", conns.len()),
                )
            } else {
                CheckResult::warn("upstreams", format!("{} of {} not connected: {}", down.len(), conns.len(), down.join(", ")))
                    .cause("the remote server dropped them or they are between reconnect attempts")
                    .fix("`wsgate connections show ID` for the state and last error; check the remote endpoint (DNS, TLS, credentials)")
                    .runbook("websocket-is-not-connected")
            }
        }
        Ok((status, v)) => CheckResult::fail(
            "upstreams",
            format!("/connections answered {status}: {}", api_error(status, &v)),
        )
        .fix("pass --api-key (or WSGATE_API_KEY) when the server requires one"),
        Err(e) => CheckResult::fail("upstreams", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE websocket_disconnections_total counter\n\
        websocket_disconnections_total{reason=\"client_closed\"} 7\n\
        websocket_disconnections_total{reason=\"heartbeat_timeout\"} 3\n\
        websocket_connections_total 1000\n\
        websocket_heartbeat_failures_total 3\n\
        websocket_active_connections 990\n";

    #[test]
    fn sums_and_labels() {
        assert_eq!(
            metric_sum(TEXT, "websocket_disconnections_total"),
            Some(10.0)
        );
        assert_eq!(
            metric_sum(TEXT, "websocket_connections_total"),
            Some(1000.0)
        );
        assert_eq!(metric_sum(TEXT, "websocket_nothing"), None);
        let l = metric_by_label(TEXT, "websocket_disconnections_total", "reason");
        assert_eq!(
            l,
            vec![
                ("client_closed".into(), 7.0),
                ("heartbeat_timeout".into(), 3.0)
            ]
        );
    }

    #[test]
    fn thresholds_follow_seed_003() {
        let quiet = Sample {
            before: TEXT.into(),
            after: TEXT.into(),
            secs: 1.0,
        };
        assert!(
            judge(&quiet)
                .iter()
                .all(|c| c.status == super::super::Status::Pass)
        );
        let storm = Sample {
            before: TEXT.into(),
            after: TEXT.replace(
                "websocket_connections_total 1000",
                "websocket_connections_total 2000",
            ),
            secs: 1.0,
        };
        let r = judge(&storm);
        assert_eq!(r[0].status, super::super::Status::Warn, "{:?}", r[0]);
        assert!(
            r[0].runbook
                .as_deref()
                .unwrap()
                .ends_with("reconnection-storms")
        );
        let flaky = Sample {
            before: TEXT.into(),
            after: TEXT.replace(
                "websocket_heartbeat_failures_total 3",
                "websocket_heartbeat_failures_total 300",
            ),
            secs: 5.0,
        };
        assert_eq!(judge(&flaky)[1].status, super::super::Status::Warn);
    }
}
