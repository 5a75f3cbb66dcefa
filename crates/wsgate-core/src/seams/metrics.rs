//! Counters the cluster implementations keep, registered into the node's registry.
//!
//! Each is a plain atomic behind a cloneable handle: the hot path is one atomic add.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct ClusterMetrics {
    /// A node saw a channel offset jump (a publication it never received live).
    pub gaps_detected: Counter,
    /// Publications recovered from the history stream to fill such a jump.
    pub gap_filled: Counter,
    /// Publications that neither live traffic nor history could supply to this node.
    pub gap_lost: Counter,
    /// Publications received twice (live after a fill) and dropped.
    pub duplicates_dropped: Counter,
    /// Publications dropped because their offset went back under the same epoch while they
    /// are newer than the last one delivered: the store's timeline went back without an
    /// epoch change (should stay 0: the Redis scripts rotate the epoch on a new run id).
    pub offset_regressions: Counter,
    /// Payloads from the broker (or its history) that were not one JSON value: dropped.
    pub invalid_payloads: Counter,
    /// Epoch changes seen on live traffic: a channel's history was lost in the store.
    pub epoch_changes: Counter,
    /// Reconnections of the node's subscription to the broker.
    pub resubscriptions: Counter,
    /// Messages on the node's subscription that could not be decoded.
    pub malformed: Counter,
    /// Failed store/broker round trips (timeouts, connection loss, server errors).
    pub errors: Counter,
}

impl ClusterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("wsgate_cluster");
        let all: [(&str, &str, &Counter); 10] = [
            (
                "gaps_detected",
                "Channel offset jumps seen on live traffic",
                &self.gaps_detected,
            ),
            (
                "gap_filled",
                "Publications filled from history after a jump",
                &self.gap_filled,
            ),
            (
                "gap_lost",
                "Publications history could not supply to this node",
                &self.gap_lost,
            ),
            (
                "duplicates_dropped",
                "Publications received twice and dropped",
                &self.duplicates_dropped,
            ),
            (
                "offset_regressions",
                "Publications dropped because offsets went back under the same epoch",
                &self.offset_regressions,
            ),
            (
                "invalid_payloads",
                "Broker payloads that were not one JSON value, dropped",
                &self.invalid_payloads,
            ),
            (
                "epoch_changes",
                "Channel epoch changes seen on live traffic",
                &self.epoch_changes,
            ),
            (
                "resubscriptions",
                "Reconnections of the node subscription",
                &self.resubscriptions,
            ),
            (
                "malformed",
                "Undecodable messages on the node subscription",
                &self.malformed,
            ),
            ("errors", "Failed store or broker round trips", &self.errors),
        ];
        for (name, help, c) in all {
            r.register(name, help, c.clone());
        }
    }
}
