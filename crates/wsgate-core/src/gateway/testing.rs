//! A gateway without sockets, for the gateway's own tests.
//!
//! [`Node`] is a [`Gateway`] over the memory engine; [`Peer`] is one client connection whose
//! [`Transport`] records what the gateway sends (text frames decoded back to JSON, pings) in
//! place of a socket, with the server's rules that matter to the protocol: a bounded backlog
//! (`Overflow` when full), the hold while a subscription is answered, and the skip of
//! publications the answer covers. A peer drives its [`Session`] the way the server's
//! connection task does: answers are written, then the hold is released. Time is tokio's, so
//! tests on a paused runtime advance it (quinn-proto's `tests/util.rs` is the model).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::memory::{MemoryBroker, MemoryStore};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use super::{
    CloseRequest, Connection, Gateway, GatewayConfig, Outbound, Overflow, Session, Skips, Transport,
};
use crate::auth::{Authenticator, Identity, JwtRules};
use crate::metrics::Metrics;
use crate::protocol::{self, close};

/// One frame as the client would read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Json(Value),
    Ping,
}

#[derive(Debug, Default)]
struct Recorded {
    frames: VecDeque<Received>,
    held: Option<Vec<Outbound>>,
    skips: Skips,
}

/// A transport that records instead of writing. `capacity` bounds the frames not yet taken
/// by the test, as the server bounds its backlog.
#[derive(Debug)]
pub struct Recording {
    capacity: usize,
    /// The byte budget the server's socket would have.
    budget: usize,
    state: Mutex<Recorded>,
}

impl Recording {
    fn new(capacity: usize, budget: usize) -> Self {
        Self {
            capacity,
            budget,
            state: Mutex::new(Recorded::default()),
        }
    }

    fn publish(&self, st: &mut Recorded, item: &Outbound) -> Result<(), Overflow> {
        if let Some(held) = &mut st.held {
            if held.len() >= self.capacity {
                return Err(Overflow);
            }
            held.push(item.clone());
            return Ok(());
        }
        let wire = match item {
            Outbound::Publication(d) => match st.skips.frame(d) {
                Some(wire) => wire,
                None => return Ok(()),
            },
            Outbound::Frame(b) => b.clone(),
        };
        if st.frames.len() >= self.capacity {
            return Err(Overflow);
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let (frame, len) = decode(rest);
            st.frames.push_back(frame);
            rest = &rest[len..];
        }
        Ok(())
    }

    /// The connection's own frames (answers): never refused.
    fn write_frame(&self, wire: &Bytes) {
        self.state.lock().frames.push_back(decode(wire).0);
    }

    /// Ends a hold, as the server's socket does after writing a subscription's answer.
    fn release(&self) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        let Some(held) = st.held.take() else {
            return Ok(());
        };
        held.iter().try_for_each(|item| self.publish(&mut st, item))
    }
}

impl Transport for Recording {
    fn send(&self, item: &Outbound) -> Result<(), Overflow> {
        self.publish(&mut self.state.lock(), item)
    }

    fn send_control(&self, frame: Bytes) {
        self.write_frame(&frame);
    }

    fn hold(&self) {
        self.state.lock().held.get_or_insert_with(Vec::new);
    }

    fn skip_through(&self, channel: Arc<str>, epoch: Arc<str>, offset: u64) {
        self.state.lock().skips.set(channel, epoch, offset)
    }

    fn forget_channel(&self, channel: &str) {
        let mut st = self.state.lock();
        st.skips.forget(channel);
        if let Some(held) = &mut st.held {
            super::drop_held(held, channel);
        }
    }

    fn byte_budget(&self) -> usize {
        self.budget
    }

    fn backlog(&self) -> usize {
        let st = self.state.lock();
        st.held
            .as_ref()
            .map_or(st.frames.len(), |h| st.frames.len() + h.len())
    }
}

