//! The node's socket flusher: one task that writes the backlogs publications left in
//! connections' sockets, instead of waking every connection's own task (issue 16).
//!
//! A publication to N local subscribers used to cost N task wake-ups (a `Notify`, a trip
//! through the scheduler, a poll of the connection task's `select!`) on top of N writes. Now
//! the publisher only appends the shared frame and, when a socket's backlog stops being empty,
//! lists the socket here; the flusher task writes each listed socket's whole backlog with one
//! vectored write. Under load the flusher lags behind the publishers, so the frames of several
//! publications coalesce into one write per socket. A socket the kernel does not take
//! everything from (the client reads slowly) is handed to its connection task, which waits
//! for the socket to become writable; TLS sockets are always written by their task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::socket::SharedSocket;

/// Sockets with frames to write, and the task that writes them (started on first use, on the
/// runtime that publishes).
#[derive(Debug, Default)]
pub struct Flusher {
    dirty: Mutex<Vec<Arc<SharedSocket>>>,
    wake: Notify,
    started: AtomicBool,
}

impl Flusher {
    /// Lists `socket` for a write. `false`: no runtime to run the flusher on (the caller wakes
    /// the connection task instead).
    pub(super) fn push(self: &Arc<Self>, socket: Arc<SharedSocket>) -> bool {
        if !self.started.load(Ordering::Acquire) && !self.start() {
            return false;
        }
        let first = {
            let mut dirty = self.dirty.lock();
            dirty.push(socket);
            dirty.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
        true
    }

    fn start(self: &Arc<Self>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            rt.spawn(self.clone().run());
        }
        true
    }

    async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            loop {
                std::mem::swap(&mut batch, &mut *self.dirty.lock());
                if batch.is_empty() {
                    break;
                }
                for socket in batch.drain(..) {
                    socket.flush_listed();
                }
                // Other tasks (the publishers among them) run between batches.
                tokio::task::yield_now().await;
            }
        }
    }
}
