//! Key and pub/sub channel names (see the module docs for the layout).
//!
//! Every name is `<prefix>:<rest>`, or just `<rest>` when the prefix is empty: an empty
//! prefix gives seed 000's bare layout (`websocket-<id>`, `websocket-index`), so the seed's
//! runbook commands (`redis-cli SMEMBERS websocket-index`) find the records as written.

/// The keys of one process's occupancy registration ([`Keys::event_process`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKey {
    Alive,
    Connections,
    Channels,
    Reaping,
}

/// Names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `"<prefix>:"`, or `""` for the bare layout.
    head: String,
    pub publications: String,
    pub users: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let head = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        Self {
            publications: format!("{head}pub"),
            users: format!("{head}user"),
            head,
        }
    }

    /// The prefix as configured (`""` for the bare layout).
    pub fn prefix(&self) -> &str {
        self.head.strip_suffix(':').unwrap_or(&self.head)
    }

    fn name(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}{rest}", self.head)
    }

    pub fn meta(&self, channel: &str) -> String {
        self.name(format_args!("{{{channel}}}:meta"))
    }

    pub fn stream(&self, channel: &str) -> String {
        self.name(format_args!("{{{channel}}}:stream"))
    }

    /// The record of an idempotency key of `channel`'s publications: in the channel's slot,
    /// so that the publish script checks it, publishes and records it in one step.
    pub fn once(&self, channel: &str, key: &str) -> String {
        self.name(format_args!("{{{channel}}}:once:{key}"))
    }

    pub fn presence(&self, channel: &str) -> String {
        self.name(format_args!("presence:{channel}"))
    }

    pub fn alive_prefix(&self) -> String {
        self.name(format_args!("alive:"))
    }

    pub fn alive(&self, node: &str) -> String {
        self.name(format_args!("alive:{node}"))
    }

    /// How many times a process *took* (not renewed) `node`'s lease: a claimer that saw the
    /// lease missing twice knows from an unchanged count that it stayed missing in between.
    pub fn lease_takes(&self, node: &str) -> String {
        self.name(format_args!("lease-takes:{node}"))
    }

    pub fn node(&self, node: &str) -> String {
        self.name(format_args!("node:{node}"))
    }

    /// Every instance that registered (lease holders and the dead not yet reclaimed).
    pub fn instances(&self) -> String {
        self.name(format_args!("instances"))
    }

    /// Request/reply channel of one node (forwarded upstream API calls).
    pub fn rpc(&self, node: &str) -> String {
        self.name(format_args!("rpc:{node}"))
    }

    /// Seed 000's layout: one `websocket-<id>` key per upstream connection record...
    pub fn record(&self, id: &str) -> String {
        self.name(format_args!("websocket-{id}"))
    }

    /// ...and the `websocket-index` set of every record's id.
    pub fn record_index(&self) -> String {
        self.name(format_args!("websocket-index"))
    }

    /// Occupancy (events): connection → `"<process>\n<user>"` of a channel's subscribers,
    /// cluster-wide. Same slot as the channel's other keys.
    pub fn occupancy_members(&self, channel: &str) -> String {
        self.name(format_args!("{{{channel}}}:occ:members"))
    }

    /// Occupancy (events): user → how many of the user's connections subscribe.
    pub fn occupancy_users(&self, channel: &str) -> String {
        self.name(format_args!("{{{channel}}}:occ:users"))
    }

    /// Every process that registered occupancy (events), alive or not yet reaped.
    pub fn event_processes(&self) -> String {
        self.name(format_args!("events:processes"))
    }

    /// One process's keys for events (liveness, its connections, its channels, the reaper's
    /// lock), all in the process's own slot.
    pub fn event_process(&self, process: &str, what: ProcessKey) -> String {
        let what = match what {
            ProcessKey::Alive => "alive",
            ProcessKey::Connections => "conns",
            ProcessKey::Channels => "chans",
            ProcessKey::Reaping => "reaping",
        };
        self.name(format_args!("events:{{{process}}}:{what}"))
    }

    /// The Redis Stream sink's default stream.
    pub fn events_stream(&self) -> String {
        self.name(format_args!("events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("wsgate");
        assert_eq!(k.meta("team:1"), "wsgate:{team:1}:meta");
        assert_eq!(k.stream("team:1"), "wsgate:{team:1}:stream");
        assert_eq!(k.once("team:1", "k-9"), "wsgate:{team:1}:once:k-9");
        assert_eq!(k.presence("team:1"), "wsgate:presence:team:1");
        assert_eq!(k.alive("n1"), "wsgate:alive:n1");
        assert_eq!(k.node("n1"), "wsgate:node:n1");
        assert_eq!(k.record("ab-n1"), "wsgate:websocket-ab-n1");
        assert_eq!(k.record_index(), "wsgate:websocket-index");
        assert_eq!(k.publications, "wsgate:pub");
        assert_eq!(k.prefix(), "wsgate");
        assert_eq!(k.occupancy_members("team:1"), "wsgate:{team:1}:occ:members");
        assert_eq!(
            k.event_process("n1.ab", ProcessKey::Channels),
            "wsgate:events:{n1.ab}:chans"
        );
    }

    #[test]
    fn empty_prefix_is_seed_000s_bare_layout() {
        let k = Keys::new("");
        assert_eq!(k.record("ab-n1"), "websocket-ab-n1");
        assert_eq!(k.record_index(), "websocket-index");
        assert_eq!(k.alive("n1"), "alive:n1");
        assert_eq!(k.meta("c"), "{c}:meta");
        assert_eq!(k.publications, "pub");
        assert_eq!(k.prefix(), "");
    }
}
