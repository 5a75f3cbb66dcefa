//! [`Lease`]: this process's hold on its node id, `P:alive:<node>`.
//!
//! The key's value is a token drawn once per process, so a lease names a process and not
//! only a node id. Taking and renewing are one script (`lua/lease.lua`): it writes the key
//! only when it is free or already ours, and otherwise answers how long the other holder's
//! lease has left. A second process under a live node's id is therefore refused at start
//! (the core waits a bounded time for a dead predecessor's lease to lapse), and a node that
//! finds another process's token when it renews stops renewing and reports it.
//! Hand-over deletes the key only while it still holds this token (`lua/unlease.lua`).
//!
//! Every take (not a renewal) bumps `P:lease-takes:<node>`, and every successful renewal
//! moves this process's [`Standing`] forward to `sent + 2 × TTL − TTL/4`: the earliest a
//! survivor can claim the node's records (it needs the lease seen missing twice, more than
//! one TTL apart, with an unchanged take count) less a margin. The core stops the node's
//! connections when that instant passes without a renewal, and at once when the lease is
//! found in another process's hands.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Conn;
use redis::Script;
use tokio::sync::watch;
use wsgate_core::seams::{NodeId, Standing};

use super::Keys;

/// What one take-or-renew found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease was this process's; its TTL starts again.
    Renewed,
    /// The lease was free (first start, lapsed, or lost with a Redis restart); now ours.
    Taken,
    /// Another process holds it, for this much longer unless it renews.
    Held(Duration),
}

/// Where this process's lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// Not taken yet: nothing renews it.
    Pending = 0,
    /// Ours: the liveness task renews it.
    Held = 1,
    /// Another process took the node id meanwhile: never renewed again.
    Lost = 2,
    /// Handed over: never renewed again.
    Released = 3,
}

pub(crate) struct Lease {
    key: String,
    takes: String,
    instances: String,
    node: NodeId,
    token: String,
    ttl: Duration,
    take: Script,
    unlease: Script,
    state: AtomicU8,
    /// Set when a take found the key free: presence entries written before must be
    /// written again (reads delete the entries of nodes without a lease).
    fresh: AtomicBool,
    /// The other holder's time left when the lease was found held, in ms.
    held_for_ms: AtomicU64,
    /// Until when this process may run its connections (see the module documentation).
    standing: watch::Sender<Standing>,
}

/// How long after a renewal was sent the node may keep its connections without another:
/// nobody can claim before `2 × ttl`; a quarter TTL is left for closing them.
pub(crate) fn fence_after(ttl: Duration) -> Duration {
    ttl * 2 - ttl / 4
}

impl Lease {
    pub fn new(keys: &Keys, node: &NodeId, ttl: Duration) -> Self {
        Self {
            key: keys.alive(node),
            takes: keys.lease_takes(node),
            instances: keys.instances(),
            node: node.clone(),
            token: format!("{:032x}", rand::random::<u128>()),
            ttl,
            take: Script::new(include_str!("lua/lease.lua")),
            unlease: Script::new(include_str!("lua/unlease.lua")),
            state: AtomicU8::new(State::Pending as u8),
            fresh: AtomicBool::new(false),
            held_for_ms: AtomicU64::new(0),
            standing: watch::channel(Standing::Pending).0,
        }
    }

    /// Follows [`Standing`]: the core fences the node's connections by it.
    pub fn standing(&self) -> watch::Receiver<Standing> {
        self.standing.subscribe()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Pending,
            1 => State::Held,
            2 => State::Lost,
            _ => State::Released,
        }
    }

    /// Whether the liveness task should renew it (taken, not lost, not handed over).
    pub fn is_held(&self) -> bool {
        self.state() == State::Held
    }

    /// `Some(time left)` of the other process's lease once this process lost the id.
    pub fn lost(&self) -> Option<Duration> {
        (self.state() == State::Lost)
            .then(|| Duration::from_millis(self.held_for_ms.load(Ordering::Relaxed)))
    }

    /// Whether the key was (re)created since the last call: presence must be rewritten.
    pub fn take_fresh(&self) -> bool {
        self.fresh.swap(false, Ordering::AcqRel)
    }

    /// Takes or renews the lease (one script). A lease this process held and finds held
    /// by another is lost for good.
    pub async fn take_or_renew(&self, conn: &Conn) -> redis::RedisResult<Renewal> {
        let sent = Instant::now();
        let (what, ms): (String, i64) = self
            .take
            .key(&self.key)
            .key(&self.instances)
            .key(&self.takes)
            .arg(&self.token)
            .arg(self.ttl.as_millis() as u64)
            .arg(&*self.node)
            .invoke_async(&mut conn.clone())
            .await?;
        let renewal = match what.as_str() {
            "renewed" => Renewal::Renewed,
            "taken" => Renewal::Taken,
            // A lease without a TTL (-1) is held forever: report one TTL.
            _ => Renewal::Held(Duration::from_millis(
                u64::try_from(ms).unwrap_or(self.ttl.as_millis() as u64),
            )),
        };
        match renewal {
            Renewal::Renewed => self.mark(State::Pending, State::Held),
            Renewal::Taken => {
                self.fresh.store(true, Ordering::Release);
                self.mark(State::Pending, State::Held);
            }
            Renewal::Held(left) => {
                self.held_for_ms
                    .store(left.as_millis() as u64, Ordering::Relaxed);
                self.mark(State::Held, State::Lost);
            }
        }
        match self.state() {
            State::Held => {
                let until = sent + fence_after(self.ttl);
                // Only forward: a slow answer to an older renewal never shortens it.
                self.standing.send_if_modified(|s| match s {
                    Standing::Held { until: u } if *u >= until => false,
                    Standing::Lost => false,
                    _ => {
                        *s = Standing::Held { until };
                        true
                    }
                });
            }
            State::Lost => {
                self.standing.send_replace(Standing::Lost);
            }
            State::Pending | State::Released => {}
        }
        Ok(renewal)
    }

    fn mark(&self, from: State, to: State) {
        let _ =
            self.state
                .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Hand-over: never renewed again; the key is deleted if it is still this process's.
    pub async fn release(&self, conn: &Conn) -> redis::RedisResult<()> {
        self.state.store(State::Released as u8, Ordering::Release);
        self.standing.send_replace(Standing::Pending);
        let _: i64 = self
            .unlease
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn.clone())
            .await?;
        Ok(())
    }
}
