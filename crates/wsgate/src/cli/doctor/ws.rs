//! The client's path to the gateway: DNS, TCP, TLS, the 101 upgrade, hello, ping, an idle
//! hold, and seed 001's delivery check with two clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{CheckResult, fields, raw_upgrade};
use crate::cli::{Api, api_error, ms, ws_request};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Opts {
    pub url: String,
    pub headers: Vec<String>,
    pub timeout: Duration,
}

const DROPS: &str = "connection-drops-immediately-or-proxy-timeouts";
const REFUSED: &str = "connection-refused-or-closed-with-4001";
const CROSS_NODE: &str = "messages-not-delivered-cross-node";

/// Runs the path in order, stopping where a failure makes the next checks meaningless.
pub async fn client_path(
    o: &Opts,
    idle: Duration,
    progress: bool,
    api: Option<&Api>,
    out: &mut dyn FnMut(CheckResult),
) {
    let uri: Uri = match o.url.parse() {
        Ok(u) => u,
        Err(e) => {
            out(
                CheckResult::fail("url", format!("`{}` is not a URL: {e}", o.url))
                    .fix("pass the URL clients use, e.g. ws://wsgate.example.com/ws"),
            );
            return;
        }
    };
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            out(
                CheckResult::fail("url", format!("`{}` is not a ws:// or wss:// URL", o.url))
                    .fix("use ws://HOST:PORT/ws (or wss:// behind TLS)"),
            );
            return;
        }
    };
    let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else {
        out(CheckResult::fail("url", format!("`{}` has no host", o.url)));
        return;
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });

    let (c, addrs) = check_dns(&host, port, o.timeout).await;
    out(c);
    if addrs.is_empty() {
        return;
    }
    let c = check_tcp(&addrs, o.timeout).await;
    let tcp_ok = c.status != super::Status::Fail;
    out(c);
    if !tcp_ok {
        return;
    }
    if tls {
        let c = super::tls::check_tls(&host, &addrs, o.timeout).await;
        let failed = c.status == super::Status::Fail;
        out(c);
        if failed {
            return;
        }
    }
    let (c, ws) = check_upgrade(o).await;
    out(c);
    let Some(mut ws) = ws else { return };
    let (c, hello) = check_hello(&mut ws, o.timeout).await;
    out(c);
    let Some(hello) = hello else { return };
    out(check_ping(&mut ws, o.timeout).await);
    let heartbeat_ms = hello["heartbeat_ms"].as_u64();
    out(check_idle(&mut ws, idle, heartbeat_ms, progress).await);
    let _ = tokio::time::timeout(o.timeout, ws.close(None)).await;
    out(check_delivery(o, api).await);
}

pub async fn check_dns(host: &str, port: u16, timeout: Duration) -> (CheckResult, Vec<SocketAddr>) {
    let start = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                return (no_address(host), addrs);
            }
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            (
                CheckResult::pass("dns", format!("{host} → {} ({})", shown.join(", "), ms(start.elapsed()))),
                addrs,
            )
        }
        Ok(Err(e)) => (
            no_address(host).cause(format!("the resolver answered: {e}")),
            Vec::new(),
        ),
        Err(_) => (
            CheckResult::fail("dns", format!("resolving {host} took more than {timeout:?}"))
                .cause("the DNS server does not answer")
                .fix("check /etc/resolv.conf and the cluster DNS (kubectl -n kube-system get pods -l k8s-app=kube-dns)"),
            Vec::new(),
        ),
    }
}

fn no_address(host: &str) -> CheckResult {
    CheckResult::fail("dns", format!("{host} does not resolve"))
        .cause("a typo in the host, a DNS record not created yet, or a cluster-internal name used from outside")
        .fix(format!(
            "check the name (`dig {host}`), the Ingress host (`kubectl get ingress`), or use the Service name inside the cluster"
        ))
}

