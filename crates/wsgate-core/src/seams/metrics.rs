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
        let all: [(&str, &str, &Counter); 8] = [
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
