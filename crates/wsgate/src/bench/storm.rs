//! `wsgate bench --storm`: a reconnect storm against one node.
//!
//! 1. start `wsgate serve` on a fixed loopback port (found by binding port 0 once), without
//!    per-IP limits;
//! 2. connect `--connections` clients built with `wsgate-client` (backoff `--storm-initial-ms`
//!    doubling to `--storm-max-ms`, jitter `--storm-jitter` or `--no-jitter`, no attempt limit,
//!    no circuit breaker), each tracking the subscription to channel `bench`, so the library
//!    replays it after every reconnect;
//! 3. restart the node: SIGTERM (the node tells every client 1001 and refuses upgrades with 503
//!    while it drains), wait for it to exit, start it again on the same port (with
//!    `--storm-limit-rate R` the new node limits connects per IP, all clients share 127.0.0.1);
//! 4. from the moment the new node prints its address until every client has received the
//!    node's `subscribed` answer again: the storm. /proc is sampled every 100 ms for the new
//!    node's CPU and RSS; the node's `websocket_connection_rejections_total` (all reasons) and
//!    the clients' failed attempts (by cause) count what was refused;
//! 5. one publication after the storm must reach every client (the replayed subscription works).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use wsgate_client::{Backoff, BreakerConfig, Client, ClientConfig, Event};

use super::{BenchArgs, ServerOpts, Target, procfs, progress, spawn_server_with};

/// Clients spawned per batch while the fleet first connects (the listen backlog is finite).
const CONNECT_BATCH: usize = 1000;

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub connections: usize,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub jitter: f64,
    pub limit_rate_per_ip: u32,
    pub limit_burst_per_ip: u32,
    pub initial_connect_seconds: f64,
    /// SIGTERM until the old node exited (its drain).
    pub drain_seconds: f64,
    /// New node up until every client was resubscribed (or the timeout).
    pub resubscribed: usize,
    pub storm_seconds: f64,
    pub resubscribe_p50_ms: f64,
    pub resubscribe_p99_ms: f64,
    pub resubscribe_max_ms: f64,
    /// SIGTERM until every client was resubscribed.
    pub outage_seconds: f64,
    pub peak_cpu_percent: f64,
    pub server_cpu_seconds: f64,
    pub rss_before_kib: u64,
    pub peak_rss_kib: u64,
    /// `websocket_connection_rejections_total` of the new node, by reason.
    pub server_rejections: BTreeMap<String, f64>,
    pub server_rejections_total: f64,
    /// Connect attempts that failed, counted by the clients (old node draining, node down,
    /// limiter), by cause.
    pub client_failed_attempts: BTreeMap<String, u64>,
    pub client_failed_attempts_total: u64,
    /// Clients that received the publication sent after the storm.
    pub delivered_after: usize,
}

