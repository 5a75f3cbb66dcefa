//! 1,000 forced reconnects must not grow tasks or file descriptors.

mod support;

use support::*;
use wsgate_client::test_support::Resources;
use wsgate_client::{Auth, Backoff, Event, Heartbeat, Matcher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reconnects_leak_no_tasks_or_fds() {
    const N: u64 = 1_000;
    let server = TestServer::start(TestServerConfig::default().require_auth("secret")).await;
    let cfg = fast_config(server.url())
        .backoff(
            Backoff::new()
                .immediate_first_retry(true)
                .jitter(0.0)
                .max_attempts(Some(3)),
        )
        // Every drop here is forced right after the restore: counted as stable, so the
        // attempt limit applies per drop (flapping is `reconnect.rs`'s subject).
        .min_stable(std::time::Duration::ZERO)
        // Timers armed on every connection must be released with it.
        .heartbeat(Some(Heartbeat::default()))
        .auth(
            Auth::new()
                .send("secret")
                .expect(Matcher::contains("auth_ok")),
        );
    let (client, mut events) = connect(cfg).await;
    subscribe_all(&client, &["a", "b"]).await;
    server_wait(&server, |l| l.count_on(1) == 3).await;

    let before = Resources::now();

    for i in 0..N {
        server.drop_all();
        wait_event(&mut events, |e| *e == Event::Reconnected).await;
        // The server's side of the old connection is gone too before we go on.
        let conn = i + 2;
        server_wait(&server, |l| l.active == 1 && l.count_on(conn) == 3).await;
    }

    let log = server.log();
    assert_eq!(
        log.handshakes,
        N + 1,
        "one connection per drop, no duplicates"
    );
    assert_eq!(log.max_active, 1);
    assert_eq!(client.snapshot().reconnects, N);
    assert_eq!(log.texts_on(N + 1), vec!["secret", "sub a", "sub b"]);
    let after = Resources::now();
    assert_eq!(after.tasks, before.tasks, "task count grew");
    assert_eq!(after.fds, before.fds, "file descriptor count grew");
    client.close().await.unwrap();
}
