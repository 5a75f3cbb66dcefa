//! The operator CLI (`wsgate connect`, `connections`, `doctor`) as a user runs it: the real
//! binary, against in-process servers, a real redis-server, and a round-robin proxy.

use wsgate_tests as support;

use std::net::SocketAddr;
use std::process::Stdio;

use serde_json::Value;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

type Output = CliOutput;

/// Runs `wsgate ARGS` with `stdin` as its input, bounded.
async fn wsgate(args: &[&str], stdin: &str) -> Output {
    run_cli(args, &[], stdin).await
}

/// [`wsgate`] that must exit 0.
async fn wsgate_ok(args: &[&str], stdin: &str) -> Output {
    let out = wsgate(args, stdin).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out
}

#[tokio::test]
async fn connect_in_a_pipe_prints_hello_and_pong_then_closes() {
    let srv = TestServer::start().await;
    let out = wsgate_ok(&["connect", &srv.ws_url()], "{\"op\":\"ping\",\"ts\":1}\n").await;
    let hello = out
        .stdout
        .lines()
        .position(|l| l.contains("< {\"op\":\"hello\""));
    let sent = out
        .stdout
        .lines()
        .position(|l| l.contains("> {\"op\":\"ping\",\"ts\":1}"));
    let pong = out
        .stdout
        .lines()
        .position(|l| l.contains("< {\"op\":\"pong\",\"ts\":1}"));
    assert!(
        hello.is_some() && sent.is_some() && pong.is_some(),
        "{}",
        out.stdout
    );
    assert!(hello < pong, "hello comes first");
    out.stdout_has("< [close 1000"); // the server's close is printed
    srv.shutdown().await;
}

#[tokio::test]
async fn connect_pretty_prints_json() {
    let srv = TestServer::start().await;
    let out = wsgate_ok(&["connect", "--json", &srv.ws_url()], "").await;
    out.stdout_has("\"op\": \"hello\"");
    srv.shutdown().await;
}

#[tokio::test]
async fn connect_handshake_failure_shows_the_http_status() {
    let srv = TestServer::start().await;
    let url = format!("ws://{}/not-a-websocket", srv.addr);
    let out = wsgate(&["connect", &url], "").await;
    assert_ne!(out.code, 0);
    out.stderr_has("HTTP 404");
    out.stderr_lacks("backtrace"); // one plain line
    srv.shutdown().await;
}

#[tokio::test]
async fn connections_lists_and_shows_a_client() {
    let srv = TestServer::start().await;
    let client = Client::subscribed(&srv.ws_url(), "room-7").await;
    let server = format!("http://{}", srv.addr);

    let out = wsgate_ok(&["connections", "--server", &server], "").await;
    let row = out.stdout.lines().find(|l| l.starts_with(&client.id()));
    let row = row.unwrap_or_else(|| panic!("no row for {}: {}", client.id(), out.stdout));
    assert!(
        row.contains(&client.user()) && row.contains("room-7"),
        "{row}"
    );

    let out = wsgate(
        &[
            "connections",
            "--server",
            &server,
            "--channel",
            "elsewhere",
            "--json",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    let out = wsgate_ok(
        &["connections", "show", &client.id(), "--server", &server],
        "",
    )
    .await;
    out.stdout_has("last_heartbeat_ms_ago");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("user") && l.contains(&client.user())),
        "{}",
        out.stdout
    );

    let out = wsgate(
        &["connections", "show", "no-such-id", "--server", &server],
        "",
    )
    .await;
    assert_eq!(out.code, 1);
    out.stderr_has("Connection not found");
    srv.shutdown().await;
}

#[tokio::test]
async fn connections_watch_redraws_the_table_with_what_changed() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let srv = TestServer::start().await;
    let first = Client::connect(&srv.ws_url()).await;
    let server = format!("http://{}", srv.addr);
    let mut child = Command::new(support::wsgate_bin())
        .args(["connections", "--server", &server, "--watch"])
        .args(["--interval", "1", "--count", "3"])
        .env_remove("WSGATE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    // The first refresh shows the first client; then a second one connects.
    while !out.iter().any(|l: &String| l.starts_with(&first.id())) {
        let line = within("the first table", lines.next_line()).await.unwrap();
        out.push(line.expect("wsgate exited before its first table"));
    }
    let second = Client::connect(&srv.ws_url()).await;
    while let Some(line) = within("the next refreshes", lines.next_line())
        .await
        .unwrap()
    {
        out.push(line);
    }
    let status = within("wsgate to exit", child.wait()).await.unwrap();
    let text = out.join("\n");
    assert!(status.success(), "{text}");
    // A pipe gets every refresh appended (no escape codes), each with its header.
    assert!(!text.contains('\x1b'), "{text}");
    let headers: Vec<&String> = out.iter().filter(|l| l.contains(" · refresh ")).collect();
    assert_eq!(headers.len(), 3, "{text}");
    assert!(headers[0].starts_with("1 connection(s) on"), "{text}");
    assert!(headers[2].starts_with("2 connection(s) on"), "{text}");
    let last_table = text.rsplit(" · refresh 3 ").next().unwrap();
    assert!(
        last_table.contains(&first.id()) && last_table.contains(&second.id()),
        "{text}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn connections_asks_for_the_api_key() {
    let srv = TestServer::with(|c| tune::api_key(c, "sekrit")).await;
    let server = format!("http://{}", srv.addr);
    let out = wsgate(&["connections", "--server", &server], "").await;
    assert_eq!(out.code, 1);
    out.stderr_has("--api-key");
    wsgate_ok(
        &["connections", "--server", &server, "--api-key", "sekrit"],
        "",
    )
    .await;
    srv.shutdown().await;
}

fn line<'a>(out: &'a str, status: &str, check: &str) -> Option<&'a str> {
    out.lines().find(|l| {
        l.strip_prefix(status)
            .is_some_and(|r| r.split_whitespace().next() == Some(check))
    })
}

