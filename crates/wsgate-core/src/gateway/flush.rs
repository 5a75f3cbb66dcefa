//! Writing a channel fan-out's sockets in passes, instead of waking each connection's task.
//!
//! The publisher queues a publication's frame into every local subscriber's backlog
//! ([`Transport::queue`](super::Transport::queue)); the sockets whose backlog it started are
//! then handed over in one batch, split over a few lanes, and each lane's task writes its
//! sockets one after the other ([`Transport::flush_queued`](super::Transport::flush_queued)).
//! A 10k fan-out costs one wake-up per lane instead of 10,000 task wake-ups (each a run-queue
//! push, a poll of the connection's future and the re-registration of its wakers). A socket
//! that is still waiting to be written when the next publication arrives is not handed over
//! again: its one write carries both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Connection;

/// The node's flush lanes (see the module's documentation).
pub struct Flushers {
    lanes: Box<[Arc<Lane>]>,
    spawned: Once,
}

#[derive(Default)]
struct Lane {
    pending: Mutex<Vec<Arc<Connection>>>,
    ready: Notify,
    /// The gateway is gone: the lane's task ends.
    closed: AtomicBool,
}

impl Flushers {
    /// `lanes` tasks (at least one), spawned on first use.
    pub fn new(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| Arc::default()).collect(),
            spawned: Once::new(),
        }
    }

    /// Writes the sockets of one fan-out, `batch` in the order it was queued.
    pub fn flush(&self, batch: Vec<Arc<Connection>>) {
        if batch.is_empty() {
            return;
        }
        // Outside a runtime (a unit test's fan-out) the caller writes.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return write(batch);
        };
        self.spawned.call_once(|| {
            for lane in &self.lanes {
                rt.spawn(run(lane.clone()));
            }
        });
        let per_lane = batch.len().div_ceil(self.lanes.len());
        let mut batch = batch.into_iter();
        for lane in &self.lanes {
            let mut pending = lane.pending.lock();
            let was_empty = pending.is_empty();
            pending.extend(batch.by_ref().take(per_lane));
            drop(pending);
            if was_empty {
                lane.ready.notify_one();
            }
        }
    }
}

impl Drop for Flushers {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.closed.store(true, Ordering::Release);
            lane.ready.notify_one();
        }
    }
}

fn write(batch: Vec<Arc<Connection>>) {
    for conn in batch {
        conn.transport.flush_queued();
    }
}

async fn run(lane: Arc<Lane>) {
    let mut batch = Vec::new();
    loop {
        lane.ready.notified().await;
        if lane.closed.load(Ordering::Acquire) {
            return;
        }
        loop {
            std::mem::swap(&mut batch, &mut *lane.pending.lock());
            if batch.is_empty() {
                break;
            }
            for conn in batch.drain(..) {
                conn.transport.flush_queued();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::*;
    use crate::auth::Identity;
    use crate::gateway::{Outbound, Overflow, Transport};

    /// Counts its flushes and tells the test of each.
    #[derive(Debug)]
    struct Counting {
        flushed: AtomicUsize,
        told: mpsc::UnboundedSender<()>,
    }

    impl Transport for Counting {
        fn send(&self, _: &Outbound) -> Result<(), Overflow> {
            Ok(())
        }
        fn flush_queued(&self) {
            self.flushed.fetch_add(1, Ordering::Relaxed);
            let _ = self.told.send(());
        }
        fn send_control(&self, _: Bytes) {}
        fn hold(&self) {}
        fn skip_through(&self, _: Arc<str>, _: Arc<str>, _: u64) {}
        fn forget_channel(&self, _: &str) {}
        fn backlog(&self) -> usize {
            0
        }
    }

    fn conns(n: usize, told: &mpsc::UnboundedSender<()>) -> Vec<(Arc<Connection>, Arc<Counting>)> {
        (0..n)
            .map(|i| {
                let transport = Arc::new(Counting {
                    flushed: AtomicUsize::new(0),
                    told: told.clone(),
                });
                let identity = Identity {
                    subscribe: Default::default(),
                    user: format!("u{i}").into(),
                    channels: Default::default(),
                    expires_at: None,
                };
                let conn = Connection::new(
                    format!("c{i}").into(),
                    "gateway",
                    identity,
                    None,
                    0,
                    transport.clone(),
                );
                (Arc::new(conn), transport)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_socket_handed_over_is_written_once() {
        for lanes in [1, 3] {
            let (told, mut flushes) = mpsc::unbounded_channel();
            let all = conns(100, &told);
            let flushers = Flushers::new(lanes);
            // Two fan-outs back to back (the second may find the lanes busy).
            let batch = |range: std::ops::Range<usize>| all[range].iter().map(|c| c.0.clone()).collect();
            flushers.flush(batch(0..60));
            flushers.flush(batch(60..100));
            for _ in 0..100 {
                tokio::time::timeout(Duration::from_secs(5), flushes.recv())
                    .await
                    .expect("every socket is written")
                    .unwrap();
            }
            for (_, t) in &all {
                assert_eq!(t.flushed.load(Ordering::Relaxed), 1, "{lanes} lanes");
            }
            drop(flushers);
        }
    }

    #[test]
    fn outside_a_runtime_the_caller_writes() {
        let (told, mut flushes) = mpsc::unbounded_channel();
        let all = conns(3, &told);
        Flushers::new(1).flush(all.iter().map(|c| c.0.clone()).collect());
        for _ in 0..3 {
            flushes.try_recv().expect("written before flush returned");
        }
    }
}
