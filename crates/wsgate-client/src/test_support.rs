//! A scriptable upstream WebSocket server for tests (feature `test-support`).
//!
//! Real sockets on `127.0.0.1:0`, no mocks. It can require an auth message,
//! record everything it receives, drop or close connections on command,
//! refuse handshakes for a while, answer correlated requests (JSON id field
//! and 16-byte UUID prefix) with optional delay and interleaved noise, stop
//! reading (so pings go unanswered), send protocol garbage, and count
//! connection attempts and concurrent connections.
//!
//! Tests await conditions with [`TestServer::wait_for`] instead of sleeping.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use wsgate_client::test_support::{TestServer, TestServerConfig};
//! let server = TestServer::start(TestServerConfig::default().require_auth("secret")).await;
//! let url = server.url();
//! // ... connect a client to `url` ...
//! server.drop_all();
//! let log = server.wait_for(Duration::from_secs(5), |l| l.handshakes >= 2).await.unwrap();
//! assert_eq!(log.max_active, 1);
//! # }
//! ```
//!
//! Request conventions understood by the server:
//! - JSON: a text frame that is an object with `"op":"request"` and the
//!   configured id field gets `{"op":"response","<id field>":<id>,"echo":<request>}`.
//!   An optional `"delay_ms"` field delays that reply.
//! - UUID: with [`TestServerConfig::uuid_replies`], a binary frame of at
//!   least 16 bytes gets `<same 16 bytes>reply:<rest of the payload>`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::Message;

/// Server behaviour fixed at start.
#[derive(Debug, Clone)]
pub struct TestServerConfig {
    /// If set, the first data frame of a connection must contain this
    /// string, or the server closes with 4001.
    pub auth_token: Option<String>,
    /// Sent after a good auth message. Default `{"op":"auth_ok"}`.
    pub auth_reply: String,
    /// JSON id field for request replies. Default `"id"`.
    pub json_id_field: String,
    /// Answer UUID-prefixed binary frames. Default `false`.
    pub uuid_replies: bool,
}

impl Default for TestServerConfig {
    fn default() -> Self {
        Self {
            auth_token: None,
            auth_reply: r#"{"op":"auth_ok"}"#.into(),
            json_id_field: "id".into(),
            uuid_replies: false,
        }
    }
}

impl TestServerConfig {
    /// Require an auth message containing `token`.
    pub fn require_auth(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Answer UUID-prefixed binary requests.
    pub fn uuid_replies(mut self) -> Self {
        self.uuid_replies = true;
        self
    }
}

/// One data frame the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// 1-based connection number (in handshake order).
    pub conn: u64,
    /// The frame.
    pub msg: Message,
}

/// Everything the server observed. Cloned by [`TestServer::log`].
#[derive(Debug, Clone, Default)]
pub struct ServerLog {
    /// TCP connections accepted (every attempt, refused ones included).
    pub attempts: u64,
    /// When each attempt arrived.
    pub attempt_times: Vec<Instant>,
    /// Completed WebSocket handshakes.
    pub handshakes: u64,
    /// Handshakes rejected while refusing.
    pub refused: u64,
    /// Connections that passed auth (or all, without auth).
    pub authenticated: u64,
    /// Connections closed for a bad auth message.
    pub auth_failures: u64,
    /// Connections currently open.
    pub active: usize,
    /// Highest number of connections open at once.
    pub max_active: usize,
    /// Close frames received from clients.
    pub client_closes: u64,
    /// Data frames received, in order.
    pub received: Vec<Received>,
    /// Request headers of the latest handshake (lower-case names).
    pub last_headers: Vec<(String, String)>,
}

impl ServerLog {
    /// Text frames received on connection `conn`, in order.
    pub fn texts_on(&self, conn: u64) -> Vec<String> {
        self.received
            .iter()
            .filter(|r| r.conn == conn)
            .filter_map(|r| r.msg.as_text().map(str::to_owned))
            .collect()
    }

    /// Frames received on connection `conn`.
    pub fn count_on(&self, conn: u64) -> usize {
        self.received.iter().filter(|r| r.conn == conn).count()
    }

