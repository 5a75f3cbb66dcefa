//! The upstream manager against servers that behave like real exchanges, through the real
//! binary: `wss://` with a CA made here and given through `SSL_CERT_FILE` (plus an expired
//! certificate, a wrong hostname, an unknown issuer, a per-connection CA and mutual TLS), a
//! signed login checked (HMAC and timestamp freshness) on every connection, a flapping
//! server whose accept intervals must grow, the reconnect API on a failed connection, and
//! `Retry-After` on a 429 handshake.

use wsgate_tests as support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Process, TestServer, eventually, get_json, post_json, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_tungstenite::tungstenite::Message;
use wsgate_grpc::client::*;

// ---- a test PKI -------------------------------------------------------------------------

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `names`; `expired` puts its validity in 2020.
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        self.leaf_until(names, expired.then_some(-2200))
    }

    /// A certificate for `names` ending `days` from today (`None`: rcgen's default, far).
    fn leaf_until(&self, names: &[&str], days: Option<i64>) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if let Some(days) = days {
            let today = (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400) as i64;
            let (y, m, d) = civil(today - 3000);
            params.not_before = date_time_ymd(y, m, d);
            let (y, m, d) = civil(today + days);
            params.not_after = date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// Year, month, day of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

fn acceptor(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsAcceptor {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn temp_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("wsgate-exchange-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

// ---- scriptable exchange servers ----------------------------------------------------------

/// What a test server does with each connection.
#[derive(Clone)]
enum Script {
    /// Completes the WebSocket handshake and keeps the connection open.
    Hold,
    /// Checks a signed login (HMAC-SHA256 of `<ts>GET/realtime`, timestamp within 5 s) on
    /// every login message; answers `{"event":"login"}`; drops connections numbered below
    /// `keep_from` right after the first login, to force re-logins.
    SignedLogin { secret: String, keep_from: usize },
    /// Answers the first message with `{"event":"login"}`, then closes at once.
    Flap,
    /// Answers the first `n` handshakes with 429 and `Retry-After: <secs>`, then holds.
    Throttle { n: usize, secs: u64 },
}

#[derive(Default)]
struct Log {
    accepts: Vec<Instant>,
    good_logins: usize,
    bad_logins: Vec<String>,
    /// Good logins per connection (index: connection number, from 0).
    logins_on: Vec<usize>,
}

struct Exchange {
    port: u16,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exchange {
    /// A wss exchange that shows `leaf` and holds every connection ([`Script::Hold`]).
    async fn holding(leaf: &Leaf) -> Self {
        Self::start(Script::Hold, Some(acceptor(leaf, None))).await
    }

    /// A plain exchange that wants logins signed with `secret` ([`Script::SignedLogin`]).
    async fn signed_login(secret: &str, keep_from: usize) -> Self {
        let script = Script::SignedLogin {
            secret: secret.into(),
            keep_from,
        };
        Self::start(script, None).await
    }

    async fn start(script: Script, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let n = {
                    let mut log = l.lock();
                    log.accepts.push(Instant::now());
                    log.logins_on.push(0);
                    log.accepts.len() - 1
                };
                let (script, tls, log) = (script.clone(), tls.clone(), l.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            // Failed TLS handshakes are what some tests are about.
                            if let Ok(stream) = acc.accept(tcp).await {
                                serve(stream, n, script, log).await;
                            }
                        }
                        None => serve(tcp, n, script, log).await,
                    }
                });
            }
        });
        Self { port, log, task }
    }

    fn url(&self, host: &str, tls: bool) -> String {
        let scheme = if tls { "wss" } else { "ws" };
        format!("{scheme}://{host}:{}/feed", self.port)
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Log) -> bool) {
        let pred = &pred;
        eventually(what, || async move { pred(&self.log.lock()).then_some(()) }).await;
    }
}

