//! A client socket shared by its connection task and every publisher.
//!
//! A publication arrives as a complete, pre-encoded WebSocket frame (`Bytes` shared by every
//! subscriber of the node). The publisher appends it to the connection's bounded backlog;
//! once the whole fan-out is queued, the sockets whose backlog it started are written by the
//! node's flush lane (`wsgate_core::gateway::Flushers`), one after the other, with one
//! vectored write per up to 256 frames; only what the kernel does not take at once (a client
//! that reads slowly) is handed back to the connection task, which waits for the socket. No
//! per-subscriber copy, no framing per subscriber, no task wake-up per delivery, and no
//! publisher ever waits for a syscall on somebody else's socket.
//!
//! Why one lane and not the publisher or every connection's task (measured on the 10k ×
//! 100/s fan-out, docs/benchmarks.md "Flush lanes"): a socket is written once per pass of the
//! lane, so under load each write carries every frame queued since the last pass (20 frames
//! per write). Waking each connection's task coalesced by lag only (7 per write, 1.8x the
//! CPU per delivery); the publisher writing each frame (or each fan-out) straight into the
//! kernel coalesces nothing (1 per write, 5-9x).
//!
//! Ordering: every write goes through one short mutex and the one `writer`, so frames never
//! interleave and never overtake one another; the front of what the task holds may be the
//! rest of a partly written frame. The connection's own frames (hello, answers, pongs, the
//! close frame) are written at once when nothing is queued or being written, else behind it.
//!
//! Memory: one byte budget per connection covers everything queued for it, publications and
//! the connection's own frames alike (answers, recovered history, pongs, pings): a
//! publication that finds the budget spent is refused (`Overflow`: a slow consumer), and an
//! own frame that finds it spent marks the socket as overflowing, which the connection task
//! turns into a 4029 close (queued frames are then dropped, the close frame goes out). The
//! task stops reading the client while more than half the budget waits, so a client that
//! sends requests and never reads their answers stalls itself instead of growing the node.
//!
//! The connection task reads through [`SocketIo`] (tungstenite parses frames and answers pings
//! and closes through it too; its writes take the same path as everyone else's). An idle
//! connection keeps no read buffer of its own: the kernel's bytes land in the worker thread's
//! scratch buffer, tungstenite takes [`FRAME_READ_CHUNK`] bytes per call into its own small
//! buffer, and only what it did not take yet (the rest of a burst) is kept by the connection
//! until it does. Measured with heaptrack in docs/benchmarks.md (issue 16).
//!
//! TLS: the kernel socket carries records, not frames, so nothing may ever be written to it
//! directly. The `TlsStream` is split; [`SocketIo`] owns the read half, the connection task
//! writes through the write half (behind an uncontended async mutex), and every frame, the
//! connection's own included, is queued and written by the task's [`SharedSocket::flush`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use wsgate_core::gateway::{Outbound, Overflow, Queued, Skips, Transport, drop_held};

/// Frames written per vectored write when the backlog drains (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 256;

/// tungstenite's read buffer per connection (`read_buffer_size` of its config): what it asks
/// [`SocketIo`] for per call. Small, since it is kept per connection; the kernel is read in
/// larger steps (the node's `read_buffer_size`) into the worker's scratch buffer.
pub const FRAME_READ_CHUNK: usize = 256;

thread_local! {
    /// The worker thread's landing place for socket reads (see the module's documentation).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// What a flush lane took from one backlog and is writing (empty between sockets).
    static FLUSH_TAKEN: RefCell<VecDeque<Bytes>> = const { RefCell::new(VecDeque::new()) };
}

#[derive(Debug, Default)]
struct WriteState {
    backlog: VecDeque<Bytes>,
    /// `Some` while a subscription is being answered: publications wait here.
    held: Option<Vec<Outbound>>,
    skips: Skips,
    /// No more publications: a close frame is on its way, or the socket failed.
    closing: bool,
    failed: bool,
    /// Who is writing frames taken from the backlog (without the lock): nobody else may
    /// write until it is done, or frames would overtake one another.
    writer: Writer,
    /// Frames the task took and has not finished writing (counted against the capacity).
    in_flight: usize,
    /// Bytes of `backlog`, of the frames in flight (as taken: an over-estimate until the
    /// batch is written) and of `held`: together, what the budget bounds.
    backlog_bytes: usize,
    in_flight_bytes: usize,
    held_bytes: usize,
}

