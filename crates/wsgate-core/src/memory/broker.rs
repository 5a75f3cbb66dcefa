//! In-process broker: per-channel offsets, a bounded history ring, synchronous delivery.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::new_epoch;
use crate::clock::unix_us as now_us;
use crate::seams::{
    Broker, BrokerError, Deliver, Envelope, NodeId, Publication, PublishRequest, Recipient,
    Recovery, RecoveryGap, StreamPosition,
};

/// One channel's stream. Its mutex is held while a publication is handed to the local sink:
/// that is what orders concurrent publishers, and it is cheap because the sink only
/// enqueues (it never writes to a socket).
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Publication>,
}

pub struct MemoryBroker {
    node: NodeId,
    history_size: usize,
    streams: DashMap<Arc<str>, Arc<Mutex<Stream>>>,
    sink: OnceLock<Arc<dyn Deliver>>,
}

impl MemoryBroker {
    /// `history_size` messages per channel are kept for recovery (0 disables history).
    pub fn new(node: NodeId, history_size: usize) -> Self {
        Self {
            node,
            history_size,
            streams: DashMap::new(),
            sink: OnceLock::new(),
        }
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.streams.get(channel) {
            return s.clone();
        }
        self.streams
            .entry(channel.into())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    epoch: new_epoch(),
                    offset: 0,
                    history: VecDeque::new(),
                }))
            })
            .clone()
    }

    fn deliver(&self, envelope: &Envelope) -> usize {
        self.sink.get().map_or(0, |s| s.deliver(envelope))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, sink: Arc<dyn Deliver>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError> {
        let stream = self.stream(&req.channel);
        let mut s = stream.lock();
        s.offset += 1;
        let publication = Publication {
            channel: req.channel,
            offset: s.offset,
            epoch: s.epoch.clone(),
            data: req.data,
            exclude_user: req.exclude_user,
            event: req.event,
            published_at_us: now_us(),
        };
        if self.history_size > 0 {
            if s.history.len() == self.history_size {
                s.history.pop_front();
            }
            s.history.push_back(publication.clone());
        }
        let position = StreamPosition {
            offset: s.offset,
            epoch: s.epoch.clone(),
        };
        let delivered = self.deliver(&Envelope::Channel(publication));
        Ok((position, delivered))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        let stream = self.stream(channel);
        let s = stream.lock();
        Ok(StreamPosition {
            offset: s.offset,
            epoch: s.epoch.clone(),
        })
    }

    async fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
    ) -> Result<Recovery, BrokerError> {
        let stream = self.stream(channel);
        let s = stream.lock();
        let position = StreamPosition {
            offset: s.offset,
            epoch: s.epoch.clone(),
        };
        Ok(recover_from(&s.history, position, since))
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
        })
    }

    fn is_healthy(&self) -> bool {
        true
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
            channel: ch.into(),
            data: Bytes::from(n.to_string()),
            exclude_user: None,
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
        assert_eq!(b.position("b").await.unwrap().offset, 0);
    }

    #[tokio::test]
    async fn recovery_reports_what_history_cannot_fill() {
        let b = MemoryBroker::new("n1".into(), 3);
        let start = b.position("c").await.unwrap();
        for i in 0..5 {
            b.publish(req("c", i)).await.unwrap();
        }
        let at3 = StreamPosition {
            offset: 3,
            epoch: start.epoch.clone(),
        };
        let r = b.recover("c", &at3).await.unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        let r = b.recover("c", &start).await.unwrap();
        assert_eq!(r.gap, Some(RecoveryGap::HistoryTruncated));
        assert_eq!(r.publications.len(), 3);
        let other = StreamPosition {
            offset: 3,
            epoch: "other".into(),
        };
        let r = b.recover("c", &other).await.unwrap();
        assert_eq!(r.gap, Some(RecoveryGap::EpochChanged));
        let ahead = StreamPosition {
            offset: 9,
            epoch: start.epoch,
        };
        assert_eq!(
            b.recover("c", &ahead).await.unwrap().gap,
            Some(RecoveryGap::OffsetAhead)
        );
    }
}
