//! A client socket shared by its connection task and every publisher.
//!
//! Publishers write a pre-encoded frame straight into the kernel (`try_write`) when nothing is
//! waiting before it: no queue, no task wake-up, no copy. Only when the kernel's send buffer is
//! full does a frame go into the bounded backlog, and the connection task (woken once, when the
//! backlog stops being empty) writes the backlog out with vectored writes as the client reads.
//! Every write, whoever makes it, goes through one short mutex, so frames never interleave and
//! never overtake one another: the backlog's front may be the rest of a partly written frame,
//! and nothing is written directly while the backlog is not empty.
//!
//! The connection task reads through [`SocketIo`] (tungstenite parses frames and answers pings
//! and closes through it too; its writes take the same path as everyone else's).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use wsgate_core::gateway::{Outbound, Overflow, Skips, Transport};

/// Frames written per vectored write when the backlog drains.
const MAX_IOVECS: usize = 64;

#[derive(Debug, Default)]
struct WriteState {
    backlog: VecDeque<Bytes>,
    /// `Some` while a subscription is being answered: publications wait here.
    held: Option<Vec<Outbound>>,
    skips: Skips,
    /// No more publications: a close frame is on its way, or the socket failed.
    closing: bool,
    failed: bool,
}

#[derive(Debug)]
pub struct SharedSocket {
    tcp: TcpStream,
    state: Mutex<WriteState>,
    /// Signalled when the backlog stops being empty (or the socket fails).
    wake: Notify,
    capacity: usize,
}

/// What a direct write did.
enum Wrote {
    Done,
    /// The backlog became non-empty: the connection task must drain it.
    Backlogged,
}

impl SharedSocket {
    /// `capacity`: frames the backlog (and the hold) may keep before the client counts as a
    /// slow consumer.
    pub fn new(tcp: TcpStream, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            state: Mutex::new(WriteState::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    fn write_or_queue(
        &self,
        st: &mut WriteState,
        bytes: Bytes,
        bounded: bool,
    ) -> Result<Wrote, Overflow> {
        if st.failed {
            return Ok(Wrote::Done);
        }
        if !st.backlog.is_empty() {
            if bounded && st.backlog.len() >= self.capacity {
                return Err(Overflow);
            }
            st.backlog.push_back(bytes);
            return Ok(Wrote::Done);
        }
        match self.tcp.try_write(&bytes) {
            Ok(n) if n == bytes.len() => Ok(Wrote::Done),
            Ok(n) => {
                st.backlog.push_back(bytes.slice(n..));
                Ok(Wrote::Backlogged)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.backlog.push_back(bytes);
                Ok(Wrote::Backlogged)
            }
            Err(_) => {
                st.failed = true;
                Ok(Wrote::Backlogged)
            }
        }
    }

    fn publish_locked(&self, st: &mut WriteState, item: &Outbound) -> Result<Wrote, Overflow> {
        if st.closing {
            return Ok(Wrote::Done);
        }
        if let Some(held) = &mut st.held {
            if held.len() >= self.capacity {
                return Err(Overflow);
            }
            held.push(item.clone());
            return Ok(Wrote::Done);
        }
        let bytes = match item {
            Outbound::Publication(d) => {
                if st.skips.skips(d) {
                    return Ok(Wrote::Done);
                }
                d.wire.clone()
            }
            Outbound::Frame(b) => b.clone(),
        };
        self.write_or_queue(st, bytes, true)
    }

    fn woke(&self, w: Wrote) {
        if let Wrote::Backlogged = w {
            self.wake.notify_one();
        }
    }

    /// Writes one of the connection's own frames (hello, answers, close), in order with
    /// everything else. Never refused.
    pub fn write_frame(&self, bytes: Bytes) {
        let w = {
            let mut st = self.state.lock();
            self.write_or_queue(&mut st, bytes, false)
        };
        if let Ok(w) = w {
            self.woke(w);
        }
    }

    /// Ends a hold: publications that waited are sent (or dropped when the subscription's
    /// answer covered them).
    pub fn release(&self) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        let Some(held) = st.held.take() else {
            return Ok(());
        };
        let mut backlogged = false;
        for item in &held {
            if let Wrote::Backlogged = self.publish_locked(&mut st, item)? {
                backlogged = true;
            }
        }
        drop(st);
        if backlogged {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more publications: what is queued still goes out, then the close frame.
    pub fn stop_publications(&self) {
        let mut st = self.state.lock();
        st.closing = true;
        st.held = None;
    }

    pub fn has_backlog(&self) -> bool {
        let st = self.state.lock();
        !st.backlog.is_empty() || st.failed
    }

    /// Resolves when the backlog may have become non-empty.
    pub async fn backlogged(&self) {
        self.wake.notified().await
    }

    /// Writes the backlog out, waiting for the socket as the client reads.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            {
                let mut st = self.state.lock();
                if st.failed {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if st.backlog.is_empty() {
                    return Ok(());
                }
                let slices: Vec<IoSlice<'_>> = st
                    .backlog
                    .iter()
                    .take(MAX_IOVECS)
                    .map(|b| IoSlice::new(b))
                    .collect();
                match self.tcp.try_write_vectored(&slices) {
                    Ok(n) => advance(&mut st.backlog, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        st.failed = true;
                        return Err(e);
                    }
                }
                if st.backlog.is_empty() {
                    if st.backlog.capacity() > 64 {
                        st.backlog = VecDeque::new();
                    }
                    return Ok(());
                }
            }
            self.tcp.writable().await?;
        }
    }
}

fn advance(backlog: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = backlog.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            backlog.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

impl Transport for SharedSocket {
    fn send(&self, item: &Outbound) -> Result<(), Overflow> {
        let w = {
            let mut st = self.state.lock();
            self.publish_locked(&mut st, item)?
        };
        self.woke(w);
        Ok(())
    }

    fn send_control(&self, frame: Bytes) {
        self.write_frame(frame);
    }

    fn hold(&self) {
        self.state.lock().held.get_or_insert_with(Vec::new);
    }

    fn skip_through(&self, channel: Arc<str>, offset: u64) {
        self.state.lock().skips.set(channel, offset);
    }

    fn forget_skip(&self, channel: &str) {
        self.state.lock().skips.forget(channel);
    }

    fn backlog(&self) -> usize {
        let st = self.state.lock();
        st.backlog.len() + st.held.as_ref().map_or(0, Vec::len)
    }
}

/// The connection task's view of the socket, for tungstenite: reads come from the kernel
/// (after any bytes hyper read past the handshake), writes go through [`SharedSocket`].
pub struct SocketIo {
    socket: Arc<SharedSocket>,
    leftover: Bytes,
}

impl SocketIo {
    pub fn new(socket: Arc<SharedSocket>, leftover: Bytes) -> Self {
        Self { socket, leftover }
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.leftover.is_empty() {
            let n = self.leftover.len().min(buf.remaining());
            buf.put_slice(&self.leftover[..n]);
            self.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.socket.tcp.poll_read_ready(cx))?;
            match self.socket.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.write_frame(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task drains the backlog; accepted bytes are never lost here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_pops_whole_frames_and_cuts_the_partial_one() {
        let mut q: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fgh"].map(Bytes::from_static).into();
        advance(&mut q, 4);
        assert_eq!(
            q,
            VecDeque::from([Bytes::from_static(b"e"), Bytes::from_static(b"fgh")])
        );
        advance(&mut q, 4);
        assert!(q.is_empty());
    }
}
