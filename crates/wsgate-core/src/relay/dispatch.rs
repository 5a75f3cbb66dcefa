//! A node's inbound side: hands what arrives on its subscription to the local sink, each
//! channel in offset order, filling holes from the channel log.
//!
//! Owned by the one task that reads the subscription, so its per-channel state needs no
//! lock. A publication is in the stream before any node hears of it (the log appends
//! first), so when live traffic jumps from offset N to N+k the missing ones can be
//! read back with one read of the log and delivered before N+k. Whatever arrives later at or below
//! the delivered offset is a duplicate and dropped. Nothing is ever delivered out of order.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Relay;
use crate::seams::{ClusterMetrics, Deliver, Envelope, Publication, StreamPosition};

/// Channels not heard of for this long are forgotten (their next publication starts afresh).
const IDLE: Duration = Duration::from_secs(600);

struct Track {
    epoch: Arc<str>,
    offset: u64,
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
            track.epoch = p.epoch.clone();
            track.offset = p.offset;
            return self.deliver_direct(&Envelope::Channel(p));
        }
        if p.offset <= track.offset {
            self.relay.metrics.duplicates_dropped.inc();
            return 0;
        }
        if p.offset == track.offset + 1 {
            track.offset = p.offset;
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
            delivered += self.deliver_direct(&Envelope::Channel(p));
        }
        delivered
    }

    /// Delivers what history holds after `since` (up to `until`, when given), in order.
    async fn fill(&mut self, channel: &Arc<str>, since: &StreamPosition, until: u64) -> usize {
        let recovery = match self.relay.log.recover(channel, since).await {
            Ok(r) => r,
            Err(e) => {
                let lost = until.saturating_sub(since.offset + 1);
                self.relay.metrics.gap_lost.inc_by(lost);
                warn!(%channel, error = %e, lost, "could not fill from history");
                return 0;
            }
        };
        let Some(track) = self.channels.get_mut(&**channel) else {
            return 0;
        };
        if recovery.position.epoch != track.epoch {
            // History is gone: the next live publication starts the new epoch.
            return 0;
        }
        let mut delivered = 0;
        let mut expected = track.offset + 1;
        for p in recovery
            .publications
            .into_iter()
            .filter(|p| p.offset < until)
        {
            if p.offset > expected {
                self.relay.metrics.gap_lost.inc_by(p.offset - expected);
            }
            expected = p.offset + 1;
            track.offset = p.offset;
            self.relay.metrics.gap_filled.inc();
            delivered += self
                .sink
                .get()
                .map_or(0, |s| s.deliver(&Envelope::Channel(p)));
        }
        if until > expected {
            self.relay.metrics.gap_lost.inc_by(until - expected);
        }
        delivered
    }

    /// After the subscription was lost: catches every known channel up with history.
    pub async fn resync(&mut self) {
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
                    continue;
                }
            };
            if recovery.position.epoch != since.epoch {
                self.relay.metrics.epoch_changes.inc();
                warn!(%channel, "channel epoch changed while disconnected: history was lost in Redis");
                self.channels.remove(&channel);
                continue;
            }
            if recovery.position.offset > since.offset {
                let until = recovery.position.offset + 1;
                self.fill(&channel, &since, until).await;
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        if now.duration_since(self.last_prune) < IDLE {
            return;
        }
        self.last_prune = now;
        self.channels
            .retain(|_, t| now.duration_since(t.seen) < IDLE);
        self.relay
            .joins
            .retain(|_, (_, at)| now.duration_since(*at) < IDLE);
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
    use crate::seams::{BrokerError, ChannelLog, PublishRequest, Recovery};

    /// A one-channel log in memory: what a relaying broker's shared log would hold.
    struct Log {
        epoch: Arc<str>,
        history: Mutex<VecDeque<Publication>>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                epoch: "e1".into(),
                history: Mutex::new(VecDeque::new()),
            }
        }

        fn position(&self) -> StreamPosition {
            let offset = self.history.lock().back().map_or(0, |p| p.offset);
            StreamPosition {
                offset,
                epoch: self.epoch.clone(),
            }
        }
    }

    #[async_trait]
    impl ChannelLog for Log {
        async fn append(&self, req: PublishRequest) -> Result<Publication, BrokerError> {
            let mut history = self.history.lock();
            let p = Publication {
                channel: req.channel,
                offset: history.back().map_or(0, |p| p.offset) + 1,
                epoch: self.epoch.clone(),
                data: req.data,
                exclude_user: req.exclude_user,
                event: req.event,
                published_at_us: 0,
            };
            history.push_back(p.clone());
            Ok(p)
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

    #[derive(Default)]
    struct Recorder(Mutex<Vec<u64>>);

    impl Deliver for Recorder {
        fn deliver(&self, e: &Envelope) -> usize {
            if let Envelope::Channel(p) = e {
                self.0.lock().push(p.offset);
            }
            1
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
                channel: "c".into(),
                data: Bytes::from(i.to_string()),
                exclude_user: None,
                event: None,
            };
            out.push(log.append(req).await.unwrap());
        }
        out
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
        n.dispatcher.resync().await;
        assert_eq!(*n.delivered.0.lock(), vec![1, 2, 3]);
    }
}
