//! `wsgate bench --protocol socketio`: the bench clients speak Socket.IO v5 over Engine.IO v4
//! on a WebSocket (no long-polling), against wsgate's `/socket.io/` edge and, with
//! `--baseline`, against a Socket.IO 4.8 server on Node (`bench-peers/socketio-server`).
//!
//! The client side is a minimal codec of the Engine.IO / Socket.IO text packets on top of the
//! bench's tokio-tungstenite clients, not a Socket.IO client crate: a subscriber only ever
//! sends `40` (connect to `/`), `420["subscribe","bench"]` and `3` (pong), and only needs to
//! recognise `0{…}` (open), `40{…}` / `44{…}` (connect / connect error), `430[…]` (the ack),
//! `2` (ping) and `42[…]` (an event). The crates that implement the client protocol
//! (rust_socketio's async client) spawn a few tasks and callback boxes per socket and parse
//! every packet into JSON, which at 10,000 clients on the same two cores as the server would
//! load the machine more than the server under test; this codec keeps the client cost the
//! same as the `/ws` run's (one task, one socket and a 4 KiB read buffer per client).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use futures_util::SinkExt;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use super::clients::{Ws, connect_ws, next_text};

/// Where the Node peer lives in the source tree (`--socketio-peer-dir` overrides it).
const PEER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-peers/socketio-server");

/// The WebSocket URL of a Socket.IO server at `addr` (Engine.IO v4, WebSocket transport only).
pub fn url(addr: &str) -> String {
    format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
}

/// What a subscriber does with one inbound text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A Socket.IO event (`42…`): a delivery.
    Event,
    /// An Engine.IO ping (`2`): answer with a pong (`3`).
    Ping,
    /// Anything else (acks, noop, close).
    Other,
}

pub fn classify(frame: &str) -> Inbound {
    if frame == "2" {
        Inbound::Ping
    } else if frame.starts_with("42") {
        Inbound::Event
    } else {
        Inbound::Other
    }
}

/// The Engine.IO pong.
pub fn pong() -> Message {
    Message::Text("3".into())
}

/// Opens a Socket.IO connection to the default namespace and subscribes to `bench`, waiting
/// for the acknowledgement.
pub async fn subscriber(url: &str) -> anyhow::Result<Ws> {
    let mut ws = connect_ws(url).await?;
    let open = next_text(&mut ws).await?;
    anyhow::ensure!(
        open.starts_with("0{"),
        "expected Engine.IO open, got {open}"
    );
    ws.send(Message::Text("40".into())).await?;
    let connect = next_packet(&mut ws).await?;
    anyhow::ensure!(
        connect.starts_with("40"),
        "Socket.IO connect refused: {connect}"
    );
    // An event sent right after `40` can reach a server before its connect handler has
    // registered the event handlers (and be dropped without an answer): the subscription is
    // sent again, with a new ack id, when its ack is late; `resent_subscribes` counts that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for id in 0.. {
        ws.send(Message::Text(
            format!(r#"42{id}["subscribe","bench"]"#).into(),
        ))
        .await?;
        let acked = tokio::time::timeout(ACK_WAIT, async {
            loop {
                let packet = next_packet(&mut ws).await?;
                if let Some(ack) = packet.strip_prefix("43") {
                    anyhow::ensure!(ack.contains(r#""ok":true"#), "subscribe refused: {ack}");
                    return Ok(());
                }
            }
        })
        .await;
        match acked {
            Ok(r) => return r.map(|()| ws),
            Err(_) if tokio::time::Instant::now() < deadline => {
                RESENT_SUBSCRIBES.fetch_add(1, Relaxed);
            }
            Err(_) => break,
        }
    }
    anyhow::bail!("no answer to subscribe within 30 s")
}

/// How long a subscriber waits for the subscription's ack before it sends it again.
pub const ACK_WAIT: Duration = Duration::from_secs(2);

/// Subscriptions sent again because their ack was late (see [`subscriber`]).
static RESENT_SUBSCRIBES: AtomicU64 = AtomicU64::new(0);

/// How many subscriptions went unanswered and were sent again since the last call.
pub fn take_resent_subscribes() -> u64 {
    RESENT_SUBSCRIBES.swap(0, Relaxed)
}

/// The next Socket.IO packet, answering pings on the way.
async fn next_packet(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let text = next_text(ws).await?;
        if classify(&text) == Inbound::Ping {
            ws.send(pong()).await?;
            continue;
        }
        return Ok(text);
    }
}

/// The Node peer: `node server.js` in its directory, dependencies installed with `npm ci` when
/// one of them is missing from `node_modules`. `None` (with the reason printed) when `node` is not installed.
pub async fn peer(dir: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let dir = dir.map_or_else(|| PathBuf::from(PEER_DIR), Path::to_path_buf);
    anyhow::ensure!(
        dir.join("server.js").exists(),
        "no Socket.IO peer at {} (server.js missing; --socketio-peer-dir)",
        dir.display()
    );
    let version = Command::new("node")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .await;
    let Ok(version) = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) else {
        eprintln!(
            "== node socket.io: skipped, `node` is not installed (install Node.js >= 18 to run the Socket.IO 4.8 peer)"
        );
        return Ok(None);
    };
    // A copy installed before the Redis adapter joined package.json lacks it: install again.
    let installed = ["socket.io", "@socket.io/redis-adapter", "redis"]
        .iter()
        .all(|m| dir.join("node_modules").join(m).exists());
    if !installed {
        eprintln!("   node {version}: npm ci in {}", dir.display());
        let status = tokio::time::timeout(
            Duration::from_secs(300),
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .status(),
        )
        .await
        .context("npm ci took more than 300 s")?
        .context("npm (beside node) could not be started")?;
        anyhow::ensure!(status.success(), "npm ci failed in {}", dir.display());
    }
    Ok(Some(dir))
}

/// The command that starts the peer from `dir` on `listen` (it prints `… http://ADDR`).
pub fn peer_command(dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg("server.js").arg(listen).current_dir(dir);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_packets_a_subscriber_sees() {
        assert_eq!(classify("2"), Inbound::Ping);
        assert_eq!(
            classify(r#"42["message",{"channel":"bench","offset":1}]"#),
            Inbound::Event
        );
        assert_eq!(classify(r#"430[{"ok":true}]"#), Inbound::Other);
        assert_eq!(classify("3"), Inbound::Other);
        assert_eq!(classify(r#"40{"sid":"x"}"#), Inbound::Other);
    }
}
