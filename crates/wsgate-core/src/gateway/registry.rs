//! The node's connections, indexed by id, by user and by channel.
//!
//! Channel subscriber lists are copy-on-write (`Arc<[..]>`): a publish clones one `Arc`
//! under a shard read lock and then walks the list with no lock held, so a fan-out to 10k
//! subscribers never blocks subscribes, and a subscribe never waits for a fan-out.
//! Disconnect walks only the connection's own channels, never every channel.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::connection::Connection;

pub type Subscribers = Arc<[Arc<Connection>]>;

/// One channel with local subscribers.
#[derive(Default)]
struct Channel {
    subs: Subscribers,
    /// The epoch of the last publication delivered here: a publication of another epoch
    /// tells every subscriber that the stream changed.
    epoch: Mutex<Option<Arc<str>>>,
}

#[derive(Default)]
pub struct Registry {
    by_id: DashMap<Arc<str>, Arc<Connection>>,
    by_user: DashMap<Arc<str>, Vec<Arc<Connection>>>,
    channels: DashMap<Arc<str>, Channel>,
}

impl Registry {
    pub fn insert(&self, conn: Arc<Connection>) {
        let mut list = self.by_user.entry(conn.user().clone()).or_default();
        // Exact: most users have one connection on a node.
        list.reserve_exact(1);
        list.push(conn.clone());
        drop(list);
        self.by_id.insert(conn.id.clone(), conn);
    }

    /// Removes the connection from every index; returns the channels it was in.
    pub fn remove(&self, conn: &Connection) -> Vec<Arc<str>> {
        self.by_id.remove(&conn.id);
        self.by_user.remove_if_mut(conn.user(), |_, list| {
            list.retain(|c| c.id != conn.id);
            list.is_empty()
        });
        let channels = conn.take_channels();
        for channel in &channels {
            self.unlink(channel, &conn.id);
        }
        channels
    }

    pub fn get(&self, id: &str) -> Option<Arc<Connection>> {
        self.by_id.get(id).map(|c| c.clone())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.by_id.iter().map(|e| e.value().clone()).collect()
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.by_user.contains_key(user)
    }

    pub fn of_user(&self, user: &str) -> Vec<Arc<Connection>> {
        self.by_user
            .get(user)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub fn subscribers(&self, channel: &str) -> Option<Subscribers> {
        self.channels.get(channel).map(|c| c.subs.clone())
    }

    /// Whether `channel` has subscribers on this node.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// The subscribers of `channel` for a publication of `epoch`, and whether that epoch
    /// differs from the one of the last publication delivered here (the stream changed).
    pub fn subscribers_at(&self, channel: &str, epoch: &Arc<str>) -> Option<(Subscribers, bool)> {
        let c = self.channels.get(channel)?;
        let mut last = c.epoch.lock();
        let changed = last.as_ref().is_some_and(|e| e != epoch);
        if last.as_ref() != Some(epoch) {
            *last = Some(epoch.clone());
        }
        drop(last);
        Some((c.subs.clone(), changed))
    }

    /// The channels with subscribers here whose names start with `prefix`, with how many
    /// local connections subscribe to each, sorted by name; at most `max`.
    pub fn channel_counts(&self, prefix: &str, max: usize) -> Vec<(Arc<str>, usize)> {
        let mut all: Vec<(Arc<str>, usize)> = self
            .channels
            .iter()
            .filter(|e| e.key().starts_with(prefix))
            .map(|e| (e.key().clone(), e.value().subs.len()))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all.truncate(max);
        all
    }

    /// How many local connections subscribe to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.subs.len())
    }

    /// Adds `conn` to `channel`. Returns false if it was already there.
    pub fn subscribe(&self, channel: &Arc<str>, conn: &Arc<Connection>) -> bool {
        if !conn.add_channel(channel.clone()) {
            return false;
        }
        let mut entry = self.channels.entry(channel.clone()).or_default();
        let next: Subscribers = entry.subs.iter().cloned().chain([conn.clone()]).collect();
        entry.subs = next;
        true
    }

    /// Removes `conn` from `channel`. Returns false if it was not there.
    pub fn unsubscribe(&self, channel: &str, conn: &Connection) -> bool {
        if !conn.remove_channel(channel) {
            return false;
        }
        self.unlink(channel, &conn.id);
        true
    }

    fn unlink(&self, channel: &str, id: &str) {
        self.channels.remove_if_mut(channel, |_, c| {
            c.subs = c.subs.iter().filter(|c| &*c.id != id).cloned().collect();
            c.subs.is_empty()
        });
    }
}
