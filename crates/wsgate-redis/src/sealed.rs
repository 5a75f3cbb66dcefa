//! Upstream records at rest: the whole connection spec sealed with AES-256-GCM.
//!
//! Format 2 (`"v":2`) keeps in clear only what the cluster reads or writes without the key
//! (`id`, `owner` — the claim script rewrites it —, `state`, `created_at_ms`) and a redacted
//! `url` (scheme, host and path: for operators, never read back). The spec — URL with its
//! query, headers, auth, TLS, subscriptions, publish topic, policies — is `sealed`: base64
//! of a random 96-bit nonce followed by the ciphertext of the spec's JSON, with
//! `wsgate-upstream-v2`, the record id and `created_at_ms` as associated data. Somebody who
//! can write to Redis but has no key can therefore neither read the spec nor change it
//! (a reclaim cannot be redirected to another server), nor move a sealed spec to another
//! record. Without a key (`allow_insecure_dev_store`) the spec is stored in clear.
//!
//! Records of format 1 (no `v`: URL, subscriptions and topic in clear, unauthenticated,
//! only the secrets sealed) are refused when a key is set: a node never starts them and
//! the sweep never claims them ([`is_current`]); the node logs why, once per record.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use wsgate_core::seams::StoreError;
use wsgate_core::seams::UpstreamRecord;
use wsgate_core::seams::upstream::{UpstreamSpec, redact_url};

/// The cluster key: 32 bytes shared by every node. Seals records (AES-256-GCM under the
/// key) and authenticates forwarded calls (HMAC-SHA256 under a key derived from it, so the
/// two uses never share a key).
#[derive(Clone)]
pub struct ClusterKey {
    aead: Aes256Gcm,
    mac: Hmac<Sha256>,
}

type HmacSha256 = Hmac<Sha256>;

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
        let aead = Aes256Gcm::new_from_slice(&bytes).map_err(|_| "cluster key rejected")?;
        let mut derive =
            <HmacSha256 as Mac>::new_from_slice(&bytes).map_err(|_| "cluster key rejected")?;
        derive.update(b"wsgate forwarded calls v1");
        let mac = <HmacSha256 as Mac>::new_from_slice(&derive.finalize().into_bytes())
            .map_err(|_| "cluster key rejected")?;
        Ok(Self { aead, mac })
    }

    fn mac_of(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = self.mac.clone();
        for p in parts {
            // Length-prefixed: no two different lists of parts give the same input.
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// HMAC-SHA256 of `parts` (base64).
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        B64.encode(self.mac_of(parts).finalize().into_bytes())
    }

    /// Whether `tag` is [`Self::sign`] of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &str) -> bool {
        B64.decode(tag)
            .is_ok_and(|t| self.mac_of(parts).verify_slice(&t).is_ok())
    }

    fn seal(&self, aad: &str, plain: &[u8]) -> Result<String, StoreError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let ct = self
            .aead
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
        self.aead
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

/// The associated data of a record's sealed spec.
fn aad(id: &str, created_at_ms: u64) -> String {
    format!("wsgate-upstream-v2\n{id}\n{created_at_ms}")
}

/// The current stored form. Field order matters to `claim.lua`: `id` comes before `owner`.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    owner: String,
    /// The format: 2. Absent in format 1.
    #[serde(default)]
    v: u32,
    state: String,
    created_at_ms: u64,
    /// Format 2 with a key: the redacted URL (informational). Without a key, absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// In clear: format 2 without a key, or format 1 (secrets removed when sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<UpstreamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

pub const FORMAT: u32 = 2;

/// Whether a stored record may be started by a node with (`keyed`) or without a key: with
/// a key only format 2 (its spec authenticated). Cheap: reads the format field only.
pub fn is_current(keyed: bool, json: &str) -> bool {
    #[derive(Deserialize)]
    struct V {
        #[serde(default)]
        v: u32,
    }
    !keyed || serde_json::from_str::<V>(json).is_ok_and(|v| v.v == FORMAT)
}

/// The error (and log line) for a record of the previous format under a key.
pub fn old_format(id: &str) -> StoreError {
    StoreError::Other(format!(
        "upstream record {id} was written by a wsgate before 2026-11-27 (format 1: URL, \
         subscriptions and publish topic stored in clear, unauthenticated): refused, never \
         started or claimed; re-create the connection (POST /api/v1/upstreams) and delete \
         the old record (redis-cli DEL <prefix>:websocket-{id}; SREM \
         <prefix>:websocket-index {id})"
    ))
}

/// Logs why record `id` is not used, once per record and process (sweeps see it often).
pub fn warn_unusable(id: &str, e: &StoreError) {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    // Bounded: past 10 000 distinct records, every sighting is logged again.
    if seen.len() >= 10_000 {
        seen.clear();
    }
    if seen.insert(id.to_string()) {
        tracing::warn!(upstream_id = %id, error = %e, "upstream record not used");
    }
}

pub fn encode(key: Option<&ClusterKey>, record: &UpstreamRecord) -> Result<String, StoreError> {
    let (url, spec, sealed) = match key {
        Some(key) => {
            let plain =
                serde_json::to_vec(&record.spec).map_err(|e| StoreError::Other(e.to_string()))?;
            let sealed = key.seal(&aad(&record.id, record.created_at_ms), &plain)?;
            (Some(redact_url(&record.spec.url)), None, Some(sealed))
        }
        None => (None, Some(record.spec.clone()), None),
    };
    let stored = Stored {
        id: record.id.clone(),
        owner: record.owner.clone(),
        v: FORMAT,
        state: record.state.clone(),
        created_at_ms: record.created_at_ms,
        url,
        spec,
        sealed,
    };
    serde_json::to_string(&stored).map_err(|e| StoreError::Other(e.to_string()))
}

