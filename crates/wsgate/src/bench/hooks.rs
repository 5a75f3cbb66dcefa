//! `wsgate bench --hooks`: what a connect hook costs in handshakes per second.
//!
//! The same workload twice per pass, alternating, in one run: `--connections` WebSocket
//! handshakes (`--hooks-concurrency` at a time), each complete once the client has read
//! `hello`, against `wsgate serve` without hooks, and against `wsgate serve` whose connect
//! hook is a tiny axum server in this bench process on loopback (it answers at once: what
//! is measured is wsgate's own cost of asking, one HTTP round trip per handshake). Two passes
//! each, so a neighbour's load hits both alike; the report gives the ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use anyhow::Context;
use axum::Json;
use axum::routing::post;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{BenchArgs, ServerOpts, Target, spawn_server_with};

/// Passes of each configuration, alternating (no hook, hook, no hook, hook).
const PASSES: usize = 2;

#[derive(Debug, Serialize)]
pub struct HooksReport {
    pub handshakes_per_pass: usize,
    pub concurrency: usize,
    pub without_hook_per_second: f64,
    pub with_hook_per_second: f64,
    /// With over without: 1.0 means the hook costs nothing.
    pub ratio: f64,
    /// Connect hook requests the backend answered (one per handshake with the hook).
    pub hook_requests: usize,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (backend, asked) = backend().await?;
    let dir = std::env::temp_dir().join(format!("wsgate-bench-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("hooks.toml");
    std::fs::write(
        &config,
        format!("[hooks.connect]\nurl = \"http://{backend}/connect\"\n"),
    )?;
    eprintln!(
        "== hooks: {} handshakes per pass, {} at a time, connect hook at {backend}",
        args.connections, args.hooks_concurrency
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for pass in 0..PASSES {
        for hooked in [false, true] {
            let opts = ServerOpts {
                config: hooked.then(|| config.clone()),
                ..ServerOpts::default()
            };
            let (mut child, addr) = spawn_server_with(Target::Wsgate, 64, &opts).await?;
            let rate = handshakes(&addr, args.connections, args.hooks_concurrency).await;
            let _ = child.kill().await;
            let rate = rate?;
            eprintln!(
                "pass {}: {} {rate:.0} handshakes/s",
                pass + 1,
                if hooked {
                    "with hook   "
                } else {
                    "without hook"
                }
            );
            if hooked { &mut with } else { &mut without }.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let report = HooksReport {
        handshakes_per_pass: args.connections,
        concurrency: args.hooks_concurrency,
        without_hook_per_second: mean(&without),
        with_hook_per_second: mean(&with),
        ratio: mean(&with) / mean(&without),
        hook_requests: asked.load(Relaxed),
    };
    println!(
        "handshakes/s without hook {:.0}, with connect hook {:.0}: ratio {:.2} ({} hook requests)",
        report.without_hook_per_second,
        report.with_hook_per_second,
        report.ratio,
        report.hook_requests
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The connect hook: every client is user `bench`, at once.
async fn backend() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().route(
        "/connect",
        post(async move |Json(_): Json<Value>| {
            counter.fetch_add(1, Relaxed);
            Json(json!({"result": {"user": "bench"}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, asked))
}

/// Handshakes per second: `total` clients, `concurrency` at a time, each done at `hello`.
async fn handshakes(addr: &str, total: usize, concurrency: usize) -> anyhow::Result<f64> {
    let url = format!("ws://{addr}/ws");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (url, next) = (url.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Relaxed) < total {
                    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => {}
                        other => anyhow::bail!("expected hello, got {other:?}"),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await.context("handshake worker")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
