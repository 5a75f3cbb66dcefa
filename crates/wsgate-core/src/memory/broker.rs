//! In-process broker: per-channel offsets, a bounded history ring, synchronous delivery.
//!
//! Channel state exists only for channels that were published to, and goes away again: a
//! channel with no local subscriber and no publication for `idle_ttl` is evicted (checked
//! when new channels appear, at most every quarter `idle_ttl`), so a client subscribing to
//! ever new names, or a backend publishing to them, cannot grow the node without bound.
//!
//! Epochs: a channel that has no state reports offset 0 in the broker's *fresh* epoch, and a
//! stream created later starts in that epoch, so a subscriber of an empty channel and its
//! first publisher agree. Before any stream is evicted the fresh epoch changes, so a channel
//! created again never reuses the epoch of its evicted offsets (a client recovering with an
//! old position is told `epoch_changed`, never a wrong "nothing missed").

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};

use super::new_epoch;
use super::once::Remembered;
use crate::clock::unix_us as now_us;
use crate::seams::{
    Broker, BrokerError, Deliver, Envelope, Idempotency, NodeId, Once, Publication, PublishRequest,
    Recipient, Recovery, RecoveryGap, ServerSubscription, StreamPosition, StreamReads,
};

/// Default of the idle bound of [`MemoryBroker::new`]: the server passes the larger of its
/// `channel_idle_ttl_ms` and `history_ttl_ms`.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(600);
/// Eviction sweeps are never closer than this, whatever the idle bound.
const MIN_SWEEP_EVERY: Duration = Duration::from_millis(10);

/// One channel's stream. Its mutex is held while a publication is handed to the local sink:
/// that is what orders concurrent publishers, and it is cheap because the sink only
/// enqueues (it never writes to a socket).
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Publication>,
    last_publish: Instant,
    /// How long the stream outlives its last publication without local subscribers: the
    /// broker's idle bound, or longer when its namespace's `history_ttl_ms` says so.
    idle_ttl: Duration,
    /// Removed from the map by a sweep: whoever still holds it must look the channel up again.
    evicted: bool,
}

pub struct MemoryBroker {
    node: NodeId,
    history_size: usize,
    idle_ttl: Duration,
    streams: DashMap<Arc<str>, Arc<Mutex<Stream>>>,
    sink: OnceLock<Arc<dyn Deliver>>,
    /// The epoch of streams created from now on, and of the position of a channel that has
    /// no stream.
    fresh_epoch: RwLock<Arc<str>>,
    last_sweep: Mutex<Instant>,
    /// Idempotency keys seen: held across a keyed publish, which makes check, publish and
    /// record one step (keyed publishes of the node take turns; others never touch it).
    remembered: Mutex<Remembered>,
}

impl MemoryBroker {
    /// `history_size` messages per channel are kept for recovery (0 disables history).
    pub fn new(node: NodeId, history_size: usize) -> Self {
        Self {
            node,
            history_size,
            idle_ttl: DEFAULT_IDLE_TTL,
            streams: DashMap::new(),
            sink: OnceLock::new(),
            fresh_epoch: RwLock::new(new_epoch()),
            last_sweep: Mutex::new(Instant::now()),
            remembered: Mutex::new(Remembered::default()),
        }
    }

    /// Evicts a channel with no local subscriber once it had no publication for `ttl`.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Channels with state (published to and not yet evicted).
    pub fn channel_count(&self) -> usize {
        self.streams.len()
    }

    /// The channel's stream, created (in the fresh epoch) if it has none.
    fn stream(&self, channel: &Arc<str>) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.streams.get(&**channel) {
            return s.clone();
        }
        let created = match self.streams.entry(channel.clone()) {
            Entry::Occupied(e) => return e.get().clone(),
            Entry::Vacant(e) => e
                .insert(Arc::new(Mutex::new(Stream {
                    epoch: self.fresh_epoch.read().clone(),
                    offset: 0,
                    history: VecDeque::new(),
                    last_publish: Instant::now(),
                    idle_ttl: self.idle_ttl,
                    evicted: false,
                })))
                .clone(),
        };
        self.maybe_sweep();
        created
    }

    /// Where `channel` stands, and its history, without creating anything.
    fn read<T>(
        &self,
        channel: &str,
        f: impl FnOnce(&VecDeque<Publication>, StreamPosition) -> T,
    ) -> T {
        loop {
            let Some(stream) = self.streams.get(channel).map(|s| s.clone()) else {
                let position = StreamPosition {
                    offset: 0,
                    epoch: self.fresh_epoch.read().clone(),
                };
                return f(&VecDeque::new(), position);
            };
            let s = stream.lock();
            if s.evicted {
                continue;
            }
            let position = StreamPosition {
                offset: s.offset,
                epoch: s.epoch.clone(),
            };
            return f(&s.history, position);
        }
    }

    fn maybe_sweep(&self) {
        let every = (self.idle_ttl / 4).max(MIN_SWEEP_EVERY);
        {
            let mut last = self.last_sweep.lock();
            if last.elapsed() < every {
                return;
            }
            *last = Instant::now();
        }
        self.evict_idle();
    }

    /// Evicts every channel idle for `idle_ttl` with no local subscriber; returns how many.
    pub fn evict_idle(&self) -> usize {
        let sink = self.sink.get();
        let idle = |channel: &str, s: &Stream| {
            s.last_publish.elapsed() >= s.idle_ttl
                && !sink.is_some_and(|k| k.has_subscribers(channel))
        };
        let any = self
            .streams
            .iter()
            .any(|e| e.value().try_lock().is_some_and(|s| idle(e.key(), &s)));
        if !any {
            return 0;
        }
        // A new fresh epoch first: a channel evicted now and created again must not
        // restart its offsets in an epoch that clients already hold positions of.
        *self.fresh_epoch.write() = new_epoch();
        let before = self.streams.len();
        self.streams.retain(|channel, stream| {
            let Some(mut s) = stream.try_lock() else {
                return true;
            };
            if idle(channel, &s) {
                s.evicted = true;
                return false;
            }
            true
        });
        before.saturating_sub(self.streams.len())
    }

    fn deliver(&self, envelope: &Envelope) -> usize {
        self.sink.get().map_or(0, |s| s.deliver(envelope))
    }
}

