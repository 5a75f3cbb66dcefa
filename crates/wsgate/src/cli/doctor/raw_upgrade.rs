//! A refused upgrade, read by hand.
//!
//! The WebSocket client refuses some answers before it shows them: an `HTTP/1.0 400 Bad
//! Request` from a proxy becomes "HTTP version must be 1.1 or higher", and the status that
//! says what went wrong is lost. When the client gives no response, doctor sends the same
//! upgrade request over a plain TCP connection of its own and reports the status line and
//! the first headers that came back, whatever the HTTP version.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::{Request, generate_key};

/// The most of a response head read; enough for any proxy's error page headers.
const MAX_HEAD: usize = 16 * 1024;
/// Headers shown, after `Date` is left out.
pub const SHOWN_HEADERS: usize = 8;

/// What the server answered, as sent.
#[derive(Debug)]
pub struct RawResponse {
    /// e.g. `HTTP/1.0 400 Bad Request`.
    pub status_line: String,
    /// The status code, when the status line has one.
    pub status: Option<u16>,
    /// The first headers (`Name: value`), `Date` left out.
    pub headers: Vec<String>,
}

/// The request line and headers of `req` as a WebSocket client sends them.
fn request_bytes(req: &Request) -> Result<Vec<u8>, String> {
    let uri = req.uri();
    let host = uri.host().ok_or("the URL has no host")?;
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n",
        generate_key()
    );
    for (name, value) in req.headers() {
        let value = value
            .to_str()
            .map_err(|_| format!("header {name} is not text"))?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// Parses a response head (everything before the blank line).
fn parse_head(head: &str) -> Result<RawResponse, String> {
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let status_line = lines.next().unwrap_or_default().trim().to_string();
    if !status_line.starts_with("HTTP/") {
        let shown: String = status_line.chars().take(80).collect();
        return Err(format!("the answer is not HTTP: {shown:?}"));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| !name.trim().eq_ignore_ascii_case("date"))
        .map(|(name, value)| format!("{}: {}", name.trim(), value.trim()))
        .take(SHOWN_HEADERS)
        .collect();
    Ok(RawResponse {
        status_line,
        status,
        headers,
    })
}

/// Sends `req`'s upgrade over a new plain TCP connection and reads the response head.
/// `Err` says why nothing readable came back.
pub async fn probe(req: &Request, timeout: Duration) -> Result<RawResponse, String> {
    let request = request_bytes(req)?;
    let uri = req.uri();
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let exchange = async {
        let mut tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connecting again: {e}"))?;
        tcp.write_all(&request)
            .await
            .map_err(|e| format!("sending the upgrade: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = find_blank_line(&buf) {
                buf.truncate(end);
                break;
            }
            if buf.len() >= MAX_HEAD {
                break;
            }
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if buf.is_empty() {
            return Err("the server closed the connection without answering".to_string());
        }
        parse_head(&String::from_utf8_lossy(&buf))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no complete answer within {timeout:?}")))
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_http_1_0_refusal() {
        let r = parse_head(
            "HTTP/1.0 400 Bad Request\r\nServer: old-proxy\r\nDate: Fri\r\nContent-Type: text/html",
        )
        .unwrap();
        assert_eq!(r.status_line, "HTTP/1.0 400 Bad Request");
        assert_eq!(r.status, Some(400));
        assert_eq!(r.headers, ["Server: old-proxy", "Content-Type: text/html"]);
        assert!(parse_head("SSH-2.0-OpenSSH").is_err());
    }

    #[test]
    fn the_request_carries_the_upgrade_and_the_callers_headers() {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                "ws://example.test:8080/ws?token=t",
            )
            .unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer k".parse().unwrap());
        let text = String::from_utf8(request_bytes(&req).unwrap()).unwrap();
        assert!(text.starts_with("GET /ws?token=t HTTP/1.1\r\nHost: example.test:8080\r\n"));
        assert!(text.contains("Upgrade: websocket\r\n"));
        assert!(text.contains("authorization: Bearer k\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
