//! `wsgate bench --soak-cycles N`: does the server give back what each connection took?
//!
//! Each cycle connects `--connections` subscribers, publishes for one second, drops every
//! client, and waits until the server reports no active connection. After a warm-up cycle
//! (allocator pools and runtime structures reach their steady size), the server's RSS and
//! open file descriptors must come back to the same level every cycle. The run fails (exit 1)
//! when descriptors grow at all beyond a small slack or RSS grows by more than 10 %.

use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

use super::{BenchArgs, Target, clients, procfs, progress, spawn_server};

/// Descriptors that may come and go between readings (the metrics request itself, logs).
const FD_SLACK: usize = 8;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (child, addr) = spawn_server(Target::Wsgate, 4096).await?;
    let pid = child.id().context("server pid")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let metrics_url = format!("http://{addr}/metrics");
    let mut rows: Vec<(usize, u64, usize)> = Vec::new();
    let cycles = progress::bar(args.soak_cycles as u64 + 1, "soak cycles");
    let quiet = ProgressBar::hidden();
    for cycle in 0..=args.soak_cycles {
        let fleet = clients::Fleet::connect(
            super::Protocol::Ws,
            &format!("ws://{addr}/ws"),
            args.connections,
            0,
            args.ramp(),
            &quiet,
        )
        .await?;
        let published = clients::publish(
            &format!("http://{addr}/api/v1/publish"),
            args.rate,
            Duration::from_secs(1),
            args.payload,
            &quiet,
        )
        .await?;
        let expected = published * args.connections as u64;
        let delivered = fleet.wait_for(expected, Duration::from_secs(30)).await;
        anyhow::ensure!(
            delivered == expected,
            "cycle {cycle}: delivered {delivered} of {expected}"
        );
        fleet.stop().await;
        wait_for_no_connections(&http, &metrics_url).await?;
        let rss = procfs::rss_kib(pid)?;
        let fds = procfs::fd_count(pid)?;
        cycles.suspend(|| eprintln!("   cycle {cycle}: RSS {rss} KiB, {fds} descriptors"));
        cycles.inc(1);
        rows.push((cycle, rss, fds));
    }
    cycles.finish_and_clear();
    drop(child);
    // Cycle 0 is the warm-up.
    let (_, rss_start, fds_start) = rows.get(1).copied().context("need --soak-cycles >= 1")?;
    let (_, rss_end, fds_end) = *rows.last().context("no cycle")?;
    println!(
        "soak: {} cycles of {} connections; after warm-up RSS {} -> {} KiB, descriptors {} -> {}",
        args.soak_cycles, args.connections, rss_start, rss_end, fds_start, fds_end
    );
    anyhow::ensure!(
        fds_end <= fds_start + FD_SLACK,
        "file descriptors grew from {fds_start} to {fds_end}: a connection leaks its socket"
    );
    anyhow::ensure!(
        rss_end <= rss_start + rss_start / 10,
        "RSS grew from {rss_start} KiB to {rss_end} KiB (> 10 %): memory leaks per connection"
    );
    println!("soak: no growth");
    Ok(())
}

async fn wait_for_no_connections(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = http.get(url).send().await?.text().await?;
        let active = text
            .lines()
            .find_map(|l| l.strip_prefix("websocket_active_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if active == Some(0.0) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "connections still active 30 s after every client left: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
