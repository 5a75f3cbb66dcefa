//! [`NatsBroker`]: delivery between nodes over core NATS; offsets and history in a
//! [`ChannelLog`] (Redis's, at run time).
//!
//! # Why another engine keeps the streams
//! Core NATS has no per-subject offsets and no history. JetStream has history, but its
//! sequence is per stream, not per channel; per-channel offsets would need one stream per
//! channel or an optimistic-concurrency retry loop on every publish, and a second engine to
//! operate. The Redis publish script already gives per-channel offsets, epochs and bounded
//! history in one round trip, so the server hands the NATS broker `wsgate-redis`'s channel
//! log (its `publish.lua` without the `PUBLISH`) and NATS only moves messages: run
//! `--broker nats --store redis`. This crate sees the log only through the core's
//! [`ChannelLog`] seam, so it does not depend on Redis to compile.
//!
//! # Subjects
//! Each node subscribes to exactly three subjects, whatever its number of clients:
//! `P.pub` (channel publications), `P.user` (sends to a user) and `P.node.<node>` (sends
//! to one connection, as request/reply so the sender learns whether it was delivered).
//! `P` is the key prefix; characters NATS reserves in tokens (`.`, `*`, `>`, spaces) are
//! replaced by `_`. An empty prefix gives `pub`, `user` and `node.<node>`.
//!
//! # Order
//! Two nodes that publish to one channel get consecutive offsets from Redis but may reach
//! NATS in the other order. The receiving [`Dispatcher`] never delivers out of order: on a
//! jump it reads the missing publications from the channel log (they are always there
//! first), delivers them, and drops the late live copy as a duplicate. Such reorderings
//! show in `wsgate_cluster_gaps_detected_total` as well as real losses.

mod connect;
mod event_subject;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use connect::{NatsAuth, NatsConnect};
pub use event_subject::SubjectSink;
use wsgate_core::relay::{Dispatcher, Relay, wire};
use wsgate_core::seams::{
    Broker, BrokerError, ChannelLog, ClusterMetrics, Deliver, Envelope, Idempotency, Logged,
    NodeId, Once, Publication, PublishRequest, Recipient, ServerSubscription, StreamPosition,
    StreamReads,
};

/// How long a send to one connection waits for the holding node's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

struct Subjects {
    publications: Subject,
    users: Subject,
    /// `"<prefix>."`, or `""` when the prefix is empty (subjects `pub`, `user`, `node.<node>`).
    head: String,
}

impl Subjects {
    fn new(prefix: &str) -> Self {
        let head = match prefix {
            "" => String::new(),
            p => format!("{}.", token(p)),
        };
        Self {
            publications: format!("{head}pub").into(),
            users: format!("{head}user").into(),
            head,
        }
    }

    fn node(&self, node: &str) -> Subject {
        format!("{}node.{}", self.head, token(node)).into()
    }
}

fn token(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

pub struct NatsBroker {
    relay: Arc<Relay>,
    client: Arc<OnceLock<Client>>,
    subjects: Arc<Subjects>,
    sink: Arc<OnceLock<Arc<dyn Deliver>>>,
    task: JoinHandle<()>,
}

impl NatsBroker {
    /// Connects in the background (NATS or the log may still be down: the broker reports
    /// itself unhealthy until both answer). `prefix` names the subjects (the key prefix).
    /// Fails at once only on settings that can never work (an unreadable credentials
    /// file). Needs a Tokio runtime.
    pub fn start(
        node: NodeId,
        connect: &NatsConnect,
        prefix: &str,
        log: Arc<dyn ChannelLog>,
        metrics: ClusterMetrics,
    ) -> std::io::Result<Self> {
        let relay = Arc::new(Relay::new(log, metrics));
        let subjects = Arc::new(Subjects::new(prefix));
        let client = Arc::new(OnceLock::new());
        let sink = Arc::new(OnceLock::new());
        let (url, options) = connect.prepare()?;
        let node_loop = NodeLoop {
            url,
            logged_url: connect.redacted_url(),
            options,
            node_subject: subjects.node(&node),
            subjects: subjects.clone(),
            client: client.clone(),
            dispatcher: Dispatcher::new(relay.clone(), sink.clone()),
        };
        Ok(Self {
            relay,
            client,
            subjects,
            sink,
            task: wsgate_core::tasks::supervised("nats node loop", node_loop.run()),
        })
    }

    fn connected(&self) -> Result<&Client, BrokerError> {
        match self.client.get() {
            Some(c) if c.connection_state() == State::Connected => Ok(c),
            _ => Err(BrokerError::Unavailable("NATS not connected".into())),
        }
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nats_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("NATS: {e}"))
}

#[async_trait]
impl Broker for NatsBroker {
    fn attach(&self, sink: Arc<dyn Deliver>) {
        let _ = self.sink.set(sink);
    }

    /// Delivery is asynchronous (through the node's own subscription): returns 0 local
    /// deliveries. Refused before touching the log when NATS is down, so an accepted
    /// publication is also announced.
    async fn publish(&self, req: PublishRequest) -> Result<(StreamPosition, usize), BrokerError> {
        let client = self.connected()?;
        let p = self.relay.log().append(req).await?;
        Ok((self.announce(client, p).await, 0))
    }

    /// The log checks and records the key with the append (in one step); a repeat is not
    /// announced.
    async fn publish_once(
        &self,
        req: PublishRequest,
        once: &Idempotency,
    ) -> Result<Once, BrokerError> {
        let client = self.connected()?;
        Ok(match self.relay.log().append_once(req, once).await? {
            Logged::New(p) => Once::Published {
                position: self.announce(client, p).await,
                delivered: 0,
            },
            Logged::Repeat(position) => Once::Repeat(position),
        })
    }

    fn reads(&self) -> &dyn StreamReads {
        &*self.relay
    }

    /// To a user: core NATS does not count receivers, returns 0. To a connection: a request
    /// to the holding node, which answers how many connections took it.
    async fn send(&self, to: Recipient<'_>, data: Bytes) -> Result<usize, BrokerError> {
        let client = self.connected()?;
        let payload = wire::encode_direct(to, &data);
        let node = match to {
            // Every node reads the users' subject: a subscriber event reaches them all.
            Recipient::User(_) | Recipient::Subscribers(_) => {
                client
                    .publish(self.subjects.users.clone(), payload)
                    .await
                    .map_err(nats_error)?;
                return Ok(0);
            }
            Recipient::Connection { node, .. } => node,
        };
        let request = client.request(self.subjects.node(node), payload);
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Err(_) => Err(BrokerError::Unavailable("NATS request timed out".into())),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(0),
            Ok(Err(e)) => Err(nats_error(e)),
            Ok(Ok(reply)) => Ok(std::str::from_utf8(&reply.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)),
        }
    }

    /// Like a send to a user: every node changes its connections of `user`; returns 0.
    async fn change_subscriptions(
        &self,
        user: &str,
        change: &ServerSubscription,
    ) -> Result<usize, BrokerError> {
        let client = self.connected()?;
        client
            .publish(
                self.subjects.users.clone(),
                wire::encode_subscriptions(user, change),
            )
            .await
            .map_err(nats_error)?;
        Ok(0)
    }

    fn is_healthy(&self) -> bool {
        self.connected().is_ok() && self.relay.log().is_healthy()
    }
}

