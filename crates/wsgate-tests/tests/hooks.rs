//! Proxy hooks end to end: a small chat backend written here (axum, on a free loopback
//! port) answers wsgate's connect, subscribe, publish, rpc and refresh hooks; real nodes
//! (in-process, and two `wsgate serve` processes on redis-server) and real WebSocket
//! clients. Every failure mode (timeout, 500, malformed answer, backend down) of every hook
//! ends in `backend_unavailable` (a 4503 close for connect), never in a hung connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wsgate_core::namespace::SubscribeRule;
use wsgate_server::Config;
use wsgate_server::config::{AuthMode, Secret};
use wsgate_server::hooks::HookEndpoint;
use wsgate_server::namespaces::NamespaceSettings;
use wsgate_tests::cluster::{Cluster, Via};
use wsgate_tests::{Client, Process, TestServer, hs256_token, metric_value, within};

/// What the backend was asked: the hook (path) and the JSON body, in order.
type Seen = Arc<Mutex<Vec<(String, Value, HeaderMap)>>>;

/// TLS connections for `axum::serve`; a handshake that fails is dropped, not served.
struct TlsListener {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A chat backend: auth through the connect hook, moderation through the publish hook.
struct Backend {
    addr: SocketAddr,
    seen: Seen,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn result(v: Value) -> Response {
    Json(json!({ "result": v })).into_response()
}

fn error(code: u16, message: &str) -> Response {
    Json(json!({"error": {"code": code, "message": message}})).into_response()
}

/// The chat app's decisions, one per hook.
fn decide(hook: &str, body: &Value) -> Response {
    let user = body["user"].as_str().unwrap_or_default();
    match hook {
        "connect" => match body["token"].as_str() {
            None => result(json!({"user": "guest", "data": {"role": "guest"}})),
            Some("banned") => error(4403, "banned from this chat"),
            Some("bad-code") => error(1000, "not an application close code"),
            Some(name @ ("expiring" | "ending")) => {
                result(json!({"user": name, "expire_at": now() + 1}))
            }
            Some(name) => result(json!({
                "user": name,
                "channels": ["news"],
                "data": {"role": "member"},
            })),
        },
        "subscribe" => match body["channel"].as_str() {
            Some("chat:secret") => error(403, "members only"),
            channel => result(json!({"data": {"welcome": channel}})),
        },
        "publish" => {
            let text = body["data"]["text"].as_str().unwrap_or_default();
            if text.contains("darn") {
                return error(400, "moderated: mind your language");
            }
            result(json!({"data": {"text": text, "by": user}}))
        }
        "rpc" => match body["method"].as_str() {
            Some("whoami") => result(json!({"data": {
                "user": user, "transport": body["transport"], "connection_id": body["connection_id"],
            }})),
            Some("echo") => result(json!({"data": body["data"]})),
            _ => error(404, "no such method"),
        },
        "refresh" if user == "ending" => result(json!({"expired": true})),
        "refresh" => result(json!({"expire_at": now() + 3600})),
        // The failure modes, for any hook.
        "slow" => result(json!({})),
        "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "garbage" => "this is not JSON".into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn answer(
    State(seen): State<Seen>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.lock().push((hook.clone(), body.clone(), headers));
    if hook == "slow" {
        // Far past any timeout the tests configure.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    decide(&hook, &body)
}

impl Backend {
    async fn start() -> Self {
        let seen = Seen::default();
        let app = Router::new()
            .route("/{hook}", post(answer))
            .with_state(seen.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    /// The backend over TLS with `cert` (a self-signed certificate for `localhost`).
    async fn start_tls(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Self {
        use tokio_rustls::rustls::{self, pki_types::PrivatePkcs8KeyDer};
        let seen = Seen::default();
        let app = Router::new()
            .route("/{hook}", post(answer))
            .with_state(seen.clone());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key.into())
            .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// The bodies of the requests to `hook` so far.
    fn asked(&self, hook: &str) -> Vec<Value> {
        self.seen
            .lock()
            .iter()
            .filter(|(h, _, _)| h == hook)
            .map(|(_, b, _)| b.clone())
            .collect()
    }

    fn headers_of(&self, hook: &str) -> Vec<HeaderMap> {
        self.seen
            .lock()
            .iter()
            .filter(|(h, _, _)| h == hook)
            .map(|(_, _, h)| h.clone())
            .collect()
    }
}

fn endpoint(url: String) -> HookEndpoint {
    HookEndpoint {
        url,
        timeout_ms: 300,
        retries: None,
        headers: Default::default(),
        forward_headers: Vec::new(),
    }
}

/// `chat:*` goes through the subscribe and publish hooks; other channels do not.
fn chat_namespace(c: &mut Config) {
    c.namespaces.namespaces.insert(
        "chat".into(),
        NamespaceSettings {
            subscribe: Some(SubscribeRule::Proxy),
            publish_proxy: Some(true),
            ..Default::default()
        },
    );
}

/// Every hook pointed at `path` of `backend` (`connect`: the connect hook too).
fn all_hooks(c: &mut Config, url: impl Fn(&str) -> String, connect: bool) {
    if connect {
        c.hooks.connect = Some(endpoint(url("connect")));
    }
    c.hooks.subscribe = Some(endpoint(url("subscribe")));
    c.hooks.publish = Some(endpoint(url("publish")));
    c.hooks.rpc = Some(endpoint(url("rpc")));
    c.hooks.refresh = Some(endpoint(url("refresh")));
    chat_namespace(c);
}

async fn chat_node(backend: &Backend) -> TestServer {
    TestServer::with(|c| {
        all_hooks(c, |h| backend.url(h), true);
        let connect = c.hooks.connect.as_mut().unwrap();
        connect.forward_headers = vec!["x-session".into()];
        connect
            .headers
            .insert("authorization".into(), "Bearer backend-secret".into());
    })
    .await
}

fn ws_url_with_token(server: &TestServer, token: &str) -> String {
    format!("{}?token={token}", server.ws_url())
}

/// A WebSocket handshake that carries `header: value`.
async fn connect_with_header(url: &str, header: &str, value: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        axum::http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        hello: Value::Null,
    };
    c.hello = c.recv().await;
    assert_eq!(c.hello["op"], "hello", "{}", c.hello);
    c
}

#[tokio::test]
async fn connect_hook_names_the_user_greets_and_subscribes_initial_channels() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;

    // No token: the backend alone decides who this is.
    let mut guest = connect_with_header(&server.ws_url(), "x-session", "s-123").await;
    assert_eq!(guest.hello["user"], "guest");
    assert_eq!(guest.hello["data"], json!({"role": "guest"}));
    let asked = &backend.asked("connect")[0];
    assert_eq!(asked["connection_id"], guest.hello["connection_id"]);
    assert_eq!(asked["transport"], "ws");
    assert_eq!(asked["node"], "test-node");
    assert_eq!(asked["user"], Value::Null);
    assert_eq!(asked["token"], Value::Null);
    assert!(asked["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(asked["headers"], json!({"x-session": "s-123"}));
    let sent = &backend.headers_of("connect")[0];
    assert_eq!(sent["authorization"], "Bearer backend-secret");
    let pong = guest.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong");

    // A token: the backend names the user, greets, and subscribes it to `news`.
    let mut alice = Client::connect(&ws_url_with_token(&server, "alice")).await;
    assert_eq!(alice.hello["user"], "alice");
    assert_eq!(alice.hello["data"], json!({"role": "member"}));
    let subscribed = alice.recv().await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["channel"], "news");
    let offset = server
        .node
        .gateway()
        .publish("news", r#"{"n":1}"#.into(), None, None);
    offset.await.unwrap();
    let m = alice.recv().await;
    assert_eq!(
        (m["op"].clone(), m["data"].clone()),
        (json!("message"), json!({"n": 1}))
    );
}

#[tokio::test]
async fn connect_hook_refusals_close_with_the_backends_code() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    let (ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(ws_url_with_token(&server, "banned")),
    )
    .await
    .unwrap();
    let mut banned = Client {
        ws,
        hello: Value::Null,
    };
    let (code, frames) = banned.closed().await;
    assert_eq!(code, 4403);
    assert!(
        frames.is_empty(),
        "no hello for a refused client: {frames:?}"
    );
    // A refusal with a code outside 4000-4999 is a malformed answer.
    let (ws, _) = tokio_tungstenite::connect_async(ws_url_with_token(&server, "bad-code"))
        .await
        .unwrap();
    let mut odd = Client {
        ws,
        hello: Value::Null,
    };
    assert_eq!(odd.closed().await.0, 4503);
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"wsgate_hook_calls_total{hook="connect",outcome="rejected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"wsgate_hook_calls_total{hook="connect",outcome="malformed"}"#
        ),
        Some(1.0)
    );
    assert!(metrics.contains(r#"wsgate_hook_latency_seconds_count{hook="connect"} 2"#));
}

#[tokio::test]
async fn with_jwt_the_token_is_verified_before_the_backend_decides() {
    let backend = Backend::start().await;
    let secret = "test-secret-of-32-bytes-or-more!!";
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Some(Secret::new(secret));
        c.hooks.connect = Some(endpoint(backend.url("connect")));
    })
    .await;
    // A forged token never reaches the backend.
    let forged = hs256_token(
        "another-secret-entirely-32-bytes",
        json!({"sub": "mallory", "exp": wsgate_tests::in_a_minute()}),
    );
    let (ws, _) = tokio_tungstenite::connect_async(ws_url_with_token(&server, &forged))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        hello: Value::Null,
    };
    assert_eq!(c.closed().await.0, 4001);
    assert!(backend.asked("connect").is_empty());
    // A valid one does, with the verified user; the backend still decides (here: renames).
    let token = hs256_token(
        secret,
        json!({"sub": "bob", "exp": wsgate_tests::in_a_minute()}),
    );
    let c = Client::connect(&ws_url_with_token(&server, &token)).await;
    let asked = &backend.asked("connect")[0];
    assert_eq!(asked["user"], "bob");
    assert_eq!(asked["token"], token.as_str());
    assert_eq!(
        c.hello["user"],
        token.as_str(),
        "the backend's answer names the user"
    );
}

#[tokio::test]
async fn subscribe_hook_allows_with_data_or_denies_in_proxied_namespaces_only() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    let mut c = Client::connect(&server.ws_url()).await;
    let ok = c
        .request(json!({"op": "subscribe", "channel": "chat:lobby", "id": 1}))
        .await;
    assert_eq!(ok["op"], "subscribed", "{ok}");
    assert_eq!(ok["data"], json!({"welcome": "chat:lobby"}));
    assert_eq!(backend.asked("subscribe")[0]["user"], "guest");
    let denied = c
        .request(json!({"op": "subscribe", "channel": "chat:secret", "id": 2}))
        .await;
    assert_eq!(
        (
            denied["op"].clone(),
            denied["code"].clone(),
            denied["backend_code"].clone(),
            denied["id"].clone()
        ),
        (json!("error"), json!("denied"), json!(403), json!(2)),
        "{denied}"
    );
    assert_eq!(denied["message"], "members only");
    // Outside `chat`, the backend is not asked.
    let plain = c.subscribe("lobby").await;
    assert!(plain.get("data").is_none());
    assert_eq!(backend.asked("subscribe").len(), 2);
}

#[tokio::test]
async fn publish_hook_moderates_and_rewrites_what_subscribers_get() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    let mut reader = Client::connect(&server.ws_url()).await;
    reader.subscribe("chat:room").await;
    let mut writer = Client::connect(&ws_url_with_token(&server, "alice")).await;
    assert_eq!(writer.recv().await["channel"], "news");
    writer.subscribe("chat:room").await;

