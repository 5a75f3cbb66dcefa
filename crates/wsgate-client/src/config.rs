//! Client configuration. Every setter documents its default and why.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Backoff, BreakerConfig, Correlation, JitterSource, Message, RandomJitter, Signer, TlsOptions,
};

/// Chained setters that store their argument: `name: Type;` sets field `name`, and
/// `name: Type => Some;` sets it to `Some(value)`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty $(=> $wrap:ident)?;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = setters!(@value value $($wrap)?);
            self
        }
    )*};
    (@value $v:ident) => {
        $v
    };
    (@value $v:ident $wrap:ident) => {
        $wrap($v)
    };
}

/// Default TCP + TLS + WebSocket handshake timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default write timeout: a peer that stops reading must not wedge the driver.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the server's close frame after ours.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default read buffer: 4 KiB, not tungstenite's 128 KiB, because wsgate runs
/// thousands of mostly idle upstream connections.
pub const DEFAULT_READ_BUFFER: usize = 4 * 1024;
/// Default capacity of the event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// Default capacity of the command channel (handles → driver).
pub const DEFAULT_COMMAND_CAPACITY: usize = 256;
/// Default heartbeat interval (seed 003).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Default heartbeat timeout (seed 003): a bit over two intervals.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(65);
/// Default auth reply timeout.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides whether a received message is the one awaited.
#[derive(Clone)]
pub enum Matcher {
    /// The payload (text, or binary read as UTF-8 lossily) contains this substring.
    Contains(String),
    /// The message is a JSON object whose `field` equals `value`.
    JsonField {
        /// Top-level field name.
        field: String,
        /// Expected value.
        value: serde_json::Value,
    },
    /// Any predicate.
    Predicate(Arc<dyn Fn(&Message) -> bool + Send + Sync>),
}

impl Matcher {
    /// `Contains` shorthand.
    pub fn contains(s: impl Into<String>) -> Self {
        Matcher::Contains(s.into())
    }

    /// `JsonField` shorthand.
    pub fn json_field(field: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        Matcher::JsonField {
            field: field.into(),
            value: value.into(),
        }
    }

    /// `Predicate` shorthand.
    pub fn predicate(f: impl Fn(&Message) -> bool + Send + Sync + 'static) -> Self {
        Matcher::Predicate(Arc::new(f))
    }

    /// Does `msg` match?
    pub fn matches(&self, msg: &Message) -> bool {
        match self {
            Matcher::Contains(s) => match msg {
                Message::Text(t) => t.as_str().contains(s.as_str()),
                Message::Binary(b) => String::from_utf8_lossy(b).contains(s.as_str()),
            },
            Matcher::JsonField { field, value } => {
                serde_json::from_slice::<serde_json::Value>(msg.as_bytes())
                    .ok()
                    .and_then(|v| v.get(field).cloned())
                    .is_some_and(|v| &v == value)
            }
            Matcher::Predicate(f) => f(msg),
        }
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Contains(s) => f.debug_tuple("Contains").field(s).finish(),
            Matcher::JsonField { field, value } => f
                .debug_struct("JsonField")
                .field("field", field)
                .field("value", value)
                .finish(),
            Matcher::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// The authentication step, run on every (re)connect before anything else.
///
/// Its messages are templates rendered afresh for every attempt (see [`Auth::sign`] and the
/// placeholders of `sign.rs`), then sent in order; then, if [`Auth::expect`] is set, the
/// driver waits up to [`Auth::timeout`] for a matching reply. A reply matching
/// [`Auth::reject`], a timeout or a socket error fails the attempt (it counts
/// towards backoff and the breaker). Other frames received meanwhile are
/// delivered as ordinary messages once the connection is ready.
#[derive(Debug, Clone)]
pub struct Auth {
    pub(crate) messages: Vec<Message>,
    pub(crate) expect: Option<Matcher>,
    pub(crate) reject: Option<Matcher>,
    pub(crate) timeout: Duration,
    pub(crate) signer: Option<Signer>,
    pub(crate) refresh: Option<Duration>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            expect: None,
            reject: None,
            timeout: DEFAULT_AUTH_TIMEOUT,
            signer: None,
            refresh: None,
        }
    }
}

