//! `wsgate bench`: fan-out of one channel to N WebSocket subscribers over loopback.
//!
//! The workload (docs/benchmarks.md records its figures):
//! 1. start the server under test as a child process (`wsgate serve`, or with `--baseline`
//!    also a featureless axum + tungstenite fan-out server built into this binary);
//! 2. measure its RSS, connect N clients that subscribe to one channel, let them idle, and
//!    measure RSS again: the difference over N is the memory per idle connection;
//! 3. publish `--rate` messages per second for `--seconds` through the HTTP API; every client
//!    counts what it receives and a sample of clients records publish→receive latency;
//! 4. server CPU (utime + stime from /proc) over the publish phase divided by messages
//!    delivered is the CPU per delivery.
//!
//! With `--baseline` both servers run the same workload in the same run, and the report gives
//! wsgate's figures as ratios of the baseline's: the machine is shared and noisy, ratios are
//! what carry over.
//!
//! `--protocol socketio` runs the same workload with clients speaking Socket.IO (`socketio`)
//! against wsgate's `/socket.io/` edge; its baseline is a Socket.IO 4.8 server on Node.
//!
//! `--nodes N` (N > 1) runs the cross-node fan-out instead (`cluster`): N nodes on a Redis or
//! NATS broker of the bench's own, its baseline Socket.IO 4.8 with the Redis adapter.

pub mod baseline;
mod clients;
mod cluster;
mod hooks;
pub mod procfs;
mod progress;
mod soak;
mod socketio;
mod storm;
pub mod svg;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use baseline::BaselineArgs;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Subscribers of the one channel.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Publishes per second during the measured phase.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Length of the measured publish phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bytes of payload per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Every Nth client records latency (all clients count deliveries).
    #[arg(long, default_value_t = 50)]
    pub latency_sample: usize,
    /// What the clients speak: wsgate's own protocol on `/ws`, or Socket.IO v5 (Engine.IO v4
    /// over WebSocket) on `/socket.io/`.
    #[arg(long, value_enum, default_value_t = Protocol::Ws)]
    pub protocol: Protocol,
    /// Also run the protocol's reference server on the same workload and report ratios
    /// against it: the featureless axum + tungstenite fan-out for `ws`, a Socket.IO 4.8 server
    /// on Node (`bench-peers/socketio-server`, skipped when `node` is missing) for `socketio`.
    #[arg(long)]
    pub baseline: bool,
    /// Cross-node fan-out: this many nodes (more than 1) behind one broker, the subscribers
    /// split evenly over them, publishes through the first; `--baseline` is then Socket.IO 4.8
    /// with its Redis adapter in as many Node processes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Cross-node fan-out: the broker(s) between the wsgate nodes, one run each (`redis,nats`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "redis")]
    pub engine: Vec<cluster::Engine>,
    /// The `ws` baseline's fan-out: a queue per subscriber pushed to by the publisher (the
    /// lean one, default), or one `tokio::sync::broadcast` channel (the baseline of the
    /// figures before 2026-11-27).
    #[arg(long, value_enum, default_value_t = baseline::Fanout::Queues)]
    pub baseline_fanout: baseline::Fanout,
    /// Run only the baseline (no wsgate): to calibrate the machine or check the peer.
    #[arg(long)]
    pub baseline_only: bool,
    /// The Node Socket.IO peer's directory (server.js, package.json, package-lock.json);
    /// default: the one in wsgate's source tree.
    #[arg(long)]
    pub socketio_peer_dir: Option<PathBuf>,
    /// Clients connecting (and subscribing) at once. The memory per connection depends on it:
    /// every handshake in flight holds buffers the allocator keeps afterwards
    /// (docs/benchmarks.md, "Memory per connection: two ways of counting").
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Spread the clients over this many source addresses (127.0.0.2, ...), so that more
    /// connections than one address has ephemeral ports reach the server; 0: 127.0.0.1 only.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u8,
    /// How long the connections idle before the second RSS reading, in ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the fan-out run as SVG to this file: the latency CDF and deliveries per second
    /// over time, wsgate beside the baseline when `--baseline` runs too.
    #[arg(long, conflicts_with_all = ["storm", "soak_cycles"])]
    pub svg: Option<PathBuf>,
    /// Soak mode instead of the fan-out: this many connect/publish/disconnect cycles (after a
    /// warm-up), failing if the server's RSS or descriptors do not return to their level.
    #[arg(long, default_value_t = 0)]
    pub soak_cycles: usize,
    /// Reconnect-storm mode instead of the fan-out: `--connections` reconnecting clients
    /// (wsgate-client), the server restarted on the same port, time until all resubscribed.
    #[arg(long)]
    pub storm: bool,
    /// Storm: first reconnect delay in ms (doubling on every failed attempt).
    #[arg(long, default_value_t = 100)]
    pub storm_initial_ms: u64,
    /// Storm: cap on one reconnect delay in ms.
    #[arg(long, default_value_t = 5000)]
    pub storm_max_ms: u64,
    /// Storm: jitter fraction (a delay d becomes a random value in [d(1-j), d]).
    #[arg(long, default_value_t = 0.5)]
    pub storm_jitter: f64,
    /// Storm: no jitter at all (every client retries on the same schedule).
    #[arg(long)]
    pub no_jitter: bool,
    /// Storm: run the restarted server with this per-IP connect rate (per second; 0: no
    /// limit), so that the limiter refuses part of the storm.
    #[arg(long, default_value_t = 0)]
    pub storm_limit_rate: u32,
    /// Storm: burst of the per-IP connect rate limit (with `--storm-limit-rate`).
    #[arg(long, default_value_t = 100)]
    pub storm_limit_burst: u32,
    /// Storm: give up waiting for the clients after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub storm_timeout: u64,
    /// Connect-hook mode instead of the fan-out: `--connections` handshakes against a node
    /// without hooks and one whose connect hook is a local HTTP server, ratio of the rates.
    #[arg(long, conflicts_with_all = ["storm", "soak_cycles", "baseline"])]
    pub hooks: bool,
    /// Hooks: handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub hooks_concurrency: usize,
}

