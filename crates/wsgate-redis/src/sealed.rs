//! Upstream records at rest: header values, the auth step (messages, signing secret) and
//! the TLS settings (client key) sealed with AES-256-GCM.
//!
//! The stored JSON keeps what the cluster must read without the key (id, owner, state,
//! URL host/path, subscriptions' keys and messages, policies) and replaces `spec.headers`
//! and `spec.auth` with `sealed`: base64 of a random 96-bit nonce followed by the
//! ciphertext of `{"headers":…,"auth":…,"tls":…}`, with the record id as associated data (a sealed
//! blob cannot be moved to another record). Without a key (`allow_insecure_dev_store`)
//! records are stored as they are.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use wsgate_core::seams::StoreError;
use wsgate_core::seams::UpstreamRecord;
use wsgate_core::seams::upstream::{UpstreamAuth, UpstreamSpec, UpstreamTls};

/// The cluster key: 32 bytes shared by every node.
#[derive(Clone)]
pub struct ClusterKey(Aes256Gcm);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// From base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| "cluster key is not valid base64".to_string())?;
        if bytes.len() != 32 {
            return Err(format!(
                "cluster key must be 32 bytes (base64 of them), got {}",
                bytes.len()
            ));
        }
        Aes256Gcm::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| "cluster key rejected".to_string())
    }

    fn seal(&self, aad: &str, plain: &[u8]) -> Result<String, StoreError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let ct = self
            .0
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Other("sealing upstream record failed".into()))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, StoreError> {
        let bad = || {
            StoreError::Other(
                "upstream record secrets cannot be decrypted (wrong cluster key?)".into(),
            )
        };
        let raw = B64.decode(sealed).map_err(|_| bad())?;
        if raw.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        self.0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad())
    }
}

#[derive(Serialize, Deserialize)]
struct Secrets {
    headers: Vec<(String, String)>,
    auth: Option<UpstreamAuth>,
    #[serde(default)]
    tls: Option<UpstreamTls>,
}

/// The stored form. Field order matters to `claim.lua`: `id` comes before `owner`.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    owner: String,
    state: String,
    created_at_ms: u64,
    spec: UpstreamSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

pub fn encode(key: Option<&ClusterKey>, record: &UpstreamRecord) -> Result<String, StoreError> {
    let mut spec = record.spec.clone();
    let sealed = match key {
        Some(key) => {
            let secrets = Secrets {
                headers: std::mem::take(&mut spec.headers),
                auth: spec.auth.take(),
                tls: spec.tls.take(),
            };
            let plain =
                serde_json::to_vec(&secrets).map_err(|e| StoreError::Other(e.to_string()))?;
            Some(key.seal(&record.id, &plain)?)
        }
        None => None,
    };
    let stored = Stored {
        id: record.id.clone(),
        owner: record.owner.clone(),
        state: record.state.clone(),
        created_at_ms: record.created_at_ms,
        spec,
        sealed,
    };
    serde_json::to_string(&stored).map_err(|e| StoreError::Other(e.to_string()))
}

pub fn decode(key: Option<&ClusterKey>, json: &str) -> Result<UpstreamRecord, StoreError> {
    let stored: Stored = serde_json::from_str(json)
        .map_err(|e| StoreError::Other(format!("corrupt upstream record: {e}")))?;
    let mut spec = stored.spec;
    if let Some(sealed) = &stored.sealed {
        let key = key.ok_or_else(|| {
            StoreError::Other("upstream record is encrypted but no cluster key is set".into())
        })?;
        let plain = key.open(&stored.id, sealed)?;
        let secrets: Secrets = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Other(format!("corrupt upstream record secrets: {e}")))?;
        spec.headers = secrets.headers;
        spec.auth = secrets.auth;
        spec.tls = secrets.tls;
    }
    Ok(UpstreamRecord {
        id: stored.id,
        owner: stored.owner,
        state: stored.state,
        created_at_ms: stored.created_at_ms,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use wsgate_core::seams::upstream::spec_with_secrets;

    fn key() -> ClusterKey {
        ClusterKey::from_base64(&B64.encode([7u8; 32])).unwrap()
    }

    fn record() -> UpstreamRecord {
        UpstreamRecord {
            id: "ab-n1".into(),
            owner: "n1".into(),
            state: "connected".into(),
            created_at_ms: 1,
            spec: spec_with_secrets("ws://h/"),
        }
    }

    #[test]
    fn round_trip_without_plaintext() {
        let json = encode(Some(&key()), &record()).unwrap();
        // The header, the signing secret and the TLS key are all inside the sealed part.
        assert!(
            !json.contains("s3cr3t") && !json.contains("authorization"),
            "{json}"
        );
        assert!(
            !json.contains("realtime") && !json.contains("KEY"),
            "{json}"
        );
        assert!(json.starts_with(r#"{"id":"ab-n1","owner":"n1""#), "{json}");
        assert_eq!(decode(Some(&key()), &json).unwrap(), record());
        // Another key, or the blob moved to another record, does not open.
        let other = ClusterKey::from_base64(&B64.encode([8u8; 32])).unwrap();
        assert!(decode(Some(&other), &json).is_err());
        assert!(decode(None, &json).is_err());
        let moved = json.replacen("ab-n1", "cd-n1", 1);
        assert!(decode(Some(&key()), &moved).is_err());
    }

    #[test]
    fn plain_without_key_and_bad_keys() {
        let json = encode(None, &record()).unwrap();
        assert!(json.contains("s3cr3t"));
        assert_eq!(decode(None, &json).unwrap(), record());
        assert!(ClusterKey::from_base64("not base64!").is_err());
        assert!(ClusterKey::from_base64(&B64.encode([1u8; 16])).is_err());
        assert!(!format!("{:?}", key()).contains('7'));
    }
}
