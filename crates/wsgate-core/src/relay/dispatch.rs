//! A node's inbound side: hands what arrives on its subscription to the local sink, each
//! channel in offset order, filling holes from the channel log.
//!
//! Owned by the one task that reads the subscription, so its per-channel state needs no
//! lock. A publication is in the stream before any node hears of it (the log appends
//! first), so when live traffic jumps from offset N to N+k the missing ones can be
//! read back with one read of the log and delivered before N+k. Whatever arrives later at or below
//! the delivered offset is a duplicate and dropped (counted). Nothing is ever delivered out of
//! order. The ordering state of a channel with local subscribers is kept however long the
//! channel stays quiet: forgetting it would let a late N be taken for a duplicate of N+1.
//! A publication of a new epoch starts the channel again from offset 0 of that epoch (what
//! history holds of it is delivered first). Payloads that are not one JSON value are counted
//! and dropped on receipt.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Relay;
use crate::seams::{ClusterMetrics, Deliver, Envelope, Publication, StreamPosition};

/// Channels without local subscribers not heard of for this long are forgotten (their next
/// publication starts afresh).
const IDLE: Duration = Duration::from_secs(600);

/// Extra reads of history when the log does not answer (after 100, 200, 400, 800 ms).
const FILL_RETRIES: usize = 4;

struct Track {
    epoch: Arc<str>,
    offset: u64,
    /// When the publication at `offset` was accepted (the store's clock): a later "duplicate"
    /// is a timeline that went back, not a late copy.
    at_us: u64,
    seen: Instant,
}

pub struct Dispatcher {
    relay: Arc<Relay>,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
    channels: HashMap<Arc<str>, Track>,
    last_prune: Instant,
}

impl Dispatcher {
    pub fn new(relay: Arc<Relay>, sink: Arc<OnceLock<Arc<dyn Deliver>>>) -> Self {
        Self {
            relay,
            sink,
            channels: HashMap::new(),
            last_prune: Instant::now(),
        }
    }

    /// Delivers anything that is not a channel publication at once.
    pub fn deliver_direct(&self, envelope: &Envelope) -> usize {
        self.sink.get().map_or(0, |s| s.deliver(envelope))
    }

    /// One decoded message from the subscription.
    pub async fn on_envelope(&mut self, envelope: Envelope) -> usize {
        let (whom, data) = match &envelope {
            Envelope::Channel(p) => (&p.channel, &p.data),
            Envelope::User { user, data } => (user, data),
            Envelope::Connection { id, data } => (id, data),
            Envelope::Subscribers { channel, data } => (channel, data),
            // No JSON payload: a channel name, checked by the node that sent it.
            Envelope::Subscriptions { .. } => return self.deliver_direct(&envelope),
        };
        if !self.relay.valid(whom, data) {
            return 0;
        }
        match envelope {
            Envelope::Channel(p) => self.on_publication(p).await,
            other => self.deliver_direct(&other),
        }
    }

    async fn on_publication(&mut self, p: Publication) -> usize {
        let now = Instant::now();
        self.prune(now);
        if !self.channels.contains_key(&*p.channel) {
            // First sighting: start where a local subscriber joined, if one did (anything
            // between that and this is in the stream); otherwise here.
            let start = match self.relay.joins.remove(&*p.channel) {
                Some((_, (join, _))) if join.epoch == p.epoch && join.offset < p.offset => {
                    join.offset
                }
                _ => p.offset.saturating_sub(1),
            };
            self.channels.insert(
                p.channel.clone(),
                Track {
                    epoch: p.epoch.clone(),
                    offset: start,
                    at_us: 0,
                    seen: now,
                },
            );
        }
        let Some(track) = self.channels.get_mut(&*p.channel) else {
            return 0;
        };
        track.seen = now;
        if track.epoch != p.epoch {
            self.relay.metrics.epoch_changes.inc();
            warn!(channel = %p.channel, old = %track.epoch, new = %p.epoch, "channel epoch changed: history was lost in Redis");
            // The new stream from its start: what history holds before `p` is delivered
            // first (the gateway announces the change with the first of them).
            track.epoch = p.epoch.clone();
            track.offset = 0;
            track.at_us = 0;
        }
        if p.offset <= track.offset {
            // (`at_us` 0: the delivered offset's time is unknown, a join or a new epoch.)
            if track.at_us != 0 && p.published_at_us > track.at_us {
                // Not a late copy (it is newer than what was delivered at a higher offset):
                // the store went back in time under the same epoch.
                self.relay.metrics.offset_regressions.inc();
                tracing::error!(channel = %p.channel, epoch = %p.epoch, offset = p.offset, delivered = track.offset, "offsets went back under the same epoch: publication dropped");
            } else {
                self.relay.metrics.duplicates_dropped.inc();
            }
            return 0;
        }
        if p.offset == track.offset + 1 {
            track.offset = p.offset;
            track.at_us = p.published_at_us;
            return self.deliver_direct(&Envelope::Channel(p));
        }
        let since = StreamPosition {
            offset: track.offset,
            epoch: track.epoch.clone(),
        };
        self.relay.metrics.gaps_detected.inc();
        warn!(channel = %p.channel, after = since.offset, got = p.offset, "offset jump on live traffic: filling from history");
        let mut delivered = self.fill(&p.channel, &since, p.offset).await;
        if let Some(t) = self.channels.get_mut(&*p.channel)
            && p.offset > t.offset
        {
            t.offset = p.offset;
            t.at_us = p.published_at_us;
            delivered += self.deliver_direct(&Envelope::Channel(p));
        }
        delivered
    }