impl BenchArgs {
    /// How the fleet connects.
    pub(crate) fn ramp(&self) -> clients::Ramp {
        clients::Ramp {
            concurrency: self.connect_concurrency,
            source_addrs: self.source_addrs,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub server: &'static str,
    /// `server`'s name in the ratios line.
    #[serde(skip)]
    pub short: &'static str,
    pub connections: usize,
    /// Clients that connected and subscribed at once (see `--connect-concurrency`).
    pub connect_concurrency: usize,
    pub rss_baseline_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_per_idle_connection_kib: f64,
    pub connect_seconds: f64,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub deliveries_per_second: f64,
    pub server_cpu_seconds: f64,
    pub server_cpu_us_per_delivery: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// The raw series behind the figures, for `--svg`.
    #[serde(skip)]
    pub trace: svg::Trace,
}

pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    procfs::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if args.storm {
            return storm::run(&args).await;
        }
        if args.hooks {
            return hooks::run(&args).await;
        }
        if args.soak_cycles > 0 {
            return soak::run(&args).await;
        }
        if args.nodes > 1 {
            return cluster::run(&args).await;
        }
        let mut reports = Vec::new();
        if args.baseline || args.baseline_only {
            match args.protocol {
                Protocol::Ws => {
                    let opts = ServerOpts {
                        baseline_fanout: args.baseline_fanout,
                        ..ServerOpts::default()
                    };
                    eprintln!("   baseline fan-out: {:?}", args.baseline_fanout);
                    reports.push(run_one(&args, Target::Baseline, &opts).await?)
                }
                Protocol::Socketio => {
                    if let Some(dir) = socketio::peer(args.socketio_peer_dir.as_deref()).await? {
                        let opts = ServerOpts {
                            peer_dir: Some(dir),
                            ..ServerOpts::default()
                        };
                        reports.push(run_one(&args, Target::NodeSocketIo, &opts).await?);
                    }
                }
            }
        }
        if !args.baseline_only {
            let target = match args.protocol {
                Protocol::Ws => Target::Wsgate,
                Protocol::Socketio => Target::WsgateSocketIo,
            };
            reports.push(run_one(&args, target, &ServerOpts::default()).await?);
        }
        print_reports(&reports);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
        }
        if let Some(path) = &args.svg {
            let runs: Vec<(&str, &svg::Trace)> =
                reports.iter().map(|r| (r.server, &r.trace)).collect();
            svg::write(path, &runs)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    })
}

/// The protocol the bench clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// wsgate's JSON protocol on `/ws`.
    Ws,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport, on `/socket.io/`.
    Socketio,
}

