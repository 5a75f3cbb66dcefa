//! The cross-node bench's own `redis-server` and `nats-server`: on a free loopback port, no
//! persistence, killed with the bench (never the machine's services, whose load and data are
//! not the bench's).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a service may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running service process.
pub struct Service {
    child: Child,
    pub pid: u32,
    pub url: String,
}

impl Service {
    /// `redis-server` on a free port, answering PING when returned.
    pub async fn redis() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let service = Self::new(child, url)?;
        let client = redis::Client::open(service.url.as_str())?;
        until_up("redis-server", || async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
            (pong == "PONG").then_some(())
        })
        .await?;
        Ok(service)
    }

    /// `nats-server` on a free port, greeting (`INFO …`) when returned.
    pub async fn nats() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server (is it installed?)")?;
        let service = Self::new(child, format!("nats://127.0.0.1:{port}"))?;
        until_up("nats-server", || async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"INFO ").then_some(())
        })
        .await?;
        Ok(service)
    }

    fn new(child: Child, url: String) -> anyhow::Result<Self> {
        let pid = child.id().context("service pid")?;
        Ok(Self { child, pid, url })
    }

    /// Whether the process is still running (a service that died invalidates the run).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Calls per Redis command since the server started (`INFO commandstats`), by command name.
pub async fn redis_command_calls(url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    Ok(parse_commandstats(&info))
}

/// `cmdstat_evalsha:calls=3,usec=…` lines to `{"evalsha": 3}`.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// The calls of `after` not yet in `before`, commands without new calls left out.
pub fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                n.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Asks `check` every 50 ms until it answers `Some`, for at most [`START_TIMEOUT`].
async fn until_up<F, Fut>(what: &str, check: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    tokio::time::timeout(START_TIMEOUT, async {
        while check().await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("{what} did not answer within {START_TIMEOUT:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_per_command_and_their_growth() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_ping:calls=2,usec=3,usec_per_call=1.50\r\ncmdstat_evalsha:calls=5,usec=50\r\n",
        );
        assert_eq!(before.get("ping"), Some(&2));
        assert_eq!(before.get("evalsha"), Some(&5));
        let after = parse_commandstats(
            "cmdstat_ping:calls=2,usec=3\r\ncmdstat_evalsha:calls=9,usec=90\r\ncmdstat_publish:calls=1,usec=1\r\n",
        );
        let grown = calls_between(&before, &after);
        assert_eq!(
            grown.into_iter().collect::<Vec<_>>(),
            [("evalsha".to_string(), 4), ("publish".to_string(), 1)]
        );
    }
}