impl Auth {
    /// An empty auth step.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message to send.
    pub fn send(mut self, msg: impl Into<Message>) -> Self {
        self.messages.push(msg.into());
        self
    }

    setters! {
        /// Waits for a reply matching `value` before the connection counts as ready.
        expect: Matcher => Some;
        /// A reply matching `value` (while waiting) fails the attempt at once.
        reject: Matcher => Some;
        /// How long to wait for the expected reply. Default 10 s.
        timeout: Duration;
    }

    /// Computes `{{signature}}` in the messages, afresh for every attempt. Default none.
    pub fn sign(mut self, s: Signer) -> Self {
        self.signer = Some(s);
        self
    }

    /// Re-sends the messages (freshly rendered) on the open connection every `period`, for
    /// logins that expire. Replies are ordinary messages. Default none.
    pub fn refresh(mut self, period: Duration) -> Self {
        self.refresh = Some(period).filter(|p| !p.is_zero());
        self
    }
}

/// What the heartbeat sends.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatPing {
    /// A WebSocket ping frame (the server's stack answers with a pong).
    WebSocket,
    /// An application message (e.g. `{"op":"ping"}`), for servers that want one.
    Message(Message),
}

/// Liveness check. Any frame received (data, pong, ping) proves liveness;
/// when nothing arrives for `timeout`, the connection is dropped and the
/// reconnect loop takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Ping interval. Default 30 s.
    pub interval: Duration,
    /// Silence after which the connection is considered dead. Default 65 s.
    pub timeout: Duration,
    /// What to send. Default WebSocket ping.
    pub ping: HeartbeatPing,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            ping: HeartbeatPing::WebSocket,
        }
    }
}

/// What `send` does while the socket is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfflinePolicy {
    /// Fail with [`Error::NotConnected`](crate::Error::NotConnected)
    /// ("WebSocket is not connected"). Default, as in seed 000.
    #[default]
    Reject,
    /// Queue up to `capacity` messages; they are sent after auth and
    /// subscription replay. A full outbox fails the send with
    /// [`Error::OutboxFull`](crate::Error::OutboxFull); nothing is dropped silently.
    Outbox {
        /// Maximum queued messages.
        capacity: usize,
    },
}

type JitterFactory = Arc<dyn Fn() -> Box<dyn JitterSource> + Send + Sync>;

