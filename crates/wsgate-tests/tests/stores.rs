//! Deploying against real Redis and NATS servers, each started here: `rediss://` and NATS
//! over TLS with a CA generated here, credentials that never reach a log line, seed 000's
//! bare key layout (`key_prefix = ""`), and one process per node id.

use wsgate_tests as support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::cluster::{CLUSTER_KEY, Cluster, Node, Via, free_port, poll};
use support::{Client, Process, WAIT, within};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};

const REDIS_PASSWORD: &str = "redis-pw-6f1c2a";
const NATS_PASSWORD: &str = "nats-pw-93b7e4";

/// The program under test.
fn wsgate() -> Command {
    Command::new(support::wsgate_bin())
}

/// A `wsgate serve` whose stdout and stderr are both kept, to be searched.
struct Logged {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Logged {
    fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = wsgate()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .env("WSGATE_GRPC_LISTEN", "127.0.0.1:0")
            .env("WSGATE_LOG", "debug")
            .env("WSGATE_CLUSTER_KEY", CLUSTER_KEY)
            .envs(envs.iter().copied())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wsgate");
        let out = Arc::new(Mutex::new(String::new()));
        keep(child.stdout.take().unwrap(), out.clone());
        keep(child.stderr.take().unwrap(), out.clone());
        Self { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until `text` appears in the output.
    async fn await_output(&self, text: &str) {
        poll(&format!("{text:?} in the output"), WAIT, || async {
            self.output().contains(text).then_some(())
        })
        .await;
    }

    /// The listening address, once printed.
    async fn addr(&self) -> SocketAddr {
        self.await_output("wsgate listening on http://").await;
        let out = self.output();
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("wsgate listening on http://"))
            .unwrap();
        line.trim().parse().unwrap()
    }

    /// Waits for the exit; returns the exit code.
    async fn exit_code(&mut self) -> i32 {
        let status = within("wsgate to exit", self.child.wait()).await.unwrap();
        status.code().unwrap_or(-1)
    }
}

/// `wsgate serve --node-id <id> --store redis --broker <broker> <extra>`, output kept.
fn cluster_node(id: &str, broker: &str, extra: &[&str], envs: &[(&str, &str)]) -> Logged {
    let args = [
        &["--node-id", id, "--store", "redis", "--broker", broker][..],
        extra,
    ]
    .concat();
    Logged::spawn(&args, envs)
}

/// A [`cluster_node`] that is ready and delivers a message, with its address.
async fn delivering_node(
    id: &str,
    broker: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Logged, SocketAddr) {
    let node = cluster_node(id, broker, extra, envs);
    let addr = node.addr().await;
    ready(addr).await;
    delivers(addr).await;
    (node, addr)
}

/// Appends every line of `from` to `to`.
fn keep(from: impl AsyncRead + Unpin + Send + 'static, to: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            let mut out = to.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}

/// A CA and a server certificate for 127.0.0.1 and localhost it signed, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("wsgate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` that speaks only TLS (certificate from `pki`) and wants a password.
async fn tls_redis(pki: &Pki) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &pki.path("server.pem")])
        .args(["--tls-key-file", &pki.path("server.key")])
        .args(["--tls-ca-cert-file", &pki.path("ca.pem")])
        .args(["--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD]);
    (serve(cmd, port).await, port)
}

/// A `nats-server` that wants a user and password, over TLS when `pki` is given.
async fn nats(pki: Option<&Pki>) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "wsgate", "--pass", NATS_PASSWORD]);
    if let Some(pki) = pki {
        cmd.args(["--tls", "--tlscert", &pki.path("server.pem")])
            .args(["--tlskey", &pki.path("server.key")]);
    }
    (serve(cmd, port).await, port)
}

/// Starts the server `cmd` (quiet, killed on drop) and waits until it listens on `port`.
async fn serve(mut cmd: Command, port: u16) -> Child {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.as_std().get_program()));
    listening(port).await;
    child
}

