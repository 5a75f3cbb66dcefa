//! Events out: wsgate tells the backend what happened (docs/events.md).
//!
//! - [`event`]: the [`Event`] envelope (`id`, `type`, `time`, `node`, `payload`) and its
//!   [`Payload`] per type, as JSON.
//! - [`occupancy`]: the [`Occupancy`] seam that decides, cluster-wide and atomically, when a
//!   channel gets its first subscriber or loses its last one and when a user's first or last
//!   connection joins or leaves a channel: each such transition is seen by exactly one node,
//!   which sends its event. Connection events come from the node that holds the connection;
//!   a dead node's are sent by the survivor that reaps its leftovers.
//! - [`queue`]: one bounded queue, batcher and retry loop per sink; drops are counted.
//! - [`sink`]: the [`Sink`] seam. The webhook sink is in `wsgate-server`, the Redis Stream
//!   sink in `wsgate-redis`, the NATS subject sink in `wsgate-nats`.
//!
//! [`Events`] is what the gateway and the upstream manager call. Emitting never waits for
//! a sink: the event is pushed (or dropped, counted) into each sink's queue. Store work
//! (occupancy joins and leaves) is awaited where the gateway already awaits presence.

pub mod event;
mod metrics;
pub mod occupancy;
mod queue;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

pub use event::{EVENT_TYPES, Event, Payload, batch_json};
pub use metrics::{EventMetrics, SINKS, SinkLabel};
pub use occupancy::{Ledger, MemoryOccupancy, Occupancy, Reaped, Transition};
pub use queue::{DROP_LOG_EVERY_MS, QueueConfig};
pub use sink::{Sink, SinkError};

use crate::seams::NodeId;
use queue::SinkQueue;

/// Connection records waiting for the store at most; beyond, a record is skipped (only a
/// crash of this node would miss it: its `connection.closed` would not be reported).
const LEDGER_CAPACITY: usize = 65_536;
/// Connection records written to the store in one call at most.
const LEDGER_BATCH: usize = 512;

enum LedgerMsg {
    Change(Ledger),
    /// Answered once everything before it is written.
    Barrier(oneshot::Sender<()>),
}

/// A node's event emitter: its sinks' queues and its occupancy store.
pub struct Events {
    node: NodeId,
    queues: Vec<SinkQueue>,
    occupancy: Arc<dyn Occupancy>,
    ledger: mpsc::Sender<LedgerMsg>,
    close: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    background: Vec<JoinHandle<()>>,
    store_errors: Counter,
}

impl Events {
    /// Starts one worker per sink, the connection ledger and (cluster stores) the reaper.
    /// `store_errors` counts failed occupancy calls (the node's `wsgate_store_errors_total`).
    pub fn start(
        node: NodeId,
        sinks: Vec<Arc<dyn Sink>>,
        config: &QueueConfig,
        occupancy: Arc<dyn Occupancy>,
        metrics: &EventMetrics,
        store_errors: Counter,
    ) -> Arc<Self> {
        let (close, closing) = watch::channel(false);
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for sink in sinks {
            let (q, w) = queue::start(sink, config, metrics, closing.clone());
            queues.push(q);
            workers.push(w);
        }
        let (ledger, rx) = mpsc::channel(LEDGER_CAPACITY);
        let mut background = vec![tokio::spawn(write_ledger(
            occupancy.clone(),
            rx,
            store_errors.clone(),
        ))];
        Arc::new_cyclic(|me: &std::sync::Weak<Events>| {
            if let Some(every) = occupancy.tick_interval() {
                background.push(tokio::spawn(reap(me.clone(), every)));
            }
            Self {
                node,
                queues,
                occupancy,
                ledger,
                close,
                workers: Mutex::new(workers),
                background,
                store_errors,
            }
        })
    }

    /// Queues one event for every sink (never waits; a full queue drops it, counted).
    pub fn emit(&self, payload: Payload) {
        let event = Arc::new(Event::new(self.node.clone(), payload));
        for q in &self.queues {
            q.push(event.clone());
        }
    }

    /// `connection.opened`, and the connection's record for the cluster.
    pub fn opened(
        &self,
        id: &Arc<str>,
        user: &Arc<str>,
        transport: &'static str,
        remote: Option<String>,
    ) {
        self.record(Ledger::Opened {
            id: id.clone(),
            user: user.clone(),
        });
        self.emit(Payload::ConnectionOpened {
            connection_id: id.clone(),
            user: user.clone(),
            transport,
            remote,
        });
    }

    /// `connection.closed`.
    pub fn closed(&self, id: &Arc<str>, user: &Arc<str>, reason: &str, code: Option<u16>) {
        self.emit(Payload::ConnectionClosed {
            connection_id: id.clone(),
            user: user.clone(),
            reason: reason.into(),
            code,
        });
    }

    /// The connection's channels are left: its record goes (after the leaves, so a crash in
    /// between still reports the connection).
    pub fn forget(&self, id: &Arc<str>) {
        self.record(Ledger::Closed { id: id.clone() });
    }

    fn record(&self, change: Ledger) {
        if self.ledger.try_send(LedgerMsg::Change(change)).is_err() {
            self.store_errors.inc();
            debug!("connection ledger full: record skipped");
        }
    }

