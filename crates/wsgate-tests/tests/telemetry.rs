//! The upstream telemetry seed 002's alerts read, end to end: a wsgate node in process, the
//! `wsgate-client` test-support server as the upstream, real sockets, `/metrics` as
//! Prometheus scrapes it.

use wsgate_tests as support;

use serde_json::json;
use support::*;
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};

/// The sum of every sample of `name` (all label sets), 0 when there is none.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn drops_logins_and_give_ups_become_series() {
    let up = Upstream::start(UpstreamConfig::default().require_auth("good")).await;
    let srv = TestServer::start().await;
    let connect = |token: &str, max_attempts: Option<u32>| {
        json!({
            "url": up.url(),
            "auth": {"messages": [{"op": "auth", "token": token}], "expect": {"op": "auth_ok"}},
            "reconnect": {"initial_ms": 1, "max_ms": 4, "max_attempts": max_attempts, "jitter": 0.0},
        })
    };
    let (status, r) = srv.post("/api/v1/upstreams", connect("good", None)).await;
    assert_eq!(
        (status, r["state"].clone()),
        (200, json!("connected")),
        "{r}"
    );
    let fresh = srv.metrics().await;
    for reason in ["connect", "auth", "server_closed", "connection_lost"] {
        let series = format!("wsgate_upstream_reconnect_attempts_total{{reason=\"{reason}\"}}");
        assert_eq!(
            metric_value(&fresh, &series),
            Some(0.0),
            "{series} exported at 0"
        );
    }

    // A drop, then ready again: one attempt, no failure, one reconnect and one connection
    // lifetime observed.
    up.drop_all();
    srv.await_metric("wsgate_upstream_reconnect_duration_seconds_count", 1.0)
        .await;
    let m = srv.metrics().await;
    assert_eq!(
        total(&m, "wsgate_upstream_reconnect_attempts_total"),
        1.0,
        "{m}"
    );
    assert_eq!(
        total(&m, "wsgate_upstream_reconnect_failures_total"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wsgate_upstream_connection_duration_seconds_count"),
        Some(1.0)
    );

    // A login the server refuses, twice, then the policy gives up: auth failures and
    // failed attempts by reason.
    let (status, _) = srv.post("/api/v1/upstreams", connect("bad", Some(1))).await;
    assert_eq!(status, 200);
    srv.await_metric("wsgate_upstream_give_ups_total", 1.0)
        .await;
    let m = srv.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "wsgate_upstream_auth_failures_total{reason=\"rejected\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "wsgate_upstream_reconnect_failures_total{reason=\"auth\"}"
        ),
        Some(1.0),
        "the retry's failure (the first attempt's starts the reconnect): {m}"
    );

    // The process series, read at scrape time.
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "wsgate_runtime_alive_tasks",
    ] {
        assert!(
            metric_value(&m, series).is_some_and(|v| v > 0.0),
            "{series}: {m}"
        );
    }
}
