//! Client authentication end to end, against the real `wsgate` program: `exp` required (and
//! the opt-out), `aud`/`iss`, RS256 keys from a JWKS served by the test, tokens that expire
//! on open connections (`token_expired`, the grace, `refresh`), `topic:*` closed to client
//! publishers, secrets kept out of the logs, and presence cleanup through a Redis outage.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::cluster::{Cluster, Via, free_port};
use wsgate_tests::*;

const SECRET: &str = "auth-test-secret";

/// A node whose clients authenticate with HS256 (`SECRET`), plus `extra` settings.
async fn jwt_node(extra: &[(&str, &str)]) -> Process {
    let mut envs = vec![
        ("WSGATE_AUTH__MODE", "jwt"),
        ("WSGATE_AUTH__JWT_SECRET", SECRET),
    ];
    envs.extend_from_slice(extra);
    Process::spawn_env(&[], &envs).await
}

fn ws(node: &Process, token: &str) -> String {
    format!("ws://{}/ws?token={token}", node.addr)
}

fn now_s() -> u64 {
    wsgate_core::clock::unix_ms() / 1000
}

/// A connection the server refuses after the upgrade: its close code and reason.
async fn refused(url: &str) -> (u16, String) {
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade");
    match within("close", ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => (f.code.into(), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_without_exp_is_refused_unless_require_exp_is_off() {
    let strict = jwt_node(&[]).await;
    let forever = hs256_token(SECRET, json!({"sub":"ann"}));
    let (code, reason) = refused(&ws(&strict, &forever)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4001, "invalid token: missing claim `exp`")
    );
    let mortal = hs256_token(SECRET, json!({"sub":"ann","exp":in_a_minute()}));
    assert_eq!(Client::connect(&ws(&strict, &mortal)).await.user(), "ann");

    // The opt-out: such a token is let in (and never expires).
    let lax = jwt_node(&[("WSGATE_AUTH__REQUIRE_EXP", "false")]).await;
    assert_eq!(Client::connect(&ws(&lax, &forever)).await.user(), "ann");
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let node = jwt_node(&[
        ("WSGATE_AUTH__AUDIENCE", "gate, gate-2"),
        ("WSGATE_AUTH__ISSUER", "https://idp.example"),
    ])
    .await;
    let token = |claims: Value| {
        let mut c = json!({"sub":"ann","exp":in_a_minute()});
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        hs256_token(SECRET, c)
    };
    let good = token(json!({"aud":"gate-2","iss":"https://idp.example"}));
    assert_eq!(Client::connect(&ws(&node, &good)).await.user(), "ann");
    for (claims, why) in [
        (
            json!({"aud":"other","iss":"https://idp.example"}),
            "InvalidAudience",
        ),
        (
            json!({"aud":"gate","iss":"https://evil.example"}),
            "InvalidIssuer",
        ),
        (json!({"iss":"https://idp.example"}), "missing claim `aud`"),
        (json!({"aud":"gate"}), "missing claim `iss`"),
    ] {
        let (code, reason) = refused(&ws(&node, &token(claims.clone()))).await;
        assert_eq!(code, 4001, "{claims}");
        assert!(reason.contains(why), "{claims}: {reason}");
    }
}

/// An HTTP server that answers every request with the current JWKS and counts them.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
}

/// The test key pair `x` (crates/wsgate-tests/fixtures/jwt): private PEM, public JWK.
fn key_pair(x: &str) -> (&'static str, Value) {
    let (pem, jwk) = match x {
        "a" => (
            include_str!("../fixtures/jwt/rsa-a.pem"),
            include_str!("../fixtures/jwt/rsa-a.jwk.json"),
        ),
        _ => (
            include_str!("../fixtures/jwt/rsa-b.pem"),
            include_str!("../fixtures/jwt/rsa-b.jwk.json"),
        ),
    };
    (pem, serde_json::from_str(jwk).unwrap())
}

impl JwksServer {
    async fn start() -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let (count, set) = (fetches.clone(), keys.clone());
        let addr = answering_with(move || {
            count.fetch_add(1, SeqCst);
            let body = json!({"keys": *set.lock().unwrap()}).to_string();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let url = format!("http://{addr}/.well-known/jwks.json");
        Self { url, fetches, keys }
    }

    /// Serves the public keys of these pairs from now on.
    fn serve(&self, pairs: &[&str]) {
        *self.keys.lock().unwrap() = pairs.iter().map(|x| key_pair(x).1).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(SeqCst)
    }
}

/// An RS256 token for `sub`, signed with pair `x`'s private key and naming `kid`.
fn rs256_token(x: &str, kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(key_pair(x).0.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &json!({"sub":sub,"exp":in_a_minute()}), &key).unwrap()
}

#[tokio::test]
async fn rs256_keys_come_from_a_jwks_fetched_again_for_an_unknown_kid_at_a_bounded_rate() {
    let jwks = JwksServer::start().await;
    jwks.serve(&["a"]);
    let node = Process::spawn_env(
        &[],
        &[
            ("WSGATE_AUTH__MODE", "jwt"),
            ("WSGATE_AUTH__JWKS_URL", &jwks.url),
            ("WSGATE_AUTH__JWKS_MIN_REFETCH_MS", "2000"),
        ],
    )
    .await;
    let a = rs256_token("a", "key-a", "ann");
    assert_eq!(Client::connect(&ws(&node, &a)).await.user(), "ann");
    assert_eq!(Client::connect(&ws(&node, &a)).await.user(), "ann");
    assert_eq!(jwks.fetches(), 1, "fetched once, then cached");
    // A token signed by another key under a known kid fails its signature.
    let forged = rs256_token("b", "key-a", "mallory");
    assert_eq!(refused(&ws(&node, &forged)).await.0, 4001);

    // Key rotation: `key-b` appears; its first tokens are refused until a refetch is due.
    jwks.serve(&["a", "b"]);
    let b = rs256_token("b", "key-b", "bob");
    eventually("a token of the new key to be accepted", || {
        let url = ws(&node, &b);
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) => t.contains("\"user\":\"bob\"").then_some(()),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(jwks.fetches(), 2, "one fetch brought key-b");

    // A flood of unknown kids: at most one fetch per interval (2 s).
    let started = Instant::now();
    for _ in 0..30 {
        let (code, reason) = refused(&ws(&node, &rs256_token("b", "key-x", "eve"))).await;
        assert_eq!(
            (code, reason.as_str()),
            (4001, "invalid token: unknown key id")
        );
    }
    let bound = 2 + 1 + (started.elapsed().as_millis() / 2000) as usize;
    assert!(
        jwks.fetches() <= bound,
        "{} fetches for 30 unknown kids in {:?}",
        jwks.fetches(),
        started.elapsed()
    );
}

#[tokio::test]
async fn an_expired_token_is_told_then_closed_after_the_grace_unless_refreshed() {
    let grace = Duration::from_millis(700);
    let node = jwt_node(&[("WSGATE_AUTH__TOKEN_GRACE_MS", "700")]).await;
    let exp = now_s() + 2;
    let mut keen = Client::connect(&ws(
        &node,
        &hs256_token(SECRET, json!({"sub":"bob","exp":exp})),
    ))
    .await;
    let mut late = Client::connect(&ws(
        &node,
        &hs256_token(SECRET, json!({"sub":"ann","exp":exp})),
    ))
    .await;
    for c in [&mut keen, &mut late] {
        let told = c.recv().await;
        assert_eq!(
            (&told["op"], &told["code"]),
            (&json!("error"), &json!("token_expired")),
            "{told}"
        );
    }
    // Another user's token does not count; the same user's does.
    let other = hs256_token(SECRET, json!({"sub":"eve","exp":now_s() + 3600}));
    let r = keen
        .request(json!({"op":"refresh","token":other,"id":1}))
        .await;
    assert_eq!(
        (&r["code"], &r["id"]),
        (&json!("forbidden"), &json!(1)),
        "{r}"
    );
    let fresh_exp = now_s() + 3600;
    let fresh = hs256_token(SECRET, json!({"sub":"bob","exp":fresh_exp}));
    let r = keen
        .request(json!({"op":"refresh","token":fresh,"id":2}))
        .await;
    assert_eq!(r, json!({"op":"refreshed","id":2,"exp":fresh_exp}));

    let (code, frames) = late.closed().await;
    assert_eq!((code, frames), (4001, vec![]));
    // Past the grace (an absence check, so it waits the grace once more): still open.
    tokio::time::sleep(grace).await;
    let pong = keen.request(json!({"op":"ping","id":3})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
}

#[tokio::test]
async fn clients_never_publish_into_topic_channels() {
    for mode in ["any", "subscribed"] {
        let node = Process::spawn_env(&[], &[("WSGATE_CLIENT_PUBLISH", mode)]).await;
        let mut c = Client::connect(&format!("ws://{}/ws", node.addr)).await;
        c.subscribe("topic:feed").await;
        c.subscribe("room").await;
        let r = c
            .request(json!({"op":"publish","channel":"topic:feed","data":{"fake":true}}))
            .await;
        assert_eq!(
            (&r["op"], &r["code"]),
            (&json!("error"), &json!("forbidden")),
            "{mode}: {r}"
        );
        // The answer and the subscriber's copy, in either order.
        let a = c
            .request(json!({"op":"publish","channel":"room","data":1}))
            .await;
        let b = c.recv().await;
        let mut ops = [a["op"].clone(), b["op"].clone()];
        ops.sort_by_key(|o| o.to_string());
        assert_eq!(ops, [json!("message"), json!("published")], "{mode}");
    }
}

#[tokio::test]
async fn logs_name_urls_and_tokens_without_their_secrets() {
    let node = jwt_node(&[]).await;
    let dead = free_port();
    let url = format!("ws://127.0.0.1:{dead}/feed?token=QUERY-SECRET");
    let (status, r) = post_json(
        &format!("http://{}/api/v1/upstreams", node.addr),
        json!({"url": url, "wait_ms": 0, "reconnect": {"initial_ms": 20, "max_ms": 50}}),
    )
    .await;
    assert!(status < 500, "{status} {r}");
    let (code, _) = refused(&ws(&node, "BEARER-SECRET.x.y")).await;
    assert_eq!(code, 4001);
    let shown = format!("ws://127.0.0.1:{dead}/feed");
    eventually("the client span and the refusal in the logs", || {
        let logs = node.logs();
        let done = logs.contains("wsgate_client")
            && logs.contains(&shown)
            && logs.contains("authentication failed");
        async move { done.then_some(()) }
    })
    .await;
    let logs = node.logs();
    for secret in ["QUERY-SECRET", "BEARER-SECRET", SECRET] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

#[tokio::test]
async fn a_closing_connection_frees_its_slot_at_once_and_leaves_no_ghost_through_a_redis_outage() {
    let mut cluster = Cluster::start(Via::Redis).await;
    let node = cluster
        .node_env(
            "n1",
            &[],
            &[
                ("WSGATE_MAX_CONNECTIONS_PER_IP", "1"),
                ("WSGATE_IP_CONNECT_RATE", "0"),
            ],
        )
        .await;
    let url = node.ws_url();
    let channels: Vec<String> = (0..20).map(|i| format!("room:{i}")).collect();
    let mut first = Client::connect(&url).await;
    for ch in &channels {
        first.subscribe(ch).await;
    }
    assert_eq!(node.presence("room:0").await["connections"], 1);

    // Redis stalls (every command waits for its 2 s timeout): the client leaves, and its
    // address may connect again at once, not after 20 presence removals.
    cluster.redis.pause(true);
    let left = Instant::now();
    first.ws.close(None).await.unwrap();
    let mut second = eventually_within("the slot to be free", Duration::from_millis(1500), || {
        let url = url.clone();
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("hello") => Some(ws),
                _ => None,
            }
        }
    })
    .await;
    eprintln!("slot free after {:?}", left.elapsed());
    cluster.redis.pause(false);
    second.close(None).await.unwrap();
    eventually("the stalled removals to land", || async {
        (node.presence("room:0").await["connections"] == 0).then_some(())
    })
    .await;

    // Redis goes away (keeping its data) while a subscriber leaves: the removal fails, and
    // once Redis is back the node retries it; no ghost stays.
    let failures = || node.0.logs().matches("presence leave failed").count();
    let before = failures();
    let mut third = Client::connect(&url).await;
    third.subscribe("room:x").await;
    cluster.redis.kill_keeping_data().await;
    third.ws.close(None).await.unwrap();
    eventually("the removal to fail while Redis is away", || {
        let failed = failures() > before;
        async move { failed.then_some(()) }
    })
    .await;
    cluster.redis.restart().await;
    eventually("the ghost to be removed", || async {
        (node.presence("room:x").await["connections"] == 0).then_some(())
    })
    .await;
}
