//! [`SubjectSink`]: events published on NATS subjects, for backends that prefer to consume.
//! Each event goes to `<subject>.<type>` (`wsgate.events.connection.opened`, ...), so a
//! consumer takes all with `<subject>.>` or some by type; the payload is the event's JSON.
//! Core NATS keeps nothing for a subscriber that is away: a backend that must not miss
//! events while it restarts puts a JetStream stream on the subjects.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use async_trait::async_trait;
use tokio::task::JoinHandle;
use tracing::warn;

use wsgate_core::events::{Event, Sink, SinkError};

use super::NatsConnect;

/// Bound on one batch's publish and flush.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SubjectSink {
    subject: String,
    client: Arc<OnceLock<Client>>,
    task: JoinHandle<()>,
}

impl SubjectSink {
    /// Connects in the background (batches are retried until NATS answers). Fails at once
    /// only on settings that can never work (an unreadable credentials file).
    pub fn start(connect: &NatsConnect, subject: String) -> std::io::Result<Self> {
        let (url, options) = connect.prepare()?;
        let logged = connect.redacted_url();
        let client = Arc::new(OnceLock::new());
        let slot = client.clone();
        let task = tokio::spawn(async move {
            let options = options
                .retry_on_initial_connect()
                .connection_timeout(Duration::from_secs(1));
            match async_nats::connect_with_options(url.as_str(), options).await {
                Ok(c) => {
                    let _ = slot.set(c);
                }
                Err(e) => {
                    warn!(error = %e, url = %logged, "NATS event sink could not connect")
                }
            }
        });
        Ok(Self {
            subject,
            client,
            task,
        })
    }
}

impl Drop for SubjectSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Sink for SubjectSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError> {
        let client = match self.client.get() {
            Some(c) if c.connection_state() == State::Connected => c,
            _ => return Err(SinkError::Retry("NATS not connected".into())),
        };
        let publish = async {
            for e in batch {
                let subject = format!("{}.{}", self.subject, e.kind());
                client
                    .publish(subject, e.to_json().into())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // The server has them once the flush returns.
            client.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(SEND_TIMEOUT, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Retry(e.to_string())),
            Err(_) => Err(SinkError::Retry("NATS publish timed out".into())),
        }
    }
}
