//! Connection lifecycles that involve time, pressure or process signals.

use wsgate_tests as support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Waits for a closed client's close answer long enough for it to read its backlog first.
fn patient_close(c: &mut wsgate_server::Config) {
    c.ws.close_grace_ms = 5_000;
}

#[tokio::test]
async fn heartbeat_closes_silent_clients_and_keeps_live_ones() {
    let srv = TestServer::with(|c| {
        tune::heartbeat(c, 40, 300);
        patient_close(c);
    })
    .await;
    // Never reads after hello: it cannot answer pings.
    let mut silent = Client::connect(&srv.ws_url()).await;
    // Reads all the time: tungstenite answers every ping with a pong.
    let mut reader = Client::connect(&srv.ws_url()).await;
    let reader_id = reader.id();
    let reading = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(m)) = reader.ws.next().await {
            match m {
                Message::Ping(_) => pings += 1,
                Message::Close(f) => panic!("live reader closed: {f:?}"),
                _ => {}
            }
        }
        pings
    });
    // Sends an application ping every 40 ms and reads the pongs.
    let mut pinger = Client::connect(&srv.ws_url()).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let pinging = tokio::spawn(async move {
        let mut pongs = 0;
        loop {
            assert_eq!(pinger.request(json!({"op":"ping"})).await["op"], "pong");
            pongs += 1;
            tokio::select! {
                _ = &mut stopped => return pongs,
                _ = tokio::time::sleep(Duration::from_millis(40)) => {}
            }
        }
    });

    srv.await_metric("websocket_heartbeat_failures_total", 1.0)
        .await;
    // Outlive the timeout once more, then check who is still there.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = stop.send(());
    assert!(within("pinger", pinging).await.unwrap() > 5);
    let (code, _) = silent.closed().await;
    assert_eq!(code, 4008);
    let (_, info) = srv.get(&format!("/connections/{reader_id}")).await;
    assert_eq!(
        info["connection"]["state"], "open",
        "a reading client survives"
    );
    srv.await_metric(
        "websocket_disconnections_total{reason=\"heartbeat_timeout\"}",
        1.0,
    )
    .await;
    let m = srv.metrics().await;
    assert_eq!(
        metric_value(&m, "websocket_heartbeat_failures_total"),
        Some(1.0),
        "only the silent one"
    );
    reading.abort();
    srv.shutdown().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_while_fast_ones_get_everything() {
    let srv = TestServer::with(|c| {
        c.ws.outbox_capacity = 8;
        patient_close(c);
    })
    .await;
    let mut slow = Client::subscribed(&srv.ws_url(), "firehose").await;
    let mut fast = Client::subscribed(&srv.ws_url(), "firehose").await;

    // The publisher tells the reader the total once it is done.
    let (tx, mut published) = tokio::sync::watch::channel(None::<u64>);
    let fast_reader = tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            if let Some(total) = *published.borrow_and_update()
                && next > total
            {
                return next - 1;
            }
            tokio::select! {
                m = fast.recv() => {
                    assert_eq!(m["offset"], next, "the fast consumer misses nothing");
                    next += 1;
                }
                _ = published.changed() => {}
            }
        }
    });

    let payload = "x".repeat(16 * 1024);
    let client = http();
    let mut sent = 0u64;
    // Publish until the slow client is dropped, with a hard bound.
    while sent < 4000 {
        let r = client
            .post(srv.http("/api/v1/publish"))
            .json(&json!({"channel":"firehose","data":payload}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sent += 1;
        if sent.is_multiple_of(50)
            && metric_value(&srv.metrics().await, "websocket_slow_consumers_total") == Some(1.0)
        {
            break;
        }
    }
    // A few more after the close, to show the fast one keeps receiving.
    for _ in 0..20 {
        srv.post(
            "/api/v1/publish",
            json!({"channel":"firehose","data":"after"}),
        )
        .await;
        sent += 1;
    }
    tx.send(Some(sent)).unwrap();
    let got = within("fast consumer", fast_reader).await.unwrap();
    assert_eq!(got, sent, "fast consumer received all {sent}");

    let (code, texts) = slow.closed().await;
    assert_eq!(code, 4029);
    assert!((texts.len() as u64) < sent, "the slow one got a prefix");
    for (i, m) in texts.iter().enumerate() {
        assert_eq!(
            m["offset"],
            i as u64 + 1,
            "no hole in what the slow consumer got"
        );
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn sigterm_drains_with_1001_and_refuses_new_clients() {
    let p = Process::spawn(&["--drain-timeout-ms", "5000"]).await;
    let url = format!("ws://{}/ws", p.addr);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&url).await;
        readers.push(tokio::spawn(async move { c.closed().await.0 }));
    }
    // One client that never reads keeps the drain open for the close grace period.
    let _stuck = Client::connect(&url).await;
    p.signal(SIGTERM);
    for r in readers {
        assert_eq!(within("1001", r).await.unwrap(), 1001);
    }
    let ready = http()
        .get(format!("http://{}/ready", p.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "/ready is false while draining");
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("new upgrade during drain must be refused, got {other:?}"),
    }
    let mut child = p.child;
    let status = within("process exit", child.wait()).await.unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}

#[tokio::test]
async fn python_websockets_client_interoperates() {
    let srv = TestServer::start().await;
    let script = r#"
import asyncio, json, sys
import websockets

async def main(url):
    async with websockets.connect(url) as ws:
        hello = json.loads(await ws.recv())
        assert hello["op"] == "hello", hello
        await ws.send(json.dumps({"op": "subscribe", "channel": "py"}))
        sub = json.loads(await ws.recv())
        assert sub["op"] == "subscribed", sub
        print("READY", flush=True)
        msg = json.loads(await ws.recv())
        print(json.dumps(msg), flush=True)
        await ws.send(json.dumps({"op": "ping", "ts": 7}))
        print(json.dumps(json.loads(await ws.recv())), flush=True)

asyncio.run(main(sys.argv[1]))
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script, &srv.ws_url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 (with `pip install websockets`; .ci/run installs it)");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = within("python client", lines.next_line()).await.unwrap();
    assert_eq!(
        ready.as_deref(),
        Some("READY"),
        "python websockets is installed and connected"
    );
    srv.post(
        "/api/v1/publish",
        json!({"channel":"py","data":{"from":"rust"}}),
    )
    .await;
    let msg: serde_json::Value =
        serde_json::from_str(&within("message", lines.next_line()).await.unwrap().unwrap())
            .unwrap();
    assert_eq!(
        msg,
        json!({"op":"message","channel":"py","offset":1,"data":{"from":"rust"}})
    );
    let pong: serde_json::Value =
        serde_json::from_str(&within("pong", lines.next_line()).await.unwrap().unwrap()).unwrap();
    assert_eq!(pong, json!({"op":"pong","ts":7}));
    assert!(within("python exit", child.wait()).await.unwrap().success());
    srv.shutdown().await;
}
