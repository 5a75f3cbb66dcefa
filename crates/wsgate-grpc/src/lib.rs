//! The wsgate control API over gRPC (`wsgate.v1.WsGate`, `proto/wsgate/v1/wsgate.proto`).
//!
//! The same operations and answers as the HTTP/JSON API, over the same
//! [`Control`](wsgate_core::control::Control) façade: every reply carries `success` and
//! `error`, and `error` is the façade's message, the HTTP API's string to the letter (seed
//! 000's `Connection not found`, `Connection owned by different instance: <id>`, `WebSocket
//! is not connected`, `Request timeout`). Application errors and malformed requests are
//! `success = false` replies with gRPC status OK, as seed 000 does; a non-OK status means the
//! call never reached the API: the façade's authorization refused it (UNAUTHENTICATED
//! without the node's API key, RESOURCE_EXHAUSTED over the API rate limit), or transport.
//!
//! [`serve`] runs the service with `grpc.health.v1` (its status follows a readiness
//! function, i.e. `/ready`) and server reflection (v1 and v1alpha) on one listener.
//! The code is generated at build time with protox: no system `protoc`.
//!
//! This crate knows nothing of the HTTP server: `wsgate-server` depends on it and starts it.

mod service;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::info;
use wsgate_core::control::{Caller, ControlError, ErrorCode};

pub use service::GrpcApi;

/// The generated `wsgate.v1` messages, server and client.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("wsgate.v1");

    /// The encoded file descriptor set of `wsgate.v1` (what reflection serves).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wsgate_descriptor");
}

/// What a Rust caller needs: the generated client and the messages.
pub mod client {
    pub use crate::pb::ws_gate_client::WsGateClient;
    pub use crate::pb::*;
}

/// The full name of the service, as health checks and reflection list it.
pub const SERVICE_NAME: &str = "wsgate.v1.WsGate";

/// How often the health status is brought in line with the readiness function.
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// Readiness, as `/ready` reports it.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Options of [`serve`].
#[derive(Clone)]
pub struct ServeOptions {
    /// Health reports SERVING for `""` and [`SERVICE_NAME`] while this returns true.
    pub ready: Ready,
}

/// Serves the API, health and reflection on `listener` until `shutdown` resolves, then
/// reports NOT_SERVING and stops gracefully (in-flight calls finish).
pub async fn serve(
    api: GrpcApi,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let addr = listener.local_addr().ok();
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("valid descriptors");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("valid descriptors");

    let set = |reporter: tonic_health::server::HealthReporter, status: ServingStatus| async move {
        reporter.set_service_status("", status).await;
        reporter.set_service_status(SERVICE_NAME, status).await;
    };
    let ready = options.ready.clone();
    let status_of = move || {
        if ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut current = status_of();
    set(reporter.clone(), current).await;
    let watcher = {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_POLL);
            loop {
                tick.tick().await;
                let now = status_of();
                if now != current {
                    current = now;
                    set(reporter.clone(), now).await;
                }
            }
        })
    };
    let watcher = watcher.abort_handle();
    let stop_watcher = watcher.clone();

    // Every `WsGate` call passes the façade's authorization (health and reflection do not):
    // `authorization: Bearer <api_key>` metadata when the node has a key, and the API rate
    // limit.
    let control = api.control();
    let svc =
        pb::ws_gate_server::WsGateServer::with_interceptor(api, move |req: tonic::Request<()>| {
            let key = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ip = req
                .remote_addr()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
            match control.authorize(Caller { key, ip }) {
                Ok(()) => Ok(req),
                Err(e) => Err(refusal(e)),
            }
        });
    info!(addr = ?addr, "wsgate gRPC listening");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.await;
            // Tell health watchers first, then stop taking calls.
            stop_watcher.abort();
            set(reporter, ServingStatus::NotServing).await;
        })
        .await;
    watcher.abort();
    info!("wsgate gRPC stopped");
    result
}

/// The status of a call the façade's authorization refused.
fn refusal(e: ControlError) -> tonic::Status {
    match e.code {
        ErrorCode::RateLimited { .. } => tonic::Status::resource_exhausted(e.message),
        _ => tonic::Status::unauthenticated(e.message),
    }
}
