//! Fetching a JWKS (`auth.jwks_url`) over HTTP/1.1, plain or TLS (the platform's roots, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, as the upstream client trusts them). The cache and its
//! rate bound are the core's ([`wsgate_core::auth::Jwks`]); this only moves bytes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wsgate_core::auth::{JwkSet, JwksSource};
use wsgate_core::seams::upstream::redact_url;

/// A fetch (connect, TLS, request, body) takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set is small; anything larger is refused.
const MAX_BODY: usize = 1 << 20;

/// Checks `auth.jwks_url` at start: `http://` or `https://` with a host.
pub fn check_url(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("auth.jwks_url `{}`: {e}", redact_url(url)))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => anyhow::bail!(
            "auth.jwks_url `{}` must be an http:// or https:// URL",
            redact_url(url)
        ),
    }
}

pub struct HttpJwks {
    uri: Uri,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl HttpJwks {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let uri = check_url(url)?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(wsgate_client::TlsOptions::default().client_config()?),
            _ => None,
        };
        Ok(Self { uri, tls })
    }

    async fn get(&self) -> anyhow::Result<JwkSet> {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = self.tls.clone();
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await?;
        let body = match tls {
            Some(config) => {
                let name = ServerName::try_from(host.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                self.request(stream).await?
            }
            None => self.request(tcp).await?,
        };
        Ok(serde_json::from_slice(&body)?)
    }

    async fn request<S>(&self, stream: S) -> anyhow::Result<bytes::Bytes>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
            .unwrap_or_default()
            .to_string();
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "wsgate")
            .body(Body::empty())?;
        let res = sender.send_request(req).await?;
        if !res.status().is_success() {
            anyhow::bail!("HTTP {}", res.status());
        }
        Ok(axum::body::to_bytes(Body::new(res.into_body()), MAX_BODY).await?)
    }
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<JwkSet, String> {
        let url = redact_url(&self.uri.to_string());
        match tokio::time::timeout(FETCH_TIMEOUT, self.get()).await {
            Ok(Ok(set)) => Ok(set),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: no answer within {FETCH_TIMEOUT:?}")),
        }
    }
}