/// What the clients' event tasks record.
struct Shared {
    /// Set just before SIGTERM: from then on events belong to the storm.
    storm: AtomicBool,
    /// `subscribed` answers received in total (first connect and after the restart).
    subscribed: AtomicUsize,
    /// Clients resubscribed after the restart, and when (since `t0`).
    resubscribed_at: Mutex<Vec<Instant>>,
    resubscribed: AtomicUsize,
    /// Connect attempts failed during the storm, by cause.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Clients that received the check publication.
    delivered: AtomicUsize,
    lost: AtomicU64,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let jitter = if args.no_jitter {
        0.0
    } else {
        args.storm_jitter
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    eprintln!(
        "== storm: {} clients, backoff {} ms -> {} ms, jitter {jitter}, limit {} /s per IP, port {port}",
        args.connections, args.storm_initial_ms, args.storm_max_ms, args.storm_limit_rate
    );
    let opts = ServerOpts {
        listen: Some(listen.clone()),
        drain_timeout_ms: Some(5_000),
        ..ServerOpts::default()
    };
    let (mut child, addr) = spawn_server_with(Target::Wsgate, 4096, &opts).await?;
    let old_pid = child.id().context("server pid")?;

    let shared = Arc::new(Shared {
        storm: AtomicBool::new(false),
        subscribed: AtomicUsize::new(0),
        resubscribed_at: Mutex::new(Vec::with_capacity(args.connections)),
        resubscribed: AtomicUsize::new(0),
        failures: Mutex::new(BTreeMap::new()),
        delivered: AtomicUsize::new(0),
        lost: AtomicU64::new(0),
    });
    let backoff = Backoff::new()
        .initial_delay(Duration::from_millis(args.storm_initial_ms))
        .max_delay(Duration::from_millis(args.storm_max_ms))
        .jitter(jitter)
        .max_attempts(None);
    let url = format!("ws://{addr}/ws");

    // Initial fleet, in batches, each batch fully subscribed before the next.
    let started = Instant::now();
    let mut clients = Vec::with_capacity(args.connections);
    let deadline = Instant::now() + Duration::from_secs(args.storm_timeout);
    let subscribing = progress::bar(args.connections as u64, "subscribing");
    for i in 0..args.connections {
        let config = ClientConfig::new(url.clone())
            .id(format!("storm-{i}"))
            .backoff(backoff.clone())
            .breaker(BreakerConfig::disabled())
            .heartbeat(None)
            .read_buffer_size(4096)
            .event_capacity(16)
            .connect_timeout(Duration::from_secs(10));
        let (client, events) = Client::spawn(config);
        client
            .subscribe(wsgate_client::Subscription::new(
                "bench",
                r#"{"op":"subscribe","channel":"bench"}"#,
            ))
            .await
            .context("subscribe")?;
        tokio::spawn(watch_events(events, shared.clone()));
        clients.push(client);
        if (i + 1) % CONNECT_BATCH == 0 || i + 1 == args.connections {
            while shared.subscribed.load(Relaxed) < i + 1 {
                subscribing.set_position(shared.subscribed.load(Relaxed) as u64);
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} of {} clients subscribed before the timeout",
                    shared.subscribed.load(Relaxed),
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    subscribing.finish_and_clear();
    let initial_connect_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "   {} clients subscribed in {initial_connect_seconds:.1}s",
        args.connections
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = procfs::rss_kib(old_pid)?;

    // Restart.
    shared.storm.store(true, Relaxed);
    let t0 = Instant::now();
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe {
        libc::kill(old_pid as i32, libc::SIGTERM);
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("old server did not exit")??;
    let drain_seconds = t0.elapsed().as_secs_f64();
    let opts = ServerOpts {
        listen: Some(listen),
        ip_connect_rate: args.storm_limit_rate,
        ip_connect_burst: (args.storm_limit_rate > 0).then_some(args.storm_limit_burst),
        drain_timeout_ms: Some(5_000),
        ..ServerOpts::default()
    };
    let (child, _) = spawn_server_with(Target::Wsgate, 4096, &opts).await?;
    let t_up = Instant::now();
    let pid = child.id().context("server pid")?;
    eprintln!("   old node drained in {drain_seconds:.2}s; new node up");

    // Sample CPU and RSS every 100 ms until the storm is over.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak_cpu = 0.0f64;
            let mut peak_rss = 0u64;
            let cpu_start = procfs::cpu_seconds(pid).unwrap_or(0.0);
            let mut last = (Instant::now(), cpu_start);
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticker.tick().await;
                let (Ok(cpu), Ok(rss)) = (procfs::cpu_seconds(pid), procfs::rss_kib(pid)) else {
                    break;
                };
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                if dt > 0.0 {
                    peak_cpu = peak_cpu.max((cpu - last.1) / dt * 100.0);
                }
                peak_rss = peak_rss.max(rss);
                last = (now, cpu);
                if done.load(Relaxed) {
                    break;
                }
            }
            (peak_cpu, peak_rss, last.1 - cpu_start)
        }
    });

