//! [`RedisForwarding`]: the node-to-node request/reply channel that carries an API call to
//! the node holding an upstream connection.
//!
//! Request/reply over pub/sub channel `P:rpc:<node>`; one subscription per node carries
//! both the requests addressed to it and the replies to its own requests. The subscription
//! starts on first use (a request or `serve`).
//!
//! With a cluster key every frame carries an HMAC-SHA256 under a key derived from it over
//! its kind, id, sender, recipient, time and body: a frame that does not verify, names
//! another recipient, is more than [`MAX_SKEW`] away from this node's clock, or repeats a
//! tag seen in that window is dropped (and counted in `wsgate_cluster_malformed_total`), so a
//! Redis client without the key can neither run an API call on a node nor forge a reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::Conn;
use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use wsgate_core::clock::unix_ms;
use wsgate_core::seams::{ClusterMetrics, Forwarding, NodeId, RequestHandler, StoreError};

use super::feed::{Event, Feed};
use super::sealed::ClusterKey;
use super::{Keys, RedisConfig, next_delay, reconnect_backoff, store_error};

/// How far a frame's time may be from the receiver's clock (and how long its tag is
/// remembered against replays).
pub const MAX_SKEW: Duration = Duration::from_secs(30);

pub struct RedisForwarding {
    pub(crate) node: NodeId,
    pub(crate) conn: Conn,
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) inner: Arc<Rpc>,
}

/// Request/reply state shared with the subscription task.
pub(crate) struct Rpc {
    pending: DashMap<u64, oneshot::Sender<String>>,
    next: AtomicU64,
    handler: OnceLock<RequestHandler>,
    started: AtomicBool,
    /// Signs and checks frames (`None`: a dev store without a key; frames in clear).
    pub(crate) key: Option<ClusterKey>,
    pub(crate) node: NodeId,
    pub(crate) metrics: ClusterMetrics,
    /// Tags seen within [`MAX_SKEW`] (tag → frame time, ms).
    seen: Mutex<HashMap<String, u64>>,
}

#[derive(Serialize, Deserialize)]
struct Frame {
    /// `q` request, `r` reply.
    k: char,
    id: u64,
    /// The requester (where the reply goes).
    from: String,
    b: String,
    /// The recipient node.
    #[serde(default)]
    to: String,
    /// Sent at (unix ms).
    #[serde(default)]
    t: u64,
    /// HMAC-SHA256 (base64) of the fields above; empty without a key.
    #[serde(default)]
    m: String,
}

impl Frame {
    fn new(k: char, id: u64, from: &str, to: &str, b: String) -> Self {
        Frame {
            k,
            id,
            from: from.to_string(),
            b,
            to: to.to_string(),
            t: unix_ms(),
            m: String::new(),
        }
    }

    fn signed_parts(&self) -> [Vec<u8>; 6] {
        [
            self.k.to_string().into_bytes(),
            self.id.to_be_bytes().to_vec(),
            self.from.as_bytes().to_vec(),
            self.to.as_bytes().to_vec(),
            self.t.to_be_bytes().to_vec(),
            self.b.as_bytes().to_vec(),
        ]
    }

    fn payload(mut self, key: Option<&ClusterKey>) -> Result<String, StoreError> {
        if let Some(key) = key {
            let parts = self.signed_parts();
            self.m = key.sign(&parts.each_ref().map(Vec::as_slice));
        }
        serde_json::to_string(&self).map_err(|e| StoreError::Other(e.to_string()))
    }
}

impl Rpc {
    pub(crate) fn new(node: NodeId, key: Option<ClusterKey>, metrics: ClusterMetrics) -> Self {
        Self {
            pending: DashMap::new(),
            next: AtomicU64::new(0),
            handler: OnceLock::new(),
            started: AtomicBool::new(false),
            key,
            node,
            metrics,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a received frame may be acted on (see the module documentation).
    fn accept(&self, f: &Frame) -> bool {
        let Some(key) = &self.key else {
            return true;
        };
        let now = unix_ms();
        let skew = MAX_SKEW.as_millis() as u64;
        let parts = f.signed_parts();
        let ok = f.to == *self.node
            && f.t.abs_diff(now) <= skew
            && key.verify(&parts.each_ref().map(Vec::as_slice), &f.m)
            && {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= 4096 {
                    seen.retain(|_, t| t.abs_diff(now) <= skew);
                }
                seen.insert(f.m.clone(), f.t).is_none()
            };
        if !ok {
            self.metrics.malformed.inc();
            warn!(from = %f.from, kind = %f.k, "forwarded call frame refused: bad or missing signature, another recipient, too old, or a replay");
        }
        ok
    }
}

impl RedisForwarding {
    fn start_subscription(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = RpcTask {
            config: self.config.clone(),
            conn: self.conn.clone(),
            channel: self.keys.rpc(&self.node),
            keys: self.keys.clone(),
            rpc: self.inner.clone(),
        };
        wsgate_core::tasks::supervised("forwarding channel", task.run());
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
        let payload =
            Frame::new('q', id, &self.node, node, body).payload(self.inner.key.as_ref())?;
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
    config: RedisConfig,
    conn: Conn,
    channel: String,
    keys: Keys,
    rpc: Arc<Rpc>,
}

impl RpcTask {
    async fn run(self) {
        let mut backoff = reconnect_backoff();
        loop {
            match Feed::open(&self.config, std::slice::from_ref(&self.channel)).await {
                Ok(mut feed) => {
                    backoff.reset();
                    debug!(channel = %self.channel, "forwarding channel subscribed");
                    // A call lost with a connection is answered by its caller's timeout.
                    while let Some(event) = feed.next().await {
                        let Event::Message { payload, .. } = event else {
                            continue;
                        };
                        let Ok(frame) = serde_json::from_slice::<Frame>(&payload) else {
                            continue;
                        };
                        if self.rpc.accept(&frame) {
                            self.on_frame(frame);
                        }
                    }
                    warn!("forwarding subscription lost; reconnecting");
                }
                Err(_) => {
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
                let rpc = self.rpc.clone();
                tokio::spawn(async move {
                    let body = handler(frame.b).await;
                    let reply = Frame::new('r', frame.id, &rpc.node, &frame.from, body);
                    if let Ok(payload) = reply.payload(rpc.key.as_ref()) {
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
