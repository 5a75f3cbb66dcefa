//! The accept loop: HTTP/1.1 on plain TCP streams, with upgrades.
//!
//! wsgate serves its own listener instead of `axum::serve` because an upgraded WebSocket must
//! come back as the `TcpStream` it started as (`Upgraded::downcast`): the connection's socket is
//! then shared between its task and every publisher (see `ws::socket`). axum's server wraps
//! streams in a private type for HTTP/2 detection, which makes that impossible. The control API
//! needs nothing beyond HTTP/1.1; gRPC has its own port.
//!
//! With TLS configured, each connection first completes a rustls handshake (bounded by the
//! handshake timeout) and HTTP/1.1 is served over the `TlsStream`; upgrades then come back
//! as that stream instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Default of `listen`: loopback, so a laptop run is not reachable from the network.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// Default of `handshake_timeout_ms`: a real client sends its upgrade request within
/// milliseconds; 10 s forgives a slow mobile link and still cuts slowloris.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default of `max_header_size`: 16 KiB (tokens in a query string fit; hyper's floor is 8 KiB).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 16 * 1024;

/// The listener's settings; top-level keys of the node's config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerConfig {
    /// HTTP and WebSocket listener. Default [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// A connection that has not sent complete request headers within this is dropped
    /// (slowloris; a TCP connection that never upgrades); with TLS, the handshake too.
    /// Default [`DEFAULT_HANDSHAKE_TIMEOUT_MS`].
    pub handshake_timeout_ms: u64,
    /// Largest request head (request line + headers) in bytes; larger ones get 431.
    /// Default [`DEFAULT_MAX_HEADER_SIZE`].
    pub max_header_size: usize,
    /// PEM certificate chain for TLS on `listen` (HTTP API and WebSocket, same port). Set
    /// together with `tls_key_file`; reloaded on SIGHUP. Default none: plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ListenerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.handshake_timeout_ms == 0 {
            anyhow::bail!("handshake_timeout_ms must be positive");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            anyhow::bail!("tls_cert_file and tls_key_file must be set together");
        }
        Ok(())
    }

    /// Loads the certificate when TLS is configured.
    pub fn tls(&self) -> anyhow::Result<Option<Arc<crate::tls::TlsReloader>>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                Ok(Some(Arc::new(crate::tls::TlsReloader::load(cert, key)?)))
            }
            _ => Ok(None),
        }
    }

    /// How connections are served, with the counter of handshake timeouts.
    pub(crate) fn options(
        &self,
        tls: Option<Arc<crate::tls::TlsReloader>>,
        timeouts: prometheus_client::metrics::counter::Counter,
    ) -> Options {
        Options {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_header_size: self.max_header_size,
            timeouts,
            tls,
        }
    }
}

/// How HTTP connections are served (from [`ListenerConfig`]).
#[derive(Clone)]
pub struct Options {
    /// A client that opens TCP and never finishes its request headers is dropped after
    /// this (`handshake_timeout_ms`): it never upgrades, it only holds a descriptor.
    pub handshake_timeout: Duration,
    /// Largest request head hyper buffers (`max_header_size`); hyper answers 431 past it.
    pub max_header_size: usize,
    /// Counts connections dropped by the handshake timeout.
    pub timeouts: prometheus_client::metrics::counter::Counter,
    /// TLS on this listener; `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::TlsReloader>>,
}

/// Serves `app` on `listener` until `stop` turns true, then lets HTTP connections finish
/// their current request (bounded) and returns. Upgraded WebSockets are not waited for here:
/// their tasks belong to the node's drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: Options,
    mut stop: watch::Receiver<bool>,
) {
    let conns = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on a full descriptor table.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Frames are written whole; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        match &options.tls {
            None => {
                conns.spawn(connection(
                    tcp,
                    remote,
                    app.clone(),
                    options.clone(),
                    stop.clone(),
                ));
            }
            Some(tls) => {
                // The certificate current at accept time serves this connection for its life.
                let acceptor = tls.acceptor();
                let (app, options, mut stop) = (app.clone(), options.clone(), stop.clone());
                conns.spawn(async move {
                    let handshake =
                        tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        () = stopped(&mut stop) => return,
                        done = handshake => match done {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                options.timeouts.inc();
                                debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    connection(tls, remote, app, options, stop).await;
                });
            }
        }
    }
    conns.close();
    if tokio::time::timeout(Duration::from_secs(5), conns.wait())
        .await
        .is_err()
    {
        warn!("HTTP connections still open after shutdown; leaving them");
    }
}

async fn connection<I>(
    io: I,
    remote: SocketAddr,
    app: Router,
    options: Options,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.handshake_timeout)
        .max_buf_size(options.max_header_size.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                if e.is_timeout() {
                    options.timeouts.inc();
                }
                debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once `stop` is true (the guard `wait_for` returns is not `Send`; it ends here).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