async fn serve<S>(mut stream: S, n: usize, script: Script, log: Arc<Mutex<Log>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Script::Throttle { n: first, secs } = script
        && n < first
    {
        // Read the request head, answer 429, close.
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got += k,
            }
        }
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        match &script {
            Script::Hold | Script::Throttle { .. } => {}
            Script::Flap => {
                let _ = ws.send(Message::text(r#"{"event":"login"}"#)).await;
                return; // dropped at once
            }
            Script::SignedLogin { secret, keep_from } => {
                match check_login(&text, secret) {
                    Ok(()) => {
                        {
                            let mut log = log.lock();
                            log.good_logins += 1;
                            log.logins_on[n] += 1;
                        }
                        let _ = ws.send(Message::text(r#"{"event":"login"}"#)).await;
                    }
                    Err(why) => {
                        log.lock().bad_logins.push(why);
                        let _ = ws.send(Message::text(r#"{"event":"error"}"#)).await;
                    }
                }
                if n < *keep_from {
                    return; // force a re-login on a new connection
                }
            }
        }
    }
    // A clean end: TLS close_notify after the WebSocket close handshake.
    let _ = ws.into_inner().shutdown().await;
}

/// The exchange's side of a signed login: `{"op":"login","key":"K","ts":"<ms>","sig":"<hex>"}`.
fn check_login(text: &str, secret: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}: {text}"))?;
    let ts = v["ts"].as_str().ok_or(format!("no ts: {text}"))?;
    let ts_ms: u64 = ts.parse().map_err(|_| format!("ts not a number: {text}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if now.abs_diff(ts_ms) > 5_000 {
        return Err(format!("stale timestamp {ts_ms} (now {now})"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}GET/realtime").as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if v["sig"] != want.as_str() {
        return Err(format!("bad signature: {text}"));
    }
    Ok(())
}

// ---- the node ---------------------------------------------------------------------------

struct Node {
    p: Process,
}

impl Node {
    async fn start(envs: &[(&str, &str)]) -> Self {
        Self {
            p: Process::spawn_env(&[], envs).await,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.p.addr)
    }

    async fn connect(&self, body: Value) -> (String, Value) {
        let (status, r) = post_json(&self.url("/api/v1/upstreams"), body).await;
        assert_eq!(status, 200, "{r}");
        (r["connection_id"].as_str().unwrap().to_string(), r)
    }

    async fn view(&self, id: &str) -> Value {
        let (status, r) = get_json(&self.url(&format!("/api/v1/upstreams/{id}"))).await;
        assert_eq!(status, 200, "{r}");
        r["upstream"].clone()
    }

    async fn await_view(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        eventually(what, || async move {
            let v = self.view(id).await;
            pred(&v).then_some(v)
        })
        .await
    }

    /// Connects to `url` (TLS extras in `tls`) and returns the state and last error once the
    /// first attempt is over.
    async fn first_attempt(&self, url: &str, tls: Value) -> (String, String) {
        let mut body = json!({
            "url": url,
            "wait_ms": 0,
            "reconnect": {"initial_ms": 60000, "max_ms": 60000, "max_attempts": 1, "jitter": 0.0},
        });
        if !tls.is_null() {
            body["tls"] = tls;
        }
        let (id, _) = self.connect(body).await;
        let v = self
            .await_view(&id, "the first attempt to end", |v| {
                v["state"] == "connected" || !v["last_error"].is_null()
            })
            .await;
        (
            v["state"].as_str().unwrap().to_string(),
            v["last_error"].as_str().unwrap_or_default().to_string(),
        )
    }
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_test_ca_from_ssl_cert_file_and_clear_errors() {
    let ca = Ca::new("wsgate test CA");
    let ca_file = temp_file("ca.pem", &ca.pem());
    let good = Exchange::holding(&ca.leaf(&["localhost"], false)).await;
    let expired = Exchange::holding(&ca.leaf(&["localhost"], true)).await;
    let other_host = Exchange::holding(&ca.leaf(&["exchange.example"], false)).await;
    let private = Ca::new("private gateway CA");
    let untrusted = Exchange::holding(&private.leaf(&["localhost"], false)).await;
    let node = Node::start(&[("SSL_CERT_FILE", &ca_file)]).await;

    let (state, err) = node
        .first_attempt(&good.url("localhost", true), Value::Null)
        .await;
    assert_eq!((state.as_str(), err.as_str()), ("connected", ""));

    let (state, err) = node
        .first_attempt(&expired.url("localhost", true), Value::Null)
        .await;
    assert_ne!(state, "connected");
    assert!(err.contains("certificate has expired"), "{err}");

    let (_, err) = node
        .first_attempt(&other_host.url("localhost", true), Value::Null)
        .await;
    assert!(err.contains("hostname mismatch"), "{err}");

    let (_, err) = node
        .first_attempt(&untrusted.url("localhost", true), Value::Null)
        .await;
    assert!(err.contains("unknown issuer"), "{err}");

    // The same server with its CA given for this connection only.
    let (state, err) = node
        .first_attempt(
            &untrusted.url("localhost", true),
            json!({"ca_pem": private.pem()}),
        )
        .await;
    assert_eq!((state.as_str(), err.as_str()), ("connected", ""));

    // A CA that does not parse is refused up front.
    let (status, r) = post_json(
        &node.url("/api/v1/upstreams"),
        json!({"url": good.url("localhost", true), "tls": {"ca_pem": "not a certificate"}}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let ca = Ca::new("wsgate test CA");
    let ca_file = temp_file("mtls-ca.pem", &ca.pem());
    let clients = Ca::new("exchange client CA");
    let server = Exchange::start(
        Script::Hold,
        Some(acceptor(&ca.leaf(&["localhost"], false), Some(&clients))),
    )
    .await;
    let node = Node::start(&[("SSL_CERT_FILE", &ca_file)]).await;
    let url = server.url("localhost", true);

    let (state, err) = node.first_attempt(&url, Value::Null).await;
    assert_ne!(state, "connected", "no client certificate: refused");
    assert!(!err.is_empty());

    let me = clients.leaf(&["trading-bot"], false);
    let (state, err) = node
        .first_attempt(
            &url,
            json!({"client_cert_pem": me.cert_pem, "client_key_pem": me.key_pem}),
        )
        .await;
    assert_eq!((state.as_str(), err.as_str()), ("connected", ""));
    // The key is never shown.
    let (_, list) = get_json(&node.url("/api/v1/upstreams")).await;
    assert!(!list.to_string().contains("PRIVATE KEY"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_logins_are_fresh_on_every_connection_and_refresh() {
    let secret = "exchange-secret-42";
    let ex = Exchange::signed_login(secret, 3).await;
    let node = Node::start(&[]).await;
    let (id, _) = node
        .connect(json!({
            "url": ex.url("127.0.0.1", false),
            "wait_ms": 0,
            "auth": {
                "messages": [{"op": "login", "key": "K", "ts": "{{timestamp_ms}}", "sig": "{{signature}}"}],
                "sign": {"algorithm": "hmac-sha256", "secret": secret, "payload": "{{timestamp_ms}}GET/realtime", "encoding": "hex"},
                "expect": {"field": "event", "equals": "login"},
                "refresh_ms": 300,
            },
            "reconnect": {"initial_ms": 20, "max_ms": 100, "max_attempts": null, "jitter": 0.0},
        }))
        .await;
    // Connections 0..2 are dropped after their login: three re-logins, each freshly signed;
    // connection 3 stays and its login is refreshed on the open connection.
    ex.wait(
        "three dropped connections with good logins and two refreshes",
        |l| l.logins_on.len() >= 4 && l.logins_on[..3] == [1, 1, 1] && l.logins_on[3] >= 3,
    )
    .await;
    {
        let log = ex.log.lock();
        assert!(log.good_logins >= 3);
        assert!(log.bad_logins.is_empty(), "{:?}", log.bad_logins);
    }
    // The secret is never shown.
    let v = node.view(&id).await;
    assert_eq!(v["state"], "connected", "{v}");
    let (_, list) = get_json(&node.url("/api/v1/upstreams")).await;
    let (_, conns) = get_json(&node.url("/connections")).await;
    for text in [v.to_string(), list.to_string(), conns.to_string()] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_server_is_retried_with_growing_delays_then_restarted_by_the_api() {
    let ex = Exchange::start(Script::Flap, None).await;
    let node = Node::start(&[]).await;
    let (id, _) = node
        .connect(json!({
            "url": ex.url("127.0.0.1", false),
            "wait_ms": 0,
            "auth": {"messages": ["login"], "expect": {"field": "event", "equals": "login"}},
            "subscriptions": [{"key": "trades", "message": "SUB trades"}],
            "reconnect": {"initial_ms": 100, "max_ms": 800, "max_attempts": 4, "jitter": 0.0},
            "breaker": {"failure_threshold": 0, "cooldown_ms": 1},
        }))
        .await;
    // 1 + 4 attempts, each accepted, authenticated and closed at once: then `failed`.
    let v = node
        .await_view(&id, "the connection to give up", |v| v["state"] == "failed")
        .await;
    let accepts = ex.log.lock().accepts.clone();
    assert_eq!(accepts.len(), 5, "{v}");
    let gaps: Vec<Duration> = accepts.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays 100, 200, 400, 800 ms: every gap at least its delay and longer than the last.
    for (gap, delay) in gaps.iter().zip([100, 200, 400, 800]) {
        assert!(*gap >= Duration::from_millis(delay), "{gaps:?}");
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "must grow: {gaps:?}");

    // The reconnect API restarts it with the same id, auth and subscriptions.
    let (status, r) = post_json(
        &node.url(&format!("/api/v1/upstreams/{id}/reconnect")),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    ex.wait("a new connection after the restart", |l| {
        l.accepts.len() >= 6
    })
    .await;
    let v = node.view(&id).await;
    assert_ne!(v["state"], "failed", "{v}");
    assert_eq!(v["subscriptions"], json!(["trades"]));
    let (status, r) = post_json(&node.url("/api/v1/upstreams/nope-x/reconnect"), json!({})).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (404, Some("Connection not found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_a_429_handshake_is_honoured() {
    let ex = Exchange::start(Script::Throttle { n: 1, secs: 1 }, None).await;
    let node = Node::start(&[]).await;
    let (id, _) = node
        .connect(json!({
            "url": ex.url("127.0.0.1", false),
            "wait_ms": 0,
            "reconnect": {"initial_ms": 10, "max_ms": 5000, "max_attempts": null, "jitter": 0.0},
        }))
        .await;
    let v = node
        .await_view(&id, "connected after the throttle", |v| {
            v["state"] == "connected"
        })
        .await;
    let accepts = ex.log.lock().accepts.clone();
    assert_eq!(accepts.len(), 2, "{v}");
    let gap = accepts[1] - accepts[0];
    assert!(
        gap >= Duration::from_millis(950),
        "waited Retry-After, not 10 ms: {gap:?}"
    );
}

/// The same signed login and a restart through gRPC: one control façade behind both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connect_with_a_signed_login_and_reconnect() {
    let secret = "grpc-secret-7";
    let ex = Exchange::signed_login(secret, 0).await;
    let srv = TestServer::start().await;
    let endpoint = tonic::transport::Endpoint::from_shared(srv.grpc_url()).unwrap();
    let mut c = WsGateClient::new(within("gRPC connect", endpoint.connect()).await.unwrap());
    let r = within(
        "Connect",
        c.connect(ConnectRequest {
            url: ex.url("127.0.0.1", false),
            auth: Some(AuthStep {
                messages: vec![
                    r#"{"op":"login","key":"K","ts":"{{timestamp_ms}}","sig":"{{signature}}"}"#
                        .into(),
                ],
                expect_field: Some("event".into()),
                expect_equals_json: Some(r#""login""#.into()),
                sign: Some(SignStep {
                    algorithm: "hmac-sha256".into(),
                    secret: secret.into(),
                    payload: "{{timestamp_ms}}GET/realtime".into(),
                    encoding: "hex".into(),
                }),
                ..Default::default()
            }),
            wait_ms: Some(5000),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(r.success, "{}", r.error);
    assert_eq!(r.state, "connected");
    let id = r.connection_id;

    let r = reconnect(&mut c, "Reconnect", &id).await;
    assert!(r.success, "{}", r.error);
    ex.wait("a fresh, good login on a second connection", |l| {
        l.logins_on.len() >= 2 && l.logins_on[1] == 1
    })
    .await;
    assert!(ex.log.lock().bad_logins.is_empty());
    let r = reconnect(&mut c, "Reconnect unknown", "nope-x").await;
    assert_eq!(
        (r.success, r.error.as_str()),
        (false, "Connection not found")
    );
    srv.shutdown().await;
}

/// The gRPC `Reconnect` of `connection_id` (`what` names the call in a timeout).
async fn reconnect(
    c: &mut WsGateClient<tonic::transport::Channel>,
    what: &str,
    connection_id: &str,
) -> ReconnectReply {
    let req = ReconnectRequest {
        connection_id: connection_id.into(),
    };
    within(what, c.reconnect(req)).await.unwrap().into_inner()
}

/// `wsgate ARGS` with `envs`: (exit code, stdout, stderr).
async fn wsgate(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let o = support::run_cli(args, envs, stdin).await;
    (o.code, o.stdout, o.stderr)
}

/// Doctor's `tls` check, from `wsgate doctor URL --json`.
async fn doctor_tls(url: &str, ca_file: &str) -> Value {
    let (_, out, _) = wsgate(
        &["doctor", url, "--json", "--idle", "1s", "--timeout", "3s"],
        &[("SSL_CERT_FILE", ca_file)],
        "",
    )
    .await;
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tls")
        .cloned()
        .unwrap_or_else(|| panic!("no tls check: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_doctor_reach_wss() {
    let ca = Ca::new("wsgate test CA");
    let ca_file = temp_file("cli-ca.pem", &ca.pem());
    let good = Exchange::holding(&ca.leaf(&["localhost"], false)).await;
    let url = good.url("localhost", true);

    let (code, _, err) = wsgate(&["connect", &url], &[("SSL_CERT_FILE", &ca_file)], "hi\n").await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("connected to {url}")), "{err}");
    let (code, _, err) = wsgate(&["connect", &url], &[], "hi\n").await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown issuer"), "{err}");

    let tls = doctor_tls(&url, &ca_file).await;
    assert_eq!(tls["status"], "PASS", "{tls}");
    let detail = tls["detail"].as_str().unwrap();
    for part in [
        "subject CN=localhost",
        "issuer CN=wsgate test CA",
        "day(s) left",
        "hostname matches",
    ] {
        assert!(detail.contains(part), "{part}: {detail}");
    }

    let expired = Exchange::holding(&ca.leaf(&["localhost"], true)).await;
    let tls = doctor_tls(&expired.url("localhost", true), &ca_file).await;
    assert_eq!(tls["status"], "FAIL", "{tls}");
    assert!(
        tls["detail"]
            .as_str()
            .unwrap()
            .starts_with("certificate has expired"),
        "{tls}"
    );

    let soon = Exchange::holding(&ca.leaf_until(&["localhost"], Some(5))).await;
    let tls = doctor_tls(&soon.url("localhost", true), &ca_file).await;
    assert_eq!(tls["status"], "WARN", "{tls}");

    let other = Exchange::holding(&ca.leaf(&["exchange.example"], false)).await;
    let tls = doctor_tls(&other.url("localhost", true), &ca_file).await;
    assert_eq!(tls["status"], "FAIL", "{tls}");
    let detail = tls["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("hostname mismatch") && detail.contains("hostname does NOT match"),
        "{detail}"
    );
}
