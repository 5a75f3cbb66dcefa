//! One bounded queue and one worker per sink: the worker takes up to `batch_max` events
//! (waiting at most `linger` for the batch to fill), hands them to the sink and retries the
//! same batch with backoff until it is taken. Order is kept: nothing overtakes a batch that
//! is being retried. The queue is the only buffer: when the receiver stays away, new events
//! find it full and are dropped, counted (`wsgate_events_dropped_total`) and logged at most
//! once per [`DROP_LOG_EVERY_MS`], so a dead receiver costs bounded memory and log volume.
//!
//! Pushing never waits (`try_send`): the connection paths that emit events are never
//! slowed by a receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use wsgate_backoff::Backoff;

use super::event::Event;
use super::metrics::{EventMetrics, SinkLabel};
use super::sink::{Sink, SinkError};

/// Drops and failures are logged at most this often per sink (with the count since).
pub const DROP_LOG_EVERY_MS: u64 = 10_000;

/// How events are queued and batched (the same for every sink of a node).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Events held per sink before new ones are dropped.
    pub capacity: usize,
    /// Events per batch at most.
    pub batch_max: usize,
    /// How long a batch waits to fill once its first event is in.
    pub linger: Duration,
    /// Delays between retries of a failed batch (no attempt limit: the queue bound is the
    /// limit).
    pub backoff: Backoff,
}

/// A log line at most every [`DROP_LOG_EVERY_MS`], saying how many happened since.
#[derive(Default)]
struct RateLimitedLog {
    last_ms: AtomicU64,
    since: AtomicU64,
}

impl RateLimitedLog {
    /// Counts one occurrence; returns how many to report when a line is due now.
    fn due(&self) -> Option<u64> {
        self.since.fetch_add(1, Relaxed);
        let now = crate::clock::unix_ms();
        let last = self.last_ms.load(Relaxed);
        if now.saturating_sub(last) < DROP_LOG_EVERY_MS {
            return None;
        }
        self.last_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .ok()
            .map(|_| self.since.swap(0, Relaxed))
    }
}

/// The pushing side of one sink's queue.
pub(crate) struct SinkQueue {
    name: &'static str,
    tx: mpsc::Sender<Arc<Event>>,
    depth: Gauge,
    dropped: Counter,
    drops: RateLimitedLog,
    /// Events taken from the queue and not yet delivered (counted as dropped if the drain
    /// timeout cuts them off).
    in_flight: Arc<AtomicUsize>,
}

impl SinkQueue {
    pub fn push(&self, event: Arc<Event>) {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.depth.inc();
            }
            Err(_) => {
                self.dropped.inc();
                if let Some(n) = self.drops.due() {
                    warn!(
                        sink = self.name,
                        dropped = n,
                        "event queue full: events dropped"
                    );
                }
            }
        }
    }

    /// What is still undelivered (queued or in flight), counted as dropped: the drain
    /// timeout ended before it went out.
    pub fn abandon(&self) {
        let left = self.depth.get().max(0) as u64 + self.in_flight.load(Relaxed) as u64;
        if left > 0 {
            self.dropped.inc_by(left);
            self.depth.set(0);
            warn!(
                sink = self.name,
                events = left,
                "drain timeout: undelivered events dropped"
            );
        }
    }
}

/// Starts the worker of `sink`; returns its queue and the task.
pub(crate) fn start(
    sink: Arc<dyn Sink>,
    config: &QueueConfig,
    metrics: &EventMetrics,
    closing: watch::Receiver<bool>,
) -> (SinkQueue, JoinHandle<()>) {
    let label = SinkLabel { sink: sink.name() };
    let (tx, rx) = mpsc::channel(config.capacity.max(1));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let queue = SinkQueue {
        name: sink.name(),
        tx,
        depth: metrics.queue_depth.get_or_create(&label).clone(),
        dropped: metrics.dropped.get_or_create(&label).clone(),
        drops: RateLimitedLog::default(),
        in_flight: in_flight.clone(),
    };
    let worker = Worker {
        sink,
        rx,
        batch_max: config.batch_max.max(1),
        linger: config.linger,
        backoff: config.backoff.clone(),
        depth: queue.depth.clone(),
        sent: metrics.sent.get_or_create(&label).clone(),
        failed: metrics.failed.get_or_create(&label).clone(),
        dropped: queue.dropped.clone(),
        failures: RateLimitedLog::default(),
        in_flight,
        closing,
    };
    (queue, tokio::spawn(worker.run()))
}

