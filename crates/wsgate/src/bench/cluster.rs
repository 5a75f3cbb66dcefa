//! `wsgate bench --nodes N`: the cross-node fan-out (docs/benchmarks.md, "Cross-node fan-out").
//!
//! 1. start a `redis-server` (and for `--engine nats` a `nats-server`) of the bench's own on a
//!    free loopback port, then N `wsgate serve` nodes as child processes on them (Redis store,
//!    the engine as broker), each ready (`/ready` 200) before any client connects;
//! 2. connect `--connections` subscribers of the channel `bench`, split evenly over the nodes;
//! 3. publish through the first node's HTTP API at `--rate` for `--seconds`, so that every
//!    publication crosses the broker to reach the other nodes' subscribers;
//! 4. report the CPU of every node summed (utime + stime from /proc) per delivery, the
//!    broker processes' CPU separately, the Redis commands per publication (`INFO
//!    commandstats` over the publish phase), publish→receive latency, deliveries and losses.
//!
//! `--baseline` runs the same workload first on Socket.IO 4.8 with its Redis adapter
//! (`@socket.io/redis-adapter`) in N Node processes sharing a Redis of the bench's own, and
//! gives every wsgate run's figures as ratios of it.

mod services;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;
use tokio::process::Child;

use super::clients::Fleet;
use super::{BenchArgs, Protocol, ServerOpts, Target, percentile_ms, procfs, progress, socketio};
use services::Service;

/// The broker between the wsgate nodes (the store is Redis either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Redis pub/sub (one `PUBLISH` per publication inside the publish script).
    Redis,
    /// NATS core (the publish script appends to the history; NATS carries the message).
    Nats,
}

/// The key that seals the store's records: the bench's Redis is its own and thrown away.
const CLUSTER_KEY: &str = "d3NnYXRlLWJlbmNoLW5vdC1hLXNlY3JldC0wMTIzNDU=";

/// How long the bench waits for a node's `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What runs behind the load balancer.
#[derive(Clone)]
enum Deployment {
    /// wsgate nodes on a broker.
    Wsgate(Engine),
    /// Socket.IO 4.8 with the Redis adapter, the peer in this directory.
    SocketIo(PathBuf),
}

impl Deployment {
    fn name(&self, nodes: usize) -> String {
        match self {
            Deployment::Wsgate(Engine::Redis) => format!("wsgate ×{nodes} (redis)"),
            Deployment::Wsgate(Engine::Nats) => format!("wsgate ×{nodes} (nats)"),
            Deployment::SocketIo(_) => format!("socket.io 4.8 + redis adapter ×{nodes}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub server: String,
    /// `redis` or `nats` (the Socket.IO adapter is `redis`).
    pub engine: Engine,
    pub nodes: usize,
    pub connections: usize,
    pub connect_seconds: f64,
    /// Summed over the nodes: (idle RSS − RSS before the clients) / connections.
    pub rss_per_idle_connection_kib: f64,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    /// CPU over the publish phase, per node (the first one takes the publishes).
    pub node_cpu_seconds: Vec<f64>,
    pub nodes_cpu_seconds: f64,
    pub nodes_cpu_us_per_delivery: f64,
    pub redis_cpu_seconds: f64,
    pub nats_cpu_seconds: Option<f64>,
    /// Redis and NATS together.
    pub broker_cpu_us_per_delivery: f64,
    pub broker_cpu_us_per_publication: f64,
    /// The commands Redis ran during the publish phase beyond its idle rate, over the
    /// publications. Redis counts a script's commands one by one besides the `EVALSHA`.
    pub redis_commands_per_publication: f64,
    /// Commands per second while the subscribers idled (leases, presence, pings, polls).
    pub redis_background_commands_per_second: f64,
    /// Every command of the publish phase, by name, the background included.
    pub redis_commands: BTreeMap<String, u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.svg.is_none(),
        "--svg draws the single-node fan-out only; leave it out with --nodes"
    );
    anyhow::ensure!(
        args.connections >= args.nodes,
        "--connections ({}) must be at least --nodes ({})",
        args.connections,
        args.nodes
    );
    let mut reports = Vec::new();
    if (args.baseline || args.baseline_only)
        && let Some(dir) = socketio::peer(args.socketio_peer_dir.as_deref()).await?
    {
        reports.push(run_one(args, Deployment::SocketIo(dir)).await?);
    }
    if !args.baseline_only {
        for &engine in &args.engine {
            reports.push(run_one(args, Deployment::Wsgate(engine)).await?);
        }
    }
    print_reports(&reports);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(())
}

/// One node of the run: the process and its address.
struct Node {
    child: Child,
    pid: u32,
    addr: String,
}

async fn run_one(args: &BenchArgs, deployment: Deployment) -> anyhow::Result<ClusterReport> {
    let name = deployment.name(args.nodes);
    eprintln!("== {name}: {} connections", args.connections);
    let engine = match &deployment {
        Deployment::Wsgate(engine) => *engine,
        Deployment::SocketIo(_) => Engine::Redis,
    };
    let mut redis = Service::redis().await?;
    let mut nats = match engine {
        Engine::Nats => Some(Service::nats().await?),
        Engine::Redis => None,
    };
    let (target, protocol) = match &deployment {
        Deployment::SocketIo(_) => (Target::NodeSocketIo, Protocol::Socketio),
        Deployment::Wsgate(_) => match args.protocol {
            Protocol::Ws => (Target::Wsgate, Protocol::Ws),
            Protocol::Socketio => (Target::WsgateSocketIo, Protocol::Socketio),
        },
    };
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let opts = node_opts(&deployment, i, &redis, nats.as_ref());
        let (child, addr) = super::spawn_server_with(target, 4096, &opts).await?;
        let pid = child.id().context("node pid")?;
        nodes.push(Node { child, pid, addr });
    }
    if let Deployment::Wsgate(_) = deployment {
        for node in &nodes {
            await_ready(&node.addr).await?;
        }
    }
    // Let the allocators and runtimes settle before the baseline reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_sum(&nodes)?;

    let started = Instant::now();
    let connecting = progress::bar(args.connections as u64, "connecting");
    let mut fleets = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let share = share(args.connections, nodes.len(), i);
        let fleet = Fleet::connect(
            protocol,
            &target.url(&node.addr),
            share,
            args.latency_sample,
            args.ramp(),
            &connecting,
        )
        .await
        .with_context(|| format!("clients of node {i}"))?;
        fleets.push((fleet, share as u64));
    }
    connecting.finish_and_clear();
    let connect_seconds = started.elapsed().as_secs_f64();
    let resent = socketio::take_resent_subscribes();
    if resent > 0 {
        eprintln!("   {resent} subscriptions went unanswered and were sent again");
    }
    // The idle wait also measures what Redis runs without publications (leases, presence,
    // pings, the views' polls), to tell the publications' own commands apart.
    let idle_calls = services::redis_command_calls(&redis.url).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let background = services::calls_between(
        &idle_calls,
        &services::redis_command_calls(&redis.url).await?,
    );
    let background_per_second = commands(&background) as f64 / idle_started.elapsed().as_secs_f64();
    let rss_idle = rss_sum(&nodes)?;
    eprintln!(
        "   connected in {connect_seconds:.1}s over {} nodes, RSS {rss_before} KiB -> {rss_idle} KiB",
        nodes.len()
    );

