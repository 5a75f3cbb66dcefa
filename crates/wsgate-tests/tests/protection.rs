//! Protection (issue 7): every limit driven through real sockets. Each test checks the status
//! or close code, the metric, and that a well-behaved client on the same node keeps receiving
//! every publication meanwhile.

use wsgate_tests as support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A subscriber that must see every publication on `watch`, in order.
struct Watcher {
    client: Client,
    published: u64,
}

impl Watcher {
    async fn new(srv: &TestServer) -> Self {
        let client = Client::subscribed(&srv.ws_url(), "watch").await;
        Self {
            client,
            published: 0,
        }
    }

    /// Publishes one message and checks the watcher receives it (nothing lost, nothing late).
    async fn check(&mut self, srv: &TestServer) {
        self.published += 1;
        let n = self.published;
        let (status, body) = srv
            .post("/api/v1/publish", json!({"channel":"watch","data":{"n":n}}))
            .await;
        assert_eq!(status, 200, "{body}");
        let m = self.client.recv().await;
        assert_eq!(m["op"], "message", "{m}");
        assert_eq!(m["data"]["n"], n, "watcher missed a publication: {m}");
    }

    /// The last [`Self::check`], then the node's shutdown: how every test here ends.
    async fn finish(mut self, srv: TestServer) {
        self.check(&srv).await;
        srv.shutdown().await;
    }
}

