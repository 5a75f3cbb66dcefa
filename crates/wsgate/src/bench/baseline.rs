//! The baseline of `wsgate bench --baseline`: the featureless fan-out that everyone writes
//! first. axum's WebSocket (tungstenite with a 4 KiB read buffer), one task per connection,
//! a `tokio::sync::broadcast` channel, a frame built once per publish. No auth, channels,
//! heartbeats, registry or metrics: what wsgate must beat while doing all of that.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use clap::Args;
use tokio::sync::broadcast;

#[derive(Args)]
pub struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Clone)]
struct Hub {
    tx: broadcast::Sender<Utf8Bytes>,
    offset: Arc<AtomicU64>,
}

pub fn main(args: BaselineArgs) -> anyhow::Result<()> {
    super::procfs::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (tx, _) = broadcast::channel(4096);
        let hub = Hub {
            tx,
            offset: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/ws", get(upgrade))
            .route("/api/v1/publish", post(publish))
            .with_state(hub);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("baseline listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn upgrade(ws: WebSocketUpgrade, State(hub): State<Hub>) -> Response {
    ws.read_buffer_size(4096)
        .on_upgrade(move |socket| connection(socket, hub))
}

async fn connection(mut socket: WebSocket, hub: Hub) {
    let mut rx = hub.tx.subscribe();
    if socket
        .send(Message::Text(r#"{"op":"hello"}"#.into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => if socket.send(Message::Text(text)).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            inbound = socket.recv() => match inbound {
                Some(Ok(Message::Text(_))) => {
                    if socket.send(Message::Text(r#"{"op":"subscribed"}"#.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

async fn publish(State(hub): State<Hub>, body: String) -> &'static str {
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let offset = hub.offset.fetch_add(1, Ordering::Relaxed) + 1;
    let frame = format!(
        r#"{{"op":"message","channel":"bench","offset":{offset},"data":{}}}"#,
        v["data"]
    );
    let _ = hub.tx.send(frame.into());
    r#"{"success":true}"#
}
