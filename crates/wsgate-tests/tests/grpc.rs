//! The gRPC control API end to end: a real node in process, a real tonic client generated
//! from the same proto, real WebSocket clients and the `wsgate-client` test-support server
//! as the remote upstream; once with Python `grpcio` (a client we did not write).

use wsgate_tests as support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tonic::transport::Channel;
use wsgate_client::Message;
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};
use wsgate_grpc::client::*;

type Grpc = WsGateClient<Channel>;

async fn channel(srv: &TestServer) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(srv.grpc_url()).unwrap();
    within("gRPC connect", endpoint.connect())
        .await
        .expect("gRPC channel")
}

async fn grpc(srv: &TestServer) -> Grpc {
    WsGateClient::new(channel(srv).await)
}

/// Bounded unary call, unwrapped (the API answers application errors with status OK).
macro_rules! call {
    ($c:expr, $method:ident, $req:expr) => {
        within(stringify!($method), $c.$method($req))
            .await
            .unwrap_or_else(|s| panic!("{} failed with status {s:?}", stringify!($method)))
            .into_inner()
    };
}

/// [`call!`] whose reply must say `success` (else the test fails with the reply's error).
macro_rules! call_ok {
    ($c:expr, $method:ident, $req:expr) => {{
        let r = call!($c, $method, $req);
        assert!(r.success, "{}", r.error);
        r
    }};
}

/// Asserts that a reply failed with exactly `expected` as its error.
#[track_caller]
fn assert_failed(success: bool, error: &str, expected: &str) {
    assert_eq!((success, error), (false, expected));
}

fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_ms: 2,
        max_ms: 20,
        max_attempts: None,
        jitter: 0.0,
        min_stable_ms: None,
    }
}

fn upstream_of(c: Option<Connection>) -> UpstreamConnection {
    match c.and_then(|c| c.kind) {
        Some(connection::Kind::Upstream(u)) => u,
        other => panic!("expected an upstream connection, got {other:?}"),
    }
}

fn gateway_of(c: Option<Connection>) -> GatewayConnection {
    match c.and_then(|c| c.kind) {
        Some(connection::Kind::Gateway(g)) => g,
        other => panic!("expected a gateway connection, got {other:?}"),
    }
}

