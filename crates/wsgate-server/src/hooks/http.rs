//! The proxy hooks over HTTP: one JSON POST per event, answered with JSON.
//!
//! One `reqwest` client (one connection pool) for every hook. Each attempt is bounded by
//! the hook's `timeout_ms`; connect, subscribe and refresh get `retries` more attempts after
//! a timeout, a 5xx or a refused connection. A 2xx whose body is not the contract
//! (`{"result":…}` or `{"error":…}`) is not retried: the backend said something, wrongly.

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use wsgate_core::hooks::{
    ConnectReply, ConnectRequest, Failure, Hook, HookError, Hooks, PublishReply, PublishRequest,
    RefreshReply, RefreshRequest, Reply, RpcReply, RpcRequest, SubscribeReply, SubscribeRequest,
    parse,
};

use super::config::{HookEndpoint, HooksConfig};

/// An answer bigger than this is refused as malformed: hooks carry small JSON.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One configured hook, ready to send.
struct Endpoint {
    url: reqwest::Url,
    headers: HeaderMap,
    config: HookEndpoint,
}

/// [`Hooks`] over HTTP.
pub struct HttpHooks {
    client: reqwest::Client,
    endpoints: [Option<Endpoint>; 5],
}

fn slot(hook: Hook) -> usize {
    Hook::ALL.iter().position(|h| *h == hook).unwrap_or(0)
}

/// The rustls client configuration of the hooks (HTTP/1.1: one request per pooled
/// connection at a time, as the plain-HTTP hooks speak).
fn tls_config() -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    let mut config = (*wsgate_client::TlsOptions::default().client_config()?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpHooks {
    /// The hooks of a validated configuration ([`HooksConfig::validate`]).
    pub fn new(config: &HooksConfig) -> anyhow::Result<Self> {
        let endpoint = |hook: Hook| -> anyhow::Result<Option<Endpoint>> {
            let Some(ep) = config.endpoint(hook) else {
                return Ok(None);
            };
            let mut headers = HeaderMap::new();
            for (k, v) in &ep.headers {
                headers.insert(HeaderName::try_from(k.as_str())?, HeaderValue::try_from(v)?);
            }
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(Some(Endpoint {
                url: reqwest::Url::parse(&ep.url)?,
                headers,
                config: ep.clone(),
            }))
        };
        Ok(Self {
            client: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                // https backends are trusted as every outbound connection's are: the
                // platform's roots, or SSL_CERT_FILE / SSL_CERT_DIR.
                .use_preconfigured_tls(tls_config()?)
                .build()?,
            endpoints: [
                endpoint(Hook::Connect)?,
                endpoint(Hook::Subscribe)?,
                endpoint(Hook::Publish)?,
                endpoint(Hook::Rpc)?,
                endpoint(Hook::Refresh)?,
            ],
        })
    }

    async fn call<Req: Serialize + Sync, T: Reply>(
        &self,
        hook: Hook,
        req: &Req,
    ) -> Result<T, HookError> {
        let ep = self.endpoints[slot(hook)]
            .as_ref()
            .ok_or_else(|| Failure::Down(format!("no {} hook configured", hook.name())))?;
        let body = serde_json::to_vec(req).map_err(|e| Failure::Malformed(e.to_string()))?;
        let mut failure = Failure::Timeout;
        for _ in 0..ep.config.attempts(hook) {
            match self.attempt(ep, &body).await {
                Ok(answer) => return parse(hook, &answer),
                Err(f) if retryable(&f) => failure = f,
                Err(f) => return Err(f.into()),
            }
        }
        Err(failure.into())
    }

    /// One POST: the answer's body on a 2xx, else why not.
    async fn attempt(&self, ep: &Endpoint, body: &[u8]) -> Result<bytes::Bytes, Failure> {
        let sent = self
            .client
            .post(ep.url.clone())
            .headers(ep.headers.clone())
            .timeout(ep.config.timeout())
            .body(body.to_vec())
            .send()
            .await
            .map_err(failure)?;
        let status = sent.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        if sent
            .content_length()
            .is_some_and(|n| n as usize > MAX_ANSWER_BYTES)
        {
            return Err(Failure::Malformed("answer too large".into()));
        }
        let answer = sent.bytes().await.map_err(failure)?;
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(Failure::Malformed("answer too large".into()));
        }
        Ok(answer)
    }
}

/// Whether another attempt may get an answer: no answer at all, or a server error.
fn retryable(f: &Failure) -> bool {
    match f {
        Failure::Timeout | Failure::Down(_) => true,
        Failure::Status(code) => *code >= 500,
        Failure::Malformed(_) => false,
    }
}

fn failure(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Down(e.to_string())
    }
}

#[async_trait]
impl Hooks for HttpHooks {
    fn configured(&self, hook: Hook) -> bool {
        self.endpoints[slot(hook)].is_some()
    }

    async fn connect(&self, req: &ConnectRequest) -> Result<ConnectReply, HookError> {
        self.call(Hook::Connect, req).await
    }

    async fn subscribe(&self, req: &SubscribeRequest) -> Result<SubscribeReply, HookError> {
        self.call(Hook::Subscribe, req).await
    }

    async fn publish(&self, req: &PublishRequest) -> Result<PublishReply, HookError> {
        self.call(Hook::Publish, req).await
    }

    async fn rpc(&self, req: &RpcRequest) -> Result<RpcReply, HookError> {
        self.call(Hook::Rpc, req).await
    }

    async fn refresh(&self, req: &RefreshRequest) -> Result<RefreshReply, HookError> {
        self.call(Hook::Refresh, req).await
    }
}
