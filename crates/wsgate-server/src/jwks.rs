//! Fetching a JWKS (`auth.jwks_url`) over HTTP/1.1, plain or TLS (the platform's roots, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, as the upstream client trusts them). The cache and its
//! rate bound are the core's ([`wsgate_core::auth::Jwks`]); this only moves bytes.

use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use wsgate_core::auth::{JwkSet, JwksSource};

use crate::outbound::Endpoint;

/// A fetch (connect, TLS, request, body) takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set is small; anything larger is refused.
const MAX_BODY: usize = 1 << 20;

/// Checks `auth.jwks_url` at start: `http://` or `https://` with a host.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    crate::outbound::check_url(url, "auth.jwks_url").map(drop)
}

pub struct HttpJwks {
    endpoint: Endpoint,
}

impl HttpJwks {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::new(url, "auth.jwks_url")?,
        })
    }

    async fn get(&self) -> anyhow::Result<JwkSet> {
        let req = self
            .endpoint
            .request(hyper::Method::GET)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Body::empty())?;
        let res = self.endpoint.send(req).await?;
        if !res.status().is_success() {
            anyhow::bail!("HTTP {}", res.status());
        }
        let body = axum::body::to_bytes(Body::new(res.into_body()), MAX_BODY).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<JwkSet, String> {
        let url = self.endpoint.redacted();
        match tokio::time::timeout(FETCH_TIMEOUT, self.get()).await {
            Ok(Ok(set)) => Ok(set),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: no answer within {FETCH_TIMEOUT:?}")),
        }
    }
}