#[derive(Clone, Copy)]
enum Target {
    Wsgate,
    Baseline,
    /// wsgate's `/socket.io/` edge.
    WsgateSocketIo,
    /// Socket.IO 4.8 on Node (`ServerOpts::peer_dir`).
    NodeSocketIo,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Wsgate => "wsgate",
            Target::Baseline => "baseline (axum + tungstenite)",
            Target::WsgateSocketIo => "wsgate /socket.io/",
            Target::NodeSocketIo => "socket.io 4.8 (node)",
        }
    }

    /// The name in the ratios line.
    fn short(self) -> &'static str {
        match self {
            Target::Wsgate | Target::WsgateSocketIo => "wsgate",
            Target::Baseline => "baseline",
            Target::NodeSocketIo => "node socket.io",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Target::Wsgate | Target::Baseline => Protocol::Ws,
            Target::WsgateSocketIo | Target::NodeSocketIo => Protocol::Socketio,
        }
    }

    /// The URL the bench clients connect to on a server at `addr`.
    fn url(self, addr: &str) -> String {
        match self.protocol() {
            Protocol::Ws => format!("ws://{addr}/ws"),
            Protocol::Socketio => socketio::url(addr),
        }
    }
}

async fn spawn_server(target: Target, outbox: usize) -> anyhow::Result<(Child, String)> {
    spawn_server_with(target, outbox, &ServerOpts::default()).await
}

/// How the bench starts `wsgate serve` beyond the defaults (`Default`: all off).
#[derive(Default)]
pub(crate) struct ServerOpts {
    /// Listener address (`None`: 127.0.0.1 on any free port).
    pub listen: Option<String>,
    /// Per-IP connect rate (0: no limit, the bench default).
    pub ip_connect_rate: u32,
    /// Per-IP connect burst (`None`: the server's default).
    pub ip_connect_burst: Option<u32>,
    /// Drain timeout on SIGTERM in ms (`None`: the server's default).
    pub drain_timeout_ms: Option<u64>,
    /// The Node Socket.IO peer's directory, dependencies installed (`Target::NodeSocketIo`).
    pub peer_dir: Option<PathBuf>,
    /// A configuration file for `wsgate serve --config` (the hooks bench's connect hook).
    pub config: Option<PathBuf>,
    /// More `wsgate serve` arguments (the cluster bench's store and broker).
    pub args: Vec<String>,
    /// More environment variables, for every target.
    pub env: Vec<(String, String)>,
    /// The `/ws` baseline's fan-out (`Target::Baseline`).
    pub baseline_fanout: baseline::Fanout,
}