struct Worker {
    sink: Arc<dyn Sink>,
    rx: mpsc::Receiver<Arc<Event>>,
    batch_max: usize,
    linger: Duration,
    backoff: Backoff,
    depth: Gauge,
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    failures: RateLimitedLog,
    in_flight: Arc<AtomicUsize>,
    /// Set when the node drains: stop lingering, send what is queued, then end.
    closing: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.in_flight.store(batch.len(), Relaxed);
            self.deliver(&batch).await;
            self.in_flight.store(0, Relaxed);
        }
    }

    fn closing(&self) -> bool {
        *self.closing.borrow()
    }

    fn take(&mut self, batch: &mut Vec<Arc<Event>>, event: Arc<Event>) {
        self.depth.dec();
        batch.push(event);
    }

    /// The next batch, or `None` once the node drains and the queue is empty.
    async fn next_batch(&mut self) -> Option<Vec<Arc<Event>>> {
        let mut batch = Vec::new();
        let first = loop {
            if self.closing() {
                break self.rx.try_recv().ok()?;
            }
            tokio::select! {
                e = self.rx.recv() => break e?,
                _ = self.closing.changed() => {}
            }
        };
        self.take(&mut batch, first);
        let until = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.batch_max {
            if let Ok(e) = self.rx.try_recv() {
                self.take(&mut batch, e);
                continue;
            }
            if self.closing() {
                break;
            }
            tokio::select! {
                e = self.rx.recv() => match e {
                    Some(e) => self.take(&mut batch, e),
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
                _ = self.closing.changed() => {}
            }
        }
        Some(batch)
    }

    async fn deliver(&mut self, batch: &[Arc<Event>]) {
        let mut delays = self.backoff.start();
        loop {
            match self.sink.send(batch).await {
                Ok(()) => {
                    self.sent.inc_by(batch.len() as u64);
                    return;
                }
                Err(SinkError::Rejected(why)) => {
                    self.failed.inc();
                    self.dropped.inc_by(batch.len() as u64);
                    warn!(sink = self.sink.name(), events = batch.len(), %why, "event batch refused by the receiver: dropped");
                    return;
                }
                Err(SinkError::Retry(why)) => {
                    self.failed.inc();
                    if let Some(n) = self.failures.due() {
                        warn!(sink = self.sink.name(), events = batch.len(), failures = n, %why, "event delivery failed: retrying");
                    }
                    let delay = delays.next_delay().unwrap_or(self.backoff.delay_cap());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Payload;
    use parking_lot::Mutex;

    /// Fails the first `fail` sends, records the batches it takes.
    struct Recording {
        fail: AtomicUsize,
        taken: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Sink for Recording {
        fn name(&self) -> &'static str {
            "webhook"
        }
        async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError> {
            if self.fail.load(Relaxed) > 0 {
                self.fail.fetch_sub(1, Relaxed);
                return Err(SinkError::Retry("down".into()));
            }
            self.taken
                .lock()
                .push(batch.iter().map(|e| e.id.clone()).collect());
            Ok(())
        }
    }

    fn event(n: usize) -> Arc<Event> {
        let mut e = Event::new(
            "n".into(),
            Payload::ChannelVacated {
                channel: "c".into(),
            },
        );
        e.id = n.to_string();
        Arc::new(e)
    }

    fn config(capacity: usize) -> QueueConfig {
        QueueConfig {
            capacity,
            batch_max: 3,
            linger: Duration::from_millis(50),
            backoff: Backoff::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(10))
                .jitter(0.0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_in_order_through_failures_and_flushes_on_close() {
        let sink = Arc::new(Recording {
            fail: AtomicUsize::new(2),
            taken: Mutex::new(Vec::new()),
        });
        let metrics = EventMetrics::default();
        let (close, closing) = watch::channel(false);
        let (queue, task) = start(sink.clone(), &config(100), &metrics, closing);
        for n in 0..7 {
            queue.push(event(n));
        }
        close.send(true).unwrap();
        task.await.unwrap();
        let taken = sink.taken.lock().clone();
        let flat: Vec<String> = taken.iter().flatten().cloned().collect();
        assert_eq!(flat, (0..7).map(|n| n.to_string()).collect::<Vec<_>>());
        assert!(taken.iter().all(|b| b.len() <= 3), "{taken:?}");
        let label = SinkLabel { sink: "webhook" };
        assert_eq!(metrics.sent.get_or_create(&label).get(), 7);
        assert_eq!(metrics.failed.get_or_create(&label).get(), 2);
        assert_eq!(metrics.queue_depth.get_or_create(&label).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts() {
        let sink = Arc::new(Recording {
            fail: AtomicUsize::new(usize::MAX),
            taken: Mutex::new(Vec::new()),
        });
        let metrics = EventMetrics::default();
        let (_close, closing) = watch::channel(false);
        let (queue, task) = start(sink, &config(4), &metrics, closing);
        for n in 0..20 {
            queue.push(event(n));
        }
        let label = SinkLabel { sink: "webhook" };
        // 4 queued, none taken yet (the worker has not run): 16 dropped.
        assert_eq!(metrics.dropped.get_or_create(&label).get(), 16);
        assert_eq!(metrics.queue_depth.get_or_create(&label).get(), 4);
        queue.abandon();
        assert_eq!(metrics.dropped.get_or_create(&label).get(), 20);
        task.abort();
    }
}