/// Everything a [`Client`](crate::Client) needs. Build with [`ClientConfig::new`]
/// and the chained setters.
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) subprotocol: Option<String>,
    pub(crate) auto_reconnect: bool,
    pub(crate) backoff: Backoff,
    pub(crate) min_stable: Option<Duration>,
    pub(crate) tls: TlsOptions,
    pub(crate) jitter: JitterFactory,
    pub(crate) breaker: BreakerConfig,
    pub(crate) auth: Option<Auth>,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) correlation: Correlation,
    pub(crate) offline: OfflinePolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) read_buffer_size: usize,
    pub(crate) max_message_size: Option<usize>,
    pub(crate) event_capacity: usize,
    pub(crate) command_capacity: usize,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values and auth messages may hold secrets: not printed.
        f.debug_struct("ClientConfig")
            .field("id", &self.id)
            .field("url", &crate::redact_url(&self.url))
            .field("headers", &crate::header_names(&self.headers))
            .field("subprotocol", &self.subprotocol)
            .field("auto_reconnect", &self.auto_reconnect)
            .field("backoff", &self.backoff)
            .field("min_stable", &self.min_stable)
            .field("tls", &self.tls)
            .field("breaker", &self.breaker)
            .field("auth", &self.auth.is_some())
            .field("heartbeat", &self.heartbeat)
            .field("correlation", &self.correlation)
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A config for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            url: url.into(),
            headers: Vec::new(),
            subprotocol: None,
            auto_reconnect: true,
            backoff: Backoff::default(),
            min_stable: None,
            tls: TlsOptions::default(),
            jitter: Arc::new(|| Box::new(RandomJitter)),
            breaker: BreakerConfig::default(),
            auth: None,
            heartbeat: Some(Heartbeat::default()),
            correlation: Correlation::None,
            offline: OfflinePolicy::Reject,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            read_buffer_size: DEFAULT_READ_BUFFER,
            max_message_size: Some(16 << 20),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            command_capacity: DEFAULT_COMMAND_CAPACITY,
        }
    }

    /// Identifier used in tracing and snapshots. Default: a random UUID.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Adds an HTTP header to the handshake request (e.g. an API key).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Requests a WebSocket subprotocol. Default none.
    pub fn subprotocol(mut self, p: impl Into<String>) -> Self {
        self.subprotocol = Some(p.into());
        self
    }

    /// Jitter source factory (one source per client). Default: `rand`.
    pub fn jitter_source(
        mut self,
        f: impl Fn() -> Box<dyn JitterSource> + Send + Sync + 'static,
    ) -> Self {
        self.jitter = Arc::new(f);
        self
    }

    setters! {
        /// Reconnect after a lost connection. Default `true`. With `false`, a lost
        /// connection ends the client with `Closed { ConnectionLost }`; the first
        /// connect still follows the backoff policy.
        auto_reconnect: bool;
        /// Reconnect delay policy. Default [`Backoff::default`].
        backoff: Backoff;
        /// How long a connection must stay up (authenticated and subscribed) before it counts
        /// as a success that resets the backoff and closes the breaker; a shorter one counts
        /// as a failed attempt, so a server that accepts and drops at once is retried with
        /// growing delays. Default: the backoff's `max_delay`.
        min_stable: Duration => Some;
        /// TLS settings for `wss://` (extra CA, client certificate). Default: platform roots.
        tls: TlsOptions;
        /// Circuit breaker settings. Default 5 failures, 30 s cooldown.
        breaker: BreakerConfig;
        /// Authentication step run on every (re)connect. Default none.
        auth: Auth => Some;
        /// Heartbeat, or `None` to disable. Default 30 s ping, 65 s timeout.
        heartbeat: Option<Heartbeat>;
        /// Correlation mode for `request`. Default none.
        correlation: Correlation;
        /// What `send` does while disconnected. Default [`OfflinePolicy::Reject`].
        offline: OfflinePolicy;
        /// Handshake timeout. Default 10 s.
        connect_timeout: Duration;
        /// Per-write timeout; a timeout drops the connection. Default 10 s.
        write_timeout: Duration;
        /// How long `close` waits for the server's close frame. Default 2 s.
        close_timeout: Duration;
        /// tungstenite read buffer size. Default 4 KiB.
        read_buffer_size: usize;
        /// Largest accepted message. Default 16 MiB.
        max_message_size: Option<usize>;
    }

    /// Event channel capacity. Default 1024.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// Command channel capacity. Default 256.
    pub fn command_capacity(mut self, n: usize) -> Self {
        self.command_capacity = n.max(1);
        self
    }

    /// The configured URL.
    pub fn url_str(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let ok = Message::from(r#"{"op":"auth_ok","n":1}"#);
        assert!(Matcher::contains("auth_ok").matches(&ok));
        assert!(Matcher::contains("auth_ok").matches(&Message::binary(&b"xx auth_ok"[..])));
        assert!(Matcher::json_field("op", "auth_ok").matches(&ok));
        assert!(Matcher::json_field("n", 1).matches(&ok));
        assert!(!Matcher::json_field("op", "auth_failed").matches(&ok));
        assert!(!Matcher::json_field("op", "auth_ok").matches(&Message::from("not json")));
        assert!(Matcher::predicate(|m| m.len() > 3).matches(&ok));
        assert!(!Matcher::predicate(|m| m.is_empty()).matches(&ok));
    }

    #[test]
    fn debug_hides_header_values() {
        let cfg = ClientConfig::new("ws://x").header("authorization", "Bearer s3cr3t");
        let dbg = format!("{cfg:?}");
        assert!(
            dbg.contains("authorization") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }
}
