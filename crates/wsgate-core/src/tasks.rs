//! Supervised background tasks: the ones a node cannot do its job without (the broker's
//! subscription, the lease renewal, the forwarding channel, the history watch, NATS's node
//! loop). Each of them runs until the node stops; one that ends anyway (it returned, or
//! panicked) leaves the node deaf or unleased while it still looks healthy. So every such
//! task is spawned through [`supervised`], and when one ends, [`failed`] resolves with its
//! name: the server's supervisor turns `/ready` to 503 and stops the process with a
//! non-zero status, for the orchestrator to restart it. Aborting a task (a store dropped
//! on purpose) is not a failure.
//!
//! The record is process-wide (engines are built far from the supervisor, and a process
//! runs one node): a test that wants to see a failure runs in its own process.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

fn record() -> &'static watch::Sender<Option<&'static str>> {
    static FAILED: OnceLock<watch::Sender<Option<&'static str>>> = OnceLock::new();
    FAILED.get_or_init(|| watch::channel(None).0)
}

/// Spawns `task`, a loop that must run as long as the process: if it ever returns or
/// panics, [`failed`] resolves with `name`.
pub fn supervised<F>(name: &'static str, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let how = match AssertUnwindSafe(task).catch_unwind().await {
            Ok(()) => "ended",
            Err(_) => "panicked",
        };
        error!(
            task = name,
            "background task {how}: the node can no longer do its job"
        );
        record().send_if_modified(|first| {
            let fresh = first.is_none();
            first.get_or_insert(name);
            fresh
        });
    })
}

/// The first supervised task that ended, if any.
pub fn failure() -> Option<&'static str> {
    *record().borrow()
}

/// Resolves with the name of the first supervised task that ends (at once if one has).
pub async fn failed() -> &'static str {
    let mut rx = record().subscribe();
    let first = rx.wait_for(Option::is_some).await.map(|name| *name);
    match first {
        Ok(name) => name.unwrap_or("unknown"),
        // The sender is a static: never dropped.
        Err(_) => std::future::pending().await,
    }
}