async fn await_state(c: &mut Grpc, id: &str, state: &str) -> UpstreamConnection {
    within(&format!("upstream {id} {state}"), async {
        loop {
            let r = call_ok!(
                c,
                get_connection,
                GetConnectionRequest {
                    connection_id: id.into()
                }
            );
            let u = upstream_of(r.connection);
            if u.state == state {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn gateway_operations() {
    let srv = TestServer::start().await;
    let mut c = grpc(&srv).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    a.subscribe("news").await;

    // Publish reaches the subscriber, with its offset.
    let r = call_ok!(
        c,
        publish,
        PublishRequest {
            channel: "news".into(),
            data: r#"{"headline":"grpc"}"#.into(),
            exclude_user: None,
            // Socket.IO clients get it as this event; /ws clients the usual message frame.
            event: Some("headline".into()),
            ..Default::default()
        }
    );
    assert_eq!((r.channel.as_str(), r.offset, r.delivered), ("news", 1, 1));
    assert!(!r.epoch.is_empty());
    assert_eq!(
        a.recv().await,
        json!({"op":"message","channel":"news","offset":1,"data":{"headline":"grpc"}})
    );

    // SendToUser and SendToConnection reach only their target.
    let r = call_ok!(
        c,
        send_to_user,
        SendToUserRequest {
            user: b.user(),
            data: r#"{"to":"user"}"#.into(),
        }
    );
    assert_eq!(r.delivered, 1);
    assert_eq!(b.recv().await["data"], json!({"to":"user"}));
    let r = call!(
        c,
        send_to_connection,
        SendToConnectionRequest {
            connection_id: a.id(),
            data: "[1,2]".into(),
        }
    );
    assert!(r.success && r.delivered == 1, "{r:?}");
    assert_eq!(a.recv().await["data"], json!([1, 2]));
    // b got nothing in between: its next frame is the next thing sent to it.
    call!(
        c,
        send_to_connection,
        SendToConnectionRequest {
            connection_id: b.id(),
            data: "\"marker\"".into(),
        }
    );
    assert_eq!(b.recv().await["data"], "marker");

    // Presence.
    let p = call_ok!(
        c,
        presence,
        PresenceRequest {
            channel: "news".into()
        }
    );
    assert_eq!((p.connections, p.users.clone()), (1, vec![a.user()]));

    // Errors: the HTTP API's strings, success=false, status OK.
    let r = call!(
        c,
        send_to_connection,
        SendToConnectionRequest {
            connection_id: "nope".into(),
            data: "1".into(),
        }
    );
    assert_failed(r.success, &r.error, "Connection not found");
    let r = call!(
        c,
        publish,
        PublishRequest {
            channel: String::new(),
            data: "1".into(),
            exclude_user: None,
            event: None,
            ..Default::default()
        }
    );
    assert!(!r.success);
    assert!(r.error.starts_with("channel names are 1 to"), "{}", r.error);
    let r = call!(
        c,
        publish,
        PublishRequest {
            channel: "news".into(),
            data: "not json".into(),
            exclude_user: None,
            event: None,
            ..Default::default()
        }
    );
    assert!(!r.success);
    assert!(
        r.error.starts_with("data is not one JSON value"),
        "{}",
        r.error
    );
    let r = call!(
        c,
        disconnect_client,
        DisconnectClientRequest {
            connection_id: "nope".into(),
            reason: None,
        }
    );
    assert_eq!(r.error, "Connection not found");

    // DisconnectClient closes the socket.
    call_ok!(
        c,
        disconnect_client,
        DisconnectClientRequest {
            connection_id: b.id(),
            reason: Some("bye".into()),
        }
    );
    let (code, _) = b.closed().await;
    assert_ne!(code, 1001, "closed by the API, not by shutdown");
    srv.shutdown().await;
}

#[tokio::test]
async fn upstream_operations_and_connection_views() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let srv = TestServer::start().await;
    let mut c = grpc(&srv).await;

    let r = call_ok!(
        c,
        connect,
        ConnectRequest {
            url: format!("{}?apikey=q5ecret", up.url()),
            headers: [("x-api-key".to_string(), "h5ecret".to_string())].into(),
            subscriptions: vec![Subscription {
                key: "trades".into(),
                message: r#"{"op":"subscribe","ch":"trades"}"#.into(),
                unsubscribe: None,
            }],
            reconnect: Some(fast_reconnect()),
            correlation: CorrelationMode::JsonField as i32,
            ..Default::default()
        }
    );
    assert_eq!(r.state, "connected");
    let id = r.connection_id;

    // Send and SendRaw reach the upstream.
    call_ok!(
        c,
        send,
        SendRequest {
            connection_id: id.clone(),
            message: "hello upstream".into(),
        }
    );
    call_ok!(
        c,
        send_raw,
        SendRawRequest {
            connection_id: id.clone(),
            data: vec![0, 1, 2, 255],
        }
    );
    let log = up.wait_for(WAIT, |l| l.received.len() >= 3).await.unwrap();
    let frames: Vec<&Message> = log.received.iter().map(|r| &r.msg).collect();
    assert_eq!(
        frames[0].as_text(),
        Some(r#"{"op":"subscribe","ch":"trades"}"#)
    );
    assert_eq!(frames[1].as_text(), Some("hello upstream"));
    assert_eq!(
        *frames[2],
        Message::Binary(bytes::Bytes::from_static(&[0, 1, 2, 255]))
    );

    // SendAsync: the correlated reply comes back as text.
    let r = call_ok!(
        c,
        send_async,
        SendAsyncRequest {
            connection_id: id.clone(),
            request: Some(send_async_request::Request::Message(
                r#"{"op":"request","id":"q1","n":5}"#.into()
            )),
            timeout_ms: Some(5_000),
        }
    );
    let Some(send_async_reply::Response::Text(text)) = r.response else {
        panic!("expected a text reply: {:?}", r.response);
    };
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["op"], "response");
    assert_eq!(reply["id"], "q1");
    assert_eq!(reply["echo"]["n"], 5);

    // StartPublish: a gateway client on topic:<name> receives the upstream's broadcast.
    let mut browser = Client::subscribed(&srv.ws_url(), "topic:btc").await;
    let r = call_ok!(
        c,
        start_publish,
        StartPublishRequest {
            connection_id: id.clone(),
            topic: "btc".into(),
        }
    );
    assert_eq!((r.topic.as_str(), r.channel.as_str()), ("btc", "topic:btc"));
    up.broadcast(Message::from(r#"{"price":42}"#.to_string()));
    let m = browser.recv().await;
    assert_eq!(m["channel"], "topic:btc");
    assert_eq!(m["data"], json!({"price":42}));

    // The debug views of both kinds.
    let u = await_state(&mut c, &id, "connected").await;
    assert_eq!(u.id, id);
    assert_eq!(u.url, up.url().trim_end_matches('/').to_string() + "/");
    assert!(!u.url.contains("q5ecret"), "query string hidden: {}", u.url);
    assert_eq!(u.headers, vec!["x-api-key".to_string()]);
    assert_eq!(u.subscriptions, vec!["trades".to_string()]);
    assert_eq!(u.publish_topic.as_deref(), Some("btc"));
    assert_eq!(u.correlation, "json-field");
    assert_eq!(u.node, "test-node");
    assert!(u.messages_sent >= 4, "{u:?}");
    assert!(u.published >= 1, "{u:?}");
    let g = gateway_of(
        call!(
            c,
            get_connection,
            GetConnectionRequest {
                connection_id: browser.id()
            }
        )
        .connection,
    );
    assert_eq!(g.id, browser.id());
    assert_eq!(g.user, browser.user());
    assert_eq!(g.channels, vec!["topic:btc".to_string()]);
    assert_eq!((g.state.as_str(), g.node.as_str()), ("open", "test-node"));
    assert_eq!(g.messages_received, 1, "the subscribe: {g:?}");
    assert!(
        g.messages_sent >= 1 && g.bytes_sent > 0,
        "the publication: {g:?}"
    );

    // ListConnections shows both kinds, sorted by id; filters as GET /connections.
    let l = call_ok!(c, list_connections, ListConnectionsRequest::default());
    assert_eq!(l.total, 2);
    let mut ids: Vec<String> = l
        .connections
        .iter()
        .map(|c| match &c.kind {
            Some(connection::Kind::Gateway(g)) => format!("gateway:{}", g.id),
            Some(connection::Kind::Upstream(u)) => format!("upstream:{}", u.id),
            None => panic!("connection without kind"),
        })
        .collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort_by_key(|k| k.split_once(':').unwrap().1.to_string());
        s
    };
    assert_eq!(ids, sorted, "sorted by id");
    ids.sort();
    assert_eq!(
        ids,
        vec![
            format!("gateway:{}", browser.id()),
            format!("upstream:{id}")
        ]
    );
    let l = call!(
        c,
        list_connections,
        ListConnectionsRequest {
            kind: "upstream".into(),
            ..Default::default()
        }
    );
    assert_eq!(l.total, 1);
    assert!(!l.partial && l.missing_nodes.is_empty());
    upstream_of(l.connections.into_iter().next());
    let l = call!(
        c,
        list_connections,
        ListConnectionsRequest {
            kind: "upstream".into(),
            scope: "node".into(),
            ..Default::default()
        }
    );
    assert_eq!(l.total, 1);
    let l = call!(
        c,
        list_connections,
        ListConnectionsRequest {
            scope: "galaxy".into(),
            ..Default::default()
        }
    );
    assert_eq!(
        (l.success, l.error.as_str()),
        (false, "scope is cluster or node")
    );
    let l = call!(
        c,
        list_connections,
        ListConnectionsRequest {
            kind: "pigeon".into(),
            ..Default::default()
        }
    );
    assert_failed(l.success, &l.error, "kind is gateway, socketio or upstream");

    // StopPublish, then Disconnect; afterwards the id is unknown.
    call_ok!(
        c,
        stop_publish,
        StopPublishRequest {
            connection_id: id.clone()
        }
    );
    let u = upstream_of(
        call!(
            c,
            get_connection,
            GetConnectionRequest {
                connection_id: id.clone()
            }
        )
        .connection,
    );
    assert_eq!(u.publish_topic, None);
    call_ok!(
        c,
        disconnect,
        DisconnectRequest {
            connection_id: id.clone()
        }
    );
    up.wait_for(WAIT, |l| l.client_closes >= 1 && l.active == 0)
        .await
        .unwrap();
    let r = call!(
        c,
        send,
        SendRequest {
            connection_id: id.clone(),
            message: "x".into(),
        }
    );
    assert_failed(r.success, &r.error, "Connection not found");
    srv.shutdown().await;
}

#[tokio::test]
async fn seed_000_errors() {
    let srv = TestServer::start().await;
    let mut c = grpc(&srv).await;
    let nf = "Connection not found";
    let id = || "0123456789abcdef-nowhere".to_string();

    // Unknown id: every operation says so.
    let errors = vec![
        call!(
            c,
            send,
            SendRequest {
                connection_id: id(),
                message: "x".into()
            }
        )
        .error,
        call!(
            c,
            send_raw,
            SendRawRequest {
                connection_id: id(),
                data: vec![1]
            }
        )
        .error,
        call!(
            c,
            send_async,
            SendAsyncRequest {
                connection_id: id(),
                request: Some(send_async_request::Request::Message("x".into())),
                timeout_ms: None
            }
        )
        .error,
        call!(
            c,
            update_subscriptions,
            UpdateSubscriptionsRequest {
                connection_id: id(),
                add: vec![],
                remove: vec!["k".into()]
            }
        )
        .error,
        call!(
            c,
            start_publish,
            StartPublishRequest {
                connection_id: id(),
                topic: "t".into()
            }
        )
        .error,
        call!(
            c,
            stop_publish,
            StopPublishRequest {
                connection_id: id()
            }
        )
        .error,
        call!(
            c,
            disconnect,
            DisconnectRequest {
                connection_id: id()
            }
        )
        .error,
        call!(
            c,
            get_connection,
            GetConnectionRequest {
                connection_id: id()
            }
        )
        .error,
    ];
    assert_eq!(errors, vec![nf; 8]);

    // Held by another node.
    let rec = srv.put_foreign_upstream().await;
    let r = call!(
        c,
        send,
        SendRequest {
            connection_id: rec.id.clone(),
            message: "x".into()
        }
    );
    assert_failed(
        r.success,
        &r.error,
        "Connection owned by different instance: other-node",
    );

    // Request timeout: an upstream that never answers UUID-prefixed requests.
    let quiet = Upstream::start(UpstreamConfig::default()).await;
    let r = call_ok!(
        c,
        connect,
        ConnectRequest {
            url: quiet.url(),
            correlation: CorrelationMode::UuidPrefix as i32,
            ..Default::default()
        }
    );
    let r = call!(
        c,
        send_async,
        SendAsyncRequest {
            connection_id: r.connection_id,
            request: Some(send_async_request::Request::Data(vec![7; 4])),
            timeout_ms: Some(100),
        }
    );
    assert_failed(r.success, &r.error, "Request timeout");

    // Not connected: the socket dropped, reconnect far away.
    let up = Upstream::start(UpstreamConfig::default()).await;
    let r = call_ok!(
        c,
        connect,
        ConnectRequest {
            url: up.url(),
            reconnect: Some(ReconnectPolicy {
                initial_ms: 60_000,
                max_ms: 60_000,
                max_attempts: None,
                jitter: 0.0,
                min_stable_ms: None,
            }),
            ..Default::default()
        }
    );
    let down = r.connection_id;
    up.drop_all();
    await_state(&mut c, &down, "reconnecting").await;
    let r = call!(
        c,
        send,
        SendRequest {
            connection_id: down.clone(),
            message: "x".into()
        }
    );
    assert_failed(r.success, &r.error, "WebSocket is not connected");
    let r = call!(
        c,
        send_raw,
        SendRawRequest {
            connection_id: down,
            data: vec![1]
        }
    );
    assert_eq!(r.error, "WebSocket is not connected");

    // Malformed requests: success=false with the reason, never a gRPC error status.
    let r = call!(c, connect, ConnectRequest::default());
    assert!(!r.success && !r.error.is_empty(), "empty url: {r:?}");
    let r = call!(
        c,
        send_async,
        SendAsyncRequest {
            connection_id: id(),
            request: Some(send_async_request::Request::Message("x".into())),
            timeout_ms: Some(0),
        }
    );
    assert_eq!(r.error, "timeout_ms must be between 1 and 300000");
    srv.shutdown().await;
}

#[tokio::test]
async fn health_reflection_and_api_key() {
    let srv = TestServer::with(|c| tune::api_key(c, "k3y")).await;
    let channel = channel(&srv).await;

    // Health: SERVING for the server and the service, without the API key.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(channel.clone());
    for service in ["", wsgate_grpc::SERVICE_NAME] {
        let r = within(
            "health",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }

    // Reflection lists the service.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = within(
        "reflection",
        refl.server_reflection_info(futures_util::stream::iter(vec![req])),
    )
    .await
    .unwrap()
    .into_inner();
    let resp = within("reflection answer", stream.message())
        .await
        .unwrap()
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("expected a service list: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"wsgate.v1.WsGate".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // The API needs the key: UNAUTHENTICATED without it, answers with it.
    let mut c = WsGateClient::new(channel.clone());
    let presence = || PresenceRequest {
        channel: "x".into(),
    };
    let err = within("unauthenticated", c.presence(presence()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(presence());
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let err = within("wrong key", c.presence(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(presence());
    req.metadata_mut()
        .insert("authorization", "Bearer k3y".parse().unwrap());
    let r = within("with key", c.presence(req))
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.error);
    srv.shutdown().await;
}

/// Authorization is the control façade's, so gRPC and HTTP share the API limits: failed
/// authentications counted per address across both, RESOURCE_EXHAUSTED over the limit on
/// gRPC, 429 on HTTP (even with the right key: the address is blocked before the compare).
#[tokio::test]
async fn grpc_shares_the_api_rate_limit() {
    let srv = TestServer::with(|c| {
        tune::api_auth_failures(c, 1, 2);
        tune::api_key(c, "k3y");
    })
    .await;
    let mut c = grpc(&srv).await;
    let presence = |key: &str| {
        let mut req = tonic::Request::new(PresenceRequest {
            channel: "x".into(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    };
    // The right key is not limited.
    for _ in 0..5 {
        let r = within("presence", c.presence(presence("k3y"))).await;
        assert!(r.is_ok(), "{r:?}");
    }
    let mut codes = Vec::new();
    for i in 0..4 {
        let r = within("presence", c.presence(presence(&format!("guess-{i}")))).await;
        codes.push(r.map_or_else(|s| s.code(), |_| tonic::Code::Ok));
    }
    assert_eq!(
        &codes[..2],
        &[tonic::Code::Unauthenticated, tonic::Code::Unauthenticated],
        "{codes:?}"
    );
    assert!(codes.contains(&tonic::Code::ResourceExhausted), "{codes:?}");
    let status = within(
        "http after grpc",
        http()
            .get(srv.http("/connections"))
            .bearer_auth("k3y")
            .send(),
    )
    .await
    .unwrap()
    .status();
    assert_eq!(status, 429);
    srv.await_metric("wsgate_api_rejections_total{reason=\"rate_limited\"}", 2.0)
        .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn disabled_grpc_binds_nothing() {
    let srv = TestServer::with(|c| c.grpc.grpc_enabled = false).await;
    assert!(srv.grpc_addr.is_none());
    let (status, _) = srv.get("/ready").await;
    assert_eq!(status, 200);
    srv.shutdown().await;
}

/// A client we did not write: Python `grpcio`, stubs generated now by `grpc_tools.protoc`
/// from the repository's proto (`.ci/run` installs `grpcio` and `grpcio-tools`).
#[tokio::test]
async fn python_grpcio_client() {
    let srv = TestServer::start().await;
    let mut ws = Client::subscribed(&srv.ws_url(), "py").await;

    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("grpc-py-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    python_protoc(&proto, "wsgate/v1/wsgate.proto", &out).await;

    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[2])
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wsgate.v1 import wsgate_pb2 as pb, wsgate_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    grpc.channel_ready_future(ch).result(timeout=10)
    h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="wsgate.v1.WsGate"), timeout=10)
    stub = rpc.WsGateStub(ch)
    p = stub.Publish(pb.PublishRequest(channel="py", data='{"from":"python"}'), timeout=10)
    s = stub.Send(pb.SendRequest(connection_id="nope", message="x"), timeout=10)
    print(json.dumps({
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(h.status),
        "publish": {"success": p.success, "channel": p.channel, "offset": p.offset, "delivered": p.delivered},
        "send": {"success": s.success, "error": s.error},
    }), flush=True)
"#;
    // grpcio's health stubs ship in `grpcio-health-checking`; generate them too if absent.
    let health_proto = out.join("grpc_health/v1");
    std::fs::create_dir_all(&health_proto).unwrap();
    std::fs::write(health_proto.join("health.proto"), HEALTH_PROTO).unwrap();
    python_protoc(&out, "grpc_health/v1/health.proto", &out).await;

    let run = within(
        "python grpcio client",
        tokio::process::Command::new("python3")
            .args(["-c", script])
            .arg(srv.grpc_addr.unwrap().to_string())
            .arg(&out)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        got,
        json!({
            "health": "SERVING",
            "publish": {"success": true, "channel": "py", "offset": 1, "delivered": 1},
            "send": {"success": false, "error": "Connection not found"},
        })
    );
    assert_eq!(
        ws.recv().await,
        json!({"op":"message","channel":"py","offset":1,"data":{"from":"python"}})
    );
    let _ = std::fs::remove_dir_all(&out);
    srv.shutdown().await;
}

/// Generates the Python messages and gRPC stubs of `proto` (relative to `include`) into `out`
/// with `grpc_tools.protoc`.
async fn python_protoc(include: &std::path::Path, proto: &str, out: &std::path::Path) {
    let generated = within(
        "grpc_tools.protoc",
        tokio::process::Command::new("python3")
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", include.display()))
            .arg(format!("--python_out={}", out.display()))
            .arg(format!("--grpc_python_out={}", out.display()))
            .arg(proto)
            .output(),
    )
    .await
    .expect("python3 (with `pip install grpcio grpcio-tools`; .ci/run installs them)");
    assert!(
        generated.status.success(),
        "protoc via grpc_tools ({proto}): {}",
        String::from_utf8_lossy(&generated.stderr)
    );
}

/// The standard `grpc.health.v1` proto (from the gRPC health checking protocol).
const HEALTH_PROTO: &str = r#"
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"#;