impl WriteState {
    fn queued_bytes(&self) -> usize {
        self.backlog_bytes + self.in_flight_bytes + self.held_bytes
    }
}

/// Who writes the backlog out: at most one at a time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Writer {
    #[default]
    Nobody,
    /// The connection task (it may wait for the socket with frames taken).
    Task,
    /// A flush lane after a fan-out (never waits: what the socket does not take is given
    /// back to the backlog and the task takes over).
    Flusher,
}

/// How far a write went.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Everything queued is written.
    Idle,
    /// The socket would block with frames taken (the caller holds them).
    Blocked,
    /// Another writer holds the backlog; it writes what is queued.
    Busy,
}

/// A TLS connection as hyper's upgrade gives it back.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// What frames are written to.
enum Wire {
    /// Plain TCP: written directly (`try_write`) from any thread.
    Tcp(TcpStream),
    /// TLS: only the connection task writes, through the write half.
    Tls(tokio::sync::Mutex<WriteHalf<TlsStream>>),
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wire::Tcp(tcp) => f.debug_tuple("Tcp").field(tcp).finish(),
            Wire::Tls(_) => f.write_str("Tls"),
        }
    }
}

#[derive(Debug)]
pub struct SharedSocket {
    wire: Wire,
    state: Mutex<WriteState>,
    /// Wakes the connection task (its one waiter) for [`SharedSocket::signal`]: one waker
    /// polled on each wake-up, where a `Notify` per event registered and unregistered a
    /// waiter under a lock every time the task's `select!` ran (once per delivery, quiet).
    waker: AtomicWaker,
    /// The backlog stopped being empty (or the socket failed) since the task last looked.
    backlogged: AtomicBool,
    /// An own frame found the budget spent.
    overflowed: AtomicBool,
    capacity: usize,
    /// Bytes that may be queued at once (see the module's documentation).
    budget: usize,
    /// `Some` for a connection that is not a `/ws` client (see [`Framing`]).
    framing: Option<Arc<dyn Framing>>,
}

/// How a connection that is not a `/ws` client frames what the gateway sends it: the
/// Socket.IO edge's direct WebSocket clients (`socketio::native`) share this socket's
/// queueing, budget, holds, skips and writes, and only the bytes differ.
pub trait Framing: Send + Sync + std::fmt::Debug {
    /// The bytes to queue for `item` instead of `ws`, what a `/ws` client gets for it (after
    /// the skips); `None` sends nothing.
    fn item(&self, item: &Outbound, ws: Bytes) -> Option<Bytes>;
    /// The heartbeat's ping, instead of the WebSocket one.
    fn ping(&self) -> Bytes;
}

/// Socket work for the connection task ([`SharedSocket::signal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The backlog may have become non-empty.
    Backlog,
    /// An own frame found the budget spent: the connection must close (4029).
    Overflow,
}

/// What a direct write did.
enum Wrote {
    Done,
    /// The backlog became non-empty: the connection task must drain it.
    Backlogged,
    /// The budget is spent: the connection task must close the connection.
    Overflowed,
}

/// How much a connection may queue: frames and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Frames the backlog (and the hold) may keep before the client counts as a slow consumer.
    pub frames: usize,
    /// Bytes queued at once, every frame counted.
    pub bytes: usize,
}

impl SharedSocket {
    pub fn new(tcp: TcpStream, bounds: Bounds) -> Arc<Self> {
        Self::with_wire(Wire::Tcp(tcp), bounds, None)
    }

    /// A TLS connection: the returned read half is for [`SocketIo::tls`].
    pub fn new_tls(tls: TlsStream, bounds: Bounds) -> (Arc<Self>, ReadHalf<TlsStream>) {
        Self::new_tls_framed(tls, bounds, None)
    }

    /// [`Self::new`] for a connection framed its own way ([`Framing`]).
    pub fn new_framed(
        tcp: TcpStream,
        bounds: Bounds,
        framing: Option<Arc<dyn Framing>>,
    ) -> Arc<Self> {
        Self::with_wire(Wire::Tcp(tcp), bounds, framing)
    }

