//! One upstream connection as the manager holds it.
//!
//! [`Upstream`] is the manager's entry: the client handle (dropping the last handle closes
//! the connection) and the pump's join handle. [`Shared`] is what the pump needs too: the
//! record, the publish topic and counters. The pump holds `Shared`, never the client, so the
//! manager's entry is the only owner of the connection.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::seams::UpstreamRecord;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;
use wsgate_client::Client;

use super::parts::UpstreamParts;
use super::state::GaugeSlot;
use super::{UpstreamError, WRITE_TIMEOUT};

/// What never changes after Connect, readable without the record's lock.
pub struct Fixed {
    pub owner: Arc<str>,
    pub created_at_ms: u64,
    pub auto_reconnect: bool,
    pub correlation: &'static str,
    pub header_names: Vec<String>,
}

pub struct Shared {
    pub id: Arc<str>,
    pub fixed: Fixed,
    pub parts: Arc<UpstreamParts>,
    /// The durable record. An async mutex held across the store write, so record writes of
    /// one connection reach the store in the order they were made. Control operations and
    /// state changes only: never taken per message.
    pub record: tokio::sync::Mutex<UpstreamRecord>,
    /// Where received messages go (`None`: not publishing). Read by the pump per message.
    pub topic: watch::Sender<Option<Arc<str>>>,
    pub gauge: GaugeSlot,
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    /// The manager holding this connection: told when the store refuses a record write.
    pub manager: std::sync::Weak<super::UpstreamManager>,
}

impl Shared {
    /// Applies `edit` to the record and writes it to the store (bounded). A record that is
    /// gone or names another owner is not re-created: the write fails with
    /// `Connection not found` and the connection stops at once (another node may run it).
    pub async fn update_record(
        &self,
        edit: impl FnOnce(&mut UpstreamRecord),
    ) -> Result<(), UpstreamError> {
        let mut rec = self.record.lock().await;
        edit(&mut rec);
        let put = self.parts.records.upstream_update(rec.clone());
        let res = match tokio::time::timeout(WRITE_TIMEOUT, put).await {
            Ok(Err(crate::seams::StoreError::Revoked(_))) => {
                warn!(upstream_id = %self.id, "upstream record gone or taken over; not re-created");
                if let Some(manager) = self.manager.upgrade() {
                    manager.revoked(self);
                }
                return Err(UpstreamError::NotFound);
            }
            Ok(r) => r.map_err(UpstreamError::from),
            Err(_) => Err(UpstreamError::Store(crate::seams::StoreError::Unavailable(
                "upstream record write timed out".into(),
            ))),
        };
        if let Err(e) = &res {
            self.parts.metrics.store_errors.inc();
            warn!(upstream_id = %self.id, error = %e, "upstream record write failed");
        }
        res
    }

    pub fn topic(&self) -> Option<Arc<str>> {
        self.topic.borrow().clone()
    }
}

pub struct Upstream {
    pub shared: Arc<Shared>,
    pub client: Client,
    pub pump: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Upstream {
    /// Closes the connection (close frame, bounded) and waits for the pump to finish, so
    /// nothing of it runs afterwards. Idempotent.
    pub async fn close(&self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.client.close()).await;
        let pump = self.pump.lock().take();
        if let Some(mut pump) = pump
            && tokio::time::timeout(wait, &mut pump).await.is_err()
        {
            warn!(upstream_id = %self.shared.id, "upstream pump did not stop; aborting it");
            pump.abort();
        }
    }
}