    let rejected = writer
        .request(
            json!({"op": "publish", "channel": "chat:room", "data": {"text": "darn it"}, "id": 7}),
        )
        .await;
    assert_eq!(
        (rejected["code"].clone(), rejected["id"].clone()),
        (json!("denied"), json!(7))
    );
    assert_eq!(rejected["backend_code"], 400);
    writer
        .send(json!({"op": "publish", "channel": "chat:room", "data": {"text": "hello"}}))
        .await;
    // The writer subscribes too: its own message and the answer, in either order.
    let mut ops = [writer.recv().await, writer.recv().await].map(|f| f["op"].clone());
    ops.sort_by_key(|op| op.to_string());
    assert_eq!(ops, [json!("message"), json!("published")]);
    // The moderated publication is the backend's: rejected text never reached the room.
    let m = reader.recv().await;
    assert_eq!(m["data"], json!({"text": "hello", "by": "alice"}));
    let asked = backend.asked("publish");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1]["channel"], "chat:room");
    assert_eq!(asked[1]["data"], json!({"text": "hello"}));
}

#[tokio::test]
async fn rpc_goes_to_the_backend_and_comes_back_with_its_id() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    let mut c = Client::connect(&ws_url_with_token(&server, "alice")).await;
    let _news = c.recv().await;
    let r = c
        .request(json!({"op": "rpc", "id": "a1", "method": "whoami", "data": null}))
        .await;
    assert_eq!(r["op"], "rpc_result", "{r}");
    assert_eq!(r["id"], "a1");
    assert_eq!(r["data"]["user"], "alice");
    assert_eq!(r["data"]["transport"], "ws");
    assert_eq!(r["data"]["connection_id"], c.hello["connection_id"]);
    let echo = c
        .request(json!({"op": "rpc", "id": 2, "method": "echo", "data": [1, {"x": "y"}]}))
        .await;
    assert_eq!(echo["data"], json!([1, {"x": "y"}]));
    let unknown = c
        .request(json!({"op": "rpc", "id": 3, "method": "nope"}))
        .await;
    assert_eq!(
        (
            unknown["op"].clone(),
            unknown["code"].clone(),
            unknown["backend_code"].clone(),
            unknown["id"].clone()
        ),
        (json!("error"), json!("denied"), json!(404), json!(3))
    );
    // Without an rpc hook, rpc is refused plainly.
    let bare = TestServer::start().await;
    let mut c = Client::connect(&bare.ws_url()).await;
    let r = c
        .request(json!({"op": "rpc", "id": 1, "method": "x"}))
        .await;
    assert_eq!(r["code"], "unsupported");
}