    /// A subscription: `channel.occupied` and `presence.joined` when this one made them so.
    pub async fn joined(&self, channel: &str, connection_id: &Arc<str>, user: &Arc<str>) {
        match self.occupancy.join(channel, connection_id, user).await {
            Ok(t) => {
                let channel: Arc<str> = channel.into();
                if t.channel {
                    self.emit(Payload::ChannelOccupied {
                        channel: channel.clone(),
                        connection_id: connection_id.clone(),
                        user: user.clone(),
                    });
                }
                if t.user {
                    self.emit(Payload::PresenceJoined {
                        channel,
                        user: user.clone(),
                        connection_id: connection_id.clone(),
                    });
                }
            }
            Err(e) => {
                self.store_errors.inc();
                warn!(connection_id = %connection_id, channel, error = %e, "occupancy join failed: no events for it");
            }
        }
    }

    /// An unsubscription: `presence.left` and `channel.vacated` when this one made them so.
    pub async fn left(&self, channel: &str, connection_id: &Arc<str>) {
        match self.occupancy.leave(channel, connection_id).await {
            Ok(Some((user, t))) => {
                let channel: Arc<str> = channel.into();
                if t.user {
                    self.emit(Payload::PresenceLeft {
                        channel: channel.clone(),
                        user,
                        connection_id: connection_id.clone(),
                    });
                }
                if t.channel {
                    self.emit(Payload::ChannelVacated { channel });
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.store_errors.inc();
                warn!(connection_id = %connection_id, channel, error = %e, "occupancy leave failed: no events for it");
            }
        }
    }

    /// `upstream.state_changed`.
    pub fn upstream_state(&self, id: &Arc<str>, from: Option<&'static str>, to: &'static str) {
        self.emit(Payload::UpstreamStateChanged {
            upstream_id: id.clone(),
            from,
            to,
        });
    }

    fn reaped(&self, r: Reaped) {
        match r {
            Reaped::Connection { id, user } => self.emit(Payload::ConnectionClosed {
                connection_id: id,
                user,
                reason: "node_lost".into(),
                code: None,
            }),
            Reaped::Channel {
                channel,
                left,
                vacated,
            } => {
                for (user, connection_id) in left {
                    self.emit(Payload::PresenceLeft {
                        channel: channel.clone(),
                        user,
                        connection_id,
                    });
                }
                if vacated {
                    self.emit(Payload::ChannelVacated { channel });
                }
            }
        }
    }

    /// The node drains (after its connections closed): writes the connection records,
    /// gives up this node's liveness (survivors reap what is left at once), then sends what
    /// is queued until `deadline`; what is still undelivered then is counted as dropped.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let (done, written) = oneshot::channel();
        let _ = tokio::time::timeout_at(deadline, async {
            if self.ledger.send(LedgerMsg::Barrier(done)).await.is_ok() {
                let _ = written.await;
            }
        })
        .await;
        if let Ok(left) = tokio::time::timeout_at(deadline, self.occupancy.retire()).await {
            for r in left {
                self.reaped(r);
            }
        }
        let _ = self.close.send(true);
        let workers = std::mem::take(&mut *self.workers.lock());
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
            for q in &self.queues {
                q.abandon();
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
        for w in self.workers.get_mut().iter() {
            w.abort();
        }
    }
}

/// Writes connection records in order, many per store call.
async fn write_ledger(
    occupancy: Arc<dyn Occupancy>,
    mut rx: mpsc::Receiver<LedgerMsg>,
    store_errors: Counter,
) {
    let mut batch = Vec::new();
    let mut barriers = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                LedgerMsg::Change(c) => batch.push(c),
                LedgerMsg::Barrier(done) => barriers.push(done),
            }
            next = if batch.len() < LEDGER_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // A few quick retries; the records only matter if this node dies, so an outage
        // longer than that skips them rather than holding later ones.
        for attempt in 0..5u32 {
            match occupancy.connections(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    store_errors.inc();
                    debug!(attempt, error = %e, "connection records not written");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        batch.clear();
        for done in barriers.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Renews this node's liveness and sends the events of dead nodes' leftovers it reaped.
async fn reap(events: std::sync::Weak<Events>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(events) = events.upgrade() else {
            return;
        };
        match events.occupancy.tick().await {
            Ok(reaped) => {
                for r in reaped {
                    events.reaped(r);
                }
            }
            Err(e) => {
                events.store_errors.inc();
                debug!(error = %e, "occupancy tick failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex as PlMutex;

    #[derive(Default)]
    struct Kept(PlMutex<Vec<Arc<Event>>>);

    #[async_trait::async_trait]
    impl Sink for Kept {
        fn name(&self) -> &'static str {
            "webhook"
        }
        async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError> {
            self.0.lock().extend(batch.iter().cloned());
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_node_reports_each_transition_once() {
        let sink = Arc::new(Kept::default());
        let config = QueueConfig {
            capacity: 100,
            batch_max: 10,
            linger: Duration::from_millis(1),
            backoff: wsgate_backoff::Backoff::new(),
        };
        let ev = Events::start(
            "n".into(),
            vec![sink.clone()],
            &config,
            Arc::new(MemoryOccupancy::default()),
            &EventMetrics::default(),
            Counter::default(),
        );
        let (a, b, u): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "u".into());
        ev.opened(&a, &u, "gateway", None);
        ev.joined("c", &a, &u).await;
        ev.joined("c", &b, &u).await;
        ev.left("c", &a).await;
        ev.left("c", &b).await;
        ev.closed(&a, &u, "client_closed", Some(1000));
        ev.drain(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        let kinds: Vec<&str> = sink.0.lock().iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                "connection.opened",
                "channel.occupied",
                "presence.joined",
                "presence.left",
                "channel.vacated",
                "connection.closed"
            ]
        );
    }
}