    /// Delivers what history holds after `since` (up to `until`, when given), in order.
    /// What it cannot supply is counted and announced to the local subscribers (`gap`)
    /// before anything after it is delivered.
    async fn fill(&mut self, channel: &Arc<str>, since: &StreamPosition, until: u64) -> usize {
        let recovery = match self.read_history(channel, since).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%channel, error = %e, "could not fill from history");
                self.lost_between(channel, since, until);
                return 0;
            }
        };
        let Some(track) = self.channels.get_mut(&**channel) else {
            return 0;
        };
        if recovery.position.epoch != track.epoch {
            // History is gone: the next live publication starts the new epoch.
            self.lost_between(channel, since, until);
            return 0;
        }
        let mut delivered = 0;
        let mut expected = track.offset + 1;
        let epoch = track.epoch.clone();
        for p in recovery
            .publications
            .into_iter()
            .filter(|p| p.offset < until)
        {
            self.lost(channel, &epoch, expected, p.offset.saturating_sub(1));
            expected = p.offset + 1;
            if let Some(track) = self.channels.get_mut(&**channel) {
                track.offset = p.offset;
                track.at_us = p.published_at_us;
            }
            if !self.relay.valid(channel, &p.data) {
                self.lost(channel, &epoch, p.offset, p.offset);
                continue;
            }
            self.relay.metrics.gap_filled.inc();
            delivered += self
                .sink
                .get()
                .map_or(0, |s| s.deliver(&Envelope::Channel(p)));
        }
        self.lost(channel, &epoch, expected, until.saturating_sub(1));
        delivered
    }

    /// History after `since`, asked again a few times over about 1.5 s when the log does
    /// not answer (its connection is often still coming back when the subscription is):
    /// declaring a loss that a second later history could have filled would be a lie too.
    async fn read_history(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<crate::seams::Recovery, crate::seams::BrokerError> {
        let mut pause = Duration::from_millis(100);
        for _ in 0..FILL_RETRIES {
            match self.relay.log.recover(channel, since).await {
                Ok(r) => return Ok(r),
                Err(e) => debug!(%channel, error = %e, "history read failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        self.relay.log.recover(channel, since).await
    }

    /// Counts and announces everything after `since` and before `until` as lost.
    fn lost_between(&self, channel: &Arc<str>, since: &StreamPosition, until: u64) {
        self.lost(
            channel,
            &since.epoch,
            since.offset + 1,
            until.saturating_sub(1),
        );
    }

    /// Offsets `from..=to` of `epoch` will never reach this node's subscribers: counted, and
    /// each subscriber told (nothing when the range is empty).
    fn lost(&self, channel: &Arc<str>, epoch: &Arc<str>, from: u64, to: u64) {
        if to < from {
            return;
        }
        self.relay.metrics.gap_lost.inc_by(to - from + 1);
        if let Some(sink) = self.sink.get() {
            sink.gap(channel, epoch, to);
        }
    }

    /// This node stopped receiving `channel` (its last local subscriber left): its ordering
    /// state goes, so that a later subscriber starts from its own position rather than
    /// from an offset delivered long ago (which would look like a hole to fill).
    pub fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
        self.relay.joins.remove(channel);
    }

    /// After the subscription was lost: catches every known channel up with history.
    /// Returns whether every channel was read (false: the log did not answer for some;
    /// call again, what was caught up is not delivered twice).
    #[must_use = "a false answer means some channels are not caught up yet"]
    pub async fn resync(&mut self) -> bool {
        let mut complete = true;
        // Channels a local subscriber joined but no publication of reached this node yet:
        // what was published while the subscription was away is theirs too.
        let joined: Vec<Arc<str>> = self
            .relay
            .joins
            .iter()
            .filter(|j| !self.channels.contains_key(j.key()))
            .map(|j| j.key().clone())
            .collect();
        for channel in joined {
            if let Some((_, (join, _))) = self.relay.joins.remove(&channel) {
                self.channels.insert(
                    channel,
                    Track {
                        epoch: join.epoch,
                        offset: join.offset,
                        at_us: 0,
                        seen: Instant::now(),
                    },
                );
            }
        }
        let known: Vec<(Arc<str>, StreamPosition)> = self
            .channels
            .iter()
            .map(|(c, t)| {
                (
                    c.clone(),
                    StreamPosition {
                        offset: t.offset,
                        epoch: t.epoch.clone(),
                    },
                )
            })
            .collect();
        debug!(channels = known.len(), "resync after resubscribe");
        for (channel, since) in known {
            let recovery = match self.relay.log.recover(&channel, &since).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%channel, error = %e, "resync failed");
                    complete = false;
                    continue;
                }
            };
            if recovery.position.epoch != since.epoch {
                self.relay.metrics.epoch_changes.inc();
                warn!(%channel, "channel epoch changed while disconnected: history was lost in Redis");
                // Follow the new stream from its start: what it already holds goes out now.
                let start = StreamPosition {
                    offset: 0,
                    epoch: recovery.position.epoch.clone(),
                };
                if let Some(t) = self.channels.get_mut(&channel) {
                    t.epoch = start.epoch.clone();
                    t.offset = 0;
                    t.at_us = 0;
                }
                let until = recovery.position.offset + 1;
                self.fill(&channel, &start, until).await;
                continue;
            }
            if recovery.position.offset > since.offset {
                let until = recovery.position.offset + 1;
                self.fill(&channel, &since, until).await;
            }
        }
        complete
    }

    fn prune(&mut self, now: Instant) {
        if now.duration_since(self.last_prune) < IDLE {
            return;
        }
        self.last_prune = now;
        let sink = self.sink.get();
        let watched = |channel: &str| sink.is_some_and(|s| s.has_subscribers(channel));
        self.channels
            .retain(|c, t| now.duration_since(t.seen) < IDLE || watched(c));
        self.relay
            .joins
            .retain(|c, (_, at)| now.duration_since(*at) < IDLE || watched(c));
    }
}

