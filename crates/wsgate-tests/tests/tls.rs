//! TLS on the listener: `wss://` and the HTTPS control API on one port, with a self-signed
//! certificate generated here (rcgen), and a certificate reload that new connections see
//! while old ones keep working.

use wsgate_tests as support;

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

struct Cert {
    der: CertificateDer<'static>,
}

/// A fresh self-signed certificate for `localhost`, written to `dir/cert.pem`, `dir/key.pem`.
fn write_cert(dir: &Path) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Cert {
        der: ck.cert.der().clone(),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn connector(trusted: &Cert) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(srv: &TestServer, trusted: &Cert) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(srv.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(trusted).connect(name, tcp).await
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

async fn wss(srv: &TestServer, trusted: &Cert) -> Wss {
    let tls = within("TLS handshake", tls_connect(srv, trusted))
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    let (mut ws, _) = within("upgrade", tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade");
    let hello = recv(&mut ws).await;
    assert_eq!(hello["op"], "hello", "{hello}");
    ws
}

async fn recv(ws: &mut Wss) -> Value {
    within("a frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
}

async fn request(ws: &mut Wss, v: Value) -> Value {
    within("send", ws.send(Message::Text(v.to_string().into())))
        .await
        .unwrap();
    recv(ws).await
}

/// `POST path` over HTTPS (HTTP/1.1, `Connection: close`): status and JSON body.
async fn https_post(srv: &TestServer, trusted: &Cert, path: &str, body: Value) -> (u16, Value) {
    within("HTTPS request", async {
        let mut tls = tls_connect(srv, trusted).await.expect("TLS handshake");
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        // A peer that closes without close_notify ends in an error after the data.
        let _ = tls.read_to_end(&mut resp).await;
        let text = String::from_utf8(resp).unwrap();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response: {text:?}"));
        let (_, json) = text.split_once("\r\n\r\n").expect("headers end");
        (status, serde_json::from_str(json).expect("JSON body"))
    })
    .await
}

/// A node serving TLS with a fresh certificate in its own temporary directory `name`: the
/// directory (where `cert.pem` and `key.pem` are reloaded from), the certificate to trust,
/// the node.
async fn tls_node(name: &str) -> (std::path::PathBuf, Cert, TestServer) {
    let dir = temp_dir(name);
    let trusted = write_cert(&dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let srv = TestServer::with(move |c| {
        c.listener.tls_cert_file = Some(cert);
        c.listener.tls_key_file = Some(key);
    })
    .await;
    (dir, trusted, srv)
}

/// A `wss://` client trusting `trusted`, subscribed to `channel`.
async fn wss_subscribed(srv: &TestServer, trusted: &Cert, channel: &str) -> Wss {
    let mut ws = wss(srv, trusted).await;
    let sub = request(&mut ws, json!({"op":"subscribe","channel":channel})).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");
    ws
}

#[tokio::test]
async fn wss_subscribe_and_https_publish() {
    let (dir, cert, srv) = tls_node("basic").await;

    let mut ws = wss_subscribed(&srv, &cert, "secure").await;

    let (status, body) = https_post(
        &srv,
        &cert,
        "/api/v1/publish",
        json!({"channel":"secure","data":{"text":"hi"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    let m = recv(&mut ws).await;
    assert_eq!(
        m,
        json!({"op":"message","channel":"secure","offset":1,"data":{"text":"hi"}})
    );

    // A burst goes through the backlog and the TLS write half, in order, with the
    // connection's own answers interleaved correctly.
    for i in 2..=300u64 {
        let (status, _) = https_post_quiet(&srv, i).await;
        assert_eq!(status, 200);
    }
    for i in 2..=300u64 {
        let m = recv(&mut ws).await;
        assert_eq!(m["offset"], i, "{m}");
        assert_eq!(m["data"], i, "{m}");
    }
    let pong = request(&mut ws, json!({"op":"ping","ts":7})).await;
    assert_eq!(pong, json!({"op":"pong","ts":7}));

    // A WebSocket ping is answered (tungstenite's pong goes through the TLS writer).
    within("ping", ws.send(Message::Ping(b"abc".to_vec().into())))
        .await
        .unwrap();
    let pong = within("pong", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"abc");

    // Plain HTTP on the TLS port gets no answer a client could mistake for one.
    let plain = support::http()
        .get(format!("http://{}/health", srv.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    within("close", ws.close(None)).await.unwrap();
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `i` straight through the node (the HTTPS path is covered above).
async fn https_post_quiet(srv: &TestServer, i: u64) -> (u16, ()) {
    let r = srv
        .node
        .gateway()
        .publish("secure", bytes::Bytes::from(i.to_string()), None, None)
        .await;
    (if r.is_ok() { 200 } else { 500 }, ())
}

#[tokio::test]
async fn certificate_reload_keeps_connections() {
    let (dir, old, srv) = tls_node("reload").await;

    let mut ws = wss_subscribed(&srv, &old, "rot").await;

    let new = write_cert(&dir);
    assert!(srv.node.reload_tls().unwrap(), "TLS is configured");

    // New handshakes present the new certificate: a client trusting only the old one fails.
    let refused = within("handshake with the old root", tls_connect(&srv, &old)).await;
    assert!(refused.is_err(), "the old certificate is still served");
    let mut fresh = wss_subscribed(&srv, &new, "rot").await;

    // Both the old connection and the new one receive what is published.
    let (status, body) = https_post(
        &srv,
        &new,
        "/api/v1/publish",
        json!({"channel":"rot","data":"after reload"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 2);
    assert_eq!(recv(&mut ws).await["data"], "after reload");
    assert_eq!(recv(&mut fresh).await["data"], "after reload");

    // A broken file leaves the current certificate in place.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    assert!(srv.node.reload_tls().is_err());
    let mut again = wss(&srv, &new).await;
    let pong = request(&mut again, json!({"op":"ping","ts":1})).await;
    assert_eq!(pong["op"], "pong");

    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