pub fn decode(key: Option<&ClusterKey>, json: &str) -> Result<UpstreamRecord, StoreError> {
    let stored: Stored = serde_json::from_str(json)
        .map_err(|e| StoreError::Other(format!("corrupt upstream record: {e}")))?;
    let corrupt = |what: &str| StoreError::Other(format!("corrupt upstream record: {what}"));
    let spec = match (stored.v, key, stored.sealed, stored.spec) {
        (FORMAT, Some(key), Some(sealed), _) => {
            let plain = key.open(&aad(&stored.id, stored.created_at_ms), &sealed)?;
            serde_json::from_slice(&plain).map_err(|e| corrupt(&e.to_string()))?
        }
        (FORMAT, Some(_), None, _) => {
            return Err(StoreError::Other(format!(
                "upstream record {} is not sealed but a cluster key is set: refused",
                stored.id
            )));
        }
        (_, None, Some(_), _) => {
            return Err(StoreError::Other(
                "upstream record is encrypted but no cluster key is set".into(),
            ));
        }
        (FORMAT, None, None, Some(spec)) => spec,
        (0, Some(_), _, _) => return Err(old_format(&stored.id)),
        // Format 1 without a key (a dev store): stored in clear as it always was.
        (0, None, None, Some(spec)) => spec,
        (v, ..) if v > FORMAT => {
            return Err(corrupt(&format!("format {v} is newer than this wsgate")));
        }
        _ => return Err(corrupt("no spec")),
    };
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
        let mut spec = spec_with_secrets("ws://h/feed?token=q5ecret");
        spec.subscriptions
            .push(wsgate_core::seams::upstream::UpstreamSubscription {
                key: "trades".into(),
                message: "SUB trades".into(),
                unsubscribe: None,
            });
        spec.publish_topic = Some("prices".into());
        UpstreamRecord {
            id: "ab-n1".into(),
            owner: "n1".into(),
            state: "connected".into(),
            created_at_ms: 1,
            spec,
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
        // So are the URL's query, the subscriptions and the topic: the whole spec.
        for clear in ["q5ecret", "SUB trades", "prices", "\"spec\""] {
            assert!(!json.contains(clear), "{clear} in {json}");
        }
        assert!(
            json.starts_with(r#"{"id":"ab-n1","owner":"n1","v":2,"#),
            "{json}"
        );
        assert!(json.contains(r#""url":"ws://h/feed""#), "{json}");
        assert_eq!(decode(Some(&key()), &json).unwrap(), record());
        // Another key, or the blob moved to another record, does not open.
        let other = ClusterKey::from_base64(&B64.encode([8u8; 32])).unwrap();
        assert!(decode(Some(&other), &json).is_err());
        assert!(decode(None, &json).is_err());
        let moved = json.replacen("ab-n1", "cd-n1", 1);
        assert!(decode(Some(&key()), &moved).is_err());
        let redated = json.replacen(r#""created_at_ms":1"#, r#""created_at_ms":2"#, 1);
        assert!(decode(Some(&key()), &redated).is_err());
        // A Redis writer cannot put a spec of its own in clear beside (or instead of) it.
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["spec"] = serde_json::to_value(UpstreamSpec::new("ws://evil/")).unwrap();
        let with_clear = v.to_string();
        assert_eq!(decode(Some(&key()), &with_clear).unwrap(), record());
        v.as_object_mut().unwrap().remove("sealed");
        assert!(decode(Some(&key()), &v.to_string()).is_err());
        // The owner (rewritten by claim.lua) and the state stay writable without the key.
        let claimed = json.replacen(r#""owner":"n1""#, r#""owner":"n2""#, 1);
        assert_eq!(decode(Some(&key()), &claimed).unwrap().owner, "n2");
    }

    /// Format 1 (before 2026-11-27): URL, subscriptions and topic in clear and
    /// unauthenticated. Refused under a key, with a message that says what to do.
    #[test]
    fn format_1_records_are_refused_under_a_key() {
        let v1 = r#"{"id":"ab-n1","owner":"n1","state":"connected","created_at_ms":1,"spec":{"url":"ws://evil/"},"sealed":"AAAA"}"#;
        assert!(!is_current(true, v1));
        assert!(is_current(false, v1));
        let e = decode(Some(&key()), v1).unwrap_err().to_string();
        assert!(
            e.contains("ab-n1") && e.contains("format 1") && e.contains("re-create"),
            "{e}"
        );
        let json = encode(Some(&key()), &record()).unwrap();
        assert!(is_current(true, &json));
        // Without a key (dev store) a format 1 record in clear still reads.
        let plain = r#"{"id":"ab-n1","owner":"n1","state":"connected","created_at_ms":1,"spec":{"url":"ws://h/"}}"#;
        assert_eq!(decode(None, plain).unwrap().spec.url, "ws://h/");
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

    #[test]
    fn forwarded_call_tags() {
        let tag = key().sign(&[b"q", b"1", b"n1"]);
        assert!(key().verify(&[b"q", b"1", b"n1"], &tag));
        assert!(!key().verify(&[b"q", b"1", b"n2"], &tag));
        // Boundaries count: "q1" + "" is not "q" + "1".
        assert!(!key().verify(&[b"q1", b"", b"n1"], &tag));
        let other = ClusterKey::from_base64(&B64.encode([8u8; 32])).unwrap();
        assert!(!other.verify(&[b"q", b"1", b"n1"], &tag));
        assert!(!key().verify(&[b"q", b"1", b"n1"], "not base64!"));
    }
}
