//! The whole cluster from any node, with real `redis-server` and `wsgate serve` processes:
//! cluster-wide listings (and the nodes that did not answer), one connection's view, sends
//! and disconnects reaching another node's client, `Store unavailable` while Redis is down,
//! and a node that stops a connection whose record was wiped under it.

use wsgate_tests as support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::cluster::{Cluster, Node, Via, poll};
use support::{Client, WAIT};
use wsgate_client::test_support::{TestServer as Upstream, TestServerConfig as UpstreamConfig};

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// Connects an upstream through `node`; returns its id.
async fn connect(node: &Node, up: &Upstream) -> String {
    let body = json!({
        "url": up.url(),
        "reconnect": {"initial_ms": 5, "max_ms": 50, "max_attempts": null, "jitter": 0.0},
    });
    let (status, r) = node.post("/api/v1/upstreams", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "connected", "{r}");
    r["connection_id"].as_str().unwrap().to_string()
}

/// `(id, node)` of every entry of a listing answer.
fn entries(body: &Value) -> Vec<(String, String)> {
    body["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("node"))
        })
        .collect()
}

#[tokio::test]
async fn any_node_lists_views_sends_and_disconnects_across_the_cluster() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;
    let mut on_a = Client::connect(&a.ws_url()).await;
    let on_b = Client::connect(&b.ws_url()).await;
    let upstream = connect(&a, &up).await;
    let want: BTreeSet<(String, String)> = [
        (on_a.id(), "node-a".to_string()),
        (on_b.id(), "node-b".to_string()),
        (upstream.clone(), "node-a".to_string()),
    ]
    .into();

    // Every node lists every node's connections, each naming its node, sorted by id.
    for node in [&a, &b] {
        let (status, body) = node.get("/connections").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["total"].clone(), body["partial"].clone()),
            (json!(3), json!(false))
        );
        assert_eq!(body["missing_nodes"], json!([]));
        let got = entries(&body);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    }
    // Paging walks the merged order; filters apply on every node; scope=node is local.
    let mut walked = Vec::new();
    let mut offset = Some(0);
    while let Some(o) = offset {
        let (_, body) = b.get(&format!("/connections?limit=1&offset={o}")).await;
        assert_eq!(body["total"], 3, "{body}");
        walked.extend(entries(&body));
        offset = body["next_offset"].as_u64();
    }
    assert_eq!(walked.into_iter().collect::<BTreeSet<_>>(), want);
    let (_, body) = b.get("/connections?kind=upstream").await;
    assert_eq!(entries(&body), [(upstream.clone(), "node-a".to_string())]);
    let (_, body) = b.get(&format!("/connections?user={}", on_a.user())).await;
    assert_eq!(entries(&body), [(on_a.id(), "node-a".to_string())]);
    let (_, body) = b.get("/connections?scope=node").await;
    assert_eq!(entries(&body), [(on_b.id(), "node-b".to_string())]);
    let (status, body) = b.get("/connections?scope=galaxy").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("scope is cluster or node"))
    );

    // One connection of another node: a client, an upstream (forwarded, not 409).
    let (status, body) = b.get(&format!("/connections/{}", on_a.id())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["node"], "node-a");
    let (status, body) = b.get(&format!("/api/v1/upstreams/{upstream}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["upstream"]["id"].clone(),
            body["upstream"]["node"].clone()
        ),
        (json!(upstream), json!("node-a"))
    );
    let (status, body) = b.get(&format!("/connections/{upstream}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["state"], "connected");

    // Send and disconnect reach a client of another node; unknown ids stay not found.
    let (status, body) = b
        .post(
            &format!("/api/v1/connections/{}/send", on_a.id()),
            json!({"data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        on_a.recv().await,
        json!({"op": "message", "data": {"n": 1}})
    );
    let (status, body) = b
        .delete(&format!("/api/v1/connections/{}?reason=ops", on_a.id()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(on_a.closed().await.0, 4003);
    for unknown in [
        "0123456789abcdef-node-a",
        "0123456789abcdef-node-z",
        "nonsense",
    ] {
        let (status, body) = b.delete(&format!("/api/v1/connections/{unknown}")).await;
        assert_eq!(status, 404, "{unknown}: {body}");
        assert_eq!(
            body,
            json!({"success": false, "error": "Connection not found"})
        );
    }
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_named_not_dropped() {
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &[]).await;
    let b = cluster.node("node-b", &[]).await;
    let _on_a = Client::connect(&a.ws_url()).await;
    let _on_b = Client::connect(&b.ws_url()).await;
    a.0.signal(SIGSTOP);
    let (status, body) = b.get("/connections").await;
    a.0.signal(SIGCONT);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["partial"], true, "{body}");
    assert_eq!(body["missing_nodes"], json!(["node-a"]));
    assert_eq!(body["total"], 1, "{body}");
    // Once it answers again, the listing is whole.
    poll("a whole listing", WAIT, || async {
        let (_, body) = b.get("/connections").await;
        (body["partial"] == false && body["total"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn store_down_is_503_store_unavailable_never_not_found() {
    let mut cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &[]).await;
    let _b = cluster.node("node-b", &[]).await;
    cluster.redis.kill().await;
    let unavailable = json!({"success": false, "error": "Store unavailable"});
    let (status, body) = a.get("/api/v1/upstreams/0123456789abcdef-node-b").await;
    assert_eq!((status, body), (503, unavailable.clone()));
    let (status, body) = a.get("/connections/0123456789abcdef-node-b").await;
    assert_eq!((status, body), (503, unavailable.clone()));
    let (status, body) = a
        .delete("/api/v1/connections/0123456789abcdef-node-b")
        .await;
    assert_eq!((status, body), (503, unavailable.clone()));
    let (status, body) = a
        .post(
            "/api/v1/upstreams/0123456789abcdef-node-b/send",
            json!({"message": "x"}),
        )
        .await;
    assert_eq!((status, body), (503, unavailable.clone()));
    let (status, body) = a.get("/connections").await;
    assert_eq!((status, body), (503, unavailable));
    // This node's own view needs no store.
    let (status, _) = a.get("/connections?scope=node").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn wiped_records_stop_their_connections_on_the_owner() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let cluster = Cluster::start(Via::Redis).await;
    let a = cluster.node("node-a", &[]).await;
    let id = connect(&a, &up).await;
    up.wait_for(WAIT, |l| l.active == 1).await.unwrap();

    // Wiped under the running node (what CLEAR_ALL_ON_START on another node does).
    let record = format!("{}:websocket-{id}", cluster.prefix);
    let index = format!("{}:websocket-index", cluster.prefix);
    cluster.redis.cli(&["DEL", &record, &index]).await;
    up.wait_for(WAIT, |l| l.active == 0)
        .await
        .expect("the wiped connection was closed");
    poll("the connection gone from the node", WAIT, || async {
        let (status, _) = a.get(&format!("/api/v1/upstreams/{id}")).await;
        (status == 404).then_some(())
    })
    .await;
    // Not re-created by a late state write, not re-established.
    assert_eq!(cluster.redis.cli(&["EXISTS", &record]).await.trim(), "0");
    assert_eq!(up.log().handshakes, 1);

    // Another node starting with CLEAR_ALL_ON_START wipes the cluster's records: the
    // running owner stops its connection too.
    let second = Upstream::start(UpstreamConfig::default()).await;
    let id = connect(&a, &second).await;
    second.wait_for(WAIT, |l| l.active == 1).await.unwrap();
    let _b = cluster
        .node_env("node-b", &[], &[("CLEAR_ALL_ON_START", "TRUE")])
        .await;
    second
        .wait_for(WAIT, |l| l.active == 0)
        .await
        .expect("the connection wiped by CLEAR_ALL_ON_START was closed");
    let (status, _) = a.get(&format!("/api/v1/upstreams/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(second.log().handshakes, 1);
}
