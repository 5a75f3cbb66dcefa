//! Operator commands: `wsgate connect`, `wsgate connections`, `wsgate doctor`.
//!
//! Each command lives in its own module; this one holds what they share: a runtime, duration
//! parsing, WebSocket handshake requests and their errors, and a small client for the HTTP API.

pub mod connect;
pub mod connections;
pub mod doctor;

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

/// The runtime the operator commands run on: small, they are clients.
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(rt.block_on(fut))
}

/// Operator commands print their error as one plain line (no backtrace) and exit 1.
pub fn finish(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// `120s`, `2m`, `500ms`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 5s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Wall-clock time of day, UTC, with milliseconds: `14:03:27.412`.
pub fn clock() -> String {
    let ms = wsgate_core::clock::unix_ms() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Milliseconds with one decimal, for round-trip times.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A handshake request with extra headers (`K:V`) and an optional subprotocol.
pub fn ws_request(
    url: &str,
    headers: &[String],
    subprotocol: Option<&str>,
) -> anyhow::Result<Request> {
    let mut req = url
        .into_client_request()
        .with_context(|| format!("`{url}` is not a WebSocket URL (ws://host:port/path)"))?;
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header `{h}` is not `Name: value`"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .with_context(|| format!("bad header name `{k}`"))?;
        let value = HeaderValue::from_str(v.trim())
            .with_context(|| format!("bad header value in `{h}`"))?;
        req.headers_mut().append(name, value);
    }
    if let Some(p) = subprotocol {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).context("bad subprotocol")?,
        );
    }
    Ok(req)
}

/// What went wrong in a handshake, with the HTTP status when the server answered one.
/// A WebSocket handshake to `req`'s URL; `wss://` with the client's trust (platform roots,
/// or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
pub async fn ws_connect(
    req: tungstenite::handshake::client::Request,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let connector = match req.uri().scheme_str() {
        Some("wss") => Some(
            wsgate_client::TlsOptions::default()
                .connector()
                .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e.to_string())))?,
        ),
        _ => None,
    };
    tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector).await
}

pub fn handshake_error(url: &str, e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => {
            let mut s = format!(
                "handshake with {url} failed: HTTP {} (expected 101 Switching Protocols)",
                resp.status()
            );
            if let Some(body) = resp.body().as_deref().filter(|b| !b.is_empty()) {
                let body = String::from_utf8_lossy(&body[..body.len().min(300)]);
                s.push_str(&format!("\n  body: {}", body.trim()));
            }
            s
        }
        tungstenite::Error::Url(u) => format!("bad URL {url}: {u}"),
        tungstenite::Error::Io(io) => format!(
            "cannot connect to {url}: {}",
            wsgate_client::describe_tls_error(io)
        ),
        other => format!("handshake with {url} failed: {other}"),
    }
}

/// A client for the HTTP control and operations API.
pub struct Api {
    pub base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: Option<String>, timeout: Duration) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "`{base}` is not an http:// URL of the wsgate HTTP API (e.g. http://127.0.0.1:8080)"
        );
        Ok(Self {
            base,
            key,
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the wsgate API at {}: {e} (is the server running, and is the URL right?)",
            self.base
        )
    }

    /// GET returning the status and the body as JSON (a string when it is not JSON).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (status, text) = self.get_text(path).await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| self.unreachable(e))?))
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| self.unreachable(e))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

/// The `error` of an API answer, or the body itself.
pub fn api_error(status: u16, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) if status == 401 => format!("{e} (pass --api-key or set WSGATE_API_KEY)"),
        Some(e) => e.to_string(),
        None => format!("HTTP {status}: {body}"),
    }
}

/// Percent-encodes a query or path component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn headers_and_subprotocol() {
        let r = ws_request("ws://h/ws", &["X-A: b".into()], Some("chat")).unwrap();
        assert_eq!(r.headers()["x-a"], "b");
        assert_eq!(r.headers()["sec-websocket-protocol"], "chat");
        assert!(ws_request("ws://h/ws", &["nocolon".into()], None).is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
