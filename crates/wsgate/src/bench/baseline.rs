//! The baseline of `wsgate bench --baseline`: the featureless fan-out a careful engineer
//! writes first. axum's WebSocket (tungstenite with a 4 KiB read buffer), one task per
//! connection, the frame's text built once per publish. No auth, channels, heartbeats,
//! registry, byte budget or metrics: what wsgate must beat while doing all of that.
//!
//! Two fan-outs (`--fanout`):
//! - `queues` (the default, issue 16's baseline): the publisher pushes the shared text into
//!   every subscriber's own queue and wakes its task only when the queue stops being empty;
//!   the task feeds everything queued to tungstenite and flushes once (one write per burst).
//!   It measured 1.6 – 1.9 µs per delivery on the 10k × 100/s fan-out: the strict one.
//! - `broadcast`: one `tokio::sync::broadcast` channel every task receives from, one
//!   `send` (one write) per message. Slower (4.8 – 8.5 µs per delivery: every receiver
//!   contends on the channel's lock and nothing coalesces); kept to compare with the figures
//!   of docs/benchmarks.md measured against it before 2026-11-27.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use clap::{Args, ValueEnum};
use futures_util::SinkExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

#[derive(Args)]
pub struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How a publication reaches the connection tasks.
    #[arg(long, value_enum, default_value_t = Fanout::Queues)]
    pub fanout: Fanout,
}

/// The baseline's fan-out (see the module's documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Fanout {
    /// A queue per subscriber, pushed to by the publisher (issue 16's lean baseline).
    #[default]
    Queues,
    /// One `tokio::sync::broadcast` channel (the baseline before 2026-11-27).
    Broadcast,
}

/// One subscriber's queue: the publisher appends, the connection task drains.
#[derive(Default)]
struct Inbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    ready: Notify,
}

#[derive(Clone)]
struct Hub {
    fanout: Fanout,
    tx: broadcast::Sender<Utf8Bytes>,
    inboxes: Arc<Mutex<HashMap<u64, Arc<Inbox>>>>,
    next_id: Arc<AtomicU64>,
    offset: Arc<AtomicU64>,
}

pub fn main(args: BaselineArgs) -> anyhow::Result<()> {
    super::procfs::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let hub = Hub {
            fanout: args.fanout,
            tx: broadcast::channel(4096).0,
            inboxes: Arc::default(),
            next_id: Arc::default(),
            offset: Arc::default(),
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
        .on_upgrade(move |socket| async move {
            match hub.fanout {
                Fanout::Queues => queued(socket, hub).await,
                Fanout::Broadcast => broadcast_rx(socket, hub).await,
            }
        })
}

const HELLO: &str = r#"{"op":"hello"}"#;
const SUBSCRIBED: &str = r#"{"op":"subscribed"}"#;

/// The connection task of the `queues` fan-out.
async fn queued(mut socket: WebSocket, hub: Hub) {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let inbox = Arc::new(Inbox::default());
    hub.inboxes.lock().insert(id, inbox.clone());
    let _ = serve_queued(&mut socket, &inbox).await;
    hub.inboxes.lock().remove(&id);
}

async fn serve_queued(socket: &mut WebSocket, inbox: &Inbox) -> Result<(), axum::Error> {
    socket.send(Message::Text(HELLO.into())).await?;
    let mut batch = VecDeque::new();
    loop {
        tokio::select! {
            () = inbox.ready.notified() => {
                std::mem::swap(&mut batch, &mut *inbox.queue.lock());
                for text in batch.drain(..) {
                    socket.feed(Message::Text(text)).await?;
                }
                socket.flush().await?;
            }
            inbound = socket.recv() => match inbound {
                Some(Ok(Message::Text(_))) => socket.send(Message::Text(SUBSCRIBED.into())).await?,
                Some(Ok(_)) => {}
                _ => return Ok(()),
            },
        }
    }
}

/// The connection task of the `broadcast` fan-out.
async fn broadcast_rx(mut socket: WebSocket, hub: Hub) {
    let mut rx = hub.tx.subscribe();
    if socket.send(Message::Text(HELLO.into())).await.is_err() {
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
                    if socket.send(Message::Text(SUBSCRIBED.into())).await.is_err() {
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
    let frame: Utf8Bytes = format!(
        r#"{{"op":"message","channel":"bench","offset":{offset},"data":{}}}"#,
        v["data"]
    )
    .into();
    match hub.fanout {
        Fanout::Broadcast => {
            let _ = hub.tx.send(frame);
        }
        Fanout::Queues => {
            // Walked under the lock: the strictest fan-out (no copy of the list); connects
            // wait for it, which the bench never makes them do.
            for inbox in hub.inboxes.lock().values() {
                let mut q = inbox.queue.lock();
                let wake = q.is_empty();
                q.push_back(frame.clone());
                drop(q);
                if wake {
                    inbox.ready.notify_one();
                }
            }
        }
    }
    r#"{"success":true}"#
}
