//! `wsgate bench` (filled in with the benchmark harness).
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

pub fn main(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