pub async fn check_tcp(addrs: &[SocketAddr], timeout: Duration) -> CheckResult {
    let mut errors = Vec::new();
    for addr in addrs {
        let start = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                return CheckResult::pass(
                    "tcp",
                    format!("connected to {addr} in {}", ms(start.elapsed())),
                );
            }
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    let refused = errors.iter().any(|e| e.contains("refused"));
    let c = CheckResult::fail("tcp", format!("cannot connect: {}", errors.join("; ")));
    if refused {
        c.cause("nothing listens on that port: the server is not running, listens on another port or only on 127.0.0.1 (`--listen`), or the Service has no ready endpoints")
            .fix("start wsgate or check its `listen` address; in Kubernetes: `kubectl get pods`, `kubectl get endpoints wsgate`, and the Service/Ingress port")
            .runbook("pod-restarts-and-orphaned-connections")
    } else {
        c.cause("packets are dropped on the way: a firewall, a security group, or a load balancer with no healthy target")
            .fix("check firewall rules and the load balancer's target health; try from inside the cluster (`kubectl exec … curl`)")
    }
}

/// Headers worth showing from a refused upgrade.
fn headers_of(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> String {
    let mut hs: Vec<String> = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    hs.truncate(raw_upgrade::SHOWN_HEADERS);
    hs.join(", ")
}

/// The cause and the fix of a refused upgrade, by status (seed 001's usual causes).
pub fn upgrade_advice(status: u16) -> (&'static str, &'static str, &'static str) {
    match status {
        401 | 403 => (
            "authentication: the token is missing, invalid or expired (JWT mode), or the ingress itself requires auth",
            "pass a fresh token (`?token=…` or --header 'Authorization: Bearer …'); check the signing key (secrets.jwtSecret) and clock skew",
            REFUSED,
        ),
        404 => (
            "nothing serves this path: wsgate serves /ws, or the Ingress has no rule for this host and path",
            "use ws://HOST/ws and check the Ingress paths (`kubectl describe ingress wsgate`)",
            DROPS,
        ),
        502..=504 => (
            "the proxy has no ready backend: pods not ready (/ready answers 503 while starting, draining, or when the store or broker is down), crash-looping, or a Service selecting no pods",
            "`kubectl get pods`, `kubectl get endpoints wsgate`, `curl /ready` on a pod, `kubectl logs --previous` for crashes",
            REFUSED,
        ),
        _ => (
            "the request reached an HTTP server that did not upgrade it: a proxy or ingress dropping the `Upgrade`/`Connection` headers (missing WebSocket annotations), or a URL that is not wsgate's WebSocket endpoint",
            "give the Ingress seed 001's annotations (nginx.ingress.kubernetes.io/websocket-services, proxy-read-timeout and proxy-send-timeout \"3600\"); `curl -i -N -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' URL` must answer 101",
            DROPS,
        ),
    }
}

/// One WebSocket handshake; the error is a FAIL result named `name`.
async fn open(o: &Opts, name: &str) -> Result<(Ws, Duration), CheckResult> {
    let req =
        ws_request(&o.url, &o.headers, None).map_err(|e| CheckResult::fail(name, e.to_string()))?;
    let start = Instant::now();
    match tokio::time::timeout(o.timeout, crate::cli::ws_connect(req.clone())).await {
        Ok(Ok((ws, _))) => Ok((ws, start.elapsed())),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).trim().to_string())
                .filter(|b| !b.is_empty())
                .map(|b| format!("; body: {b}"))
                .unwrap_or_default();
            Err(refused(
                name,
                status.as_u16(),
                format!(
                    "HTTP {status} instead of 101 Switching Protocols; status line: {:?} {status}; headers: {}{body}",
                    resp.version(),
                    headers_of(&resp)
                ),
            ))
        }
        // The client refused an answer without showing it (an HTTP/1.0 status line, a
        // malformed header): read it by hand, so the status is never lost.
        Ok(Err(e)) => Err(match raw_upgrade::probe(&req, o.timeout).await {
            Ok(raw) => match raw.status {
                Some(code) => refused(
                    name,
                    code,
                    format!(
                        "HTTP {code} instead of 101 Switching Protocols; status line: {}; headers: {}; the WebSocket client refused this answer: {e}",
                        raw.status_line,
                        raw.headers.join(", ")
                    ),
                ),
                None => handshake_failed(
                    name,
                    format!(
                        "handshake failed: {e}; status line: {}; headers: {}",
                        raw.status_line,
                        raw.headers.join(", ")
                    ),
                ),
            },
            Err(why) => handshake_failed(
                name,
                format!("handshake failed: {e} (asked again by hand: {why})"),
            ),
        }),
        Err(_) => Err(CheckResult::fail(name, format!("no answer to the upgrade within {:?}", o.timeout))
            .cause("the proxy or server accepted TCP but never answered: an overloaded node, or a proxy waiting for a backend")
            .fix("check the node's CPU and /ready; check the proxy's backend health")
            .runbook(REFUSED)),
    }
}