#[tokio::test]
async fn refresh_hook_extends_or_ends_an_expiring_connection() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    // `expiring` gets an `expire_at` one second out; the refresh hook extends it by an hour.
    let mut kept = Client::connect(&ws_url_with_token(&server, "expiring")).await;
    let mut ended = Client::connect(&ws_url_with_token(&server, "ending")).await;
    // `ending` is told to go by the backend: closed 4001.
    assert_eq!(ended.closed().await.0, 4001);
    wsgate_tests::eventually("the refresh hook asked about `expiring`", || async {
        backend
            .asked("refresh")
            .iter()
            .any(|b| b["user"] == "expiring")
            .then_some(())
    })
    .await;
    let asked = backend.asked("refresh");
    let about = asked.iter().find(|b| b["user"] == "expiring").unwrap();
    assert_eq!(about["connection_id"], kept.hello["connection_id"]);
    // Still open, with no `token_expired` before its answer.
    let pong = kept.request(json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
}

/// How a backend fails, and the URL of each hook of that failure.
#[derive(Debug, Clone, Copy)]
enum Broken {
    Timeout,
    ServerError,
    Malformed,
    Down,
}

impl Broken {
    const ALL: [Broken; 4] = [
        Broken::Timeout,
        Broken::ServerError,
        Broken::Malformed,
        Broken::Down,
    ];

