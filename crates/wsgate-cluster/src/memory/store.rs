//! In-process store.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::store::{PresenceEntry, Store, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    presence: DashMap<Arc<str>, HashMap<Arc<str>, PresenceEntry>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn presence_join(&self, channel: &str, entry: PresenceEntry) -> Result<(), StoreError> {
        self.presence
            .entry(channel.into())
            .or_default()
            .insert(entry.connection_id.clone(), entry);
        Ok(())
    }

    async fn presence_leave(&self, channel: &str, connection_id: &str) -> Result<(), StoreError> {
        self.presence.remove_if_mut(channel, |_, members| {
            members.remove(connection_id);
            members.is_empty()
        });
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, StoreError> {
        Ok(self
            .presence
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