    /// A request header of the latest handshake.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.last_headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

enum ConnCmd {
    Drop,
    Close(u16),
    Send(WsMessage),
    Garbage,
    Wake,
}

struct Inner {
    cfg: TestServerConfig,
    log: watch::Sender<ServerLog>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<ConnCmd>>>,
    refusing: AtomicBool,
    stalled: AtomicBool,
    noise: AtomicUsize,
    next_conn: AtomicU64,
}

impl Inner {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<ConnCmd>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn to_all(&self, make: impl Fn() -> ConnCmd) {
        for tx in self.conns().values() {
            let _ = tx.send(make());
        }
    }
}

/// The server. Dropping it stops accepting and drops every connection.
pub struct TestServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and starts accepting.
    pub async fn start(cfg: TestServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            cfg,
            log: watch::channel(ServerLog::default()).0,
            conns: Mutex::new(HashMap::new()),
            refusing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            noise: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        TestServer {
            addr,
            inner,
            accept,
        }
    }

    /// `ws://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the log.
    pub fn log(&self) -> ServerLog {
        self.inner.log.borrow().clone()
    }

    /// Waits until `pred` holds for the log, up to `timeout`. Returns a copy
    /// of the log, or an error describing the last log seen.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&ServerLog) -> bool,
    ) -> Result<ServerLog, String> {
        let mut rx = self.inner.log.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(pred)).await {
            Ok(Ok(log)) => Ok(log.clone()),
            Ok(Err(_)) => Err("server gone".into()),
            Err(_) => Err(format!(
                "timed out after {timeout:?}; log: {:?}",
                summary(&self.log())
            )),
        }
    }

    /// Drops every connection abruptly (no close frame: like a network failure).
    pub fn drop_all(&self) {
        self.inner.to_all(|| ConnCmd::Drop);
    }

    /// Closes every connection with a close frame carrying `code`.
    pub fn close_all(&self, code: u16) {
        self.inner.to_all(|| ConnCmd::Close(code));
    }

    /// While `true`, handshakes are rejected with HTTP 503.
    pub fn set_refusing(&self, yes: bool) {
        self.inner.refusing.store(yes, SeqCst);
    }

    /// While `true`, connections stop reading, so pings go unanswered.
    pub fn set_stalled(&self, yes: bool) {
        self.inner.stalled.store(yes, SeqCst);
        self.inner.to_all(|| ConnCmd::Wake);
    }

    /// Unrelated messages sent before every request reply.
    pub fn set_noise(&self, n: usize) {
        self.inner.noise.store(n, SeqCst);
    }

    /// Sends `msg` on every open connection.
    pub fn broadcast(&self, msg: Message) {
        self.inner.to_all(|| ConnCmd::Send(msg.clone().into_ws()));
    }

    /// Writes bytes that are not a valid WebSocket frame on every connection.
    pub fn send_garbage(&self) {
        self.inner.to_all(|| ConnCmd::Garbage);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all();
    }
}

fn summary(l: &ServerLog) -> String {
    format!(
        "attempts={} handshakes={} refused={} authenticated={} active={} max_active={} received={}",
        l.attempts,
        l.handshakes,
        l.refused,
        l.authenticated,
        l.active,
        l.max_active,
        l.received.len()
    )
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    while let Ok((stream, _)) = listener.accept().await {
        inner.log.send_modify(|l| {
            l.attempts += 1;
            l.attempt_times.push(Instant::now());
        });
        tokio::spawn(serve(stream, inner.clone()));
    }
}