    /// [`Self::new_tls`] for a connection framed its own way ([`Framing`]).
    pub fn new_tls_framed(
        tls: TlsStream,
        bounds: Bounds,
        framing: Option<Arc<dyn Framing>>,
    ) -> (Arc<Self>, ReadHalf<TlsStream>) {
        let (read, write) = tokio::io::split(tls);
        let wire = Wire::Tls(tokio::sync::Mutex::new(write));
        (Self::with_wire(wire, bounds, framing), read)
    }

    fn with_wire(wire: Wire, bounds: Bounds, framing: Option<Arc<dyn Framing>>) -> Arc<Self> {
        Arc::new(Self {
            wire,
            state: Mutex::new(WriteState::default()),
            waker: AtomicWaker::new(),
            backlogged: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            capacity: bounds.frames.max(1),
            budget: bounds.bytes.max(1),
            framing,
        })
    }

    /// Queues one of the connection's own frames behind what is queued, within the budget
    /// (always once closing: the close frame must go out). False: the budget is spent, which
    /// the caller raises as the overflow (4029).
    fn queue_own(&self, st: &mut WriteState, bytes: Bytes) -> bool {
        if !st.closing && st.queued_bytes() >= self.budget {
            return false;
        }
        st.backlog_bytes += bytes.len();
        st.backlog.push_back(bytes);
        true
    }

    /// The connection's own frames (hello, answers, pongs, close): written at once when
    /// nothing is queued before them, else queued behind it, within the budget.
    fn write_or_queue(&self, st: &mut WriteState, bytes: Bytes) -> Wrote {
        if st.failed {
            return Wrote::Done;
        }
        if !st.backlog.is_empty() || st.writer != Writer::Nobody {
            return match self.queue_own(st, bytes) {
                true => Wrote::Done,
                false => Wrote::Overflowed,
            };
        }
        let tcp = match &self.wire {
            Wire::Tcp(tcp) => tcp,
            Wire::Tls(_) => {
                // Only the task writes TLS records: queue and wake it.
                return match self.queue_own(st, bytes) {
                    true => Wrote::Backlogged,
                    false => Wrote::Overflowed,
                };
            }
        };
        match tcp.try_write(&bytes) {
            Ok(n) if n == bytes.len() => Wrote::Done,
            Ok(n) => {
                // The rest of a frame already begun: always kept (the backlog was empty).
                st.backlog_bytes += bytes.len() - n;
                st.backlog.push_back(bytes.slice(n..));
                Wrote::Backlogged
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.backlog_bytes += bytes.len();
                st.backlog.push_back(bytes);
                Wrote::Backlogged
            }
            Err(_) => {
                st.failed = true;
                Wrote::Backlogged
            }
        }
    }

    fn publish_locked(&self, st: &mut WriteState, item: &Outbound) -> Result<Wrote, Overflow> {
        if st.closing {
            return Ok(Wrote::Done);
        }
        let queued = st.queued_bytes();
        if let Some(held) = &mut st.held {
            if held.len() >= self.capacity || queued >= self.budget {
                return Err(Overflow);
            }
            held.push(item.clone());
            st.held_bytes += match item {
                Outbound::Publication(d) => d.wire.len(),
                Outbound::Frame(b) => b.len(),
            };
            return Ok(Wrote::Done);
        }
        let bytes = match item {
            Outbound::Publication(d) => match st.skips.frame(d) {
                Some(wire) => wire,
                None => return Ok(Wrote::Done),
            },
            Outbound::Frame(b) => b.clone(),
        };
        let bytes = match &self.framing {
            None => bytes,
            Some(framing) => match framing.item(item, bytes) {
                Some(bytes) => bytes,
                None => return Ok(Wrote::Done),
            },
        };
        // Publications are queued, never written here: the flush lane (or the task) writes
        // everything queued with one vectored write. Writing each frame from the publisher
        // (one syscall per delivery, no coalescing) cost 5-9x more server CPU per delivery on
        // the 10k-subscriber fan-out (see the module's documentation).
        if st.failed {
            return Ok(Wrote::Done);
        }
        if st.backlog.len() + st.in_flight >= self.capacity || queued >= self.budget {
            return Err(Overflow);
        }
        // The task is woken when the backlog stops being empty; while it writes, it comes
        // back for more on its own.
        let wake = st.backlog.is_empty() && st.writer == Writer::Nobody;
        st.backlog_bytes += bytes.len();
        st.backlog.push_back(bytes);
        Ok(if wake { Wrote::Backlogged } else { Wrote::Done })
    }