#[async_trait]
impl StreamReads for MemoryBroker {
    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        Ok(self.read(channel, |_, position| position))
    }

    async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        Ok(self.read(channel, |history, position| {
            recover_from(history, position, since)
        }))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, sink: Arc<dyn Deliver>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError> {
        Ok(self.publish_now(req))
    }

    async fn publish_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Once, BrokerError> {
        let now = Instant::now();
        let mut remembered = self.remembered.lock();
        if let Some(first) = remembered.check(&req.channel, once, now)? {
            return Ok(Once::Repeat(first));
        }
        let channel = req.channel.clone();
        let (position, delivered) = self.publish_now(req);
        remembered.record(&channel, once, position.clone(), now);
        Ok(Once::Published {
            position,
            delivered,
        })
    }

    fn reads(&self) -> &dyn StreamReads {
        self
    }

    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        Ok(match to {
            Recipient::User(user) => self.deliver(&Envelope::User {
                user: user.into(),
                data,
            }),
            Recipient::Connection { node, .. } if *node != self.node => 0,
            Recipient::Connection { id, .. } => self.deliver(&Envelope::Connection {
                id: id.into(),
                data,
            }),
            Recipient::Subscribers(channel) => self.deliver(&Envelope::Subscribers {
                channel: channel.into(),
                data,
            }),
        })
    }

    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError> {
        Ok(self.deliver(&Envelope::Subscriptions {
            user: user.into(),
            change: change.clone(),
        }))
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

impl MemoryBroker {
    /// Publishes (synchronously: the local sink only enqueues).
    fn publish_now(&self, req: PublishRequest) -> (StreamPosition, usize) {
        loop {
            let stream = self.stream(&req.channel);
            let mut s = stream.lock();
            if s.evicted {
                // Evicted between the look-up and the lock (it was idle): look it up again.
                continue;
            }
            s.offset += 1;
            s.last_publish = Instant::now();
            // The namespace's bound (the server already took the longer of it and
            // `channel_idle_ttl_ms`, as it does for the node's).
            s.idle_ttl = req
                .history
                .ttl_ms
                .map_or(self.idle_ttl, Duration::from_millis);
            let history_size = req.history.size.unwrap_or(self.history_size);
            let publication = Publication {
                channel: req.channel,
                offset: s.offset,
                epoch: s.epoch.clone(),
                data: req.data,
                exclude_user: req.exclude_user,
                exclude_connection: req.exclude_connection,
                event: req.event,
                published_at_us: now_us(),
            };
            // A size lowered by a reload trims what the old one kept.
            while s.history.len() >= history_size.max(1) {
                s.history.pop_front();
            }
            if history_size > 0 {
                s.history.push_back(publication.clone());
            }
            let position = StreamPosition {
                offset: s.offset,
                epoch: s.epoch.clone(),
            };
            let delivered = self.deliver(&Envelope::Channel(publication));
            return (position, delivered);
        }
    }
}

/// The recovery rules, shared by every broker that keeps history as a ring of publications.
pub fn recover_from(
    history: &VecDeque<Publication>,
    position: StreamPosition,
    since: &StreamPosition,
) -> Recovery {
    let gap = |gap| Recovery {
        position: position.clone(),
        publications: Vec::new(),
        gap: Some(gap),
    };
    if since.epoch != position.epoch {
        return gap(RecoveryGap::EpochChanged);
    }
    if since.offset > position.offset {
        return gap(RecoveryGap::OffsetAhead);
    }
    let publications: Vec<Publication> = history
        .iter()
        .filter(|p| p.offset > since.offset)
        .cloned()
        .collect();
    let missed = position.offset - since.offset;
    let gap = (publications.len() as u64) < missed;
    Recovery {
        position,
        publications,
        gap: gap.then_some(RecoveryGap::HistoryTruncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<u64>>, AtomicU64);
    impl Deliver for Recorder {
        fn deliver(&self, e: &Envelope) -> usize {
            if let Envelope::Channel(p) = e {
                self.0.lock().push(p.offset);
            }
            self.1.fetch_add(1, Ordering::Relaxed);
            1
        }
    }

    fn req(ch: &str, n: u32) -> PublishRequest {
        PublishRequest {
            history: Default::default(),
            channel: ch.into(),
            data: Bytes::from(n.to_string()),
            exclude_user: None,
            exclude_connection: None,
            event: None,
        }
    }

    #[tokio::test]
    async fn offsets_are_per_channel_and_delivered_in_order() {
        let b = Arc::new(MemoryBroker::new("n1".into(), 4));
        let rec = Arc::new(Recorder::default());
        b.attach(rec.clone());
        let mut tasks = Vec::new();
        for t in 0..4 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..250 {
                    b.publish(req("a", t * 1000 + i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let seen = rec.0.lock().clone();
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
        assert_eq!(b.reads().position("b").await.unwrap().offset, 0);
    }

    /// A sink with subscribers on the channels listed.
    struct Subscribed(&'static [&'static str]);
    impl Deliver for Subscribed {
        fn deliver(&self, _: &Envelope) -> usize {
            0
        }
        fn has_subscribers(&self, channel: &str) -> bool {
            self.0.contains(&channel)
        }
    }

    #[tokio::test]
    async fn reading_a_channel_creates_no_state() {
        let b = MemoryBroker::new("n1".into(), 4);
        for i in 0..1000 {
            let ch = format!("nobody-{i}");
            let at = b.reads().position(&ch).await.unwrap();
            assert_eq!(at.offset, 0);
            let r = b.reads().recover(&ch, &at).await.unwrap();
            assert_eq!(r.gap, None);
        }
        assert_eq!(b.channel_count(), 0);
        // The first publication starts the stream in the epoch its subscribers were told.
        let told = b.reads().position("first").await.unwrap();
        let (at, _) = b.publish(req("first", 1)).await.unwrap();
        assert_eq!((at.offset, at.epoch), (1, told.epoch));
    }

    #[tokio::test]
    async fn idle_channels_without_subscribers_are_evicted_in_a_new_epoch() {
        let ttl = Duration::from_millis(30);
        let b = MemoryBroker::new("n1".into(), 4).with_idle_ttl(ttl);
        b.attach(Arc::new(Subscribed(&["kept"])));
        let (old, _) = b.publish(req("gone", 1)).await.unwrap();
        b.publish(req("gone", 2)).await.unwrap();
        b.publish(req("kept", 1)).await.unwrap();
        assert_eq!(b.evict_idle(), 0, "nothing is idle yet");
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(b.evict_idle(), 1, "the idle channel without subscribers");
        assert_eq!(b.channel_count(), 1);
        assert_eq!(b.reads().position("kept").await.unwrap().offset, 1);
        // Created again: offsets restart, in an epoch nobody holds positions of.
        let (again, _) = b.publish(req("gone", 3)).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, old.epoch);
        let r = b
            .reads()
            .recover(
                "gone",
                &StreamPosition {
                    offset: 2,
                    epoch: old.epoch,
                },
            )
            .await;
        assert_eq!(r.unwrap().gap, Some(RecoveryGap::EpochChanged));
    }

    #[tokio::test]
    async fn churn_over_unique_names_leaves_the_channel_count_flat() {
        let ttl = Duration::from_millis(20);
        let b = MemoryBroker::new("n1".into(), 4).with_idle_ttl(ttl);
        b.attach(Arc::new(Subscribed(&[])));
        for round in 0..3 {
            for i in 0..2000 {
                b.publish(req(&format!("r{round}-{i}"), 1)).await.unwrap();
            }
            tokio::time::sleep(ttl * 2).await;
        }
        b.publish(req("last", 1)).await.unwrap();
        assert!(
            b.channel_count() <= 2001,
            "{} channels kept",
            b.channel_count()
        );
    }

    #[tokio::test]
    async fn recovery_reports_what_history_cannot_fill() {
        let b = MemoryBroker::new("n1".into(), 3);
        let start = b.reads().position("c").await.unwrap();
        for i in 0..5 {
            b.publish(req("c", i)).await.unwrap();
        }
        let at3 = StreamPosition {
            offset: 3,
            epoch: start.epoch.clone(),
        };
        let r = b.reads().recover("c", &at3).await.unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        let r = b.reads().recover("c", &start).await.unwrap();
        assert_eq!(r.gap, Some(RecoveryGap::HistoryTruncated));
        assert_eq!(r.publications.len(), 3);
        let other = StreamPosition {
            offset: 3,
            epoch: "other".into(),
        };
        let r = b.reads().recover("c", &other).await.unwrap();
        assert_eq!(r.gap, Some(RecoveryGap::EpochChanged));
        let ahead = StreamPosition {
            offset: 9,
            epoch: start.epoch,
        };
        assert_eq!(
            b.reads().recover("c", &ahead).await.unwrap().gap,
            Some(RecoveryGap::OffsetAhead)
        );
    }
}