    fn outcome(self) -> &'static str {
        match self {
            Broken::Timeout => "timeout",
            Broken::ServerError => "status",
            Broken::Malformed => "malformed",
            Broken::Down => "down",
        }
    }

    fn url(self, backend: &Backend, down: SocketAddr) -> String {
        match self {
            Broken::Timeout => backend.url("slow"),
            Broken::ServerError => backend.url("fail"),
            Broken::Malformed => backend.url("garbage"),
            Broken::Down => format!("http://{down}/connect"),
        }
    }
}

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn every_hook_failure_is_backend_unavailable_and_nothing_hangs() {
    let backend = Backend::start().await;
    let down = closed_port().await;
    for broken in Broken::ALL {
        let url = broken.url(&backend, down);
        // connect: the client is closed with 4503 (within the bounded wait of `closed`).
        let server = TestServer::with(|c| all_hooks(c, |_| url.clone(), true)).await;
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .unwrap();
        let mut refused = Client {
            ws,
            hello: Value::Null,
        };
        let (code, _) = refused.closed().await;
        assert_eq!(code, 4503, "{broken:?}");

        // subscribe, publish, rpc: an error frame each, and the connection goes on.
        let server = TestServer::with(|c| all_hooks(c, |_| url.clone(), false)).await;
        let mut c = Client::connect(&server.ws_url()).await;
        let sub = c
            .request(json!({"op": "subscribe", "channel": "chat:x", "id": 1}))
            .await;
        assert_eq!(
            (sub["code"].clone(), sub["id"].clone()),
            (json!("backend_unavailable"), json!(1)),
            "{broken:?}: {sub}"
        );
        c.subscribe("plain").await;
        let publish = c
            .request(json!({"op": "publish", "channel": "chat:x", "data": 1, "id": 2}))
            .await;
        // Not subscribed to chat:x (its subscribe failed): refused before the hook.
        assert_eq!(publish["code"], "forbidden", "{publish}");
        let rpc = c
            .request(json!({"op": "rpc", "method": "echo", "id": 3}))
            .await;
        assert_eq!(rpc["code"], "backend_unavailable", "{broken:?}: {rpc}");
        let pong = c.request(json!({"op": "ping"})).await;
        assert_eq!(pong["op"], "pong");
        let metrics = server.metrics().await;
        for hook in ["subscribe", "rpc"] {
            let series = format!(
                r#"wsgate_hook_calls_total{{hook="{hook}",outcome="{}"}}"#,
                broken.outcome()
            );
            assert!(
                metric_value(&metrics, &series).unwrap_or(0.0) >= 1.0,
                "{series}"
            );
        }
    }
}

