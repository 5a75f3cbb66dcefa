//! Deployable as shipped (issue 11): the shipped defaults driven through the real binary —
//! the environment Kubernetes gives a pod, a backend publishing at full speed, a key
//! guesser, two nodes on one host, a node on a public address without a key, and an
//! upstream Connect during the drain.

use wsgate_tests as support;

use std::process::{Output, Stdio};
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `wsgate serve` with exactly `args` and `envs` (no inherited `WSGATE_*`).
fn serve(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(support::wsgate_bin());
    cmd.env_clear()
        .envs(envs.iter().copied())
        .env("WSGATE_LOG", "info")
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A started node: its process, the address it printed, and its stderr as read so far
/// (read all along: a full pipe would block the node's logging).
struct Node {
    child: Child,
    base: String,
    stderr: tokio::task::JoinHandle<String>,
}

impl Node {
    /// A node on a loopback port with `envs`.
    async fn local(envs: &[(&str, &str)]) -> Self {
        Self::start(&["--listen", "127.0.0.1:0"], envs).await
    }

    async fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = serve(args, envs).spawn().expect("spawn wsgate");
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut text).await;
            text
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within("the listening line", lines.next_line())
            .await
            .unwrap();
        let Some(line) = line else {
            let stderr = within("exit", stderr).await.unwrap();
            panic!("wsgate exited at start: {stderr}");
        };
        let base = line
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Self {
            child,
            base,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { kill(pid, sig) }, 0, "kill failed");
    }

    /// Stops the node (SIGTERM) and returns its stderr.
    async fn stop(self) -> String {
        self.signal(SIGTERM);
        self.exited().await
    }

    /// Waits for the node to exit successfully; its stderr.
    async fn exited(mut self) -> String {
        let status = within("wsgate to exit", self.child.wait()).await.unwrap();
        let stderr = within("stderr", self.stderr).await.unwrap();
        assert!(status.success(), "wsgate failed: {stderr}");
        stderr
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Runs a `wsgate serve` that must exit at start; its output.
async fn refused(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = within("wsgate to exit", serve(args, envs).output())
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "wsgate should have refused to start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---- 1. Environment ----

#[tokio::test]
async fn kubernetes_service_links_are_ignored_with_one_warning() {
    // What Kubernetes injects into every pod for a Service named `wsgate`.
    let links = [
        ("WSGATE_PORT", "tcp://10.96.0.17:8080"),
        ("WSGATE_PORT_8080_TCP", "tcp://10.96.0.17:8080"),
        ("WSGATE_PORT_8080_TCP_ADDR", "10.96.0.17"),
        ("WSGATE_PORT_8080_TCP_PORT", "8080"),
        ("WSGATE_PORT_8080_TCP_PROTO", "tcp"),
        ("WSGATE_SERVICE_HOST", "10.96.0.17"),
        ("WSGATE_SERVICE_PORT", "8080"),
        ("WSGATE_SERVICE_PORT_HTTP", "8080"),
    ];
    let mut envs = links.to_vec();
    // Known keys still apply.
    envs.push(("WSGATE_MAX_CONNECTIONS", "77"));
    let node = Node::local(&envs).await;
    assert_eq!(get_json(&node.url("/health")).await.0, 200);
    let stderr = node.stop().await;
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ignoring WSGATE_*"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{stderr}");
    for (name, _) in links {
        assert!(
            warnings[0].contains(name),
            "{name} named in {}",
            warnings[0]
        );
    }
    assert!(
        !warnings[0].contains("WSGATE_MAX_CONNECTIONS"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("WSGATE_LOG"), "{}", warnings[0]);
}

#[tokio::test]
async fn a_bad_value_of_a_known_variable_and_an_unknown_file_key_still_fail() {
    let out = refused(
        &["--listen", "127.0.0.1:0"],
        &[("WSGATE_MAX_CONNECTIONS", "lots")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("max_connections") && stderr.contains("lots"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("wsgate-deployable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsgate.toml");
    std::fs::write(&file, "max_conections = 7\n").unwrap();
    let out = refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_conections"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- 2. Control API limits ----

/// Publishes `n` messages over `workers` pooled connections; the statuses seen (count of
/// each) and the rate achieved.
async fn publish_storm(
    node: &Node,
    key: Option<&str>,
    workers: usize,
    n: usize,
) -> (Vec<u16>, f64) {
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let started = Instant::now();
    let url = node.url("/api/v1/publish");
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|i| {
            let mut req = client
                .post(&url)
                .json(&json!({"channel": "ingest", "data": {"n": i}}));
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    (statuses, rate)
}

fn assert_all_ok(statuses: &[u16], what: &str) {
    let refused = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        refused,
        0,
        "{what}: {refused} of {} not 200",
        statuses.len()
    );
}

#[tokio::test]
async fn backends_publishing_at_full_speed_are_not_throttled_by_default() {
    for key in [Some("backend-key"), None] {
        let envs: Vec<(&str, &str)> = key.map(|k| ("WSGATE_API_KEY", k)).into_iter().collect();
        let node = Node::local(&envs).await;
        // 4 publishers × 250 publishes, at once.
        let runs =
            futures_util::future::join_all((0..4).map(|_| publish_storm(&node, key, 4, 250))).await;
        for (statuses, _) in &runs {
            assert_all_ok(statuses, "4 publishers × 250");
        }
        // One backend, as fast as it can (well above 1,000/s on an idle machine).
        let (statuses, rate) = publish_storm(&node, key, 16, 3_000).await;
        assert_all_ok(&statuses, "one backend");
        eprintln!(
            "one backend (key: {}): {rate:.0} publishes/s",
            key.is_some()
        );
        let metrics = get_text(&node.url("/metrics")).await;
        assert_eq!(
            metric_value(
                &metrics,
                "wsgate_api_rejections_total{reason=\"rate_limited\"}"
            ),
            Some(0.0)
        );
        node.stop().await;
    }
}

#[tokio::test]
async fn wrong_keys_are_throttled_by_address_and_the_right_key_elsewhere_works() {
    // The test's requests all come from 127.0.0.1; a trusted proxy there names the client.
    let node = Node::local(&[
        ("WSGATE_API_KEY", "the-right-key"),
        ("WSGATE_TRUSTED_PROXIES", "[127.0.0.1]"),
    ])
    .await;
    let call = |key: String, ip: &'static str| {
        http()
            .get(node.url("/connections"))
            .bearer_auth(key)
            .header("x-forwarded-for", ip)
            .send()
    };
    let guesser = "203.0.113.66";
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = within("api", call(format!("guess-{i}"), guesser))
            .await
            .unwrap();
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "Retry-After {retry}");
        }
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Blocked means blocked before the comparison: the right key from there learns nothing.
    let r = within("api", call("the-right-key".into(), guesser))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Another address with the right key is served.
    let r = within("api", call("the-right-key".into(), "198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = get_text(&node.url("/metrics")).await;
    assert_eq!(
        metric_value(
            &metrics,
            "wsgate_api_rejections_total{reason=\"unauthorized\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wsgate_api_rejections_total{reason=\"rate_limited\"}"
        ),
        Some(11.0)
    );
    node.stop().await;
}

// ---- 3. Per-IP connection defaults ----

#[tokio::test]
async fn a_wave_of_clients_from_one_address_is_not_refused_by_default() {
    let node = Node::local(&[]).await;
    let ws = node.url("/ws").replacen("http", "ws", 1);
    // The old defaults (20/s, burst 100; 1,000 per IP) refused most of these.
    let mut clients = Vec::new();
    for chunk in 0..6 {
        let wave = futures_util::future::join_all((0..50).map(|_| Client::connect(&ws))).await;
        clients.extend(wave);
        assert_eq!(clients.len(), (chunk + 1) * 50);
    }
    let metrics = get_text(&node.url("/metrics")).await;
    for reason in ["ip_rate", "ip_connections"] {
        let series = format!("websocket_connection_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(0.0), "{series}");
    }
    drop(clients);
    node.stop().await;
}

/// An upgrade to `node` with `headers`: the socket on 101, else the status.
async fn upgrade(node: &Node, headers: &[(&'static str, &str)]) -> Result<impl Sized + use<>, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = node
        .url("/ws")
        .replacen("http", "ws", 1)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match within("upgrade", tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

#[tokio::test]
async fn forwarded_counts_only_when_it_is_the_configured_header() {
    let envs = [
        ("WSGATE_TRUSTED_PROXIES", "[127.0.0.1]"),
        ("WSGATE_MAX_CONNECTIONS_PER_IP", "1"),
    ];
    // Default: X-Forwarded-For names the client; a `Forwarded` sent through is ignored, so
    // both requests below count for the proxy's own address.
    let node = Node::local(&envs).await;
    let _a = upgrade(&node, &[("forwarded", "for=198.51.100.1")])
        .await
        .unwrap();
    assert_eq!(
        upgrade(&node, &[("forwarded", "for=198.51.100.2")])
            .await
            .err(),
        Some(429)
    );
    let _b = upgrade(&node, &[("x-forwarded-for", "198.51.100.3")])
        .await
        .unwrap();
    // Gone before the stop: the drain waits (up to its 10 s) for a close reply from a client
    // still connected, and these are never read.
    drop((_a, _b));
    node.stop().await;

    let mut envs = envs.to_vec();
    envs.push(("WSGATE_CLIENT_IP_HEADER", "forwarded"));
    let node = Node::local(&envs).await;
    let _a = upgrade(&node, &[("forwarded", "for=198.51.100.1")])
        .await
        .unwrap();
    let _b = upgrade(&node, &[("forwarded", "for=198.51.100.2")])
        .await
        .unwrap();
    // Now X-Forwarded-For is the header a client could forge.
    let _c = upgrade(&node, &[("x-forwarded-for", "198.51.100.3")])
        .await
        .unwrap();
    assert_eq!(
        upgrade(&node, &[("x-forwarded-for", "198.51.100.4")])
            .await
            .err(),
        Some(429)
    );
    drop((_a, _b, _c));
    node.stop().await;
}

// ---- 4. Two nodes on one host ----

#[tokio::test]
async fn a_second_node_with_only_listen_changed_starts() {
    let a = Node::local(&[]).await;
    let b = Node::local(&[]).await;
    assert_ne!(a.base, b.base);
    for node in [&a, &b] {
        assert_eq!(get_json(&node.url("/health")).await.0, 200);
    }
    b.stop().await;
    a.stop().await;
}

// ---- 5. An open API, upstream hosts ----

#[tokio::test]
async fn a_node_beyond_loopback_needs_an_api_key_or_an_explicit_opt_out() {
    let out = refused(&["--listen", "0.0.0.0:0"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without an api_key"), "{stderr}");
    assert!(stderr.contains("allow_unauthenticated_api"), "{stderr}");
    // gRPC on a public address counts too.
    let out = refused(
        &["--listen", "127.0.0.1:0"],
        &[
            ("WSGATE_GRPC_ENABLED", "true"),
            ("WSGATE_GRPC_LISTEN", "0.0.0.0:0"),
        ],
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an api_key"));

    let keyed = Node::start(&["--listen", "0.0.0.0:0"], &[("WSGATE_API_KEY", "k")]).await;
    keyed.stop().await;
    let open = Node::start(
        &["--listen", "0.0.0.0:0"],
        &[("WSGATE_ALLOW_UNAUTHENTICATED_API", "true")],
    )
    .await;
    open.stop().await;
}

#[tokio::test]
async fn connect_outside_the_upstream_allow_list_is_refused() {
    let node = Node::local(&[(
        "WSGATE_UPSTREAM_ALLOWED_HOSTS",
        "[127.0.0.1, \"*.feeds.example\"]",
    )])
    .await;
    let upstreams = node.url("/api/v1/upstreams");
    let connect = |url: &str| {
        post_json(
            &upstreams,
            json!({"url": url, "wait_ms": 0, "auto_reconnect": false}),
        )
    };
    for url in ["ws://169.254.169.254/latest/meta-data", "ws://localhost:9/"] {
        let (status, body) = connect(url).await;
        assert_eq!(status, 403, "{url}: {body}");
        assert_eq!(body["success"], false);
        let host = url.split('/').nth(2).unwrap().split(':').next().unwrap();
        assert_eq!(
            body["error"],
            format!("upstream host not allowed: {host}"),
            "{body}"
        );
    }
    let (status, body) = connect("ws://127.0.0.1:9/").await;
    assert_eq!(status, 200, "an allowed host is connected to: {body}");
    node.stop().await;
}

// ---- 11. Connect during the drain ----

#[tokio::test]
async fn upstream_connect_during_the_drain_gets_503() {
    let node = Node::local(&[
        ("WSGATE_DRAIN_TIMEOUT_MS", "5000"),
        ("WSGATE_CLOSE_GRACE_MS", "5000"),
    ])
    .await;
    // A client that does not answer the 1001 keeps the drain going.
    let ws = node.url("/ws").replacen("http", "ws", 1);
    let _silent = Client::connect(&ws).await;
    let upstreams = node.url("/api/v1/upstreams");
    let connect = || {
        post_json(
            &upstreams,
            json!({"url": "ws://127.0.0.1:9/", "wait_ms": 0, "auto_reconnect": false}),
        )
    };
    assert_eq!(connect().await.0, 200, "accepted before the drain");
    node.signal(SIGTERM);
    within("draining", async {
        while get_json(&node.url("/ready")).await.0 != 503 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (status, body): (u16, Value) = connect().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "server is shutting down");
    // Like a new upgrade.
    let upgrade = http()
        .get(node.url("/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 503);
    node.exited().await;
}
