//! `wsgate bench` at a tiny scale, so that its code paths cannot rot: the Socket.IO run
//! (clients speaking Engine.IO v4 / Socket.IO v5) against wsgate's `/socket.io/` edge and
//! against the Socket.IO 4.8 peer on Node (docs/benchmarks.md, "Socket.IO").

use wsgate_tests as support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Whether `node` runs here (the bench skips its Node peer otherwise).
fn node_installed() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `wsgate bench ARGS --json FILE` (a generous bound: the first run installs the Node
/// peer's dependencies with `npm ci`); returns its output, its reports and their servers.
async fn bench_json(name: &str, args: &[&str]) -> (CliOutput, Vec<Value>, Vec<String>) {
    // One at a time: two first runs would both `npm ci` into the same peer directory.
    static ONE_BENCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_BENCH.lock().await;
    let json =
        std::env::temp_dir().join(format!("wsgate-bench-{name}-{}.json", std::process::id()));
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend(["--json", json.to_str().unwrap()]);
    let out = run_cli_within(Duration::from_secs(180), &all, &[], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reports: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let reports = reports.as_array().expect("a list of reports").clone();
    let servers = reports
        .iter()
        .map(|r| r["server"].as_str().unwrap().to_string())
        .collect();
    (out, reports, servers)
}

#[tokio::test]
async fn socketio_bench_delivers_every_publication_on_wsgate_and_the_node_peer() {
    let (out, reports, servers) = bench_json(
        "socketio",
        &[
            "--protocol",
            "socketio",
            "--baseline",
            "--connections",
            "20",
            "--rate",
            "5",
            "--seconds",
            "1",
            "--latency-sample",
            "4",
        ],
    )
    .await;
    if node_installed() {
        assert_eq!(servers, ["socket.io 4.8 (node)", "wsgate /socket.io/"]);
        out.stdout_has("ratios wsgate/node socket.io");
    } else {
        assert_eq!(servers, ["wsgate /socket.io/"]);
        out.stderr_has("skipped, `node` is not installed");
    }
    for r in &reports {
        // Every client got every publication as a Socket.IO `message` event.
        assert_eq!(r["published"], 5, "{r}");
        assert_eq!(r["expected_deliveries"], 100, "{r}");
        assert_eq!(r["delivered"], 100, "{r}");
        assert!(r["rss_idle_kib"].as_u64().unwrap() > 0, "{r}");
        assert!(r["latency_p50_ms"].as_f64().unwrap() >= 0.0, "{r}");
    }
}

#[tokio::test]
async fn cluster_bench_delivers_every_publication_across_three_nodes_on_redis_and_nats() {
    // The bench starts its own redis-server and nats-server; `--baseline` adds Socket.IO with
    // the Redis adapter in three Node processes (skipped without `node`).
    let (out, reports, servers) = bench_json(
        "cluster",
        &[
            "--nodes",
            "3",
            "--engine",
            "redis,nats",
            "--baseline",
            "--connections",
            "30",
            "--rate",
            "5",
            "--seconds",
            "1",
            "--latency-sample",
            "3",
        ],
    )
    .await;
    if node_installed() {
        assert_eq!(
            servers,
            [
                "socket.io 4.8 + redis adapter ×3",
                "wsgate ×3 (redis)",
                "wsgate ×3 (nats)"
            ]
        );
        out.stdout_has("ratios wsgate ×3 (nats)/socket.io");
    } else {
        assert_eq!(servers, ["wsgate ×3 (redis)", "wsgate ×3 (nats)"]);
    }
    for r in &reports {
        // Every client of every node got every publication made through the first node.
        assert_eq!(r["published"], 5, "{r}");
        assert_eq!(r["expected_deliveries"], 150, "{r}");
        assert_eq!(r["delivered"], 150, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["node_cpu_seconds"].as_array().unwrap().len(), 3, "{r}");
        assert!(r["latency_p99_ms"].as_f64().unwrap() >= 0.0, "{r}");
        // The publications went through the bench's own Redis.
        let scripts_or_publishes = ["evalsha", "publish"]
            .iter()
            .filter_map(|c| r["redis_commands"][c].as_u64())
            .sum::<u64>();
        assert!(scripts_or_publishes >= 5, "{r}");
    }
    assert!(reports.iter().any(|r| r["nats_cpu_seconds"].is_number()));
}