/// An upgrade answered with another status, with seed 001's cause and fix for it.
fn refused(name: &str, status: u16, detail: String) -> CheckResult {
    let (cause, fix, anchor) = upgrade_advice(status);
    CheckResult::fail(name, detail)
        .cause(cause)
        .fix(fix)
        .runbook(anchor)
}

/// An upgrade answered with something that is no HTTP status at all.
fn handshake_failed(name: &str, detail: String) -> CheckResult {
    CheckResult::fail(name, detail)
        .cause("the connection was accepted but no valid WebSocket handshake came back: a TLS port spoken to in plain text, a proxy resetting upgrades, or a non-HTTP service on that port")
        .fix("check that the URL's scheme and port are wsgate's (ws:// to the HTTP port)")
        .runbook(DROPS)
}

pub async fn check_upgrade(o: &Opts) -> (CheckResult, Option<Ws>) {
    match open(o, "upgrade").await {
        Ok((ws, took)) => (
            CheckResult::pass(
                "upgrade",
                format!("101 Switching Protocols in {}", ms(took)),
            ),
            Some(ws),
        ),
        Err(c) => (c, None),
    }
}

/// The next text frame as JSON, skipping control frames; `Err` says how the wait ended.
async fn next_json(ws: &mut Ws, timeout: Duration) -> Result<Value, String> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t)
                        .map_err(|e| format!("a text frame that is not JSON ({e}): {t}"));
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(match f {
                        Some(f) => {
                            format!("the server closed with {} {}", u16::from(f.code), f.reason)
                        }
                        None => "the server closed without a status".to_string(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("connection error: {e}")),
                None => return Err("the connection ended".to_string()),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| Err(format!("nothing arrived within {timeout:?}")))
}

pub async fn check_hello(ws: &mut Ws, timeout: Duration) -> (CheckResult, Option<Value>) {
    match next_json(ws, timeout).await {
        Ok(v) if v["op"] == "hello" => {
            let [id, node, user] = fields(&v, ["connection_id", "node", "user"]);
            let detail = format!(
                "connection {id} on node {node} (user {user}, heartbeat every {} ms)",
                v["heartbeat_ms"]
            );
            (CheckResult::pass("hello", detail), Some(v))
        }
        Ok(v) => (
            CheckResult::fail("hello", format!("the first frame is not hello: {v}"))
                .cause("the URL reaches a WebSocket server that is not wsgate")
                .fix("point doctor at wsgate's /ws"),
            None,
        ),
        Err(e) => (
            CheckResult::fail("hello", format!("no hello frame: {e}"))
                .cause("4001 means the token was refused (missing, invalid or expired; without exp, with the wrong aud/iss, or an unknown kid: the reason says which); 1001 a draining node; otherwise the server is overloaded")
                .fix("pass a valid token (`?token=…`), retry against another pod, check /ready")
                .runbook(REFUSED),
            None,
        ),
    }
}

pub async fn check_ping(ws: &mut Ws, timeout: Duration) -> CheckResult {
    let payload = b"wsgate-doctor".to_vec();
    let start = Instant::now();
    if let Err(e) = ws.send(Message::Ping(payload.clone().into())).await {
        return CheckResult::fail("ping", format!("sending a ping failed: {e}"));
    }
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) if p[..] == payload[..] => return Ok(start.elapsed()),
                Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the connection ended".to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(rtt)) if rtt > Duration::from_millis(500) => {
            CheckResult::warn("ping", format!("round trip {}", ms(rtt)))
                .cause("a slow network path or an overloaded node (CPU throttling delays pings)")
                .fix("check node CPU and throttling (raise the CPU limit), and the proxy's latency")
                .runbook("heartbeat-failures-4008")
        }
        Ok(Ok(rtt)) => CheckResult::pass("ping", format!("round trip {}", ms(rtt))),
        Ok(Err(e)) => CheckResult::fail("ping", format!("no pong: {e}"))
            .cause(
                "a proxy that does not pass WebSocket control frames, or a node too busy to read",
            )
            .runbook("heartbeat-failures-4008"),
        Err(_) => CheckResult::fail("ping", format!("no pong within {timeout:?}"))
            .cause("a proxy that swallows control frames, or a stalled node")
            .fix("check the proxy (it must pass WebSocket frames untouched) and node CPU")
            .runbook("heartbeat-failures-4008"),
    }
}

