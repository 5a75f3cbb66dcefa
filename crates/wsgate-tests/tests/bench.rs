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

#[tokio::test]
async fn socketio_bench_delivers_every_publication_on_wsgate_and_the_node_peer() {
    let json =
        std::env::temp_dir().join(format!("wsgate-bench-socketio-{}.json", std::process::id()));
    let json_arg = json.to_str().unwrap();
    // The first run installs the peer's dependencies (`npm ci`): a generous bound.
    let out = run_cli_within(
        Duration::from_secs(180),
        &[
            "bench",
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
            "--json",
            json_arg,
        ],
        &[],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reports: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let reports = reports.as_array().expect("a list of reports");
    let servers: Vec<&str> = reports
        .iter()
        .map(|r| r["server"].as_str().unwrap())
        .collect();
    if node_installed() {
        assert_eq!(servers, ["socket.io 4.8 (node)", "wsgate /socket.io/"]);
        out.stdout_has("ratios wsgate/node socket.io");
    } else {
        assert_eq!(servers, ["wsgate /socket.io/"]);
        out.stderr_has("skipped, `node` is not installed");
    }
    for r in reports {
        // Every client got every publication as a Socket.IO `message` event.
        assert_eq!(r["published"], 5, "{r}");
        assert_eq!(r["expected_deliveries"], 100, "{r}");
        assert_eq!(r["delivered"], 100, "{r}");
        assert!(r["rss_idle_kib"].as_u64().unwrap() > 0, "{r}");
        assert!(r["latency_p50_ms"].as_f64().unwrap() >= 0.0, "{r}");
    }
}
