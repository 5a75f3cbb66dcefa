//! The harness of wsgate's end-to-end tests (`tests/*.rs` of this crate): nodes in this
//! process on `127.0.0.1:0` ([`TestServer`]) or as real processes of the shipped program
//! ([`wsgate_bin`], [`cluster`]), real redis-server and nats-server on free loopback ports,
//! real WebSocket and HTTP clients, and bounded waits ([`within`]) so that a hung test fails
//! fast.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;
pub mod socketio;
pub mod traffic;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate_server::{Config, Node};

/// The program under test: this package's `wsgate-node` binary (`wsgate::run`, the same
/// program as the shipped `wsgate`). Cargo builds it before it runs any integration test of
/// this package and puts it beside the test executables' `deps/` folder.
pub fn wsgate_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in <target>/<profile>/deps");
    let bin = dir.join(format!("wsgate-node{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run these tests through `cargo test -p wsgate-tests`",
        bin.display()
    );
    bin
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Asks `check` every 20 ms until it answers `Some`, for at most [`WAIT`]: for states that
/// no event announces (a view, a metric, a process's descriptors).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, WAIT, check).await
}

/// [`eventually`] with another bound than [`WAIT`].
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polling = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(limit, polling)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// A node running in this process on `127.0.0.1:0`.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The gRPC API (`None` when the config disables it).
    pub grpc_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tune: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            node_id: Some("test-node".into()),
            ..Config::default()
        };
        // Test clients often never answer a close frame; do not wait long for them.
        config.ws.close_grace_ms = 200;
        // The gRPC API is opt-in; tests of it find it on (on a free port).
        config.grpc.grpc_enabled = true;
        tune(&mut config);
        let node = Node::new(config).expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The gRPC API on a free port too (the configured 50051 would collide).
        let grpc = match node.config().grpc.grpc_enabled {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let grpc_addr = grpc.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wsgate_server::run_with(
            node.clone(),
            listener,
            grpc,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            grpc_addr,
            node,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:<port>` of the gRPC API.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr.expect("gRPC enabled"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits (bounded) for `run` to return by itself, without asking it to stop.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("running");
        within("the node to stop by itself", task).await.unwrap()
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("server shutdown", task).await.unwrap().unwrap();
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post_json(&self.http(path), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.http(path)).await
    }

    /// [`Self::upstream_post`] that must answer `status`; the JSON answer.
    pub async fn upstream_call(&self, id: &str, op: &str, body: Value, status: u16) -> Value {
        let (got, r) = self.upstream_post(id, op, body).await;
        assert_eq!(got, status, "{r}");
        r
    }

    /// `POST /api/v1/upstreams/{id}/{op}` (`send`, `subscriptions`, `publish/start`, …).
    pub async fn upstream_post(&self, id: &str, op: &str, body: Value) -> (u16, Value) {
        self.post(&upstream_path(id, op), body).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        json_answer(http().delete(self.http(path))).await
    }

    pub async fn metrics(&self) -> String {
        get_text(&self.http("/metrics")).await
    }

    /// Stores the record of an upstream connection held by another node (`other-node`), as
    /// cluster mode would; returns it.
    pub async fn put_foreign_upstream(&self) -> wsgate_core::seams::UpstreamRecord {
        let rec = wsgate_core::seams::UpstreamRecord {
            id: "fedcba9876543210-other-node".into(),
            owner: "other-node".into(),
            state: "connected".into(),
            created_at_ms: 0,
            spec: wsgate_core::seams::upstream::UpstreamSpec::new("ws://127.0.0.1:1/"),
        };
        self.node
            .upstreams()
            .records()
            .upstream_put(rec.clone())
            .await
            .unwrap();
        rec
    }

    /// Waits until `GET path` answers `field` = `value` (a view no event announces).
    pub async fn await_json(&self, path: &str, field: &str, value: Value) {
        eventually(&format!("{path} to show {field} = {value}"), || async {
            (self.get(path).await.1[field] == value).then_some(())
        })
        .await
    }

    /// Waits until `/metrics` shows `series` at `value` or more.
    pub async fn await_metric(&self, series: &str, value: f64) {
        eventually(&format!("metric {series} >= {value}"), || async {
            metric_value(&self.metrics().await, series)
                .is_some_and(|v| v >= value)
                .then_some(())
        })
        .await
    }
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The path of operation `op` on upstream connection `id`.
pub fn upstream_path(id: &str, op: &str) -> String {
    format!("/api/v1/upstreams/{id}/{op}")
}

/// `POST url` with a JSON body; the status and the JSON answer.
pub async fn post_json(url: &str, body: Value) -> (u16, Value) {
    json_answer(http().post(url).json(&body)).await
}

/// `GET url`; the status and the JSON answer.
pub async fn get_json(url: &str) -> (u16, Value) {
    json_answer(http().get(url)).await
}

/// `GET url`; the body as text (e.g. `/metrics`).
pub async fn get_text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

pub async fn json_answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// One publisher of an ordering test: publishes `{"p": p, "i": i}` to `channel` for `i` in
/// `0..count`, one request after the other, each answered 200.
pub async fn publish_numbered(publish_url: String, channel: &'static str, p: u64, count: u64) {
    let client = http();
    for i in 0..count {
        let r = client
            .post(&publish_url)
            .json(&serde_json::json!({"channel":channel,"data":{"p":p,"i":i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

/// No idle keep-alive connections: a pooled connection keeps a server task and socket alive,
/// which would blur the leak tests' task and descriptor counts.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the gateway protocol.
pub struct Client {
    pub ws: Ws,
    pub hello: Value,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade");
        let mut c = Self {
            ws,
            hello: Value::Null,
        };
        c.hello = c.recv().await;
        assert_eq!(c.hello["op"], "hello", "first frame is hello");
        c
    }

    /// [`Client::connect`], then [`Client::subscribe`] to `channel` (answered `subscribed`).
    pub async fn subscribed(url: &str, channel: &str) -> Self {
        let mut c = Self::connect(url).await;
        c.subscribe(channel).await;
        c
    }

    pub fn id(&self) -> String {
        self.hello["connection_id"].as_str().unwrap().to_string()
    }

    pub fn user(&self) -> String {
        self.hello["user"].as_str().unwrap().to_string()
    }

    pub async fn send(&mut self, v: Value) {
        within("send", self.ws.send(Message::Text(v.to_string().into())))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        within("send", self.ws.send(Message::Text(text.into())))
            .await
            .unwrap();
    }

    /// The next JSON text frame (pings and pongs are skipped).
    pub async fn recv(&mut self) -> Value {
        within("a frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
    }

    pub async fn request(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.recv().await
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(serde_json::json!({"op":"subscribe","channel":channel}))
            .await;
        assert_eq!(r["op"], "subscribed", "{r}");
        r
    }

    /// Reads until the server closes; returns the close code (text frames are collected).
    pub async fn closed(&mut self) -> (u16, Vec<Value>) {
        let mut texts = Vec::new();
        let code = within("close", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str(&t).unwrap()),
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await;
        (code, texts)
    }
}

/// A bare HTTP/1.1 server on a free loopback port: reads each request head, writes what
/// `answer` returns (a whole response), then closes. For legacy proxies and JWKS endpoints.
pub async fn answering_with(answer: impl Fn() -> String + Send + Sync + 'static) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(answer().as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// A `wsgate serve` process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the process logged (stderr) so far; also passed through to the test's.
    logs: Arc<std::sync::Mutex<String>>,
}

impl Process {
    pub async fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[]).await
    }

    /// [`Process::spawn`] with extra environment variables.
    pub async fn spawn_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(wsgate_bin())
            .envs(envs.iter().copied())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .env("WSGATE_GRPC_LISTEN", "127.0.0.1:0")
            .args(args)
            .env("WSGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wsgate");
        let logs = Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = within("wsgate to listen", lines.next_line())
            .await
            .unwrap()
            .expect("a listening line");
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        Self { child, addr, logs }
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The process's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        wsgate::procfs::rss_kib(self.child.id().expect("running")).expect("VmRSS")
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn signal(&self, sig: i32) {
        signal_pid(self.child.id().expect("running"), sig);
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// Sends `sig` to the process `pid` (a child of this test).
pub fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child's pid.
    let rc = unsafe { libc_kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

pub fn hs256_token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn in_a_minute() -> u64 {
    wsgate_core::clock::unix_ms() / 1000 + 60
}

/// What a finished `wsgate` command printed.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts that stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) {
        expect_text("stdout", &self.stdout, needle, true);
    }

    /// Asserts that stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) {
        expect_text("stderr", &self.stderr, needle, true);
    }

    /// Asserts that stderr does not contain `needle`.
    #[track_caller]
    pub fn stderr_lacks(&self, needle: &str) {
        expect_text("stderr", &self.stderr, needle, false);
    }
}

/// Asserts that `text` (the stream `name`) contains `needle`, or does not (`present` false).
#[track_caller]
fn expect_text(name: &str, text: &str, needle: &str, present: bool) {
    let verb = if present { "lacks" } else { "has" };
    assert_eq!(
        text.contains(needle),
        present,
        "{name} {verb} {needle:?}: {text}"
    );
}

/// Runs the real `wsgate ARGS` with `envs` and `stdin` as its input, bounded by [`WAIT`]
/// (without the caller's `WSGATE_API_KEY` / `WSGATE_SERVER`).
pub async fn run_cli(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> CliOutput {
    run_cli_within(WAIT, args, envs, stdin).await
}

/// [`run_cli`] bounded by `limit` instead of [`WAIT`] (commands that run for a while: `bench`).
pub async fn run_cli_within(
    limit: Duration,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: &str,
) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut child = spawn_piped(
        Command::new(wsgate_bin())
            .args(args)
            .env_remove("WSGATE_API_KEY")
            .env_remove("WSGATE_SERVER")
            .envs(envs.iter().copied()),
        Stdio::piped(),
        "spawn wsgate",
    );
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for wsgate {args:?}"))
        .unwrap();
    let o = CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("wsgate {args:?} → {}\n{}\n{}", o.code, o.stdout, o.stderr);
    o
}

/// Starts `cmd` with its stdin and stdout piped and its stderr to `stderr`, killed when
/// dropped; panics with `what` when it cannot start.
pub fn spawn_piped(cmd: &mut Command, stderr: Stdio, what: &str) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect(what)
}

/// Tunings of a test node's [`Config`] that many tests share, for [`TestServer::with`]: a
/// limit or a timer is set as the pair of settings it is made of.
pub mod tune {
    use wsgate_server::Config;
    use wsgate_server::config::{AuthMode, Secret};

    /// Pings every `interval_ms`; a connection that answers none for `timeout_ms` ends (4008).
    pub fn heartbeat(c: &mut Config, interval_ms: u64, timeout_ms: u64) {
        (
            c.gateway.heartbeat_interval_ms,
            c.gateway.heartbeat_timeout_ms,
        ) = (interval_ms, timeout_ms);
    }

    /// The control API wants `key`.
    pub fn api_key(c: &mut Config, key: &str) {
        c.api.api_key = Some(Secret::new(key));
    }

    /// New connections per client address: `rate` a second, `burst` at once.
    pub fn ip_connect_rate(c: &mut Config, rate: u32, burst: u32) {
        (c.limits.ip_connect_rate, c.limits.ip_connect_burst) = (rate, burst);
    }

    /// The control API's request limit per address: `rate` a second, `burst` at once.
    pub fn api_rate(c: &mut Config, rate: u32, burst: u32) {
        (c.limits.api_rate, c.limits.api_burst) = (rate, burst);
    }

    /// WebSocket clients authenticate with HS256 JWTs signed with `secret`.
    pub fn jwt(c: &mut Config, secret: &str) {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Some(Secret::new(secret));
    }

    /// The control API's limit of failed authentications per address.
    pub fn api_auth_failures(c: &mut Config, rate: u32, burst: u32) {
        (
            c.limits.api_auth_failure_rate,
            c.limits.api_auth_failure_burst,
        ) = (rate, burst);
    }

    /// At most `max` connections per client address, and no connect-rate limit beside it.
    pub fn per_ip(c: &mut Config, max: usize) {
        (c.limits.max_connections_per_ip, c.limits.ip_connect_rate) = (max, 0);
    }

    /// A client's frame limit: `rate` a second, `burst` at once.
    pub fn message_rate(c: &mut Config, rate: u32, burst: u32) {
        (c.ws.client_message_rate, c.ws.client_message_burst) = (rate, burst);
    }

    /// A client's byte limit: `rate` a second, `burst` at once.
    pub fn byte_rate(c: &mut Config, rate: u32, burst: u32) {
        (c.ws.client_byte_rate, c.ws.client_byte_burst) = (rate, burst);
    }
}
