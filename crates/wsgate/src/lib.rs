//! `wsgate`: the WebSocket connection manager.
//!
//! - `wsgate serve`: run a node (embedded in-memory store and broker by default).
//! - `wsgate bench`: the fan-out benchmark of docs/benchmarks.md.
//! - `wsgate connect`, `wsgate connections`, `wsgate doctor`: the operator's tools.

mod bench;
mod cli;
mod serve;

/// What the kernel says about a process (RSS, descriptors, CPU): the benchmark's readings,
/// also used by the fault suite (crates/wsgate-tests).
pub use bench::procfs;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "WebSocket connection manager: gateway, upstream manager, control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process; boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a wsgate node.
    Serve(serve::ServeArgs),
    /// Measure fan-out throughput, latency, CPU per delivery and memory per connection.
    Bench(bench::BenchArgs),
    /// Interactive WebSocket client: stdin lines out, frames in, with time and direction.
    Connect(cli::connect::ConnectArgs),
    /// List a running server's connections, or `show ID` for one connection's debug view.
    Connections(cli::connections::ConnectionsArgs),
    /// Check a deployment end to end (DNS, TCP, upgrade, ping, idle hold, delivery, API, Redis).
    Doctor(cli::doctor::DoctorArgs),
    /// The featureless fan-out server that `wsgate bench --baseline` compares against.
    #[command(hide = true)]
    BenchBaselineServer(bench::BaselineArgs),
}

/// Parses the command line and runs the command: the whole `wsgate` program.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Connect(args) => cli::finish(cli::connect::main(args)),
        Command::Connections(args) => cli::finish(cli::connections::main(args)),
        Command::Doctor(args) => cli::finish(cli::doctor::main(args)),
        Command::BenchBaselineServer(args) => bench::baseline::main(args),
    }
}