impl Dispatcher {
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.relay.metrics
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;

    use super::*;
    use crate::memory::recover_from;
    use crate::seams::{BrokerError, ChannelLog, PublishRequest, Recovery, StreamReads};

    /// A one-channel log in memory: what a relaying broker's shared log would hold.
    struct Log {
        epoch: Mutex<Arc<str>>,
        history: Mutex<VecDeque<Publication>>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                epoch: Mutex::new("e1".into()),
                history: Mutex::new(VecDeque::new()),
            }
        }

        fn position(&self) -> StreamPosition {
            let offset = self.history.lock().back().map_or(0, |p| p.offset);
            StreamPosition {
                offset,
                epoch: self.epoch.lock().clone(),
            }
        }

        /// The store lost the channel: a new epoch, offsets from 1 again.
        fn lose(&self, epoch: &str) {
            *self.epoch.lock() = epoch.into();
            self.history.lock().clear();
        }
    }

    #[async_trait]
    impl ChannelLog for Log {
        async fn append(&self, req: PublishRequest) -> Result<Publication, BrokerError> {
            let mut history = self.history.lock();
            let offset = history.back().map_or(0, |p| p.offset) + 1;
            let p = Publication {
                channel: req.channel,
                offset,
                epoch: self.epoch.lock().clone(),
                data: req.data,
                exclude_user: req.exclude_user,
                exclude_connection: req.exclude_connection,
                event: req.event,
                published_at_us: offset,
            };
            history.push_back(p.clone());
            Ok(p)
        }

        async fn append_once(
            &self,
            _: PublishRequest,
            _: &crate::seams::Idempotency,
        ) -> Result<crate::seams::Logged, BrokerError> {
            unreachable!("the relay never publishes idempotently")
        }

        async fn position(&self, _: &str) -> Result<StreamPosition, BrokerError> {
            Ok(Log::position(self))
        }

        async fn recover(&self, _: &str, since: &StreamPosition) -> Result<Recovery, BrokerError> {
            let position = Log::position(self);
            Ok(recover_from(&self.history.lock(), position, since))
        }

        fn is_healthy(&self) -> bool {
            true
        }
    }

    /// What the node delivered; `watched`: whether it has local subscribers; the gap
    /// notices (deliveries before each, offset).
    #[derive(Default)]
    struct Recorder(
        Mutex<Vec<u64>>,
        std::sync::atomic::AtomicBool,
        Mutex<Vec<(usize, u64)>>,
    );

    impl Deliver for Recorder {
        fn deliver(&self, e: &Envelope) -> usize {
            if let Envelope::Channel(p) = e {
                self.0.lock().push(p.offset);
            }
            1
        }

        fn has_subscribers(&self, _: &str) -> bool {
            self.1.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn gap(&self, _: &Arc<str>, _: &Arc<str>, offset: u64) {
            let before = self.0.lock().len();
            self.2.lock().push((before, offset));
        }
    }

    struct Node {
        log: Arc<Log>,
        relay: Arc<Relay>,
        dispatcher: Dispatcher,
        delivered: Arc<Recorder>,
    }

    fn node() -> Node {
        let log = Arc::new(Log::new());
        let relay = Arc::new(Relay::new(log.clone(), ClusterMetrics::default()));
        let delivered = Arc::new(Recorder::default());
        let sink: Arc<dyn Deliver> = delivered.clone();
        let dispatcher = Dispatcher::new(relay.clone(), Arc::new(OnceLock::from(sink)));
        Node {
            log,
            relay,
            dispatcher,
            delivered,
        }
    }

    async fn append(log: &Log, n: usize) -> Vec<Publication> {
        let mut out = Vec::new();
        for i in 0..n {
            let req = PublishRequest {
                history: Default::default(),
                channel: "c".into(),
                data: Bytes::from(i.to_string()),
                exclude_user: None,
                exclude_connection: None,
                event: None,
            };
            out.push(log.append(req).await.unwrap());
        }
        out
    }

    /// `n` publications appended and arriving in order.
    async fn in_order(node: &mut Node, n: usize) -> Vec<Publication> {
        let ps = append(&node.log, n).await;
        for p in &ps {
            live(&mut node.dispatcher, p).await;
        }
        ps
    }

    /// `p` arrives on the node's subscription.
    async fn live(dispatcher: &mut Dispatcher, p: &Publication) {
        dispatcher.on_envelope(Envelope::Channel(p.clone())).await;
    }

    #[tokio::test]
    async fn a_jump_is_filled_from_the_log_and_the_late_copy_dropped() {
        let mut n = node();
        let ps = append(&n.log, 4).await;
        live(&mut n.dispatcher, &ps[0]).await;
        // Offsets 2 and 3 are still in flight: 4 arrives first.
        live(&mut n.dispatcher, &ps[3]).await;
        live(&mut n.dispatcher, &ps[1]).await;
        assert_eq!(*n.delivered.0.lock(), vec![1, 2, 3, 4]);
        let m = n.dispatcher.metrics();
        assert_eq!(m.gaps_detected.get(), 1);
        assert_eq!(m.gap_filled.get(), 2);
        assert_eq!(m.gap_lost.get(), 0);
        assert_eq!(m.duplicates_dropped.get(), 1);
    }

    #[tokio::test]
    async fn delivery_starts_at_a_local_subscribers_join() {
        let mut n = node();
        let ps = append(&n.log, 1).await;
        // A local subscriber joined at offset 1; offset 2 is the first live message seen,
        // but 3 arrives first.
        assert_eq!(n.relay.position("c").await.unwrap().offset, 1);
        let ps = [ps, append(&n.log, 2).await].concat();
        live(&mut n.dispatcher, &ps[2]).await;
        assert_eq!(*n.delivered.0.lock(), vec![2, 3]);
    }

    #[tokio::test]
    async fn resync_catches_up_after_a_lost_subscription() {
        let mut n = node();
        let ps = append(&n.log, 1).await;
        live(&mut n.dispatcher, &ps[0]).await;
        append(&n.log, 2).await;
        assert!(n.dispatcher.resync().await);
        assert_eq!(*n.delivered.0.lock(), vec![1, 2, 3]);
    }

    /// Regression: a channel with local subscribers that stayed quiet for the idle period
    /// was forgotten; when N+1 then overtook N, N was taken for a duplicate and lost.
    #[tokio::test]
    async fn a_quiet_channel_with_local_subscribers_keeps_its_order() {
        let mut n = node();
        n.delivered
            .1
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let ps = append(&n.log, 3).await;
        live(&mut n.dispatcher, &ps[0]).await;
        n.dispatcher.prune(Instant::now() + 2 * IDLE);
        live(&mut n.dispatcher, &ps[2]).await;
        live(&mut n.dispatcher, &ps[1]).await;
        assert_eq!(*n.delivered.0.lock(), vec![1, 2, 3]);
        assert_eq!(n.dispatcher.metrics().duplicates_dropped.get(), 1);

        // Without local subscribers the state goes (nobody here to deliver to).
        n.delivered
            .1
            .store(false, std::sync::atomic::Ordering::Relaxed);
        n.dispatcher.last_prune = Instant::now();
        n.dispatcher.prune(Instant::now() + 2 * IDLE);
        assert!(n.dispatcher.channels.is_empty());
    }

    /// After the store lost the channel, the new epoch is delivered from its start (what
    /// history holds of it first), not from whatever offset arrives first.
    #[tokio::test]
    async fn a_new_epoch_is_delivered_from_its_start() {
        let mut n = node();
        in_order(&mut n, 5).await;
        n.log.lose("e2");
        let ps = append(&n.log, 3).await;
        live(&mut n.dispatcher, &ps[2]).await;
        live(&mut n.dispatcher, &ps[0]).await;
        assert_eq!(*n.delivered.0.lock(), vec![1, 2, 3, 4, 5, 1, 2, 3]);
        let m = n.dispatcher.metrics();
        assert_eq!((m.epoch_changes.get(), m.gap_lost.get()), (1, 0));
        assert_eq!(m.duplicates_dropped.get(), 1, "the late copy of 1, counted");
    }

    /// A lower offset that is newer than what was delivered is not a duplicate: the store
    /// went back in time under the same epoch. It is counted apart.
    #[tokio::test]
    async fn offsets_going_back_under_one_epoch_are_counted_as_such() {
        let mut n = node();
        let ps = in_order(&mut n, 3).await;
        let mut again = ps[1].clone();
        again.published_at_us = 99;
        live(&mut n.dispatcher, &again).await;
        let m = n.dispatcher.metrics();
        let counted = (m.offset_regressions.get(), m.duplicates_dropped.get());
        assert_eq!(counted, (1, 0), "a regression, not a duplicate");
    }

    /// What arrives from the broker is checked to be one JSON value before any client sees it.
    #[tokio::test]
    async fn payloads_that_are_not_json_are_counted_and_dropped() {
        let mut n = node();
        let ps = append(&n.log, 1).await;
        let mut bad = ps[0].clone();
        bad.data = Bytes::from_static(b"{\"a\":");
        live(&mut n.dispatcher, &bad).await;
        let direct = Envelope::User {
            user: "u".into(),
            data: Bytes::from_static(b"\xff"),
        };
        assert_eq!(n.dispatcher.on_envelope(direct).await, 0);
        live(&mut n.dispatcher, &ps[0]).await;
        assert_eq!(*n.delivered.0.lock(), vec![1]);
        assert_eq!(n.dispatcher.metrics().invalid_payloads.get(), 2);
    }

    /// Regression: what history no longer held was counted on the node and nothing more;
    /// its subscribers got a stream with a silent hole. Now they are told, in order.
    #[tokio::test]
    async fn what_history_cannot_fill_is_announced_before_what_follows() {
        let mut n = node();
        let ps = append(&n.log, 6).await;
        live(&mut n.dispatcher, &ps[0]).await;
        // Offsets 2..=4 are gone from history (truncated) and never arrived live.
        n.log
            .history
            .lock()
            .retain(|p| !(2..=4).contains(&p.offset));
        live(&mut n.dispatcher, &ps[5]).await;
        assert_eq!(*n.delivered.0.lock(), vec![1, 5, 6]);
        assert_eq!(*n.delivered.2.lock(), vec![(1, 4)], "told before 5");
        assert_eq!(n.dispatcher.metrics().gap_lost.get(), 3);
    }
}