    let cpu_before = Cpu::read(&nodes, &redis, nats.as_ref())?;
    let calls_before = services::redis_command_calls(&redis.url).await?;
    let publish_started = Instant::now();
    let published = super::publish_through(args, &nodes[0].addr).await?;
    // One deadline for the whole fleet: the last deliveries of every node arrive together.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut delivered = 0;
    for (fleet, share) in &fleets {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        delivered += fleet.wait_for(published * share, left).await;
    }
    let cpu_after = Cpu::read(&nodes, &redis, nats.as_ref())?;
    let calls_after = services::redis_command_calls(&redis.url).await?;
    let publish_phase = publish_started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for (fleet, _) in fleets {
        latencies.extend(fleet.stop().await);
    }
    latencies.sort_unstable();
    anyhow::ensure!(redis.is_running(), "redis-server died during the run");
    if let Some(nats) = &mut nats {
        anyhow::ensure!(nats.is_running(), "nats-server died during the run");
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        anyhow::ensure!(
            matches!(node.child.try_wait(), Ok(None)),
            "node {i} exited during the run"
        );
    }
    drop(nodes);

    let expected = published * args.connections as u64;
    let cpu = cpu_after.since(&cpu_before);
    let nodes_cpu: f64 = cpu.nodes.iter().sum();
    let broker_cpu = cpu.redis + cpu.nats.unwrap_or(0.0);
    let redis_commands = services::calls_between(&calls_before, &calls_after);
    let own_commands =
        (commands(&redis_commands) as f64 - background_per_second * publish_phase).max(0.0);
    Ok(ClusterReport {
        server: name,
        engine,
        nodes: args.nodes,
        connections: args.connections,
        connect_seconds,
        rss_per_idle_connection_kib: rss_idle.saturating_sub(rss_before) as f64
            / args.connections as f64,
        published,
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        node_cpu_seconds: cpu.nodes,
        nodes_cpu_seconds: nodes_cpu,
        nodes_cpu_us_per_delivery: nodes_cpu * 1e6 / delivered.max(1) as f64,
        redis_cpu_seconds: cpu.redis,
        nats_cpu_seconds: cpu.nats,
        broker_cpu_us_per_delivery: broker_cpu * 1e6 / delivered.max(1) as f64,
        broker_cpu_us_per_publication: broker_cpu * 1e6 / published.max(1) as f64,
        redis_commands_per_publication: own_commands / published.max(1) as f64,
        redis_background_commands_per_second: background_per_second,
        redis_commands,
        latency_p50_ms: percentile_ms(&latencies, 0.50),
        latency_p99_ms: percentile_ms(&latencies, 0.99),
        latency_max_ms: percentile_ms(&latencies, 1.0),
    })
}

