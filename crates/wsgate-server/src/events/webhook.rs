//! The webhook sink: each batch is one `POST` of `{"events":[...]}` with an HMAC-SHA256
//! signature header, retried by the queue on a transport error, a timeout, 408, 429 or a
//! 5xx. Any other 4xx is the receiver saying no for good (a wrong secret, a gone route): the
//! batch is dropped and counted rather than holding every later event.
//!
//! The signature (docs/events.md shows how to check it):
//! `X-Wsgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. The
//! timestamp is signed with the body, so a receiver that refuses old timestamps refuses
//! replays; a retry signs again with a fresh one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wsgate_core::events::{Event, Sink, SinkError, batch_json};

use crate::outbound::Endpoint;
use crate::secret::Secret;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-wsgate-signature";

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

pub struct Webhook {
    endpoint: Endpoint,
    secret: Secret,
    timeout: Duration,
}

impl Webhook {
    pub fn new(url: &str, secret: Secret, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::new(url, "events.webhook_url")?,
            secret,
            timeout,
        })
    }

    async fn post(&self, body: String) -> Result<hyper::StatusCode, String> {
        let signed = signature(
            self.secret.expose().as_bytes(),
            wsgate_core::clock::unix_ms() / 1000,
            body.as_bytes(),
        );
        let req = self
            .endpoint
            .request(hyper::Method::POST)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signed)
            .body(Body::from(body))
            .map_err(|e| e.to_string())?;
        let res = self.endpoint.send(req).await.map_err(|e| e.to_string())?;
        Ok(res.status())
    }
}

#[async_trait]
impl Sink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Result<(), SinkError> {
        let url = self.endpoint.redacted();
        let status = match tokio::time::timeout(self.timeout, self.post(batch_json(batch))).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(SinkError::Retry(format!("{url}: {e}"))),
            Err(_) => {
                return Err(SinkError::Retry(format!(
                    "{url}: no answer within {:?}",
                    self.timeout
                )));
            }
        };
        let code = status.as_u16();
        match code {
            200..=299 => Ok(()),
            408 | 429 => Err(SinkError::Retry(format!("{url}: HTTP {code}"))),
            400..=499 => Err(SinkError::Rejected(format!("{url}: HTTP {code}"))),
            _ => Err(SinkError::Retry(format!("{url}: HTTP {code}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // What a receiver does: HMAC over "<t>.<body>", compared with v1.
        let s = signature(b"key", 0, b"The quick brown fox jumps over the lazy dog");
        assert!(s.starts_with("t=0,v1="), "{s}");
        assert_eq!(s.len(), "t=0,v1=".len() + 64);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"0.The quick brown fox jumps over the lazy dog");
        mac.verify_slice(&hex(&s["t=0,v1=".len()..])).unwrap();
        assert_ne!(signature(b"key", 1, b"x"), signature(b"key", 2, b"x"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