// The error type is tungstenite's callback contract, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, inner: Arc<Inner>) {
    let refusing = inner.refusing.load(SeqCst);
    let mut headers = Vec::new();
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if refusing {
            let mut err = ErrorResponse::new(Some("refusing connections".into()));
            *err.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(err);
        }
        for (k, v) in req.headers() {
            headers.push((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()));
        }
        // Echo the first requested subprotocol, as a real server would.
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            let first = p
                .to_str()
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            if let Ok(v) = HeaderValue::from_str(&first) {
                resp.headers_mut().insert("sec-websocket-protocol", v);
            }
        }
        Ok(resp)
    };
    let mut ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(_) => {
            if refusing {
                inner.log.send_modify(|l| l.refused += 1);
            }
            return;
        }
    };
    let conn = inner.next_conn.fetch_add(1, SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel();
    inner.conns().insert(conn, tx.clone());
    inner.log.send_modify(|l| {
        l.handshakes += 1;
        l.active += 1;
        l.max_active = l.max_active.max(l.active);
        l.last_headers = headers;
        if inner.cfg.auth_token.is_none() {
            l.authenticated += 1;
        }
    });
    let mut authed = inner.cfg.auth_token.is_none();

    loop {
        let stalled = inner.stalled.load(SeqCst);
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None | Some(ConnCmd::Drop) => break,
                Some(ConnCmd::Close(code)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: "test server close".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                    break;
                }
                Some(ConnCmd::Send(m)) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(ConnCmd::Garbage) => {
                    // A complete frame header with every reserved bit and a reserved opcode:
                    // a protocol error for any client.
                    let _ = ws.get_mut().write_all(&[0xFF, 0x00]).await;
                    let _ = ws.get_mut().flush().await;
                }
                Some(ConnCmd::Wake) => {}
            },
            frame = ws.next(), if !stalled => {
                let msg = match frame {
                    Some(Ok(WsMessage::Text(t))) => Message::Text(t),
                    Some(Ok(WsMessage::Binary(b))) => Message::Binary(b),
                    Some(Ok(WsMessage::Close(_))) => {
                        inner.log.send_modify(|l| l.client_closes += 1);
                        // tungstenite answers the close; keep polling to flush it.
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                };
                inner.log.send_modify(|l| l.received.push(Received { conn, msg: msg.clone() }));
                if !authed {
                    let token = inner.cfg.auth_token.as_deref().unwrap_or_default();
                    if msg.as_text().is_some_and(|t| t.contains(token)) {
                        authed = true;
                        inner.log.send_modify(|l| l.authenticated += 1);
                        let reply = WsMessage::Text(Utf8Bytes::from(inner.cfg.auth_reply.clone()));
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    } else {
                        inner.log.send_modify(|l| l.auth_failures += 1);
                        let frame = CloseFrame { code: CloseCode::from(4001), reason: "auth required".into() };
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                        break;
                    }
                    continue;
                }
                if let Some((reply, delay)) = reply_for(&inner.cfg, &msg) {
                    for i in 0..inner.noise.load(SeqCst) {
                        let noise = format!(r#"{{"op":"noise","n":{i}}}"#);
                        if ws.send(WsMessage::Text(noise.into())).await.is_err() {
                            break;
                        }
                    }
                    if delay.is_zero() {
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    } else {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send(ConnCmd::Send(reply));
                        });
                    }
                }
            }
        }
    }
    // Count the connection as gone *before* the socket closes: the client can
    // only react to the close after this, so `max_active` never shows a
    // spurious overlap.
    inner.conns().remove(&conn);
    inner.log.send_modify(|l| l.active -= 1);
    drop(ws);
}

fn reply_for(cfg: &TestServerConfig, msg: &Message) -> Option<(WsMessage, Duration)> {
    match msg {
        Message::Binary(b) if cfg.uuid_replies && b.len() >= 16 => {
            let mut out = BytesMut::with_capacity(b.len() + 6);
            out.put_slice(&b[..16]);
            out.put_slice(b"reply:");
            out.put_slice(&b[16..]);
            Some((WsMessage::Binary(out.freeze()), Duration::ZERO))
        }
        Message::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).ok()?;
            if v.get("op")?.as_str()? != "request" {
                return None;
            }
            let id = v.get(&cfg.json_id_field)?.clone();
            let delay =
                Duration::from_millis(v.get("delay_ms").and_then(|d| d.as_u64()).unwrap_or(0));
            let mut reply = serde_json::json!({ "op": "response", "echo": v });
            reply[&cfg.json_id_field] = id;
            Some((WsMessage::Text(reply.to_string().into()), delay))
        }
        _ => None,
    }
}

/// What a leak test compares before and after its churn: the live tasks of the current Tokio
/// runtime and the open file descriptors of this process (Linux `/proc/self/fd`; 0 elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Live tasks of the current Tokio runtime.
    pub tasks: usize,
    /// Open file descriptors of this process.
    pub fds: usize,
}

impl Resources {
    /// Counts now. Call it inside a Tokio runtime.
    pub fn now() -> Self {
        Self {
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0),
        }
    }

    /// Neither count is above `baseline`'s.
    pub fn within(&self, baseline: &Self) -> bool {
        self.tasks <= baseline.tasks && self.fds <= baseline.fds
    }
}
