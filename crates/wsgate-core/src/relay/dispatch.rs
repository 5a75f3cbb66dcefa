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
