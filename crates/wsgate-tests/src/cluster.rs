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
    /// None: a restart loses everything (on purpose), unless the test kept a snapshot
    /// ([`RedisServer::kill_keeping_data`]).
    None,
    /// An append-only file (`--appendonly yes`, fsync at every write).
    Aof,
    /// Only snapshots the test takes (`SAVE`): a restart goes back to the last one.
    Snapshot,
}

/// A `redis-server` of our own, by default without persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    persistence: Persistence,
    /// Its working directory: where the AOF or a snapshot lives (removed on drop).
    dir: std::path::PathBuf,
    /// A Redis Cluster member: its cluster bus port (its `nodes.conf` is in `dir`, so a
    /// restart rejoins the cluster with the same id and slots).
    bus_port: Option<u16>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(Persistence::None).await
    }

    pub async fn start_with(persistence: Persistence) -> Self {
        Self::launch(persistence, None).await
    }

    /// A `redis-server --cluster-enabled yes` without slots yet (see [`RedisClusterServer`]).
    async fn start_cluster_member() -> Self {
        Self::launch(Persistence::None, Some(free_port())).await
    }

    /// On a free port, in a fresh working directory.
    async fn launch(persistence: Persistence, bus_port: Option<u16>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wsgate-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let mut s = Self {
            port,
            child: None,
            persistence,
            dir,
            bus_port,
        };
        s.restart().await;
        s
    }

    fn forget_snapshot(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// A server whose every write is in an append-only file (`appendfsync always`): a
    /// SIGKILL and [`Self::restart`] keep every key, TTLs included.
    pub async fn start_persistent() -> Self {
        Self::start_with(Persistence::Aof).await
    }

    /// Stalls the server for `secs` (`DEBUG SLEEP`): nothing is answered meanwhile, and
    /// keys whose TTL ran out during the stall are gone when it ends. Returns when it ends.
    pub async fn stall(&self, secs: f64) {
        let out = self.cli(&["DEBUG", "SLEEP", &secs.to_string()]).await;
        assert_eq!(out.trim(), "OK", "DEBUG SLEEP: {out}");
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
            .args(["--save", "", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local"]);
        match self.persistence {
            Persistence::Aof => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None | Persistence::Snapshot => cmd.args(["--appendonly", "no"]),
        };
        if let Some(bus) = self.bus_port {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-port", &bus.to_string()])
            // Failure detection (and a restarted master's return) within about a second.
            .args(["--cluster-node-timeout", "1000"])
            // As docs/cluster.md advises: a lost shard costs its own slots only.
            .args(["--cluster-require-full-coverage", "no"]);
        }
        let child = cmd
            .arg("--dir")
            .arg(&self.dir)
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

    /// SIGSTOP (`true`: Redis stalls, every command waits) or SIGCONT (`false`).
    pub fn pause(&self, stopped: bool) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        crate::signal_pid(
            pid,
            if stopped {
                crate::SIGSTOP
            } else {
                crate::SIGCONT
            },
        );
    }

    /// SIGKILL, and wait until it is gone. Without persistence the next start is empty.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        within("redis-server to exit", child.wait()).await.unwrap();
        if self.persistence == Persistence::None {
            self.forget_snapshot();
        }
    }

    /// A snapshot (`SAVE`), then SIGKILL: the next start holds what Redis held.
    pub async fn kill_keeping_data(&mut self) {
        assert!(self.cli(&["SAVE"]).await.contains("OK"), "SAVE");
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        within("redis-server to exit", child.wait()).await.unwrap();
    }

    /// SIGKILL, then start again on the same port (with its data when persistent).
    pub async fn kill_and_restart(&mut self) {
        self.kill().await;
        self.restart().await;
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of our own: three masters (no replicas), slots spread by
/// `redis-cli --cluster create`. A killed master is brought back with [`Self::restart`]
/// (its slots are unavailable meanwhile, and come back empty: no persistence).
pub struct RedisClusterServer {
    pub masters: Vec<RedisServer>,
}

impl RedisClusterServer {
    pub async fn start() -> Self {
        let mut masters = Vec::new();
        for _ in 0..3 {
            masters.push(RedisServer::start_cluster_member().await);
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let out = within(
            "redis-cli --cluster create",
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .arg("--cluster-yes")
                .output(),
        )
        .await
        .expect("redis-cli --cluster create (redis-tools installed?)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { masters };
        cluster.await_ok().await;
        cluster
    }

    /// Waits until every master says `cluster_state:ok` and knows all three masters.
    pub async fn await_ok(&self) {
        for m in &self.masters {
            poll("cluster_state:ok on every master", WAIT, || async move {
                let info = m.cli(&["CLUSTER", "INFO"]).await;
                (info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"))
                    .then_some(())
            })
            .await;
        }
    }

    /// The seed list a node is given (`--redis-url`, comma-separated).
    pub fn url(&self) -> String {
        self.masters
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master that serves `key`'s slot (the others answer `MOVED`).
    pub async fn master_of(&self, key: &str) -> usize {
        for (i, m) in self.masters.iter().enumerate() {
            if !m.cli(&["GET", key]).await.contains("MOVED") {
                return i;
            }
        }
        panic!("no master serves {key}");
    }

    /// One command through redis-cli in cluster mode (`-c`: follows redirections).
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.masters[0].cli(&all).await
    }

    /// Brings a killed master back on its port (same node id and slots, no data) and waits
    /// until the cluster is whole again.
    pub async fn restart(&mut self, i: usize) {
        self.masters[i].restart().await;
        self.await_ok().await;
    }

    /// A `wsgate serve` node on this cluster, ready before it is returned.
    pub async fn node(&self, name: &str, prefix: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--redis-cluster", "true"];
        args.extend_from_slice(extra);
        spawn_node(name, &self.url(), prefix, None, &args, &[]).await
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

    /// A cluster on a Redis that keeps its data across a restart.
    pub async fn start_persistent() -> Self {
        Self::with_redis(Via::Redis, RedisServer::start_persistent().await).await
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
        spawn_node(name, redis_url, &self.prefix, nats_url, extra, envs).await
    }
}

/// A `wsgate serve` node with a Redis store (and a Redis or NATS broker), ready (`/ready`
/// 200) before it is returned.
async fn spawn_node(
    name: &str,
    redis_url: &str,
    prefix: &str,
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
        prefix,
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