    fn woke(&self, w: Wrote) {
        match w {
            Wrote::Done => {}
            Wrote::Backlogged => self.raise(&self.backlogged),
            Wrote::Overflowed => self.raise(&self.overflowed),
        }
    }

    /// Writes one of the connection's own frames (hello, answers, close), in order with
    /// everything else. Never refused.
    pub fn write_frame(&self, bytes: Bytes) {
        let w = {
            let mut st = self.state.lock();
            self.write_or_queue(&mut st, bytes)
        };
        self.woke(w);
    }

    /// Ends a hold: publications that waited are sent (or dropped when the subscription's
    /// answer covered them).
    pub fn release(&self) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        let Some(held) = st.held.take() else {
            return Ok(());
        };
        st.held_bytes = 0;
        let mut backlogged = false;
        for item in &held {
            if let Wrote::Backlogged = self.publish_locked(&mut st, item)? {
                backlogged = true;
            }
        }
        drop(st);
        if backlogged {
            self.raise(&self.backlogged);
        }
        Ok(())
    }

    /// No more publications: what is queued still goes out, then the close frame. With
    /// `discard` (a slow consumer) queued frames are dropped instead, but for the rest of a
    /// frame already begun, so that the close frame is not stuck behind them.
    pub fn stop_publications(&self, discard: bool) {
        let mut st = self.state.lock();
        st.closing = true;
        st.held = None;
        st.held_bytes = 0;
        if discard {
            st.backlog.truncate(1);
            st.backlog_bytes = st.backlog.front().map_or(0, Bytes::len);
        }
    }

    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves when the connection task has socket work: an own frame found the budget
    /// spent (`Overflow`, first), or, with `backlog` watched, the backlog stopped being
    /// empty since the task last looked (`Backlog`; not watched while the task writes: it
    /// comes back for more on its own).
    pub fn signal(&self, backlog: bool) -> impl Future<Output = Signal> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(s) = self.signalled(backlog) {
                return Poll::Ready(s);
            }
            self.waker.register(cx.waker());
            // Raised between the look and the registration: not missed.
            self.signalled(backlog).map_or(Poll::Pending, Poll::Ready)
        })
    }

    fn signalled(&self, backlog: bool) -> Option<Signal> {
        if self.overflowed.load(Ordering::Acquire) {
            Some(Signal::Overflow)
        } else if backlog && self.backlogged.swap(false, Ordering::AcqRel) {
            Some(Signal::Backlog)
        } else {
            None
        }
    }

    /// Writes the backlog out, waiting for the socket as the client reads. `taken` is the
    /// task's scratch queue (kept between calls so a burst does not allocate each time).
    ///
    /// Frames are taken out under the lock and written without it: a publisher never waits
    /// for a syscall on this socket, it only appends behind what is being written.
    pub async fn flush(&self, taken: &mut VecDeque<Bytes>) -> io::Result<()> {
        let tcp = match &self.wire {
            Wire::Tcp(tcp) => tcp,
            // Boxed: the TLS path's future (the write half's lock, rustls' flush) would
            // otherwise be part of every connection task's idle state, TLS or not.
            Wire::Tls(write) => return Box::pin(self.flush_tls(write, taken)).await,
        };
        while self.write_until_blocked(tcp, taken, Writer::Task)? == Progress::Blocked {
            tcp.writable().await?;
        }
        Ok(())
    }

    /// Plain TCP: writes what is queued at once, as far as the kernel takes it without
    /// waiting (usually all of it), so a wake-up for one delivery costs one turn of the
    /// connection task's loop, not two; what is left, [`Self::flush`] writes as the client
    /// reads. TLS: nothing here (records are written by the flush).
    pub fn write_now(&self, taken: &mut VecDeque<Bytes>) -> io::Result<()> {
        match &self.wire {
            Wire::Tcp(tcp) => self.write_until_blocked(tcp, taken, Writer::Task).map(drop),
            Wire::Tls(_) => Ok(()),
        }
    }

    /// Writes the backlog as `who` until it is empty or the socket would block (with frames
    /// left in `taken`), unless another writer holds it. Never waits.
    fn write_until_blocked(
        &self,
        tcp: &TcpStream,
        taken: &mut VecDeque<Bytes>,
        who: Writer,
    ) -> io::Result<Progress> {
        loop {
            {
                let Some(mut st) = self.take_backlog(taken, who)? else {
                    return Ok(Progress::Busy);
                };
                if taken.is_empty() {
                    st.writer = Writer::Nobody;
                    release_idle(&mut st.backlog, taken);
                    return Ok(Progress::Idle);
                }
                st.writer = who;
            }
            while !taken.is_empty() {
                let written = {
                    let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                    let n = fill_iovecs(&mut iov, taken);
                    tcp.try_write_vectored(&iov[..n])
                };
                match written {
                    Ok(n) => advance(taken, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Progress::Blocked);
                    }
                    Err(e) => {
                        let mut st = self.state.lock();
                        st.failed = true;
                        st.writer = Writer::Nobody;
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A flush lane's frames the socket did not take go back to the front of the backlog,
    /// before anything queued since, and the backlog is nobody's again.
    fn give_back(&self, taken: &mut VecDeque<Bytes>) {
        let mut st = self.state.lock();
        st.backlog_bytes += taken.iter().map(Bytes::len).sum::<usize>();
        st.in_flight = 0;
        st.in_flight_bytes = 0;
        while let Some(frame) = taken.pop_back() {
            st.backlog.push_front(frame);
        }
        st.writer = Writer::Nobody;
    }

    /// What the connection task's loop needs to know about the backlog, under one lock:
    /// whether [`Self::flush`] has work (queued frames, a failure to report, or a flush that
    /// was interrupted with frames or TLS records taken but not yet written), and whether
    /// reading the client pauses (more than half the budget waits: the client sends
    /// requests and does not read the answers).
    pub fn backlog_state(&self) -> (bool, bool) {
        let st = self.state.lock();
        // What a flush lane is writing is its own business (it gives back what the socket
        // does not take, and raises `backlogged`).
        let backlog = (!st.backlog.is_empty() && st.writer != Writer::Flusher)
            || st.failed
            || st.writer == Writer::Task;
        (backlog, backlog && st.queued_bytes() > self.budget / 2)
    }
}

impl SharedSocket {
    /// Moves the backlog into `taken` (counted as in flight), or fails once a write has
    /// failed; `None` while another writer than `who` holds the backlog. The lock stays held
    /// so that the caller decides, atomically, who the writer becomes.
    fn take_backlog(
        &self,
        taken: &mut VecDeque<Bytes>,
        who: Writer,
    ) -> io::Result<Option<parking_lot::MutexGuard<'_, WriteState>>> {
        let mut st = self.state.lock();
        if st.failed {
            if st.writer == who {
                st.writer = Writer::Nobody;
            }
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if st.writer != Writer::Nobody && st.writer != who {
            return Ok(None);
        }
        // Frames still in `taken` (a flush that was cancelled) stay counted as they were.
        if taken.is_empty() {
            st.in_flight_bytes = 0;
        }
        st.in_flight_bytes += std::mem::take(&mut st.backlog_bytes);
        taken.extend(st.backlog.drain(..));
        st.in_flight = taken.len();
        Ok(Some(st))
    }

    /// [`Self::flush`] over TLS: the backlog goes through the write half (vectored writes
    /// into rustls), then the records rustls holds are flushed to the kernel. The task stays the
    /// writer until both are done, so a cancelled flush is resumed (see [`Self::backlog_state`])
    /// and publishers do not wake the task meanwhile.
    async fn flush_tls(
        &self,
        write: &tokio::sync::Mutex<WriteHalf<TlsStream>>,
        taken: &mut VecDeque<Bytes>,
    ) -> io::Result<()> {
        let mut w = write.lock().await;
        loop {
            match self.take_backlog(taken, Writer::Task)? {
                Some(mut st) => st.writer = Writer::Task,
                // Flush lanes never write TLS (see `flush_queued`).
                None => return Ok(()),
            }
            let result = async {
                while !taken.is_empty() {
                    // The iovec array (4 KiB) lives on the stack of one poll, never in the
                    // future: it would be kept by every idle connection's task otherwise.
                    let written = std::future::poll_fn(|cx| {
                        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                        let n = fill_iovecs(&mut iov, taken);
                        Pin::new(&mut *w).poll_write_vectored(cx, &iov[..n])
                    })
                    .await?;
                    match written {
                        0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        n => advance(taken, n),
                    }
                }
                w.flush().await
            }
            .await;
            let mut st = self.state.lock();
            if let Err(e) = result {
                st.failed = true;
                st.writer = Writer::Nobody;
                return Err(e);
            }
            st.in_flight = 0;
            st.in_flight_bytes = 0;
            if st.backlog.is_empty() {
                st.writer = Writer::Nobody;
                release_idle(&mut st.backlog, taken);
                return Ok(());
            }
        }
    }
}

/// Points `iov` at the first frames of `taken`; returns how many slots it filled.
fn fill_iovecs<'a>(iov: &mut [IoSlice<'a>; MAX_IOVECS], taken: &'a VecDeque<Bytes>) -> usize {
    let mut n = 0;
    for (slot, frame) in iov.iter_mut().zip(taken) {
        *slot = IoSlice::new(frame);
        n += 1;
    }
    n
}

/// Gives back a burst's memory once the connection is idle again: an idle connection keeps
/// no queue capacity (memory per idle connection is a target).
fn release_idle(backlog: &mut VecDeque<Bytes>, taken: &mut VecDeque<Bytes>) {
    if backlog.capacity() > 64 {
        *backlog = VecDeque::new();
    }
    if taken.capacity() > 64 {
        *taken = VecDeque::new();
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

    fn queue(&self, item: &Outbound) -> Result<Queued, Overflow> {
        let w = {
            let mut st = self.state.lock();
            self.publish_locked(&mut st, item)?
        };
        Ok(match w {
            Wrote::Backlogged => Queued::Flush,
            w => {
                self.woke(w);
                Queued::Done
            }
        })
    }

    fn flush_queued(&self) {
        let Wire::Tcp(tcp) = &self.wire else {
            // Only the task writes TLS records.
            return self.raise(&self.backlogged);
        };
        FLUSH_TAKEN.with_borrow_mut(|taken| {
            match self.write_until_blocked(tcp, taken, Writer::Flusher) {
                Ok(Progress::Idle | Progress::Busy) => {}
                Ok(Progress::Blocked) => {
                    // The client reads slower than it is sent to: the task waits for it.
                    self.give_back(taken);
                    self.raise(&self.backlogged);
                }
                Err(_) => {
                    // The task finds the failure on its next look and ends the connection.
                    taken.clear();
                    self.raise(&self.backlogged);
                }
            }
        });
    }

    fn send_control(&self, frame: Bytes) {
        match &self.framing {
            None => self.write_frame(frame),
            Some(framing) => self.write_frame(framing.ping()),
        }
    }

    fn hold(&self) {
        self.state.lock().held.get_or_insert_with(Vec::new);
    }

    fn skip_through(&self, channel: Arc<str>, epoch: Arc<str>, offset: u64) {
        self.state.lock().skips.set(channel, epoch, offset);
    }

    fn forget_channel(&self, channel: &str) {
        let mut st = self.state.lock();
        st.skips.forget(channel);
        if let Some(held) = &mut st.held {
            let dropped = drop_held(held, channel);
            st.held_bytes -= dropped;
        }
    }

    fn backlog(&self) -> usize {
        let st = self.state.lock();
        st.backlog.len() + st.held.as_ref().map_or(0, Vec::len)
    }

    fn byte_budget(&self) -> usize {
        self.budget
    }
}

/// The connection task's view of the socket, for tungstenite: reads come from the kernel
/// (after any bytes hyper read past the handshake), writes go through [`SharedSocket`].
pub struct SocketIo {
    socket: Arc<SharedSocket>,
    /// Bytes read from the socket (or by hyper past the handshake) tungstenite has not taken.
    leftover: Bytes,
    /// Bytes one read from the kernel may take (the node's `read_buffer_size`).
    read_size: usize,
    /// TLS: records are read and decrypted through this half; `None` on plain TCP.
    tls: Option<ReadHalf<TlsStream>>,
}

impl SocketIo {
    /// A plain TCP connection's reader; `read_size`: bytes per read from the kernel.
    pub fn new(socket: Arc<SharedSocket>, leftover: Bytes, read_size: usize) -> Self {
        Self {
            socket,
            leftover,
            read_size: read_size.max(FRAME_READ_CHUNK),
            tls: None,
        }
    }

    /// A TLS connection's reader (from [`SharedSocket::new_tls`]): rustls keeps its own
    /// buffers, tungstenite reads the plaintext from them.
    pub fn tls(socket: Arc<SharedSocket>, leftover: Bytes, read: ReadHalf<TlsStream>) -> Self {
        Self {
            socket,
            leftover,
            read_size: FRAME_READ_CHUNK,
            tls: Some(read),
        }
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
        let this = &mut *self;
        if let Some(read) = &mut this.tls {
            return Pin::new(read).poll_read(cx, buf);
        }
        let Wire::Tcp(tcp) = &this.socket.wire else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        let read_size = this.read_size;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            if buf.remaining() >= read_size {
                match tcp.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let read = SCRATCH.with_borrow_mut(|scratch| {
                if scratch.len() < read_size {
                    scratch.resize(read_size, 0);
                }
                let n = tcp.try_read(&mut scratch[..read_size])?;
                let given = n.min(buf.remaining());
                buf.put_slice(&scratch[..given]);
                if n > given {
                    this.leftover = Bytes::copy_from_slice(&scratch[given..n]);
                }
                io::Result::Ok(())
            });
            match read {
                Ok(()) => return Poll::Ready(Ok(())),
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
    use std::time::Duration;

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

    /// A real loopback pair: the server side as a `SharedSocket`, the client side raw.
    async fn pair() -> (Arc<SharedSocket>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let bounds = Bounds {
            frames: 100_000,
            bytes: 1 << 30,
        };
        (
            SharedSocket::new(accepted.unwrap().0, bounds),
            client.unwrap(),
        )
    }

    /// 64 KiB that say which frame they are.
    fn big(i: u32) -> Bytes {
        Bytes::from(format!("{i:08}").repeat(8192))
    }

    #[tokio::test]
    async fn a_flush_lane_and_the_task_write_one_backlog_in_order() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = pair().await;
        let mut expected = Vec::new();
        let mut queue = |i: u32| {
            let frame = big(i);
            expected.extend_from_slice(&frame);
            socket.queue(&Outbound::Frame(frame))
        };
        // The first frame of a fan-out asks for a flush, the rest ride along.
        assert_eq!(queue(0), Ok(Queued::Flush));
        for i in 1..100 {
            assert_eq!(queue(i), Ok(Queued::Done));
        }
        // 6.4 MB do not fit the loopback buffers of a client that does not read: the lane
        // writes what the kernel takes, gives the rest back and hands over to the task.
        socket.flush_queued();
        let told = tokio::time::timeout(Duration::from_secs(5), socket.signal(true)).await;
        assert_eq!(told, Ok(Signal::Backlog));
        assert!(socket.backlog_state().0, "the task has frames to write");
        // The task takes the backlog and blocks; a lane that comes now must not write.
        let mut taken = VecDeque::new();
        socket.write_now(&mut taken).unwrap();
        assert!(!taken.is_empty(), "the client reads nothing yet");
        for i in 100..110 {
            assert_eq!(queue(i), Ok(Queued::Done), "the task writes: no flush");
        }
        socket.flush_queued();
        let own = Bytes::from_static(b"own frame");
        expected.extend_from_slice(&own);
        socket.write_frame(own);
        // The client reads; the task writes everything, once, in order.
        let len = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; len];
            client.read_exact(&mut got).await.map(|_| got)
        });
        tokio::time::timeout(Duration::from_secs(10), socket.flush(&mut taken))
            .await
            .expect("the backlog drains")
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the client gets every byte")
            .unwrap()
            .unwrap();
        assert!(got == expected, "bytes arrived out of order or twice");
        assert_eq!(socket.backlog_state(), (false, false));
        // Idle again: the next fan-out's first frame asks for a flush, and the lane writes it.
        assert_eq!(
            socket.queue(&Outbound::Frame(Bytes::from_static(b"next"))),
            Ok(Queued::Flush)
        );
        socket.flush_queued();
        assert_eq!(
            socket.backlog_state(),
            (false, false),
            "written by the lane"
        );
    }
}