async fn listening(port: u16) {
    poll(&format!("port {port} to listen"), WAIT, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await;
}

async fn ready(addr: SocketAddr) {
    let url = format!("http://{addr}/ready");
    poll(&format!("/ready 200 on {addr}"), WAIT, || {
        let url = url.clone();
        async move {
            let r = support::http().get(url).send().await.ok()?;
            (r.status().as_u16() == 200).then_some(())
        }
    })
    .await;
}

/// A publication through `addr`'s API reaches a WebSocket client of `addr`: the broker
/// (Redis or NATS) carried it and the channel log (Redis) numbered it.
async fn delivers(addr: SocketAddr) {
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    client.subscribe("news").await;
    let (status, r) = support::post_json(
        &format!("http://{addr}/api/v1/publish"),
        json!({"channel": "news", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(client.recv().await["data"], json!({"n": 1}));
}

fn assert_no_secret(output: &str) {
    for secret in [REDIS_PASSWORD, NATS_PASSWORD, "wrong-pw-5d1e"] {
        assert!(
            !output.contains(secret),
            "{secret} appears in the output:\n{output}"
        );
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_password() {
    let pki = Pki::generate("rediss");
    let (_redis, port) = tls_redis(&pki).await;
    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}");
    let ca = pki.path("ca.pem");
    let (node, addr) = delivering_node(
        "tls-a",
        "redis",
        &[],
        &[("WSGATE_REDIS_URL", &url), ("WSGATE_REDIS_CA_FILE", &ca)],
    )
    .await;

    // doctor reaches the same Redis with the same CA, and never prints the password.
    let out = wsgate()
        .args([
            "doctor",
            &format!("ws://{addr}/ws"),
            "--idle",
            "0s",
            "--sample",
            "0s",
        ])
        .args(["--redis", &url, "--redis-ca-file", &ca])
        .output();
    let out = within("wsgate doctor", out).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("PASS") && l.contains("redis ")),
        "{text}"
    );
    assert!(
        text.contains("tls-a (expires in"),
        "the node's lease:\n{text}"
    );
    assert_no_secret(&text);

    // The same server without the CA: the certificate is not trusted, the node never
    // becomes ready, and says why.
    let untrusted = cluster_node("tls-b", "redis", &[], &[("WSGATE_REDIS_URL", &url)]);
    let b = untrusted.addr().await;
    untrusted.await_output("UnknownIssuer").await;
    let (status, _) = support::get_json(&format!("http://{b}/ready")).await;
    assert_eq!(status, 503);
    assert_no_secret(&node.output());
    assert_no_secret(&untrusted.output());
}

#[tokio::test]
async fn nats_over_tls_with_user_and_password() {
    let pki = Pki::generate("nats");
    let redis = support::cluster::RedisServer::start().await;
    let (_nats, port) = nats(Some(&pki)).await;
    let nats_url = format!("tls://127.0.0.1:{port}");
    let ca = pki.path("ca.pem");
    let (node, _) = delivering_node(
        "nats-a",
        "nats",
        &[],
        &[
            ("WSGATE_REDIS_URL", &redis.url()),
            ("WSGATE_NATS_URL", &nats_url),
            ("WSGATE_NATS_USER", "wsgate"),
            ("WSGATE_NATS_PASSWORD", NATS_PASSWORD),
            ("WSGATE_NATS_CA_FILE", &ca),
        ],
    )
    .await;
    assert_no_secret(&node.output());
}

#[tokio::test]
async fn passwords_in_the_urls_never_reach_the_output() {
    let pki = Pki::generate("secrets");
    let (_redis, redis_port) = tls_redis(&pki).await;
    let (_nats, nats_port) = nats(None).await;
    let redis_url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let nats_url = format!("nats://wsgate:{NATS_PASSWORD}@127.0.0.1:{nats_port}");
    let ca = pki.path("ca.pem");
    let ca_file = [("WSGATE_REDIS_CA_FILE", ca.as_str())];
    let urls = ["--redis-url", &redis_url, "--nats-url", &nats_url];
    let (mut good, _) = delivering_node("pw-a", "nats", &urls, &ca_file).await;
    good.await_output("NATS broker").await;

    // Wrong passwords: the failures are logged, the passwords are not.
    let wrong_redis = format!("rediss://:wrong-pw-5d1e@127.0.0.1:{redis_port}");
    let wrong_nats = format!("nats://wsgate:wrong-pw-5d1e@127.0.0.1:{nats_port}");
    let urls = ["--redis-url", &wrong_redis, "--nats-url", &wrong_nats];
    let mut bad = cluster_node("pw-b", "nats", &urls, &ca_file);
    bad.addr().await;
    bad.await_output("authorization").await;
    bad.await_output("Password authentication failed").await;

    good.child.start_kill().unwrap();
    bad.child.start_kill().unwrap();
    good.exit_code().await;
    bad.exit_code().await;
    assert_no_secret(&good.output());
    assert_no_secret(&bad.output());
}

#[tokio::test]
async fn an_empty_key_prefix_gives_seed_000s_layout_and_doctor_prints_its_commands() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let redis = support::cluster::RedisServer::start().await;
    let url = redis.url();
    let node = Node(
        Process::spawn_env(
            &[
                "--node-id",
                "bare",
                "--store",
                "redis",
                "--redis-url",
                &url,
                "--key-prefix",
                "",
            ],
            &[("WSGATE_CLUSTER_KEY", CLUSTER_KEY)],
        )
        .await,
    );
    node.await_ready(true).await;
    let (status, r) = node
        .post("/api/v1/upstreams", json!({"url": up.url()}))
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["connection_id"].as_str().unwrap().to_string();

    // Seed 000's runbook, verbatim.
    let members = redis.cli(&["SMEMBERS", "websocket-index"]).await;
    assert_eq!(members.trim(), id, "{members}");
    let keys = redis.cli(&["KEYS", "websocket-*"]).await;
    assert!(
        keys.lines().any(|k| k == format!("websocket-{id}")),
        "{keys}"
    );
    assert_eq!(
        redis
            .cli(&["TYPE", &format!("websocket-{id}")])
            .await
            .trim(),
        "string"
    );
    let record: Value =
        serde_json::from_str(redis.cli(&["GET", &format!("websocket-{id}")]).await.trim()).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["owner"], "bare");
    assert_eq!(redis.cli(&["EXISTS", "alive:bare"]).await.trim(), "1");

    let out = wsgate()
        .args([
            "doctor",
            &node.ws_url(),
            "--redis",
            &url,
            "--key-prefix",
            "",
        ])
        .args(["--idle", "0s", "--sample", "0s"])
        .env_remove("WSGATE_API_KEY")
        .output();
    let out = within("wsgate doctor", out).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "redis-cli KEYS 'websocket-*'",
        "redis-cli SMEMBERS websocket-index",
        "redis-cli GET websocket-<id>",
    ] {
        assert!(text.contains(command), "{command} missing:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("redis-index") && l.contains("(1 connection(s))")),
        "{text}"
    );
}

/// A node of `cluster` (Redis store and broker) named `name`.
fn member(cluster: &Cluster, name: &str) -> Logged {
    let url = cluster.redis.url();
    let args = ["--redis-url", &url, "--key-prefix", &cluster.prefix];
    cluster_node(name, "redis", &args, &[])
}

#[tokio::test]
async fn cluster_mode_refuses_the_fallback_node_id() {
    let cluster = Cluster::start(Via::Redis).await;
    let mut cmd = wsgate();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", "redis"])
        .args(["--redis-url", &cluster.redis.url()])
        .env("WSGATE_CLUSTER_KEY", CLUSTER_KEY)
        .env_remove("HOSTNAME")
        .env_remove("WSGATE_NODE_ID")
        .kill_on_drop(true);
    let out = within("wsgate to refuse", cmd.output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cluster mode needs a unique node id"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "never listened");
}

#[tokio::test]
async fn a_second_live_node_under_one_id_is_refused_and_a_restart_after_sigkill_is_not() {
    let cluster = Cluster::start(Via::Redis).await;
    let lease = format!("{}:alive:dup", cluster.prefix);
    let mut first = member(&cluster, "dup");
    ready(first.addr().await).await;
    let token = cluster.redis.cli(&["GET", &lease]).await;

    let mut second = member(&cluster, "dup");
    assert_ne!(second.exit_code().await, 0);
    let out = second.output();
    assert!(
        out.contains("node id \"dup\" is in use by another live wsgate node"),
        "{out}"
    );
    assert!(out.contains("it expires"), "{out}");
    assert!(!out.contains("wsgate listening"), "never listened:\n{out}");
    // The first node kept its lease, its process token and its readiness.
    assert_eq!(cluster.redis.cli(&["GET", &lease]).await, token);
    assert!(first.child.try_wait().unwrap().is_none());

    // SIGKILL, then the same id at once: it waits out the dead lease (750 ms) and starts.
    first.child.start_kill().unwrap();
    first.exit_code().await;
    let restarted = member(&cluster, "dup");
    ready(restarted.addr().await).await;
    assert_ne!(
        cluster.redis.cli(&["GET", &lease]).await,
        token,
        "a new process token"
    );
}

#[tokio::test]
async fn a_node_whose_id_is_taken_over_while_it_runs_stops() {
    let cluster = Cluster::start(Via::Redis).await;
    let lease = format!("{}:alive:taken", cluster.prefix);
    let mut node = member(&cluster, "taken");
    ready(node.addr().await).await;
    // Another process's token in the lease (what a second process does once this one's
    // lease lapsed, e.g. after a long stall).
    cluster
        .redis
        .cli(&["SET", &lease, "another-process", "PX", "60000"])
        .await;
    assert_ne!(node.exit_code().await, 0);
    let out = node.output();
    assert!(out.contains("node id \"taken\" is in use"), "{out}");
    // Stopped without a hand-over: the other process's lease is untouched.
    assert_eq!(
        cluster.redis.cli(&["GET", &lease]).await.trim(),
        "another-process"
    );
}
