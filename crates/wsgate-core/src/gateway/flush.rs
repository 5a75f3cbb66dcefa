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
//!
//! After a long pass (5 ms or more: a large fan-out) a lane rests `flush_rest` times as long as
//! the pass took (at most 100 ms) before the next one. While it rests, the backlogs fill, and
//! the next pass writes each socket once for all of it: under a sustained large fan-out the
//! lane writes at most half the time, and each write carries twice the frames. Measured on the
//! 10k × 100/s bench (docs/benchmarks.md, "Flush lanes"): 0.41 – 0.42 of the lean baseline's
//! CPU per delivery with the rest, 0.66 – 0.86 without, at about the baseline's latency (p99
//! 1.0 – 1.1 of it, against 0.55 – 0.83 without). Small fan-outs never wait for a rest of
//! their own; they may wait behind a large one's, as they wait behind its pass.
//!
//! A lane observes the delivery latency of each fan-out it finishes (publication accepted →
//! its last socket written), so `websocket_delivery_latency_seconds` includes the wait for the
//! lane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

use super::Connection;

/// The node's flush lanes (see the module's documentation).
pub struct Flushers {
    lanes: Box<[Arc<Lane>]>,
    spawned: Once,
}

/// One fan-out's share of a lane: the sockets, and when the publication was accepted
/// (microseconds since the epoch; 0: not a publication, nothing to observe).
struct Handover {
    conns: Vec<Arc<Connection>>,
    published_at_us: u64,
}

#[derive(Default)]
struct Lane {
    pending: Mutex<Vec<Handover>>,
    /// Where a finished fan-out's latency goes.
    latency: Option<Histogram>,
    rest: Rest,
    ready: Notify,
    /// The gateway is gone: the lane's task ends.
    closed: AtomicBool,
}

impl Flushers {
    /// `lanes` tasks (at least one), spawned on first use; each observes the fan-outs it
    /// finishes into `latency`, and rests `rest` times as long as a long pass took.
    pub fn new(lanes: usize, rest: f64, latency: Option<Histogram>) -> Self {
        Self {
            lanes: (0..lanes.max(1))
                .map(|_| {
                    Arc::new(Lane {
                        latency: latency.clone(),
                        rest: Rest(rest.max(0.0)),
                        ..Lane::default()
                    })
                })
                .collect(),
            spawned: Once::new(),
        }
    }

    /// Writes the sockets of one fan-out, `batch` in the order it was queued, of a
    /// publication accepted at `published_at_us`.
    pub fn flush(&self, batch: Vec<Arc<Connection>>, published_at_us: u64) {
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
        // Split by moving, not cloning the connections (one lane: the batch itself).
        let per_lane = batch.len().div_ceil(self.lanes.len());
        let mut shares = Vec::with_capacity(self.lanes.len());
        let mut rest = batch;
        while rest.len() > per_lane {
            let tail = rest.split_off(per_lane);
            shares.push(std::mem::replace(&mut rest, tail));
        }
        shares.push(rest);
        for (lane, conns) in self.lanes.iter().zip(shares) {
            let mut pending = lane.pending.lock();
            let was_empty = pending.is_empty();
            pending.push(Handover {
                conns,
                published_at_us,
            });
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

/// How long a lane rests after a long pass (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
struct Rest(f64);

impl Rest {
    /// Passes shorter than this are small fan-outs: no rest after them.
    const LONG_PASS: Duration = Duration::from_millis(5);
    /// The longest rest, whatever the pass took.
    const MAX: Duration = Duration::from_millis(100);

    fn after(self, pass: Duration) -> Option<Duration> {
        (self.0 > 0.0 && pass >= Self::LONG_PASS).then(|| pass.mul_f64(self.0).min(Self::MAX))
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
            let started = Instant::now();
            for handover in batch.drain(..) {
                write(handover.conns);
                if let Some(latency) = &lane.latency
                    && handover.published_at_us != 0
                {
                    let us = crate::clock::unix_us().saturating_sub(handover.published_at_us);
                    latency.observe(us as f64 / 1e6);
                }
            }
            if let Some(pause) = lane.rest.after(started.elapsed()) {
                tokio::time::sleep(pause).await;
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
            let flushers = Flushers::new(lanes, 1.0, None);
            // Two fan-outs back to back (the second may find the lanes busy).
            let batch =
                |range: std::ops::Range<usize>| all[range].iter().map(|c| c.0.clone()).collect();
            flushers.flush(batch(0..60), 0);
            flushers.flush(batch(60..100), 0);
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
    fn a_lane_rests_only_after_a_long_pass_and_never_long() {
        let ms = Duration::from_millis;
        assert_eq!(Rest(1.0).after(ms(4)), None, "a small fan-out");
        assert_eq!(Rest(1.0).after(ms(40)), Some(ms(40)));
        assert_eq!(Rest(0.5).after(ms(40)), Some(ms(20)));
        assert_eq!(Rest(1.0).after(ms(400)), Some(ms(100)), "capped");
        assert_eq!(Rest(0.0).after(ms(400)), None, "off");
    }

    #[test]
    fn outside_a_runtime_the_caller_writes() {
        let (told, mut flushes) = mpsc::unbounded_channel();
        let all = conns(3, &told);
        Flushers::new(1, 1.0, None).flush(all.iter().map(|c| c.0.clone()).collect(), 0);
        for _ in 0..3 {
            flushes.try_recv().expect("written before flush returned");
        }
    }
}