/// An upgrade with extra headers that must succeed (`what` names it when it does not).
async fn admitted(srv: &TestServer, headers: &[(&'static str, &str)], what: &str) -> Client {
    try_upgrade(srv, headers).await.expect(what)
}

/// One upgrade attempt with one extra header (name, value), and what must come of it;
/// the last field names the attempt.
#[derive(Clone, Copy)]
enum Upgrade {
    /// Admitted.
    Admit(&'static str, &'static str, &'static str),
    /// Refused with 429.
    Refuse(&'static str, &'static str, &'static str),
}
use Upgrade::{Admit, Refuse};

/// The upgrades `steps` in order; the admitted clients, to be kept open.
async fn upgrades(srv: &TestServer, steps: &[Upgrade]) -> Vec<Client> {
    let mut kept = Vec::new();
    for &step in steps {
        match step {
            Admit(header, value, what) => kept.push(admitted(srv, &[(header, value)], what).await),
            Refuse(header, value, what) => {
                let (status, _) = refused(srv, &[(header, value)], what).await;
                assert_eq!(status, 429, "{what}");
            }
        }
    }
    kept
}

/// An upgrade with extra headers that must be refused: (status, retry_after).
async fn refused(
    srv: &TestServer,
    headers: &[(&'static str, &str)],
    what: &str,
) -> (u16, Option<String>) {
    try_upgrade(srv, headers).await.err().expect(what)
}

/// Tries an upgrade with extra headers; `Ok(client)` on 101, `Err((status, retry_after))`.
async fn try_upgrade(
    srv: &TestServer,
    headers: &[(&'static str, &str)],
) -> Result<Client, (u16, Option<String>)> {
    let mut req = srv.ws_url().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match within("upgrade", tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => {
            let mut c = Client {
                ws,
                hello: Value::Null,
            };
            c.hello = c.recv().await;
            Ok(c)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        )),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

async fn rejections(srv: &TestServer, reason: &str) -> f64 {
    metric_value(
        &srv.metrics().await,
        &format!("websocket_connection_rejections_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn node_connection_limit_answers_503_and_turns_ready_false() {
    let srv = TestServer::with(|c| c.limits.max_connections = 3).await;
    let mut w = Watcher::new(&srv).await;
    assert_eq!(srv.get("/ready").await.0, 200);
    let _a = admitted(&srv, &[], "second fits").await;
    let b = admitted(&srv, &[], "third fits").await;
    // 3 of 3: at the limit (and past 95 %), the balancer is told first.
    let (status, ready) = srv.get("/ready").await;
    assert_eq!(status, 503, "{ready}");
    let (status, retry) = refused(&srv, &[], "refused").await;
    assert_eq!(status, 503);
    assert!(retry.is_some(), "Retry-After on 503");
    assert_eq!(rejections(&srv, "node_full").await, 1.0);
    w.check(&srv).await;
    // A place freed is a place given back.
    drop(b);
    eventually("a place to free", || async {
        try_upgrade(&srv, &[]).await.ok()
    })
    .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn per_ip_limits_answer_429_and_honour_only_trusted_proxies() {
    let srv = TestServer::with(|c| {
        tune::per_ip(c, 2);
        c.limits.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let w = Watcher::new(&srv).await;
    let xff = [("x-forwarded-for", "203.0.113.9")];
    let _a = admitted(&srv, &xff, "1st").await;
    let _b = admitted(&srv, &xff, "2nd").await;
    let (status, retry) = refused(&srv, &xff, "3rd refused").await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
    assert_eq!(rejections(&srv, "ip_connections").await, 1.0);
    let _cd = upgrades(
        &srv,
        &[
            // Another client behind the same proxy is another address.
            Admit("x-forwarded-for", "198.51.100.1", "other client IP"),
            // `Forwarded` is not the configured header (a client can send its own through a
            // proxy that only manages X-Forwarded-For): the request counts for the proxy's
            // address. (The watcher holds one place of 127.0.0.1 already.)
            Admit("forwarded", "for=198.51.100.2", "2nd from the proxy itself"),
            Refuse(
                "forwarded",
                "for=198.51.100.4",
                "a client's own Forwarded header does not make it another address",
            ),
        ],
    )
    .await;
    w.finish(srv).await;

    // A proxy that writes RFC 7239 `Forwarded` is named so, and then that header counts.
    let srv = TestServer::with(|c| {
        tune::per_ip(c, 1);
        c.limits.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.limits.client_ip_header = wsgate_server::limits::ClientIpHeader::Forwarded;
    })
    .await;
    let _ab = upgrades(
        &srv,
        &[
            Admit("forwarded", "for=198.51.100.1", "one client"),
            Admit("forwarded", "for=\"[2001:db8::1]:443\"", "another client"),
            Refuse("forwarded", "for=198.51.100.1", "the first client again"),
        ],
    )
    .await;
    srv.shutdown().await;

    // Untrusted peer: the header is ignored, so it cannot dodge the limit by lying.
    let srv = TestServer::with(|c| tune::per_ip(c, 2)).await;
    let w = Watcher::new(&srv).await;
    let _a = upgrades(
        &srv,
        &[
            Admit("x-forwarded-for", "1.1.1.1", "2nd from 127.0.0.1"),
            Refuse(
                "x-forwarded-for",
                "2.2.2.2",
                "a forged header does not help",
            ),
        ],
    )
    .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn per_ip_connect_rate_answers_429_with_retry_after() {
    let srv = TestServer::with(|c| {
        tune::ip_connect_rate(c, 1, 2);
        c.limits.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let w = Watcher::new(&srv).await;
    let storm = [("x-forwarded-for", "192.0.2.77")];
    let mut refused = None;
    // 1/s with a burst of 2: of five attempts in a row, at least one is refused.
    for _ in 0..5 {
        match try_upgrade(&srv, &storm).await {
            Ok(c) => drop(c),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let (status, retry) = refused.expect("the storm was cut");
    assert_eq!(status, 429);
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert!(rejections(&srv, "ip_rate").await >= 1.0);
    w.finish(srv).await;
}

#[tokio::test]
async fn browser_origins_outside_the_allow_list_get_403() {
    let srv =
        TestServer::with(|c| c.limits.allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let w = Watcher::new(&srv).await;
    let (status, _) = refused(
        &srv,
        &[("origin", "https://evil.example.net")],
        "foreign origin refused",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(rejections(&srv, "origin").await, 1.0);
    admitted(
        &srv,
        &[("origin", "https://app.example.com")],
        "listed origin",
    )
    .await;
    w.finish(srv).await;

    // Default: no origin listed, browsers refused; --allow-any-origin lets them in.
    let srv = TestServer::start().await;
    let evil = [("origin", "https://evil.example.net")];
    assert_eq!(try_upgrade(&srv, &evil).await.err().unwrap().0, 403);
    srv.shutdown().await;
    let srv = TestServer::with(|c| c.limits.allow_any_origin = true).await;
    admitted(&srv, &evil, "any origin").await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_user_over_its_connection_limit_is_closed_with_4029() {
    const SECRET: &str = "per-user-limit-secret";
    let srv = TestServer::with(|c| {
        tune::jwt(c, SECRET);
        c.limits.max_connections_per_user = 1;
    })
    .await;
    let token = |sub: &str| hs256_token(SECRET, json!({"sub": sub, "exp": in_a_minute()}));
    let url = |sub: &str| format!("{}?token={}", srv.ws_url(), token(sub));
    let mut w = Watcher {
        client: Client::connect(&url("watcher")).await,
        published: 0,
    };
    w.client.subscribe("watch").await;
    let _first = Client::connect(&url("alice")).await;
    let (ws, _) = within("upgrade", tokio_tungstenite::connect_async(url("alice")))
        .await
        .unwrap();
    let mut second = Client {
        ws,
        hello: Value::Null,
    };
    let (code, texts) = second.closed().await;
    assert_eq!(code, 4029);
    assert!(texts.is_empty(), "refused before hello: {texts:?}");
    assert_eq!(rejections(&srv, "user_connections").await, 1.0);
    w.finish(srv).await;
}

#[tokio::test]
async fn inbound_message_rate_answers_rate_limited_then_closes_4029() {
    let srv = TestServer::with(|c| {
        tune::message_rate(c, 5, 5);
        c.ws.rate_limit_strikes = 20;
    })
    .await;
    let w = Watcher::new(&srv).await;
    let mut flood = Client::connect(&srv.ws_url()).await;
    for _ in 0..40 {
        let _ = flood
            .ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                r#"{"op":"ping"}"#.into(),
            ))
            .await;
    }
    let (code, texts) = flood.closed().await;
    assert_eq!(code, 4029);
    let limited: Vec<_> = texts
        .iter()
        .filter(|t| t["code"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "one error frame per streak: {texts:?}");
    let pongs = texts.iter().filter(|t| t["op"] == "pong").count();
    assert!(
        (5..=7).contains(&pongs),
        "the burst passed, the rest did not: {pongs}"
    );
    srv.await_metric(
        "websocket_disconnections_total{reason=\"rate_limited\"}",
        1.0,
    )
    .await;
    srv.await_metric("wsgate_rate_limited_frames_total{kind=\"messages\"}", 20.0)
        .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn inbound_byte_rate_drops_frames_with_an_error() {
    let srv = TestServer::with(|c| {
        c.ws.max_message_size = 1024;
        tune::byte_rate(c, 1024, 1024);
    })
    .await;
    let w = Watcher::new(&srv).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let big = format!(r#"{{"op":"ping","ts":"{}"}}"#, "x".repeat(700));
    c.send_text(&big).await;
    assert_eq!(c.recv().await["op"], "pong");
    c.send_text(&big).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    srv.await_metric("wsgate_rate_limited_frames_total{kind=\"bytes\"}", 1.0)
        .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn a_client_that_never_upgrades_is_dropped_after_the_handshake_timeout() {
    let srv = TestServer::with(|c| c.listener.handshake_timeout_ms = 300).await;
    let w = Watcher::new(&srv).await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut partial = TcpStream::connect(srv.addr).await.unwrap();
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 256];
        // EOF (or a 408) and then EOF: the server let go of the socket.
        let n = within("the server to drop the socket", async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => {
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
                    }
                }
            }
        })
        .await;
        assert_eq!(n, 0);
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    srv.await_metric(
        "websocket_connection_rejections_total{reason=\"handshake_timeout\"}",
        2.0,
    )
    .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn an_open_control_api_is_rate_limited_per_address_and_the_right_key_is_not() {
    // No API key (a loopback node): every caller is limited by its address.
    let srv = TestServer::with(|c| tune::api_rate(c, 1, 3)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = within("api", http().get(srv.http("/connections")).send())
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    srv.await_metric("wsgate_api_rejections_total{reason=\"rate_limited\"}", 1.0)
        .await;
    // Operations endpoints are not behind the limit.
    assert_eq!(srv.get("/health").await.0, 200);
    srv.shutdown().await;

    // With an API key, the caller presenting it is not limited at all.
    let srv = TestServer::with(|c| {
        tune::api_rate(c, 1, 3);
        tune::api_key(c, "k-123");
    })
    .await;
    let call = |key: &'static str| http().get(srv.http("/connections")).bearer_auth(key).send();
    for _ in 0..20 {
        assert_eq!(within("api", call("k-123")).await.unwrap().status(), 200);
    }
    assert_eq!(within("api", call("other")).await.unwrap().status(), 401);
    srv.shutdown().await;
}

/// The admin console's calls as a browser makes them: same origin (which the allow list, empty
/// by default, does not name), `Origin` on the writes, the key as a Bearer token. The Origin
/// check guards only the WebSocket upgrade; the API is guarded by the key alone.
#[tokio::test]
async fn the_console_is_public_and_its_same_origin_api_calls_need_only_the_key() {
    let srv = TestServer::with(|c| tune::api_key(c, "k-console")).await;
    let origin = format!("http://{}", srv.addr);
    let page = within("GET /admin", http().get(srv.http("/admin")).send())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let mut client = Client::connect(&srv.ws_url()).await;
    let kick = |key: &'static str| {
        http()
            .delete(srv.http(&format!("/api/v1/connections/{}", client.id())))
            .header("origin", &origin)
            .bearer_auth(key)
            .send()
    };
    assert_eq!(within("kick", kick("wrong")).await.unwrap().status(), 401);
    assert_eq!(
        within("kick", kick("k-console")).await.unwrap().status(),
        200
    );
    assert_eq!(client.closed().await.0, 4003);
    // The same origin is still refused for a WebSocket: it is not on the allow list.
    let refused = try_upgrade(&srv, &[("origin", origin.as_str())]).await;
    assert_eq!(refused.err().expect("not on the allow list").0, 403);
    srv.shutdown().await;
}

// ---- Hostile client over a raw socket ----

/// One unmasked server frame from the front of `buf`: opcode, payload, bytes used.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, head) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(head..head + len)?.to_vec();
    Some((buf[0] & 0x0f, payload, head + len))
}

/// A WebSocket client that writes frames by hand.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(srv: &TestServer) -> Self {
        let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
        tcp.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut raw = Self {
            tcp,
            buf: Vec::new(),
        };
        within("101", async {
            while !raw.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                raw.fill().await;
            }
        })
        .await;
        let end = raw.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw.buf.starts_with(b"HTTP/1.1 101"));
        raw.buf.drain(..end);
        let (op, hello) = raw.frame().await;
        assert_eq!(op, 1);
        assert!(String::from_utf8_lossy(&hello).contains("hello"));
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the socket without a close frame");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn encode(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = Self::encode(fin, opcode, payload);
        within("write", self.tcp.write_all(&bytes)).await.unwrap();
    }

    /// The next server frame (unmasked): opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        within("a frame", async {
            loop {
                if let Some((op, payload, used)) = parse_frame(&self.buf) {
                    self.buf.drain(..used);
                    return (op, payload);
                }
                self.fill().await;
            }
        })
        .await
    }

    /// Reads until a close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.frame().await;
            if op == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    async fn text(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().await;
            if op == 1 {
                return serde_json::from_slice(&payload).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn hostile_clients_get_rfc_answers_and_others_keep_being_served() {
    let srv = TestServer::with(|c| {
        // The limiters are tested above; here every hostile frame reaches the protocol.
        c.ws.client_message_rate = 0;
        c.ws.client_byte_rate = 0;
    })
    .await;
    let mut w = Watcher::new(&srv).await;

    // Invalid UTF-8 in a text frame: 1007.
    let mut c = Raw::connect(&srv).await;
    c.send(true, 1, &[b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(c.close_code().await, 1007);
    w.check(&srv).await;

    // A fragmented text message with 125-byte pings between its fragments: pongs echo the
    // payload, then the reassembled message is answered.
    let mut c = Raw::connect(&srv).await;
    let ping = [7u8; 125];
    c.send(false, 1, br#"{"op":"pi"#).await;
    c.send(true, 9, &ping).await;
    c.send(false, 0, br#"ng","id":"#).await;
    c.send(true, 9, &ping).await;
    c.send(true, 0, b"42}").await;
    for _ in 0..2 {
        let (op, payload) = c.frame().await;
        assert_eq!(
            (op, payload.as_slice()),
            (10, &ping[..]),
            "pong with the payload"
        );
    }
    let pong = c.text().await;
    assert_eq!(
        (pong["op"].as_str(), pong["id"].as_i64()),
        (Some("pong"), Some(42))
    );
    w.check(&srv).await;

    // A control frame above 125 bytes is a protocol error: 1002.
    c.send(true, 9, &[0u8; 126]).await;
    assert_eq!(c.close_code().await, 1002);

    // A 10 MB frame: refused (1009) on its header, long before 10 MB is sent or buffered.
    let mut c = Raw::connect(&srv).await;
    let header = Raw::encode(true, 1, &vec![b' '; 10 * 1024 * 1024]);
    c.tcp.write_all(&header[..64 * 1024]).await.unwrap();
    assert_eq!(c.close_code().await, 1009);
    srv.await_metric(
        "websocket_disconnections_total{reason=\"message_too_big\"}",
        1.0,
    )
    .await;
    w.check(&srv).await;

    // Close frames with codes no endpoint may send: 1002.
    for bad in [999u16, 1005, 1006, 5000] {
        let mut c = Raw::connect(&srv).await;
        let mut payload = bad.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        c.send(true, 8, &payload).await;
        assert_eq!(c.close_code().await, 1002, "close code {bad}");
    }
    w.check(&srv).await;

    // 10,000 subscribe requests: channels stop at the per-connection limit, the errors in a
    // row close the connection (1008), and nothing beyond the limit is held.
    let mut c = Raw::connect(&srv).await;
    let mut burst = Vec::new();
    for i in 0..10_000 {
        let f = json!({"op":"subscribe","channel":format!("spam:{i}")}).to_string();
        burst.extend(Raw::encode(true, 1, f.as_bytes()));
    }
    let mut buf = std::mem::take(&mut c.buf);
    let (mut rd, mut wr) = c.tcp.into_split();
    let writer = tokio::spawn(async move {
        // The server may close mid-way: a broken pipe is expected.
        let _ = wr.write_all(&burst).await;
        wr
    });
    let (mut subscribed, mut too_many) = (0, 0);
    let code = within("the spam connection to close", async {
        loop {
            while let Some((op, payload, used)) = parse_frame(&buf) {
                buf.drain(..used);
                match op {
                    1 => {
                        let v: Value = serde_json::from_slice(&payload).unwrap();
                        match (v["op"].as_str(), v["code"].as_str()) {
                            (Some("subscribed"), _) => subscribed += 1,
                            (_, Some("too_many_channels")) => too_many += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    8 => return u16::from_be_bytes([payload[0], payload[1]]),
                    _ => {}
                }
            }
            let mut chunk = [0u8; 8192];
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without a close frame");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert_eq!(code, 1008);
    assert_eq!(subscribed, 256, "max_channels_per_connection");
    assert!(too_many >= 1, "too_many_channels errors were sent");
    drop(within("writer", writer).await);
    srv.await_metric(
        "websocket_disconnections_total{reason=\"protocol_abuse\"}",
        1.0,
    )
    .await;
    // The spam connection's channels are gone with it: only the watcher's remains.
    eventually("subscriptions to be released", || async {
        let m = srv.metrics().await;
        (metric_value(&m, "websocket_subscriptions") == Some(1.0)).then_some(())
    })
    .await;
    w.finish(srv).await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs_or_the_api() {
    const JWT_SECRET: &str = "jwt-s3cret-5b8f0c2e";
    const API_KEY: &str = "api-k3y-91d2a7";
    let log = std::env::temp_dir().join(format!("wsgate-secrets-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(support::wsgate_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("WSGATE_GRPC_LISTEN", "127.0.0.1:0")
        .env("WSGATE_LOG", "debug")
        .env("WSGATE_AUTH__MODE", "jwt")
        .env("WSGATE_AUTH__JWT_SECRET", JWT_SECRET)
        .env("WSGATE_API_KEY", API_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = within("listening", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr = line.rsplit("http://").next().unwrap().to_string();
    let token = hs256_token(JWT_SECRET, json!({"sub":"alice","exp":in_a_minute()}));
    // A good token, a bad one, API calls with the right key and a wrong one.
    let c = Client::subscribed(&format!("ws://{addr}/ws?token={token}"), "s").await;
    let (ws, _) = within(
        "upgrade",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=bad.{API_KEY}.x")),
    )
    .await
    .unwrap();
    let mut bad = Client {
        ws,
        hello: Value::Null,
    };
    assert_eq!(bad.closed().await.0, 4001);
    let api = |path: &str, key: &str| {
        http()
            .get(format!("http://{addr}{path}"))
            .bearer_auth(key)
            .send()
    };
    for (path, key) in [
        ("/connections", API_KEY),
        ("/connections", JWT_SECRET),
        ("/version", API_KEY),
        ("/ready", API_KEY),
    ] {
        let body = within("api", api(path, key))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains(API_KEY) && !body.contains(JWT_SECRET),
            "{path}: {body}"
        );
    }
    let id = c.id();
    let body = within("api", api(&format!("/connections/{id}"), API_KEY))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("alice"), "{body}");
    assert!(
        !body.contains(API_KEY) && !body.contains(JWT_SECRET),
        "{body}"
    );
    drop(c);
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { kill(pid, 15) }, 0);
    let status = within("exit", child.wait()).await.unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("wsgate listening"), "the log was captured");
    assert!(
        text.contains("authentication failed"),
        "the refusal was logged"
    );
    assert!(text.lines().count() > 5);
    assert!(!text.contains(JWT_SECRET), "JWT secret in the log");
    assert!(!text.contains(API_KEY), "API key in the log");
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
