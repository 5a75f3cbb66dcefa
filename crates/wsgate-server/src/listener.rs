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
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How HTTP connections are served (from `Config`).
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