#[tokio::test]
async fn a_failing_publish_hook_publishes_nothing() {
    let backend = Backend::start().await;
    let down = closed_port().await;
    for broken in Broken::ALL {
        let url = broken.url(&backend, down);
        let good = backend.url("subscribe");
        let server = TestServer::with(|c| {
            chat_namespace(c);
            c.hooks.subscribe = Some(endpoint(good.clone()));
            c.hooks.publish = Some(endpoint(url.clone()));
        })
        .await;
        let mut c = Client::connect(&server.ws_url()).await;
        c.subscribe("chat:x").await;
        let r = c
            .request(json!({"op": "publish", "channel": "chat:x", "data": {"text": "hi"}, "id": 9}))
            .await;
        assert_eq!(
            (r["code"].clone(), r["id"].clone()),
            (json!("backend_unavailable"), json!(9)),
            "{broken:?}: {r}"
        );
        // Nothing was published: the next frame is the pong, not a message.
        let pong = c.request(json!({"op": "ping"})).await;
        assert_eq!(pong["op"], "pong", "{broken:?}: {pong}");
    }
}

#[tokio::test]
async fn a_failing_refresh_hook_leaves_the_grace_then_closes() {
    let backend = Backend::start().await;
    let down = closed_port().await;
    for broken in Broken::ALL {
        let good = backend.url("connect");
        let url = broken.url(&backend, down);
        let server = TestServer::with(|c| {
            c.hooks.connect = Some(endpoint(good.clone()));
            c.hooks.refresh = Some(endpoint(url.clone()));
            c.auth.token_grace_ms = 300;
        })
        .await;
        let mut c = Client::connect(&ws_url_with_token(&server, "expiring")).await;
        let (code, frames) = c.closed().await;
        assert_eq!(code, 4001, "{broken:?}");
        assert_eq!(frames.len(), 1, "{broken:?}: {frames:?}");
        assert_eq!(frames[0]["code"], "backend_unavailable", "{broken:?}");
    }
}

/// A node's configuration file pointing every hook at `backend`.
fn config_file(backend: &Backend, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.toml"));
    let toml = format!(
        "[hooks.connect]\nurl = \"{}\"\n[hooks.publish]\nurl = \"{}\"\n\
         [namespaces.chat]\npublish_proxy = true\n",
        backend.url("connect"),
        backend.url("publish"),
    );
    std::fs::write(&file, toml).unwrap();
    file
}