    let deadline = t_up + Duration::from_secs(args.storm_timeout);
    let mut last_print = Instant::now();
    // On a terminal a bar; in a pipe one plain line per second.
    let resubscribing = progress::bar(args.connections as u64, "resubscribing");
    while shared.resubscribed.load(Relaxed) < args.connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        resubscribing.set_position(shared.resubscribed.load(Relaxed) as u64);
        if !progress::on_terminal() && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "   {:>5.1}s: {} resubscribed",
                t_up.elapsed().as_secs_f64(),
                shared.resubscribed.load(Relaxed)
            );
        }
    }
    resubscribing.finish_and_clear();
    let t_end = Instant::now();
    done.store(true, Relaxed);
    let (peak_cpu, peak_rss, cpu_seconds) = sampler.await?;
    let resubscribed = shared.resubscribed.load(Relaxed);

    // One publication must now reach every client.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = http
        .post(format!("http://{addr}/api/v1/publish"))
        .header("content-type", "application/json")
        .body(r#"{"channel":"bench","data":{"storm_check":true}}"#)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "publish: {}", r.status());
    let check_deadline = Instant::now() + Duration::from_secs(10);
    while shared.delivered.load(Relaxed) < resubscribed && Instant::now() < check_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_after = shared.delivered.load(Relaxed);

    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let server_rejections = rejections(&metrics);
    drop(child);
    drop(clients);

    let mut times: Vec<f64> = shared
        .resubscribed_at
        .lock()
        .iter()
        .map(|t| t.saturating_duration_since(t_up).as_secs_f64() * 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if times.is_empty() {
            return f64::NAN;
        }
        times[((times.len() - 1) as f64 * p).round() as usize]
    };
    let failures = shared.failures.lock().clone();
    let report = StormReport {
        connections: args.connections,
        backoff_initial_ms: args.storm_initial_ms,
        backoff_max_ms: args.storm_max_ms,
        jitter,
        limit_rate_per_ip: args.storm_limit_rate,
        limit_burst_per_ip: if args.storm_limit_rate > 0 {
            args.storm_limit_burst
        } else {
            0
        },
        initial_connect_seconds,
        drain_seconds,
        resubscribed,
        storm_seconds: t_end.duration_since(t_up).as_secs_f64(),
        resubscribe_p50_ms: pct(0.5),
        resubscribe_p99_ms: pct(0.99),
        resubscribe_max_ms: pct(1.0),
        outage_seconds: t_end.duration_since(t0).as_secs_f64(),
        peak_cpu_percent: peak_cpu,
        server_cpu_seconds: cpu_seconds,
        rss_before_kib: rss_before,
        peak_rss_kib: peak_rss,
        server_rejections_total: server_rejections.values().sum(),
        server_rejections,
        client_failed_attempts_total: failures.values().sum(),
        client_failed_attempts: failures,
        delivered_after,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(
        resubscribed == args.connections,
        "only {resubscribed} of {} clients resubscribed within {} s",
        args.connections,
        args.storm_timeout
    );
    anyhow::ensure!(
        delivered_after == resubscribed,
        "the check publication reached {delivered_after} of {resubscribed} clients"
    );
    Ok(())
}

/// One task per client: counts `subscribed` answers, the check publication, and the causes
/// of failed attempts during the storm.
async fn watch_events(mut events: wsgate_client::Events, shared: Arc<Shared>) {
    let mut resubscribed = false;
    let mut lost = false;
    while let Some(event) = events.next().await {
        match event {
            Event::Message(m) => {
                let Some(text) = m.as_text() else { continue };
                if text.contains("\"subscribed\"") {
                    shared.subscribed.fetch_add(1, Relaxed);
                    if shared.storm.load(Relaxed) && !resubscribed {
                        resubscribed = true;
                        shared.resubscribed_at.lock().push(Instant::now());
                        shared.resubscribed.fetch_add(1, Relaxed);
                    }
                } else if text.contains("storm_check") {
                    shared.delivered.fetch_add(1, Relaxed);
                }
            }
            Event::Reconnecting { error, .. } if shared.storm.load(Relaxed) => {
                if !lost {
                    // The first one is the loss of the old connection, not a failed attempt.
                    lost = true;
                    shared.lost.fetch_add(1, Relaxed);
                    continue;
                }
                *shared
                    .failures
                    .lock()
                    .entry(cause(&error.to_string()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

/// A short cause for a failed connect attempt.
fn cause(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("429") {
        "http 429 (rate limited)".into()
    } else if e.contains("503") {
        "http 503 (draining / full)".into()
    } else if e.contains("refused") {
        "tcp refused (node down)".into()
    } else if e.contains("reset") || e.contains("handshake not fini") {
        "reset during handshake (node stopping)".into()
    } else if e.contains("timeout") || e.contains("timed out") {
        "timeout".into()
    } else {
        let short: String = error.chars().take(60).collect();
        format!("other: {short}")
    }
}

/// `websocket_connection_rejections_total{reason="…"} v` lines, by reason.
fn rejections(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("websocket_connection_rejections_total") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let reason = labels
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("all")
            .to_string();
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(reason).or_default() += v;
        }
    }
    out
}

fn print_report(r: &StormReport) {
    println!(
        "storm: {} clients, backoff {} ms -> {} ms, jitter {}, per-IP limit {}",
        r.connections,
        r.backoff_initial_ms,
        r.backoff_max_ms,
        r.jitter,
        if r.limit_rate_per_ip > 0 {
            format!("{}/s burst {}", r.limit_rate_per_ip, r.limit_burst_per_ip)
        } else {
            "off".into()
        }
    );
    println!(
        "  resubscribed {} of {} in {:.2}s after the new node was up (p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms); outage from SIGTERM {:.2}s (drain {:.2}s)",
        r.resubscribed,
        r.connections,
        r.storm_seconds,
        r.resubscribe_p50_ms,
        r.resubscribe_p99_ms,
        r.resubscribe_max_ms,
        r.outage_seconds,
        r.drain_seconds
    );
    println!(
        "  new node: peak CPU {:.0} %, CPU {:.2}s, peak RSS {} KiB (old node with all clients {} KiB)",
        r.peak_cpu_percent, r.server_cpu_seconds, r.peak_rss_kib, r.rss_before_kib
    );
    println!(
        "  refused by the new node: {} {:?}",
        r.server_rejections_total, r.server_rejections
    );
    println!(
        "  failed client attempts: {} {:?}",
        r.client_failed_attempts_total, r.client_failed_attempts
    );
    println!(
        "  check publication reached {} of {}",
        r.delivered_after, r.resubscribed
    );
}
