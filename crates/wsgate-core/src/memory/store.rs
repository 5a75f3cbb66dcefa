//! In-process store.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::seams::{PresenceEntry, PresenceStore, StoreError, UpstreamRecord, UpstreamRecords};

#[derive(Default)]
pub struct MemoryStore {
    presence: DashMap<Arc<str>, HashMap<Arc<str>, PresenceEntry>>,
    upstreams: DashMap<String, UpstreamRecord>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
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

#[async_trait]
impl UpstreamRecords for MemoryStore {
    async fn upstream_put(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        self.upstreams.insert(record.id.clone(), record);
        Ok(())
    }

    async fn upstream_update(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        match self.upstreams.get_mut(&record.id) {
            Some(mut cur) if cur.owner == record.owner => {
                *cur = record;
                Ok(())
            }
            _ => Err(StoreError::Revoked(record.id)),
        }
    }

    async fn upstream_get(&self, id: &str) -> Result<Option<UpstreamRecord>, StoreError> {
        Ok(self.upstreams.get(id).map(|r| r.clone()))
    }

    async fn upstream_delete(&self, id: &str) -> Result<(), StoreError> {
        self.upstreams.remove(id);
        Ok(())
    }

    async fn upstream_list(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        Ok(self.upstreams.iter().map(|r| r.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::upstream::UpstreamSpec;

    #[tokio::test]
    async fn upstream_records_round_trip() {
        let store = MemoryStore::new();
        let mut rec = UpstreamRecord {
            id: "a-n1".into(),
            owner: "n1".into(),
            state: "connecting".into(),
            created_at_ms: 1,
            spec: UpstreamSpec::new("ws://h/"),
        };
        store.upstream_put(rec.clone()).await.unwrap();
        assert_eq!(store.upstream_get("a-n1").await.unwrap(), Some(rec.clone()));
        rec.spec.publish_topic = Some("t".into());
        store.upstream_put(rec.clone()).await.unwrap();
        assert_eq!(store.upstream_list().await.unwrap(), vec![rec]);
        store.upstream_delete("a-n1").await.unwrap();
        store.upstream_delete("a-n1").await.unwrap();
        assert_eq!(store.upstream_get("a-n1").await.unwrap(), None);
        assert!(store.upstream_list().await.unwrap().is_empty());
    }
}