impl NatsBroker {
    /// Announces an appended publication to every node; returns its position.
    async fn announce(&self, client: &Client, p: Publication) -> StreamPosition {
        let position = StreamPosition {
            offset: p.offset,
            epoch: p.epoch.clone(),
        };
        if let Err(e) = client
            .publish(self.subjects.publications.clone(), wire::encode_channel(&p))
            .await
        {
            // In history already: nodes fill it in at the next publication of the channel,
            // and `since` recovers it.
            self.relay.metrics().errors.inc();
            warn!(channel = %p.channel, offset = p.offset, error = %e, "NATS publish failed after append");
        }
        position
    }
}

/// The node's subscriptions, in one task.
struct NodeLoop {
    /// Without user info (the credentials are in `options`).
    url: String,
    /// [`NatsConnect::redacted_url`], for log lines.
    logged_url: String,
    /// Taken once by [`NodeLoop::run`].
    options: ConnectOptions,
    node_subject: Subject,
    subjects: Arc<Subjects>,
    client: Arc<OnceLock<Client>>,
    dispatcher: Dispatcher,
}

impl NodeLoop {
    async fn run(mut self) {
        let reconnected = Arc::new(Notify::new());
        let events = reconnected.clone();
        let options = std::mem::take(&mut self.options)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(1))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        Event::Connected => {
                            info!("NATS connected");
                            events.notify_one();
                        }
                        Event::Disconnected => warn!("NATS disconnected"),
                        other => info!(event = %other, "NATS event"),
                    }
                }
            });
        let client = match async_nats::connect_with_options(self.url.as_str(), options).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, url = %self.logged_url, "NATS client could not be created; broker stays unavailable");
                return;
            }
        };
        let _ = self.client.set(client.clone());
        let subscribe = async {
            Ok::<_, async_nats::SubscribeError>((
                client.subscribe(self.subjects.publications.clone()).await?,
                client.subscribe(self.subjects.users.clone()).await?,
                client.subscribe(self.node_subject.clone()).await?,
            ))
        };
        let (mut pubs, mut users, mut direct) = match subscribe.await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "NATS subscribe failed; broker stays unavailable");
                return;
            }
        };
        let mut connected_before = false;
        loop {
            tokio::select! {
                Some(m) = pubs.next() => { self.on_message(m.payload).await; }
                Some(m) = users.next() => { self.on_message(m.payload).await; }
                Some(m) = direct.next() => {
                    let n = self.on_message(m.payload).await;
                    if let Some(reply) = m.reply
                        && let Err(e) = client.publish(reply, Bytes::from(n.to_string())).await
                    {
                        warn!(error = %e, "NATS reply failed");
                    }
                }
                _ = reconnected.notified() => {
                    if connected_before {
                        self.dispatcher.metrics().resubscriptions.inc();
                        // Best effort here; a hole left shows at the channel's next publication.
                        let _ = self.dispatcher.resync().await;
                    }
                    connected_before = true;
                }
            }
        }
    }

    async fn on_message(&mut self, payload: Bytes) -> usize {
        match wire::decode(payload) {
            Ok(e @ Envelope::Channel(_)) => self.dispatcher.on_envelope(e).await,
            Ok(e) => self.dispatcher.deliver_direct(&e),
            Err(e) => {
                self.dispatcher.metrics().malformed.inc();
                warn!(error = %e, "dropping message");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Subjects;

    #[test]
    fn subjects_with_and_without_a_prefix() {
        let s = Subjects::new("my.app");
        assert_eq!(s.publications.as_str(), "my_app.pub");
        assert_eq!(s.node("n.1").as_str(), "my_app.node.n_1");
        let bare = Subjects::new("");
        assert_eq!(bare.publications.as_str(), "pub");
        assert_eq!(bare.users.as_str(), "user");
        assert_eq!(bare.node("n1").as_str(), "node.n1");
    }
}