#[tokio::test]
async fn connect_and_publish_hooks_on_two_nodes_with_redis() {
    let backend = Backend::start().await;
    let cluster = Cluster::start(Via::Redis).await;
    let file = config_file(&backend, "two-nodes");
    let config = file.to_str().unwrap();
    let a = cluster.node("hooks-a", &["--config", config]).await;
    let b = cluster.node("hooks-b", &["--config", config]).await;
    let mut reader = Client::connect(&b.ws_url()).await;
    assert_eq!(reader.hello["user"], "guest");
    reader.subscribe("chat:room").await;
    let mut writer = Client::connect(&format!("{}?token=alice", a.ws_url())).await;
    assert_eq!(writer.hello["user"], "alice");
    assert_eq!(writer.hello["data"], json!({"role": "member"}));
    assert_eq!(writer.recv().await["channel"], "news");
    writer.subscribe("chat:room").await;
    let rejected = writer
        .request(json!({"op": "publish", "channel": "chat:room", "data": {"text": "darn"}}))
        .await;
    assert_eq!(rejected["code"], "denied");
    writer
        .send(json!({"op": "publish", "channel": "chat:room", "data": {"text": "hi"}}))
        .await;
    let mut ops = [writer.recv().await, writer.recv().await].map(|f| f["op"].clone());
    ops.sort_by_key(|op| op.to_string());
    assert_eq!(ops, [json!("message"), json!("published")]);
    let m = reader.recv().await;
    assert_eq!(m["data"], json!({"text": "hi", "by": "alice"}));
    let nodes: Vec<String> = backend
        .asked("connect")
        .iter()
        .map(|b| b["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes, ["hooks-b", "hooks-a"]);
}

#[tokio::test]
async fn socketio_clients_get_the_same_hooks_through_acks() {
    let backend = Backend::start().await;
    let server = chat_node(&backend).await;
    let mut sio = wsgate_tests::socketio::SioDriver::start().await;
    let base = server.http("");
    let opts = json!({"auth": {"token": "alice"}, "transports": ["websocket"]});
    let line = sio.connect("a", &base, opts).await;
    assert_eq!(line["type"], "connect", "{line}");
    let hello = sio.event("a", "hello").await.remove(0);
    assert_eq!(hello["user"], "alice");
    assert_eq!(hello["data"], json!({"role": "member"}));
    assert_eq!(backend.asked("connect")[0]["transport"], "socketio");
    assert_eq!(
        backend.asked("connect")[0]["connection_id"],
        hello["connection_id"]
    );
    let initial = sio.event("a", "subscribed").await.remove(0);
    assert_eq!(initial["channel"], "news");

    let ack = sio.emit("a", "rpc", json!({"method": "whoami"})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["data"]["user"], "alice");
    assert_eq!(ack["data"]["transport"], "socketio");
    let ok = sio.emit("a", "subscribe", json!("chat:lobby")).await;
    assert_eq!(ok["data"], json!({"welcome": "chat:lobby"}), "{ok}");
    let denied = sio.emit("a", "subscribe", json!("chat:secret")).await;
    assert_eq!(
        (
            denied["ok"].clone(),
            denied["error"].clone(),
            denied["backend_code"].clone()
        ),
        (json!(false), json!("denied"), json!(403))
    );

    let refused = sio
        .connect(
            "b",
            &base,
            json!({"auth": {"token": "banned"}, "transports": ["websocket"]}),
        )
        .await;
    assert_eq!(refused["type"], "connect_error");
    assert_eq!(refused["message"], "banned from this chat");
}

#[tokio::test]
async fn hooks_reach_an_https_backend_trusted_through_ssl_cert_file() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let backend = Backend::start_tls(&cert).await;
    let dir = std::env::temp_dir().join(format!("wsgate-hooks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("backend.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let config = dir.join("wsgate.toml");
    let port = backend.addr.port();
    std::fs::write(
        &config,
        format!(
            "[hooks.connect]\nurl = \"https://localhost:{port}/connect\"\n\
             [hooks.rpc]\nurl = \"https://localhost:{port}/rpc\"\n"
        ),
    )
    .unwrap();
    let node = Process::spawn_env(
        &["--config", config.to_str().unwrap()],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    )
    .await;
    let mut alice = Client::connect(&format!("ws://{}/ws?token=alice", node.addr)).await;
    assert_eq!(alice.hello["user"], "alice", "{}", alice.hello);
    assert_eq!(alice.hello["data"], json!({"role": "member"}));
    let initial = alice.recv().await;
    assert_eq!(
        (&initial["op"], &initial["channel"]),
        (&json!("subscribed"), &json!("news"))
    );
    let r = alice
        .request(json!({"op": "rpc", "id": 1, "method": "echo", "data": {"over": "tls"}}))
        .await;
    assert_eq!(r["op"], "rpc_result", "{r}");
    assert_eq!(r["data"], json!({"over": "tls"}));
    assert_eq!(backend.asked("connect").len(), 1);

    // Without the CA the backend is not trusted: the connect hook cannot be asked (4503).
    let untrusting = Process::spawn_env(
        &["--config", config.to_str().unwrap()],
        &[("SSL_CERT_FILE", "/nonexistent.pem")],
    )
    .await;
    let url = format!("ws://{}/ws?token=bob", untrusting.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut refused = Client {
        ws,
        hello: Value::Null,
    };
    assert_eq!(refused.closed().await.0, 4503);
    assert!(backend.asked("connect").iter().all(|b| b["token"] != "bob"));
}
