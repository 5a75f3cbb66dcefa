//! Key and pub/sub channel names (the table is in the crate docs).
//!
//! # The layout rule (read before adding a key or a script)
//! Every name is `<prefix>:<rest>`, or just `<rest>` when the prefix is empty: an empty
//! prefix gives seed 000's bare layout (`websocket-<id>`, `websocket-index`), so the seed's
//! runbook commands (`redis-cli SMEMBERS websocket-index`) find the records as written.
//! Names are built here and nowhere else.
//!
//! In a Redis Cluster a key lives in the slot of its *hash tag*, the first `{...}` in its
//! name, and a Lua script or `MULTI` may only touch keys of one slot. So every key belongs
//! to exactly one of three kinds, and a new key picks its kind by what it must be atomic
//! with:
//!
//! 1. **Per channel** ([`Keys::channel`]): `P:{<channel>}:<what>`, e.g. the meta hash and
//!    history stream. Anything a per-channel script (`publish.lua`, `recover.lua`) reads or
//!    writes must be of this kind, for the same channel, and be passed in `KEYS`; so must a
//!    per-channel shard channel (`SPUBLISH` in a script is checked like a key). Per-channel
//!    keys spread over the cluster with the channels.
//! 2. **Shared** ([`Keys::shared`]): state that scripts update across nodes and upstream
//!    connections together: leases (`alive:<node>`), take counts, the instance set,
//!    upstream records and their index. `lua/lease.lua` takes a lease *and* registers the
//!    instance, `lua/claim.lua` checks the old owner's lease *and* moves the record,
//!    `lua/put.lua` writes a record *and* its index entry: one slot is what makes those
//!    atomic. In cluster mode these carry the one tag `{shared}` (`P:{shared}:alive:<node>`),
//!    so they all live on one shard; keep this kind small and cold (a few writes per node
//!    per lease period, one per upstream connection change). On a single Redis the tag is
//!    left out, so existing deployments keep their names.
//! 3. **Free-standing** ([`Keys::name`]): a key only ever used alone (one command, one
//!    key), e.g. a channel's presence hash. Any slot; never put it in a multi-key command.
//!
//! A script never builds a key name from `ARGV` (Redis Cluster cannot route or check
//! it); a multi-key command (`MGET`, `DEL a b`, a pipeline) takes keys of one kind and one
//! tag only, or goes through `Conn::run_each`. Classic pub/sub channels (`P:pub`, `P:user`,
//! `P:node:<node>`, `P:rpc:<node>`) are not keys: a cluster forwards every `PUBLISH` to
//! every one of its nodes.

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
    /// The head of shared keys: `head` plus, in cluster mode, the shared hash tag.
    shared: String,
    pub publications: String,
    pub users: String,
}

impl Keys {
    /// Names under `prefix`; `cluster`: shared keys carry the shared hash tag.
    pub fn new(prefix: &str, cluster: bool) -> Self {
        let head = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        Self {
            shared: if cluster {
                format!("{head}{{shared}}:")
            } else {
                head.clone()
            },
            publications: format!("{head}pub"),
            users: format!("{head}user"),
            head,
        }
    }

    /// The prefix as configured (`""` for the bare layout).
    pub fn prefix(&self) -> &str {
        self.head.strip_suffix(':').unwrap_or(&self.head)
    }