/// Below this an idle hold cannot catch the most common proxy default (NGINX: 60 s).
const COMMON_PROXY_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn check_idle(
    ws: &mut Ws,
    idle: Duration,
    heartbeat_ms: Option<u64>,
    progress: bool,
) -> CheckResult {
    let bar = if progress {
        let b = indicatif::ProgressBar::new(idle.as_secs().max(1));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "idle hold {bar:40} {pos}/{len} s (answering pings only)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + idle;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut pings = 0u32;
    let ended = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break None,
            _ = tick.tick() => bar.set_position(start.elapsed().as_secs()),
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => {
                    pings += 1;
                    // tungstenite queued the pong; push it out now.
                    let _ = ws.flush().await;
                }
                Some(Ok(Message::Close(f))) => break Some(f.map(|f| (u16::from(f.code), f.reason.to_string()))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Some(None),
            },
        }
    };
    bar.finish_and_clear();
    let held = start.elapsed();
    let hb = heartbeat_ms
        .map(|h| format!("{} s", h as f64 / 1000.0))
        .unwrap_or_else(|| "the heartbeat".into());
    match ended {
        None if idle < COMMON_PROXY_TIMEOUT => CheckResult::warn(
            "idle",
            format!("held idle for {:.1} s ({pings} server ping(s) answered), but a hold under 60 s cannot catch the common proxy default of 60 s", held.as_secs_f64()),
        )
        .fix("run with --idle 120s (the default) to test the proxy's read timeout"),
        None => CheckResult::pass(
            "idle",
            format!("held idle for {:.0} s, {pings} server ping(s) answered: no proxy timeout below that", held.as_secs_f64()),
        ),
        Some(Some((4008, _))) => CheckResult::fail("idle", format!("closed with 4008 heartbeat timeout after {:.1} s idle", held.as_secs_f64()))
            .cause("our pongs did not reach the server: a proxy buffering or dropping WebSocket control frames")
            .fix("check the proxy passes frames untouched (no buffering on the WebSocket route)")
            .runbook("heartbeat-failures-4008"),
        Some(Some((4001, reason))) => CheckResult::fail("idle", format!("closed with 4001 {reason} after {:.1} s idle", held.as_secs_f64()))
            .cause("the token expired during the hold: wsgate tells a connection `token_expired` at the token's exp and closes it after auth.token_grace_ms unless the client sends refresh (doctor does not)")
            .fix("pass a token whose exp is later than the --idle hold, or a shorter --idle")
            .runbook(REFUSED),
        Some(Some((1001, _))) => CheckResult::warn("idle", format!("closed with 1001 going away after {:.1} s: the node is shutting down", held.as_secs_f64()))
            .cause("a deploy or a pod being stopped during the check")
            .fix("run doctor again once the rollout is done"),
        Some(how) => {
            let how = match how {
                Some((code, reason)) => format!("closed with {code} {reason}"),
                None => "dropped without a close frame (1006)".to_string(),
            };
            CheckResult::fail("idle", format!("{how} after {:.1} s idle ({pings} server ping(s) seen)", held.as_secs_f64()))
                .cause(format!(
                    "a proxy or load balancer closes idle WebSockets: its read timeout (about {:.0} s) is shorter than what wsgate's heartbeat ({hb} ping interval) keeps alive (seed 001: \"Connection Drops Immediately\")",
                    held.as_secs_f64()
                ))
                .fix("set the Ingress annotations nginx.ingress.kubernetes.io/proxy-read-timeout and proxy-send-timeout to \"3600\"; for another load balancer raise its idle timeout above heartbeat_timeout_ms (65 s)")
                .runbook(DROPS)
        }
    }
}

