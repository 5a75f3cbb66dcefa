//! Signed logins: auth messages as templates, rendered afresh for every connection attempt.
//!
//! Exchanges (Binance, OKX, Kraken, Coinbase) want a login that carries a timestamp and an
//! HMAC over it, and refuse a replayed one: a fixed auth message works once. So the auth
//! step's messages are templates, and each attempt (and each refresh on an open connection)
//! renders them with new [`Values`]:
//! `{{timestamp_ms}}`, `{{timestamp_s}}`, `{{nonce}}` (16 random bytes, hex) and
//! `{{signature}}` (the [`Signer`]'s HMAC of its payload, itself rendered with the same
//! values first).
//!
//! Substitution is textual over the whole message. That is the same as substituting inside
//! every JSON string (and inside a message that is itself a JSON string) because every value
//! is made of digits, hex or base64 characters only, none of which JSON escapes.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::Message;

/// The HMAC's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum SignAlgorithm {
    /// HMAC-SHA256.
    HmacSha256,
    /// HMAC-SHA512.
    HmacSha512,
}

/// How the signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum SignEncoding {
    /// Lowercase hex (default).
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Computes `{{signature}}`. The secret is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Signer {
    /// The hash.
    pub algorithm: SignAlgorithm,
    /// The HMAC key.
    pub secret: String,
    /// The signed text, with placeholders (except `{{signature}}`).
    pub payload: String,
    /// Output form. Default hex.
    #[cfg_attr(feature = "serde", serde(default))]
    pub encoding: SignEncoding,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("payload", &self.payload)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

macro_rules! hmac {
    ($hash:ty, $key:expr, $data:expr) => {{
        let mut mac = Hmac::<$hash>::new_from_slice($key).expect("HMAC takes keys of any length");
        mac.update($data);
        mac.finalize().into_bytes().to_vec()
    }};
}

impl Signer {
    /// The signature of `payload` rendered with `values`.
    pub fn sign(&self, values: &Values) -> String {
        let payload = values.substitute(&self.payload, None);
        let (key, data) = (self.secret.as_bytes(), payload.as_bytes());
        let mac = match self.algorithm {
            SignAlgorithm::HmacSha256 => hmac!(Sha256, key, data),
            SignAlgorithm::HmacSha512 => hmac!(Sha512, key, data),
        };
        match self.encoding {
            SignEncoding::Hex => hex(&mac),
            SignEncoding::Base64 => B64.encode(mac),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The placeholder values of one rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// 16 random bytes, hex.
    pub nonce: String,
}

impl Values {
    /// The current time and a new nonce.
    pub fn fresh() -> Self {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            timestamp_ms,
            nonce: hex(&rand::random::<[u8; 16]>()),
        }
    }

    fn substitute(&self, text: &str, signature: Option<&str>) -> String {
        if !text.contains("{{") {
            return text.to_string();
        }
        let mut out = text
            .replace("{{timestamp_ms}}", &self.timestamp_ms.to_string())
            .replace("{{timestamp_s}}", &(self.timestamp_ms / 1000).to_string())
            .replace("{{nonce}}", &self.nonce);
        if let Some(sig) = signature {
            out = out.replace("{{signature}}", sig);
        }
        out
    }
}

/// Renders auth message templates: one set of [`Values`] (and one signature) per call.
pub(crate) fn render(templates: &[Message], signer: Option<&Signer>) -> Vec<Message> {
    let values = Values::fresh();
    let signature = signer.map(|s| s.sign(&values));
    templates
        .iter()
        .map(|m| match m.as_text() {
            Some(t) if t.contains("{{") => {
                Message::from(values.substitute(t, signature.as_deref()))
            }
            _ => m.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            timestamp_ms: 1_700_000_000_123,
            nonce: "ab".repeat(16),
        }
    }

    #[test]
    fn known_hmac_vectors() {
        // RFC 4231 test case 2.
        let s = Signer {
            algorithm: SignAlgorithm::HmacSha256,
            secret: "Jefe".into(),
            payload: "what do ya want for nothing?".into(),
            encoding: SignEncoding::Hex,
        };
        assert_eq!(
            s.sign(&values()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let s = Signer {
            algorithm: SignAlgorithm::HmacSha512,
            encoding: SignEncoding::Base64,
            ..s
        };
        assert_eq!(
            s.sign(&values()),
            "Fkt6e/z4GeLjlfvnO1bgo4e9ZCIugx/WECcM1+olBVSXWL91wFqZSm0DT2X48Ob9yuqxo01Ka0tjbgcKOLznNw=="
        );
    }

    #[test]
    fn placeholders_in_json_and_in_a_json_string() {
        let v = values();
        let text = r#"{"op":"login","ts":"{{timestamp_ms}}","s":{{timestamp_s}},"n":"{{nonce}}","sig":"{{signature}}"}"#;
        let out = v.substitute(text, Some("SIG"));
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["ts"], "1700000000123");
        assert_eq!(json["s"], 1_700_000_000);
        assert_eq!(json["n"], "ab".repeat(16));
        assert_eq!(json["sig"], "SIG");
        assert_eq!(
            v.substitute(r#""auth {{timestamp_s}}""#, None),
            r#""auth 1700000000""#
        );
    }

    #[test]
    fn every_render_is_fresh_and_the_secret_is_not_printed() {
        let s = Signer {
            algorithm: SignAlgorithm::HmacSha256,
            secret: "s3cr3t".into(),
            payload: "{{nonce}}".into(),
            encoding: SignEncoding::Hex,
        };
        let t = [Message::from("{{nonce}} {{signature}}")];
        let (a, b) = (render(&t, Some(&s)), render(&t, Some(&s)));
        assert_ne!(a, b);
        let text = a[0].as_text().unwrap();
        let (nonce, sig) = text.split_once(' ').unwrap();
        let v = Values {
            timestamp_ms: 0,
            nonce: nonce.into(),
        };
        assert_eq!(s.sign(&v), sig);
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