#[tokio::test]
async fn doctor_passes_a_healthy_server() {
    let srv = TestServer::start().await;
    let api = format!("http://{}", srv.addr);
    let args = [
        "doctor",
        &srv.ws_url(),
        "--api",
        &api,
        "--idle",
        "1s",
        "--sample",
        "100ms",
    ];
    let out = wsgate(&args, "").await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    for check in [
        "dns",
        "tcp",
        "upgrade",
        "hello",
        "ping",
        "ready",
        "version",
        "upstreams",
    ] {
        assert!(
            line(&out.stdout, "PASS", check).is_some(),
            "no PASS for {check}: {}",
            out.stdout
        );
    }
    // One node: delivery works, and doctor says the cross-node path was not exercised.
    let delivery = line(&out.stdout, "WARN", "delivery").expect("a delivery line");
    assert!(
        delivery.contains("both clients received") && delivery.contains("test-node"),
        "{delivery}"
    );
    // A 1 s hold proves nothing about a 60 s proxy timeout, and doctor says so.
    assert!(
        line(&out.stdout, "WARN", "idle").is_some(),
        "{}",
        out.stdout
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = wsgate(&json_args, "").await;
    assert_eq!(out.code, 0);
    let v: Value = serde_json::from_str(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["ok"], true);
    let checks = v["checks"].as_array().unwrap();
    let ping = checks.iter().find(|c| c["name"] == "ping").unwrap();
    assert_eq!(ping["status"], "PASS");
    assert!(ping["detail"].as_str().unwrap().contains("ms"));
    srv.shutdown().await;
}

#[tokio::test]
async fn doctor_fails_tcp_where_nothing_listens() {
    // A port that was free a moment ago: bound, then released.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let out = wsgate(&["doctor", &format!("ws://{addr}/ws"), "--idle", "1s"], "").await;
    assert_eq!(out.code, 1);
    let tcp = line(&out.stdout, "FAIL", "tcp").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(tcp.contains("refused"), "{tcp}");
    out.stdout_has("fix    start wsgate");
    assert!(
        line(&out.stdout, "PASS", "upgrade").is_none(),
        "stops after TCP"
    );
}

#[tokio::test]
async fn doctor_names_the_status_of_a_refused_upgrade() {
    let srv = TestServer::start().await;
    let out = wsgate(
        &["doctor", &format!("ws://{}/nope", srv.addr), "--idle", "1s"],
        "",
    )
    .await;
    assert_eq!(out.code, 1);
    let up = line(&out.stdout, "FAIL", "upgrade").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(up.contains("HTTP 404"), "{up}");
    srv.shutdown().await;
}

/// A legacy proxy: reads each request head and answers `response`, then closes.
async fn answering(response: &'static str) -> SocketAddr {
    answering_with(move || response.to_string()).await
}

#[tokio::test]
async fn doctor_shows_the_status_line_and_headers_of_a_refused_upgrade_whatever_the_version() {
    // (the server's answer, what the FAIL upgrade line and its advice must show)
    let cases: [(&'static str, &[&str]); 2] = [
        // The WebSocket client rejects HTTP/1.0 before showing it ("HTTP version must be 1.1
        // or higher"): doctor reads the answer itself.
        (
            "HTTP/1.0 400 Bad Request\r\nServer: legacy-proxy/1.0\r\nContent-Type: text/plain\r\n\r\nno upgrades here",
            &[
                "HTTP/1.0 400 Bad Request",
                "Server: legacy-proxy/1.0",
                "Content-Type: text/plain",
            ],
        ),
        (
            "HTTP/1.1 502 Bad Gateway\r\nServer: edge\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            &[
                "HTTP/1.1 502 Bad Gateway",
                "server: edge",
                "no ready backend",
            ],
        ),
    ];
    for (response, shown) in cases {
        let addr = answering(response).await;
        let out = wsgate(&["doctor", &format!("ws://{addr}/ws"), "--idle", "1s"], "").await;
        assert_eq!(out.code, 1);
        let up = line(&out.stdout, "FAIL", "upgrade").unwrap_or_else(|| panic!("{}", out.stdout));
        let advice = &out.stdout[out.stdout.find(up).unwrap()..];
        for s in shown {
            assert!(
                advice.contains(s),
                "doctor does not show {s:?}:\n{}",
                out.stdout
            );
        }
    }
}

/// Forwards each new TCP connection to the next backend in turn (a balancer without
/// affinity in front of pods that do not share a broker: seed 001's "only the sender sees it").
async fn round_robin(backends: Vec<SocketAddr>) -> SocketAddr {
    proxy(backends, None).await
}

/// The same, cutting every connection after `cut` (a proxy read timeout, as NGINX's 60 s).
async fn proxy(backends: Vec<SocketAddr>, cut: Option<std::time::Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backend = backends[next % backends.len()];
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(backend).await {
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    match cut {
                        Some(cut) => drop(tokio::time::timeout(cut, copy).await),
                        None => drop(copy.await),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn doctor_fails_delivery_between_nodes_without_a_shared_broker() {
    let a = TestServer::with(|c| c.node_id = Some("node-a".into())).await;
    let b = TestServer::with(|c| c.node_id = Some("node-b".into())).await;
    let proxy = round_robin(vec![a.addr, b.addr]).await;
    let api = format!("http://{}", a.addr);
    let out = wsgate(
        &[
            "doctor",
            &format!("ws://{proxy}/ws"),
            "--api",
            &api,
            "--idle",
            "1s",
            "--sample",
            "0s",
            "--timeout",
            "2s",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let d = line(&out.stdout, "FAIL", "delivery").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        d.contains("node-a") && d.contains("node-b"),
        "names both nodes: {d}"
    );
    assert!(d.contains("node node-b did not receive"), "{d}");
    out.stdout_has("#messages-not-delivered-cross-node");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn doctor_idle_hold_answers_pings_and_catches_a_proxy_timeout() {
    // Pings every 50 ms, 300 ms timeout: a hold that did not answer them would end in 4008.
    let srv = TestServer::with(|c| tune::heartbeat(c, 50, 300)).await;
    let out = wsgate(&["doctor", &srv.ws_url(), "--idle", "1s"], "").await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    let idle = line(&out.stdout, "WARN", "idle").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        !idle.contains(" 0 server ping"),
        "pings were answered: {idle}"
    );

    // A proxy that cuts connections after 1 s: the hold notices and names the timeout.
    let cutting = proxy(vec![srv.addr], Some(std::time::Duration::from_millis(1000))).await;
    let out = wsgate(
        &["doctor", &format!("ws://{cutting}/ws"), "--idle", "3s"],
        "",
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let idle = line(&out.stdout, "FAIL", "idle").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(idle.contains("without a close frame"), "{idle}");
    out.stdout_has("proxy-read-timeout");
    srv.shutdown().await;
}

#[tokio::test]
async fn doctor_idle_hold_names_a_token_that_expires_during_it() {
    let srv = TestServer::with(|c| {
        tune::jwt(c, "doctor-secret");
        c.auth.token_grace_ms = 200;
    })
    .await;
    let exp = wsgate_core::clock::unix_ms() / 1000 + 2;
    let token = hs256_token("doctor-secret", serde_json::json!({"sub":"doc","exp":exp}));
    let url = format!("{}?token={token}", srv.ws_url());
    let out = wsgate(&["doctor", &url, "--idle", "4s"], "").await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let idle = line(&out.stdout, "FAIL", "idle").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(idle.contains("4001 token expired"), "{idle}");
    out.stdout_has("token expired during the hold");
    srv.shutdown().await;
}

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    _child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server; .ci/run installs it)");
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).unwrap();
        within("redis-server to answer PING", async {
            loop {
                if let Ok(mut con) = client.get_multiplexed_async_connection().await
                    && redis::cmd("PING")
                        .query_async::<String>(&mut con)
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        Self { _child: child, url }
    }

    async fn cmd(&self, args: &[&str]) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut con = within("redis", client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        within("redis command", c.query_async::<redis::Value>(&mut con))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn doctor_finds_an_index_entry_without_its_record() {
    let redis = Redis::start().await;
    redis
        .cmd(&["SADD", "wsgate:websocket-index", "live-1", "ghost-7"])
        .await;
    redis.cmd(&["SET", "wsgate:websocket-live-1", "{}"]).await;
    redis
        .cmd(&["SET", "wsgate:alive:node-a", "1", "PX", "30000"])
        .await;
    let srv = TestServer::start().await;
    let out = wsgate(
        &[
            "doctor",
            &srv.ws_url(),
            "--idle",
            "1s",
            "--redis",
            &redis.url,
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        line(&out.stdout, "PASS", "redis").is_some(),
        "{}",
        out.stdout
    );
    let index =
        line(&out.stdout, "FAIL", "redis-index").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        index.contains("ghost-7") && !index.contains("live-1"),
        "{index}"
    );
    out.stdout_has("#state-store-out-of-sync");
    let leases =
        line(&out.stdout, "PASS", "redis-leases").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(leases.contains("node-a"), "{leases}");
    // Nothing subscribes to the broker here: said, not failed.
    assert!(
        line(&out.stdout, "WARN", "redis-pubsub").is_some(),
        "{}",
        out.stdout
    );
    srv.shutdown().await;
}
