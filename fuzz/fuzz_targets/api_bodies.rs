//! The HTTP control API's request bodies, through the real router: any body on any POST
//! route gets an answer (never a panic, never a 5xx from a parse).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: [&str; 6] = [
    "/api/v1/publish",
    "/api/v1/users/u/send",
    "/api/v1/connections/c/send",
    "/api/v1/upstreams",
    "/api/v1/upstreams/x/send",
    "/api/v1/upstreams/x/send-async",
];

fn node() -> &'static (tokio::runtime::Runtime, Arc<wsgate_server::Node>) {
    static NODE: OnceLock<(tokio::runtime::Runtime, Arc<wsgate_server::Node>)> = OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = wsgate_server::Config {
            api_rate: 0,
            ..Default::default()
        };
        let node = rt.block_on(async { wsgate_server::Node::new(config).unwrap() });
        (rt, node)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let (rt, node) = node();
    let path = ROUTES[route as usize % ROUTES.len()];
    let app = wsgate_server::http::router(node.clone());
    let req = Request::post(path)
        .header("content-type", "application/json")
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))))
        .body(Body::from(body.to_vec()))
        .unwrap();
    let status = rt.block_on(app.oneshot(req)).unwrap().status();
    assert!(
        !status.is_server_error() || status.as_u16() == 503 || status.as_u16() == 504,
        "{path}: {status}"
    );
});
