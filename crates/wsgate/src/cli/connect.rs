//! `wsgate connect URL`: an interactive WebSocket client, like wscat or websocat.
//!
//! Lines read from stdin go out as text frames; every frame in either direction is printed
//! with its direction (`>` sent, `<` received) and the time. At stdin's end it sends a close
//! frame and waits for the server's, so it works in pipes:
//! `echo '{"op":"ping"}' | wsgate connect ws://127.0.0.1:8080/ws`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{clock, handshake_error, ms, parse_duration, ws_request};

#[derive(Args)]
pub struct ConnectArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (add ?token=… for JWT auth).
    url: String,
    /// Extra handshake header, `Name: value` (repeatable), e.g. `Authorization: Bearer …`.
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    headers: Vec<String>,
    /// Ask for this subprotocol (Sec-WebSocket-Protocol).
    #[arg(long)]
    subprotocol: Option<String>,
    /// Pretty-print JSON frames.
    #[arg(long)]
    json: bool,
    /// Send a WebSocket ping every second and print round-trip times.
    #[arg(long)]
    ping: bool,
    /// How long to wait for the handshake, and for the server's close after ours.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn main(args: ConnectArgs) -> anyhow::Result<()> {
    super::block_on(run(args))?
}

fn print_frame(dir: char, text: &str) {
    let t = clock();
    let mut lines = text.lines();
    println!("{t} {dir} {}", lines.next().unwrap_or(""));
    for l in lines {
        println!("{:width$}{l}", "", width = t.len() + 3);
    }
}

fn describe(m: &Message, json: bool) -> Option<String> {
    Some(match m {
        Message::Text(t) => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(v) if json => serde_json::to_string_pretty(&v).unwrap_or_else(|_| t.to_string()),
            _ => t.to_string(),
        },
        Message::Binary(b) => {
            let hex: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
            let more = if b.len() > 32 { "…" } else { "" };
            format!("[binary {} bytes] {hex}{more}", b.len())
        }
        Message::Ping(p) => format!("[ping {} bytes]", p.len()),
        Message::Pong(p) => format!("[pong {} bytes]", p.len()),
        Message::Close(Some(f)) => format!("[close {} {}]", u16::from(f.code), f.reason),
        Message::Close(None) => "[close, no status]".to_string(),
        Message::Frame(_) => return None,
    })
}

async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let req = ws_request(&args.url, &args.headers, args.subprotocol.as_deref())?;
    // `?token=` is a secret: messages name the URL without its query.
    let shown = wsgate_core::seams::upstream::redact_url(&args.url);
    let (ws, resp) = match tokio::time::timeout(args.timeout, super::ws_connect(req)).await {
        Err(_) => anyhow::bail!(
            "handshake with {} timed out after {:?}: nothing answered the upgrade",
            shown,
            args.timeout
        ),
        Ok(Err(e)) => anyhow::bail!("{}", handshake_error(&shown, &e)),
        Ok(Ok(ok)) => ok,
    };
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(|p| format!(", subprotocol {p}"))
        .unwrap_or_default();
    eprintln!("connected to {shown} (HTTP {}{proto})", resp.status());

    let (mut tx, mut rx) = ws.split();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut pings: HashMap<u64, Instant> = HashMap::new();
    let mut seq = 0u64;
    // Set once we sent our close frame: the server's answer is due by then.
    let mut close_due: Option<tokio::time::Instant> = None;
    let mut server_close: Option<Option<CloseFrame>> = None;

    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open && close_due.is_none() => match line? {
                Some(line) => {
                    tx.send(Message::text(line.clone())).await?;
                    print_frame('>', &line);
                }
                None => {
                    stdin_open = false;
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    print_frame('>', "[close 1000]");
                    // The server may already have closed: then there is nothing to send.
                    let _ = tx.send(Message::Close(Some(frame))).await;
                    close_due = Some(tokio::time::Instant::now() + args.timeout);
                }
            },
            _ = ticker.tick(), if args.ping && close_due.is_none() => {
                seq += 1;
                pings.insert(seq, Instant::now());
                tx.send(Message::Ping(seq.to_be_bytes().to_vec().into())).await?;
            },
            _ = tokio::time::sleep_until(close_due.unwrap_or_else(tokio::time::Instant::now)), if close_due.is_some() => {
                eprintln!("the server did not answer our close frame within {:?}; leaving", args.timeout);
                return Ok(());
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Pong(p))) if args.ping && p.len() == 8 => {
                    let n = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
                    match pings.remove(&n) {
                        Some(sent) => print_frame('<', &format!("[pong #{n}] round trip {}", ms(sent.elapsed()))),
                        None => print_frame('<', "[pong, unknown ping]"),
                    }
                }
                Some(Ok(m)) => {
                    if let Message::Close(f) = &m {
                        server_close = Some(f.clone());
                    }
                    if let Some(text) = describe(&m, args.json) {
                        print_frame('<', &text);
                    }
                }
                Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) | None => break,
                Some(Err(e)) => anyhow::bail!("connection to {shown} failed: {e}"),
            },
        }
    }
    match (server_close, close_due.is_some()) {
        (Some(_), true) => Ok(()),
        (Some(Some(f)), false) if matches!(f.code, CloseCode::Normal) => Ok(()),
        (Some(Some(f)), false) => anyhow::bail!(
            "the server closed the connection: {} {} (see the close codes in docs/operations.md)",
            u16::from(f.code),
            f.reason
        ),
        (Some(None), false) => anyhow::bail!("the server closed the connection without a status"),
        (None, _) => anyhow::bail!(
            "the connection ended without a close frame (1006): a proxy timeout, a killed pod or a network failure"
        ),
    }
}