async fn spawn_server_with(
    target: Target,
    outbox: usize,
    opts: &ServerOpts,
) -> anyhow::Result<(Child, String)> {
    let listen = opts.listen.as_deref().unwrap_or("127.0.0.1:0");
    let mut cmd = match target {
        Target::NodeSocketIo => {
            let dir: &Path = opts.peer_dir.as_deref().context("no Socket.IO peer")?;
            socketio::peer_command(dir, listen)
        }
        _ => Command::new(std::env::current_exe()?),
    };
    match target {
        Target::Wsgate | Target::WsgateSocketIo => {
            cmd.args([
                "serve",
                "--listen",
                listen,
                "--outbox-capacity",
                &outbox.to_string(),
                // Every bench client comes from one address: per-IP limits would refuse them.
                "--max-connections-per-ip",
                "0",
                "--ip-connect-rate",
                &opts.ip_connect_rate.to_string(),
                "--max-connections",
                "0",
            ]);
            if let Some(file) = &opts.config {
                cmd.arg("--config").arg(file);
            }
            if let Some(ms) = opts.drain_timeout_ms {
                cmd.args(["--drain-timeout-ms", &ms.to_string()]);
            }
            cmd.args(&opts.args);
            if let Some(burst) = opts.ip_connect_burst {
                cmd.env("WSGATE_IP_CONNECT_BURST", burst.to_string());
            }
            // A fixed gRPC port would collide between a server and its restart.
            cmd.env("WSGATE_GRPC_ENABLED", "false");
            // The bench's own node publishes without a key, also on a `--listen` beyond
            // loopback (load generators on other hosts).
            cmd.env("WSGATE_ALLOW_UNAUTHENTICATED_API", "true");
        }
        Target::Baseline => {
            let fanout = match opts.baseline_fanout {
                baseline::Fanout::Queues => "queues",
                baseline::Fanout::Broadcast => "broadcast",
            };
            cmd.args([
                "bench-baseline-server",
                "--listen",
                listen,
                "--fanout",
                fanout,
            ]);
        }
        Target::NodeSocketIo => {}
    };
    let mut child = cmd
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .env("WSGATE_LOG", "warn")
        // The bench publishes through the API as fast as it measures.
        .env("WSGATE_API_RATE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("server did not start")??
        .context("server exited")?;
    let addr = line
        .rsplit("http://")
        .next()
        .context("no address")?
        .to_string();
    Ok((child, addr))
}

/// How often `--svg`'s deliveries-per-second line samples the delivered count.
const DELIVERY_SAMPLE: Duration = Duration::from_millis(250);

async fn run_one(args: &BenchArgs, target: Target, opts: &ServerOpts) -> anyhow::Result<Report> {
    eprintln!("== {}: {} connections", target.name(), args.connections);
    let (child, addr) = spawn_server_with(target, 4096, opts).await?;
    let pid = child.id().context("server pid")?;
    // Let the allocator and runtime settle before the baseline reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_baseline = procfs::rss_kib(pid)?;

    let started = Instant::now();
    let connecting = progress::bar(args.connections as u64, "connecting");
    let fleet = clients::Fleet::connect(
        target.protocol(),
        &target.url(&addr),
        args.connections,
        args.latency_sample,
        args.ramp(),
        &connecting,
    )
    .await?;
    connecting.finish_and_clear();
    let connect_seconds = started.elapsed().as_secs_f64();
    let resent = socketio::take_resent_subscribes();
    if resent > 0 {
        eprintln!(
            "   {resent} subscriptions went unanswered for {} s and were sent again (events sent right after the Socket.IO connect were dropped)",
            socketio::ACK_WAIT.as_secs()
        );
    }
    // Idle: let every connection task park and the kernel settle.
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let rss_idle = procfs::rss_kib(pid)?;
    eprintln!("   connected in {connect_seconds:.1}s, RSS {rss_baseline} KiB -> {rss_idle} KiB");

    let cpu_before = procfs::cpu_seconds(pid)?;
    let sampler = fleet.sample_deliveries(DELIVERY_SAMPLE);
    let published = publish_through(args, &addr).await?;
    let expected = published * args.connections as u64;
    let delivered = fleet.wait_for(expected, Duration::from_secs(30)).await;
    let cpu_after = procfs::cpu_seconds(pid)?;
    let deliveries = sampler.stop().await;
    let publish_seconds = args.seconds as f64;
    let latencies = fleet.stop().await;
    drop(child);

    let cpu = cpu_after - cpu_before;
    let pct = |p| percentile_ms(&latencies, p);
    Ok(Report {
        server: target.name(),
        short: target.short(),
        connections: args.connections,
        connect_concurrency: args.connect_concurrency,
        rss_baseline_kib: rss_baseline,
        rss_idle_kib: rss_idle,
        rss_per_idle_connection_kib: rss_idle.saturating_sub(rss_baseline) as f64
            / args.connections as f64,
        connect_seconds,
        published,
        expected_deliveries: expected,
        delivered,
        deliveries_per_second: delivered as f64 / publish_seconds,
        server_cpu_seconds: cpu,
        server_cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        latency_max_ms: pct(1.0),
        trace: svg::Trace {
            latencies_us: latencies,
            deliveries,
        },
    })
}

/// The measured publish phase: `--rate` publishes per second for `--seconds` through the
/// API of the node at `addr`, behind a progress bar; returns how many were accepted.
async fn publish_through(args: &BenchArgs, addr: &str) -> anyhow::Result<u64> {
    let publishing = progress::bar(args.rate as u64 * args.seconds, "publishing");
    let published = clients::publish(
        &format!("http://{addr}/api/v1/publish"),
        args.rate,
        Duration::from_secs(args.seconds),
        args.payload,
        &publishing,
    )
    .await?;
    publishing.finish_and_clear();
    Ok(published)
}

/// The `p` quantile (0 to 1) of sorted µs samples, in ms (NaN without samples).
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn print_reports(reports: &[Report]) {
    println!(
        "{:<32} {:>8} {:>12} {:>12} {:>14} {:>10} {:>10} {:>12}",
        "server",
        "conns",
        "delivered",
        "expected",
        "cpu µs/deliv",
        "p50 ms",
        "p99 ms",
        "KiB/idle conn"
    );
    for r in reports {
        println!(
            "{:<32} {:>8} {:>12} {:>12} {:>14.3} {:>10.2} {:>10.2} {:>12.2}",
            r.server,
            r.connections,
            r.delivered,
            r.expected_deliveries,
            r.server_cpu_us_per_delivery,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.rss_per_idle_connection_kib
        );
    }
    if let [base, ours] = reports {
        println!(
            "ratios {}/{}: cpu per delivery {:.2}, memory per idle connection {:.2}, p99 latency {:.2}",
            ours.short,
            base.short,
            ours.server_cpu_us_per_delivery / base.server_cpu_us_per_delivery,
            ours.rss_per_idle_connection_kib / base.rss_per_idle_connection_kib,
            ours.latency_p99_ms / base.latency_p99_ms,
        );
    }
}