/// The first unmasked server frame (text or ping) of `wire`, as `protocol::wire_text` /
/// `wire_ping` make them, and its length on the wire.
fn decode(wire: &[u8]) -> (Received, usize) {
    let (len, header) = match wire[1] & 0x7f {
        126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(wire[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = &wire[header..header + len];
    let frame = match wire[0] & 0x0f {
        0x1 => Received::Json(serde_json::from_slice(payload).expect("a JSON text frame")),
        0x9 => Received::Ping,
        op => panic!("unexpected opcode {op:#x}"),
    };
    (frame, header + len)
}

/// The HS256 secret of [`Node`]'s authenticator.
pub const SECRET: &[u8] = b"testing-secret";

/// A token of [`Node`]'s authenticator for `sub`, expiring at `exp` (Unix seconds).
pub fn token(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("HS256 signs")
}

/// A gateway over the memory engine; its clients authenticate with HS256 ([`token`]).
pub struct Node {
    pub gw: Arc<Gateway>,
    pub auth: Authenticator,
}

impl Node {
    /// `history` publications per channel are kept for recovery.
    pub fn new(history: usize, tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::with_broker(tune, |config| {
            Arc::new(MemoryBroker::new(config.node.clone(), history))
        })
    }

    /// A node over the broker `broker` makes (a test's wrapper around the memory engine).
    pub fn with_broker(
        tune: impl FnOnce(&mut GatewayConfig),
        broker: impl FnOnce(&GatewayConfig) -> Arc<dyn crate::seams::Broker>,
    ) -> Self {
        let mut config = GatewayConfig::new("n1".into());
        tune(&mut config);
        let broker = broker(&config);
        let gw = Gateway::new(
            config,
            broker,
            Arc::new(MemoryStore::new()),
            Metrics::default(),
        );
        Self {
            gw,
            auth: Authenticator::hs256(SECRET, &JwtRules::default()),
        }
    }

    /// A connected client whose transport holds at most `capacity` untaken frames.
    pub fn connect(&self, user: &str, capacity: usize) -> Peer {
        let identity = Identity {
            subscribe: Default::default(),
            user: user.into(),
            channels: Default::default(),
            expires_at: None,
        };
        self.connect_with(identity, capacity, usize::MAX)
    }

    /// A client connected with `token` (which must be valid).
    pub async fn connect_token(&self, token: &str, capacity: usize) -> Peer {
        let identity = self.auth.authenticate(Some(token)).await.expect("valid");
        self.connect_with(identity, capacity, usize::MAX)
    }

    /// [`Node::connect`] with a token's identity and a byte budget.
    pub fn connect_with(&self, identity: Identity, capacity: usize, budget: usize) -> Peer {
        let transport = Arc::new(Recording::new(capacity, budget));
        let conn = self.gw.open(identity, None, transport.clone());
        self.gw.arm_expiry(&conn);
        Peer {
            session: Session::new(conn, self.auth.clone()),
            transport,
        }
    }

    /// Publishes `data` (JSON) to `channel` from the API; returns the offset.
    pub async fn publish(&self, channel: &str, data: &str) -> u64 {
        let (offset, _, _) = self
            .gw
            .publish(channel, Bytes::copy_from_slice(data.as_bytes()), None, None)
            .await
            .expect("memory broker publishes");
        offset
    }
}

/// One client connection: its session and what it has received.
pub struct Peer {
    pub session: Session,
    transport: Arc<Recording>,
}

impl Peer {
    pub fn conn(&self) -> &Arc<Connection> {
        &self.session.conn
    }

    /// Sends one text frame, as the server's connection task handles it: the answers are
    /// written, then publications held during a subscription are released.
    pub async fn send(&mut self, gw: &Gateway, text: &str) -> Result<(), CloseRequest> {
        self.conn().touch(gw.clock.now_ms());
        for frame in self.session.handle_text(gw, text).await? {
            self.transport
                .write_frame(&protocol::wire_text(frame.as_bytes()));
        }
        if self.transport.release().is_err() {
            self.conn().request_close(
                close::SLOW_CONSUMER,
                "slow_consumer",
                "slow consumer: backlog full",
            );
        }
        Ok(())
    }

    /// Sets this connection's skip as a `subscribed` answer at `offset` of `epoch` would.
    pub fn transport_skip(&self, channel: &str, epoch: &str, offset: u64) {
        self.transport
            .skip_through(channel.into(), epoch.into(), offset);
    }

    /// Takes everything received so far.
    pub fn take(&self) -> Vec<Received> {
        self.transport.state.lock().frames.drain(..).collect()
    }

    /// Takes the JSON frames received so far, failing on anything else.
    pub fn take_json(&self) -> Vec<Value> {
        self.take()
            .into_iter()
            .map(|r| match r {
                Received::Json(v) => v,
                Received::Ping => panic!("expected JSON frames only"),
            })
            .collect()
    }

    /// The close the gateway asked for, as `(code, reason)`.
    pub fn closed(&self) -> Option<(u16, &'static str)> {
        self.conn().close_request().map(|c| (c.code, c.reason))
    }
}