/// How node `i` of a deployment starts.
fn node_opts(
    deployment: &Deployment,
    i: usize,
    redis: &Service,
    nats: Option<&Service>,
) -> ServerOpts {
    match deployment {
        Deployment::SocketIo(dir) => ServerOpts {
            peer_dir: Some(dir.clone()),
            // server.js takes the Redis adapter when this is set.
            env: vec![("SOCKETIO_REDIS_URL".into(), redis.url.clone())],
            ..ServerOpts::default()
        },
        Deployment::Wsgate(engine) => {
            let mut args: Vec<String> = [
                "--node-id",
                &format!("bench-{i}"),
                "--store",
                "redis",
                "--redis-url",
                &redis.url,
            ]
            .map(String::from)
            .into();
            match (engine, nats) {
                (Engine::Nats, Some(nats)) => {
                    args.extend(["--broker", "nats", "--nats-url", &nats.url].map(String::from))
                }
                _ => args.extend(["--broker", "redis"].map(String::from)),
            }
            ServerOpts {
                args,
                env: vec![("WSGATE_CLUSTER_KEY".into(), CLUSTER_KEY.into())],
                ..ServerOpts::default()
            }
        }
    }
}

/// Node `i`'s part of `total` clients over `nodes`: as even as it gets, the first nodes
/// taking the remainder.
fn share(total: usize, nodes: usize, i: usize) -> usize {
    total / nodes + usize::from(i < total % nodes)
}

/// Waits until the node at `addr` answers `/ready` with 200 (its broker subscribed).
async fn await_ready(addr: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}/ready");
    tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .with_context(|| format!("node {addr} not ready within {READY_TIMEOUT:?}"))
}

/// Commands in a [`services::calls_between`] result, the bench's own `INFO` left out.
fn commands(calls: &BTreeMap<String, u64>) -> u64 {
    calls
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(_, n)| n)
        .sum()
}

fn rss_sum(nodes: &[Node]) -> anyhow::Result<u64> {
    nodes.iter().map(|n| procfs::rss_kib(n.pid)).sum()
}

/// CPU seconds (utime + stime) of every process of a deployment at one moment.
struct Cpu {
    nodes: Vec<f64>,
    redis: f64,
    nats: Option<f64>,
}

impl Cpu {
    fn read(nodes: &[Node], redis: &Service, nats: Option<&Service>) -> anyhow::Result<Self> {
        Ok(Self {
            nodes: nodes
                .iter()
                .map(|n| procfs::cpu_seconds(n.pid))
                .collect::<anyhow::Result<_>>()?,
            redis: procfs::cpu_seconds(redis.pid)?,
            nats: nats.map(|s| procfs::cpu_seconds(s.pid)).transpose()?,
        })
    }

    fn since(self, before: &Cpu) -> Cpu {
        Cpu {
            nodes: self
                .nodes
                .iter()
                .zip(&before.nodes)
                .map(|(a, b)| a - b)
                .collect(),
            redis: self.redis - before.redis,
            nats: self.nats.zip(before.nats).map(|(a, b)| a - b),
        }
    }
}

fn print_reports(reports: &[ClusterReport]) {
    println!(
        "{:<36} {:>6} {:>10} {:>10} {:>6} {:>14} {:>15} {:>11} {:>9} {:>9} {:>13}",
        "server",
        "conns",
        "delivered",
        "expected",
        "lost",
        "nodes µs/deliv",
        "broker µs/deliv",
        "redis/pub",
        "p50 ms",
        "p99 ms",
        "KiB/idle conn"
    );
    for r in reports {
        println!(
            "{:<36} {:>6} {:>10} {:>10} {:>6} {:>14.3} {:>15.3} {:>11.2} {:>9.2} {:>9.2} {:>13.2}",
            r.server,
            r.connections,
            r.delivered,
            r.expected_deliveries,
            r.lost,
            r.nodes_cpu_us_per_delivery,
            r.broker_cpu_us_per_delivery,
            r.redis_commands_per_publication,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.rss_per_idle_connection_kib
        );
    }
    let Some(base) = reports.iter().find(|r| r.server.starts_with("socket.io")) else {
        return;
    };
    let total = |r: &ClusterReport| r.nodes_cpu_us_per_delivery + r.broker_cpu_us_per_delivery;
    for ours in reports.iter().filter(|r| r.server.starts_with("wsgate")) {
        println!(
            "ratios {}/socket.io: nodes cpu per delivery {:.2}, with the broker {:.2}, p99 latency {:.2}, memory per idle connection {:.2}",
            ours.server,
            ours.nodes_cpu_us_per_delivery / base.nodes_cpu_us_per_delivery,
            total(ours) / total(base),
            ours.latency_p99_ms / base.latency_p99_ms,
            ours.rss_per_idle_connection_kib / base.rss_per_idle_connection_kib,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, nodes) in [(10_000, 3), (30, 3), (31, 3), (2, 2)] {
            let shares: Vec<usize> = (0..nodes).map(|i| share(total, nodes, i)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{shares:?}");
        }
    }
}
