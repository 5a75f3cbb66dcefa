//! [`RedisForwarding`]: the node-to-node request/reply channel that carries an API call to
//! the node holding an upstream connection.
//!
//! Request/reply over pub/sub channel `P:rpc:<node>`; one subscription per node carries
//! both the requests addressed to it and the replies to its own requests. The subscription
//! starts on first use (a request or `serve`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use wsgate_core::seams::{Forwarding, NodeId, RequestHandler, StoreError};

use super::{Keys, next_delay, reconnect_backoff, store_error};

pub struct RedisForwarding {
    pub(crate) node: NodeId,
    pub(crate) conn: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) keys: Keys,
    pub(crate) inner: Arc<Rpc>,
}

/// Request/reply state shared with the subscription task.
#[derive(Default)]
pub(crate) struct Rpc {
    pending: DashMap<u64, oneshot::Sender<String>>,
    next: AtomicU64,
    handler: OnceLock<RequestHandler>,
    started: AtomicBool,
}

#[derive(Serialize, Deserialize)]
struct Frame {
    /// `q` request, `r` reply.
    k: char,
    id: u64,
    /// The requester (where the reply goes).
    from: String,
    b: String,
}

impl RedisForwarding {
    fn start_subscription(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = RpcTask {
            client: self.client.clone(),
            conn: self.conn.clone(),
            channel: self.keys.rpc(&self.node),
            keys: self.keys.clone(),
            rpc: self.inner.clone(),
        };
        tokio::spawn(task.run());
    }
}

#[async_trait]
impl Forwarding for RedisForwarding {
    async fn request(
        &self,
        node: &str,
        body: String,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.start_subscription();
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.insert(id, tx);
        let frame = Frame {
            k: 'q',
            id,
            from: self.node.to_string(),
            b: body,
        };
        let payload =
            serde_json::to_string(&frame).map_err(|e| StoreError::Other(e.to_string()))?;
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.keys.rpc(node))
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await;
        let res = match sent {
            Err(e) => Err(store_error(e)),
            Ok(0) => Ok(None),
            Ok(_) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(Some(reply)),
                Ok(Err(_)) => Err(StoreError::Other("forwarded call dropped".into())),
                Err(_) => Err(StoreError::NoAnswer(node.to_string())),
            },
        };
        self.inner.pending.remove(&id);
        res
    }

    fn serve(&self, handler: RequestHandler) {
        let _ = self.inner.handler.set(handler);
        self.start_subscription();
    }
}

/// The node's `P:rpc:<node>` subscription: requests in, replies to its own requests in.
struct RpcTask {
    client: redis::Client,
    conn: ConnectionManager,
    channel: String,
    keys: Keys,
    rpc: Arc<Rpc>,
}

impl RpcTask {
    async fn run(self) {
        let mut backoff = reconnect_backoff();
        loop {
            let connect = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(ps)) => {
                    backoff.reset();
                    debug!(channel = %self.channel, "forwarding channel subscribed");
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(frame) = serde_json::from_slice::<Frame>(msg.get_payload_bytes())
                        else {
                            continue;
                        };
                        self.on_frame(frame);
                    }
                    warn!("forwarding subscription lost; reconnecting");
                }
                _ => {
                    if backoff.retries() == 0 {
                        warn!("forwarding subscription failed; retrying");
                    }
                }
            }
            tokio::time::sleep(next_delay(&mut backoff)).await;
        }
    }

    fn on_frame(&self, frame: Frame) {
        match frame.k {
            'r' => {
                if let Some((_, tx)) = self.rpc.pending.remove(&frame.id) {
                    let _ = tx.send(frame.b);
                }
            }
            'q' => {
                let Some(handler) = self.rpc.handler.get().cloned() else {
                    return;
                };
                let mut conn = self.conn.clone();
                let reply_to = self.keys.rpc(&frame.from);
                tokio::spawn(async move {
                    let body = handler(frame.b).await;
                    let reply = Frame {
                        k: 'r',
                        id: frame.id,
                        from: String::new(),
                        b: body,
                    };
                    if let Ok(payload) = serde_json::to_string(&reply) {
                        let r: Result<i64, _> = redis::cmd("PUBLISH")
                            .arg(reply_to)
                            .arg(payload)
                            .query_async(&mut conn)
                            .await;
                        if let Err(e) = r {
                            warn!(error = %e, "forwarded call reply not sent");
                        }
                    }
                });
            }
            _ => {}
        }
    }
}
