//! The [`Occupancy`] seam: counts, cluster-wide, the connections subscribed to each channel
//! and each user's connections in it, and says when a count leaves or reaches zero. Those
//! transitions are `channel.occupied` / `channel.vacated` and `presence.joined` /
//! `presence.left`; because the store decides them atomically, exactly one node sees each
//! transition and sends its event, however many nodes hold the channel's subscribers.
//!
//! A node that dies leaves counts behind. Cluster stores track which connections and
//! channels each process registered, under a liveness key of that process; once the key has
//! expired, [`Occupancy::tick`] on a survivor takes the dead process's leftovers (one
//! survivor only) and returns them as [`Reaped`]: its connections (`connection.closed`,
//! reason `node_lost`) and the transitions their removal caused. The memory engine is one
//! node: nothing to reap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::seams::StoreError;

/// What one join or leave changed, cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transition {
    /// The channel's count went 0 → 1 (join) or 1 → 0 (leave).
    pub channel: bool,
    /// The user's count in the channel went 0 → 1 (join) or 1 → 0 (leave).
    pub user: bool,
}

/// The leftovers of a dead process, taken by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// A connection the dead process held.
    Connection { id: Arc<str>, user: Arc<str> },
    /// A channel the dead process's connections were in: the users whose last connection
    /// it held (with that connection) and whether the channel is empty now.
    Channel {
        channel: Arc<str>,
        left: Vec<(Arc<str>, Arc<str>)>,
        vacated: bool,
    },
}

/// A connection's coming or going, as [`Occupancy::connections`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ledger {
    Opened { id: Arc<str>, user: Arc<str> },
    Closed { id: Arc<str> },
}

#[async_trait]
pub trait Occupancy: Send + Sync + 'static {
    /// Connections opened and closed on this node, in order (cluster stores remember the
    /// open ones, for their `connection.closed` if this node dies).
    async fn connections(&self, changes: &[Ledger]) -> Result<(), StoreError>;
    /// `connection_id` of `user` subscribed to `channel`. Joining twice changes nothing.
    async fn join(
        &self,
        channel: &str,
        connection_id: &str,
        user: &str,
    ) -> Result<Transition, StoreError>;
    /// `connection_id` left `channel`: its user and what changed, or `None` when it was not
    /// in the channel.
    async fn leave(
        &self,
        channel: &str,
        connection_id: &str,
    ) -> Result<Option<(Arc<str>, Transition)>, StoreError>;
    /// How often [`Occupancy::tick`] should run (`None`: never, one node).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }
    /// Renews this process's liveness and takes the leftovers of dead processes.
    async fn tick(&self) -> Result<Vec<Reaped>, StoreError> {
        Ok(Vec::new())
    }
    /// The node drains (its connections have closed): gives up its liveness and returns
    /// its own leftovers (connections the drain did not close), for this node to report.
    async fn retire(&self) -> Vec<Reaped> {
        Vec::new()
    }
}

/// One channel's members on one node.
#[derive(Default)]
struct Members {
    /// connection → user
    conns: HashMap<Arc<str>, Arc<str>>,
    /// user → connections
    users: HashMap<Arc<str>, u32>,
}

/// One node's counts, in memory.
#[derive(Default)]
pub struct MemoryOccupancy {
    channels: DashMap<Arc<str>, Members>,
}

#[async_trait]
impl Occupancy for MemoryOccupancy {
    async fn connections(&self, _: &[Ledger]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn join(
        &self,
        channel: &str,
        connection_id: &str,
        user: &str,
    ) -> Result<Transition, StoreError> {
        let mut m = self.channels.entry(channel.into()).or_default();
        if m.conns.contains_key(connection_id) {
            return Ok(Transition::default());
        }
        let user: Arc<str> = user.into();
        m.conns.insert(connection_id.into(), user.clone());
        let n = m.users.entry(user).or_default();
        *n += 1;
        let first_of_user = *n == 1;
        Ok(Transition {
            channel: m.conns.len() == 1,
            user: first_of_user,
        })
    }

    async fn leave(
        &self,
        channel: &str,
        connection_id: &str,
    ) -> Result<Option<(Arc<str>, Transition)>, StoreError> {
        let mut out = None;
        self.channels.remove_if_mut(channel, |_, m| {
            let Some(user) = m.conns.remove(connection_id) else {
                return false;
            };
            let last_of_user = match m.users.get_mut(&user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    m.users.remove(&user);
                    true
                }
            };
            let vacated = m.conns.is_empty();
            out = Some((
                user,
                Transition {
                    channel: vacated,
                    user: last_of_user,
                },
            ));
            vacated
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transitions_at_zero_only() {
        let o = MemoryOccupancy::default();
        let both = Transition {
            channel: true,
            user: true,
        };
        let user_only = Transition {
            channel: false,
            user: true,
        };
        let none = Transition::default();
        let left = |user: &str, t| Some((Arc::<str>::from(user), t));
        assert_eq!(o.join("c", "a", "u1").await.unwrap(), both);
        assert_eq!(o.join("c", "a", "u1").await.unwrap(), none);
        assert_eq!(o.join("c", "b", "u1").await.unwrap(), none);
        assert_eq!(o.join("c", "x", "u2").await.unwrap(), user_only);
        assert_eq!(o.leave("c", "a").await.unwrap(), left("u1", none));
        assert_eq!(o.leave("c", "a").await.unwrap(), None);
        assert_eq!(o.leave("c", "b").await.unwrap(), left("u1", user_only));
        assert_eq!(o.leave("c", "x").await.unwrap(), left("u2", both));
        assert_eq!(o.leave("c", "x").await.unwrap(), None);
        assert!(o.channels.is_empty());
    }
}
