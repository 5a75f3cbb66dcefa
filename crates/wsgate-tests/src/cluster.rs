//! Cluster harness: our own `redis-server` and `nats-server` on free loopback ports (never the
//! machine's services), `wsgate serve` processes pointed at them, and HTTP helpers by address.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{Process, WAIT, http, within};

/// The cluster key every test node shares (base64 of 32 bytes).
pub const CLUSTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asks `check` until it answers `Some`, for at most `limit` (cluster events such as a
/// fail-over have bounds of their own).
pub use crate::eventually_within as poll;

/// How a [`RedisServer`] keeps its data across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// None: a restart loses everything (on purpose).
    None,
    /// An append-only file (`--appendonly yes`, fsync every second).
    Aof,
    /// Only snapshots the test takes (`SAVE`): a restart goes back to the last one.
    Snapshot,
}

/// A `redis-server` of our own, by default without persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    persistence: Persistence,
    /// Where the AOF or snapshot lives (removed on drop).
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(Persistence::None).await
    }

    pub async fn start_with(persistence: Persistence) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wsgate-redis-{port}"));
        if persistence != Persistence::None {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("redis data dir");
        }
        let mut s = Self {
            port,
            child: None,
            persistence,
            dir,
        };
        s.restart().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts (again) on the same port, with what its persistence kept, and waits until it
    /// answers PING (and has loaded its data).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"]);
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::Aof => cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]),
            Persistence::Snapshot => cmd.args(["--appendonly", "no"]),
        };
        if self.persistence != Persistence::None {
            cmd.arg("--dir").arg(&self.dir);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        poll("redis-server to answer PING", WAIT, || async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        })
        .await;
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        within("redis-server to exit", child.wait()).await.unwrap();
    }

    /// One command through redis-cli; returns its raw output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = within(
            "redis-cli",
            Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(args)
                .output(),
        )
        .await
        .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.persistence != Persistence::None {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `nats-server` of our own.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
        };
        s.restart().await;
        s
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        within("nats-server to exit", child.wait()).await.unwrap();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts (again) on the same port and waits until it greets.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        poll("nats-server to send INFO", WAIT, || async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"INFO ").then_some(())
        })
        .await;
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Which broker a cluster test runs on (the store is always Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Redis,
    Nats,
}

/// Redis (and NATS when asked) plus the arguments that point a node at them.
pub struct Cluster {
    pub redis: RedisServer,
    pub nats: Option<NatsServer>,
    pub via: Via,
    /// Unique per test, so tests never see each other's keys even if they shared a server.
    pub prefix: String,
}

impl Cluster {
    pub async fn start(via: Via) -> Self {
        Self::with_redis(via, RedisServer::start().await).await
    }

    /// [`Cluster::start`] on a Redis of the caller's (with persistence, say).
    pub async fn with_redis(via: Via, redis: RedisServer) -> Self {
        let nats = match via {
            Via::Nats => Some(NatsServer::start().await),
            Via::Redis => None,
        };
        Self {
            prefix: format!("t{}", redis.port),
            redis,
            nats,
            via,
        }
    }

    /// A `wsgate serve` node named `name`, ready (`/ready` 200) before it is returned.
    pub async fn node(&self, name: &str, extra: &[&str]) -> Node {
        self.node_env(name, extra, &[]).await
    }

    /// [`Cluster::node`] with extra environment variables (they win over the defaults).
    pub async fn node_env(&self, name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Node {
        let nats_url = self.nats.as_ref().map(NatsServer::url);
        self.node_at(name, &self.redis.url(), nats_url.as_deref(), extra, envs)
            .await
    }

    /// [`Cluster::node_env`] reaching Redis (and NATS) at the given URLs (through a
    /// [`crate::proxy::Proxy`], say).
    pub async fn node_at(
        &self,
        name: &str,
        redis_url: &str,
        nats_url: Option<&str>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Node {
        let mut args = vec![
            "--node-id",
            name,
            "--store",
            "redis",
            "--redis-url",
            redis_url,
            "--key-prefix",
            &self.prefix,
        ];
        match nats_url {
            Some(url) => args.extend(["--broker", "nats", "--nats-url", url]),
            None => args.extend(["--broker", "redis"]),
        }
        args.extend(extra);
        let mut all = vec![("WSGATE_CLUSTER_KEY", CLUSTER_KEY)];
        all.extend_from_slice(envs);
        let node = Node(Process::spawn_env(&args, &all).await);
        node.await_ready(true).await;
        node
    }
}

/// One `wsgate serve` process, with HTTP helpers.
pub struct Node(pub Process);

impl Node {
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.0.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.0.addr)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        crate::post_json(&self.url(path), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        crate::get_json(&self.url(path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        super::json_answer(http().delete(self.url(path))).await
    }

    /// [`Self::upstream_post`] that must answer `status`; the JSON answer.
    pub async fn upstream_call(&self, id: &str, op: &str, body: Value, status: u16) -> Value {
        let (got, r) = self.upstream_post(id, op, body).await;
        assert_eq!(got, status, "{r}");
        r
    }

    /// `POST /api/v1/upstreams/{id}/{op}` (`send`, `subscriptions`, `publish/start`, …).
    pub async fn upstream_post(&self, id: &str, op: &str, body: Value) -> (u16, Value) {
        self.post(&crate::upstream_path(id, op), body).await
    }

    /// Publishes `data` to `channel` through this node's API; returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        let (status, body) = self
            .post(
                "/api/v1/publish",
                serde_json::json!({"channel": channel, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["offset"].as_u64().expect("offset")
    }

    pub async fn presence(&self, channel: &str) -> Value {
        let (status, body) = self
            .get(&format!("/api/v1/channels/{channel}/presence"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until `/ready` answers 200 (`true`) or 503 (`false`).
    pub async fn await_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        let url = self.url("/ready");
        poll(&format!("/ready {want} on {}", self.0.addr), WAIT, || {
            let url = url.clone();
            async move {
                let r = http().get(url).send().await.ok()?;
                (r.status().as_u16() == want).then_some(())
            }
        })
        .await;
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.0.child.try_wait().unwrap().is_none()
    }
}
