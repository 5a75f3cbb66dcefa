//! The [`Forwarding`] seam: the node-to-node request/reply channel that carries an API call
//! to the node holding a connection, and a cluster-wide view's question to every node.
//! Bodies are opaque text: what they mean is the control façade's and the upstream
//! manager's business (`control/cluster.rs`, `upstream/forward.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::presence::StoreError;

/// Answers one forwarded request (its body) with a reply body.
pub type RequestHandler = Arc<dyn Fn(String) -> BoxFuture<'static, String> + Send + Sync>;

#[async_trait]
pub trait Forwarding: Send + Sync + 'static {
    /// Sends `body` to `node`'s handler and waits (at most `timeout`) for its reply.
    /// `None`: no process of that node listens (it is dead even if its lease is not).
    /// [`StoreError::NoAnswer`]: it listens but did not answer within `timeout`.
    async fn request(
        &self,
        node: &str,
        body: String,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError>;
    /// Starts answering requests addressed to this node with `handler`.
    fn serve(&self, handler: RequestHandler);
}
