//! Supervised background tasks (`wsgate_core::tasks`): when one ends, `/ready` turns 503
//! and the node stops with an error naming it (the binary exits 1 with it), never "ready" while it no longer does its
//! job. Its own test binary: the record of a failed task is process-wide.

use wsgate_tests as support;

use support::{TestServer, eventually, http};

async fn ready_status(server: &TestServer) -> u16 {
    http()
        .get(server.http("/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_background_task_that_ends_stops_the_node() {
    let server = TestServer::start().await;
    eventually("/ready 200", || async {
        (ready_status(&server).await == 200).then_some(())
    })
    .await;
    assert_eq!(wsgate_core::tasks::failure(), None);

    // What a broker subscription or the lease renewal would do if its loop ever ended.
    wsgate_core::tasks::supervised("injected task", async {
        panic!("injected failure");
    });
    // 503 while it stops, then nothing listens (0): never 200 again.
    eventually("/ready no longer 200", || async {
        matches!(ready_status(&server).await, 503 | 0).then_some(())
    })
    .await;
    let err = server
        .stopped()
        .await
        .expect_err("the node stops with an error");
    assert!(err.to_string().contains("injected task"), "{err}");
    assert_eq!(wsgate_core::tasks::failure(), Some("injected task"));
}
