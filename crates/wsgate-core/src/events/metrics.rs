//! The `wsgate_events_*` series: per sink, what was sent, what failed, what was dropped and
//! how deep the queue is.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: &'static str,
}

/// Every sink, as the `sink` label spells it.
pub const SINKS: [&str; 3] = ["webhook", "redis_stream", "nats"];

#[derive(Clone)]
pub struct EventMetrics {
    /// Events a sink delivered (its batch was accepted).
    pub sent: Family<SinkLabel, Counter>,
    /// Delivery attempts that failed (each retry counts); the events are retried.
    pub failed: Family<SinkLabel, Counter>,
    /// Events lost: the queue was full, the receiver refused them for good (4xx), or the
    /// drain timeout ended before they went out.
    pub dropped: Family<SinkLabel, Counter>,
    /// Events waiting in the sink's queue.
    pub queue_depth: Family<SinkLabel, Gauge>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        let zeroed_counters = || {
            let f = Family::<SinkLabel, Counter>::default();
            for sink in SINKS {
                let _ = f.get_or_create(&SinkLabel { sink });
            }
            f
        };
        let depth = Family::<SinkLabel, Gauge>::default();
        for sink in SINKS {
            let _ = depth.get_or_create(&SinkLabel { sink });
        }
        Self {
            sent: zeroed_counters(),
            failed: zeroed_counters(),
            dropped: zeroed_counters(),
            queue_depth: depth,
        }
    }
}

impl EventMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "wsgate_events_sent",
            "Events delivered to the backend, by sink",
            self.sent.clone(),
        );
        r.register(
            "wsgate_events_failed",
            "Event delivery attempts that failed (retried), by sink",
            self.failed.clone(),
        );
        r.register(
            "wsgate_events_dropped",
            "Events lost (queue full, refused by the receiver, or not sent before the drain timeout), by sink",
            self.dropped.clone(),
        );
        r.register(
            "wsgate_events_queue_depth",
            "Events waiting in the queue, by sink",
            self.queue_depth.clone(),
        );
    }
}