    /// A free-standing key (kind 3 of the layout rule): used alone, in any slot.
    pub fn name(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}{rest}", self.head)
    }

    /// A per-channel key (kind 1): in the channel's slot, with its meta and stream.
    pub fn channel(&self, channel: &str, what: &str) -> String {
        format!("{}{{{channel}}}:{what}", self.head)
    }

    /// A shared key (kind 2): in the one slot of leases and upstream records.
    pub fn shared(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}{rest}", self.shared)
    }

    pub fn meta(&self, channel: &str) -> String {
        self.channel(channel, "meta")
    }

    pub fn stream(&self, channel: &str) -> String {
        self.channel(channel, "stream")
    }

    /// The channel's own pub/sub channel (per-channel announcements): in the channel's slot,
    /// so `publish.lua` may `SPUBLISH` on it.
    pub fn channel_pubsub(&self, channel: &str) -> String {
        self.channel(channel, "pub")
    }

    /// A user's own pub/sub channel (per-channel announcements): sends to the user, heard by
    /// the nodes holding one of its connections. Tagged by the user, so on a cluster it is a
    /// shard channel of the user's slot (`SPUBLISH`/`SSUBSCRIBE`).
    pub fn user_pubsub(&self, user: &str) -> String {
        self.name(format_args!("{{{user}}}:user"))
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
        self.shared(format_args!("alive:"))
    }

    pub fn alive(&self, node: &str) -> String {
        self.shared(format_args!("alive:{node}"))
    }

    /// How many times a process *took* (not renewed) `node`'s lease: a claimer that saw the
    /// lease missing twice knows from an unchanged count that it stayed missing in between.
    pub fn lease_takes(&self, node: &str) -> String {
        self.shared(format_args!("lease-takes:{node}"))
    }

    pub fn node(&self, node: &str) -> String {
        self.name(format_args!("node:{node}"))
    }

    /// Every instance that registered (lease holders and the dead not yet reclaimed).
    pub fn instances(&self) -> String {
        self.shared(format_args!("instances"))
    }

    /// Request/reply channel of one node (forwarded upstream API calls).
    pub fn rpc(&self, node: &str) -> String {
        self.name(format_args!("rpc:{node}"))
    }

    /// Seed 000's layout: one `websocket-<id>` key per upstream connection record...
    pub fn record(&self, id: &str) -> String {
        self.shared(format_args!("websocket-{id}"))
    }

    /// ...and the `websocket-index` set of every record's id.
    pub fn record_index(&self) -> String {
        self.shared(format_args!("websocket-index"))
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
        let k = Keys::new("wsgate", false);
        assert_eq!(k.meta("team:1"), "wsgate:{team:1}:meta");
        assert_eq!(k.user_pubsub("alice"), "wsgate:{alice}:user");
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
        let k = Keys::new("", false);
        assert_eq!(k.record("ab-n1"), "websocket-ab-n1");
        assert_eq!(k.record_index(), "websocket-index");
        assert_eq!(k.alive("n1"), "alive:n1");
        assert_eq!(k.meta("c"), "{c}:meta");
        assert_eq!(k.publications, "pub");
        assert_eq!(k.prefix(), "");
    }

    #[test]
    fn cluster_mode_tags_the_shared_keys_only() {
        let k = Keys::new("wsgate", true);
        assert_eq!(k.meta("team:1"), "wsgate:{team:1}:meta");
        assert_eq!(k.alive("n1"), "wsgate:{shared}:alive:n1");
        assert_eq!(k.alive_prefix(), "wsgate:{shared}:alive:");
        assert_eq!(k.lease_takes("n1"), "wsgate:{shared}:lease-takes:n1");
        assert_eq!(k.instances(), "wsgate:{shared}:instances");
        assert_eq!(k.record("ab-n1"), "wsgate:{shared}:websocket-ab-n1");
        assert_eq!(k.record_index(), "wsgate:{shared}:websocket-index");
        assert_eq!(k.presence("team:1"), "wsgate:presence:team:1");
        assert_eq!(k.publications, "wsgate:pub");
        assert_eq!(Keys::new("", true).alive("n1"), "{shared}:alive:n1");
    }

    /// The slot rule itself: every key a script gets in `KEYS` hashes to one slot.
    #[test]
    fn script_keys_share_a_slot_in_cluster_mode() {
        use redis::cluster_routing::Slot;
        let k = Keys::new("wsgate", true);
        let slot = |key: String| Slot::for_key(key);
        // publish.lua / recover.lua
        assert_eq!(slot(k.meta("a:b")), slot(k.stream("a:b")));
        // lease.lua, claim.lua, put.lua, held.lua: all shared.
        let shared = slot(k.alive("n1"));
        for key in [
            k.alive("n2"),
            k.lease_takes("n1"),
            k.instances(),
            k.record("x-n1"),
            k.record_index(),
        ] {
            assert_eq!(slot(key), shared);
        }
    }
}