/// A connected, subscribed client for the delivery check.
async fn subscriber(o: &Opts, channel: &str) -> Result<(Ws, String), String> {
    let (mut ws, _) = open(o, "delivery").await.map_err(|c| c.detail)?;
    let hello = next_json(&mut ws, o.timeout).await?;
    let [node] = fields(&hello, ["node"]).map(str::to_string);
    let sub = json!({"op": "subscribe", "channel": channel, "id": 1}).to_string();
    ws.send(Message::text(sub))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let v = next_json(&mut ws, o.timeout).await?;
        match v["op"].as_str() {
            Some("subscribed") => return Ok((ws, node)),
            Some("error") => return Err(format!("subscribe refused: {v}")),
            _ => continue,
        }
    }
}

async fn received(
    ws: &mut Ws,
    channel: &str,
    nonce: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(ws, left).await?;
        if v["op"] == "message" && v["channel"] == channel && v["data"]["doctor"] == nonce {
            return Ok(());
        }
    }
}

/// Seed 001's verification: two clients, one publication, both must receive it; which node
/// each landed on tells whether the cross-node path was exercised.
pub async fn check_delivery(o: &Opts, api: Option<&Api>) -> CheckResult {
    const NAME: &str = "delivery";
    let Some(api) = api else {
        return CheckResult::warn(NAME, "skipped: publishing needs the HTTP API")
            .fix("re-run with --api http://HOST:8080 (e.g. after `kubectl port-forward deploy/wsgate 8080`)");
    };
    let nonce = format!("{:016x}", rand::random::<u64>());
    let channel = format!("wsgate-doctor-{nonce}");
    let mut clients = Vec::new();
    for _ in 0..2 {
        match subscriber(o, &channel).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                return CheckResult::fail(NAME, format!("a test client could not subscribe: {e}"))
                    .runbook(REFUSED);
            }
        }
    }
    let body = json!({"channel": channel, "data": {"doctor": nonce}});
    let delivered = match api.post("/api/v1/publish", &body).await {
        Ok((200, v)) => v["delivered"].clone(),
        Ok((status, v)) => {
            return CheckResult::fail(
                NAME,
                format!(
                    "publish through {} failed: {}",
                    api.base,
                    api_error(status, &v)
                ),
            )
            .fix("check --api and --api-key (WSGATE_API_KEY)");
        }
        Err(e) => return CheckResult::fail(NAME, e.to_string()).fix("check --api"),
    };
    let mut missed = Vec::new();
    for (ws, node) in &mut clients {
        if let Err(e) = received(ws, &channel, &nonce, o.timeout).await {
            missed.push(format!(
                "the client on node {node} did not receive it ({e})"
            ));
        }
    }
    let nodes: Vec<String> = clients.iter().map(|(_, n)| n.clone()).collect();
    for (ws, _) in &mut clients {
        let _ = tokio::time::timeout(o.timeout, ws.close(None)).await;
    }
    let placed = format!("clients on nodes {} and {}", nodes[0], nodes[1]);
    if !missed.is_empty() {
        return CheckResult::fail(NAME, format!("{placed}; publish answered delivered={delivered}; {}", missed.join("; ")))
            .cause("publications do not reach every node: cluster mode off (with the in-memory store each pod is an island), the broker (Redis) unreachable, or the Service's sessionAffinity is ClientIP")
            .fix("enable cluster mode with a reachable Redis; `kubectl get svc wsgate -o jsonpath='{.spec.sessionAffinity}'` must be None; check wsgate_broker_errors_total")
            .runbook(CROSS_NODE);
    }
    if nodes[0] == nodes[1] {
        return CheckResult::warn(NAME, format!("both clients received it, but both landed on node {}: the cross-node path was not exercised", nodes[0]))
            .fix("run again (the balancer may place them apart) or scale to 2+ replicas; if it always happens, check for ClientIP affinity")
            .runbook(CROSS_NODE);
    }
    CheckResult::pass(
        NAME,
        format!("both clients received the publication ({placed}): cross-node delivery works"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_usual_causes() {
        assert!(upgrade_advice(400).0.contains("Upgrade"));
        assert!(upgrade_advice(401).0.contains("token"));
        assert!(upgrade_advice(503).0.contains("not ready"));
        assert!(upgrade_advice(404).1.contains("/ws"));
    }
}
