//! Outbound HTTP/1.1 requests to one configured URL, plain or TLS (the platform's roots, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, as the upstream client trusts them): the JWKS fetch
//! and the event webhook. A connection per request: both are rare (a key set every few
//! minutes, a batch of events), so a pool would buy nothing worth its states.

use std::sync::Arc;

use axum::body::Body;
use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wsgate_core::seams::upstream::redact_url;

/// Checks that `url` is `http://` or `https://` with a host; `setting` names it in errors.
pub fn check_url(url: &str, setting: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{setting} `{}`: {e}", redact_url(url)))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => anyhow::bail!(
            "{setting} `{}` must be an http:// or https:// URL",
            redact_url(url)
        ),
    }
}

/// One URL to send requests to.
pub struct Endpoint {
    uri: Uri,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Endpoint {
    pub fn new(url: &str, setting: &str) -> anyhow::Result<Self> {
        let uri = check_url(url, setting)?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(wsgate_client::TlsOptions::default().client_config()?),
            _ => None,
        };
        Ok(Self { uri, tls })
    }

    /// The URL without credentials, for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(&self.uri.to_string())
    }

    /// A request to the URL's path with `Host` set; the caller adds the rest.
    pub fn request(&self, method: hyper::Method) -> hyper::http::request::Builder {
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
            .unwrap_or_default()
            .to_string();
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "wsgate")
    }

    /// Connects (TCP, then TLS for `https`) and sends `req`. Unbounded: callers time out.
    pub async fn send(
        &self,
        req: hyper::Request<Body>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await?;
        match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(host.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                exchange(stream, req).await
            }
            None => exchange(tcp, req).await,
        }
    }
}

async fn exchange<S>(
    stream: S,
    req: hyper::Request<Body>,
) -> anyhow::Result<hyper::Response<Incoming>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}
