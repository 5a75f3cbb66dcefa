//! The client side of the benchmark: a fleet of subscribers and a paced publisher.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt, stream};
use indicatif::ProgressBar;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsgate_core::clock::unix_us;

use super::Protocol;
use super::socketio::{self, Inbound};

/// How the fleet connects: how many at once, and from which local addresses.
#[derive(Clone, Copy, Debug)]
pub struct Ramp {
    /// Connections being opened (and subscribed) at once.
    pub concurrency: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... the clients are spread over (round
    /// robin), so that more connections than one address has ephemeral ports (about 28k on
    /// Linux's default range) reach one server port; 0: the kernel's choice (127.0.0.1).
    pub source_addrs: u8,
}

impl Ramp {
    /// The local address client `i` connects from, if the ramp spreads them.
    fn source(&self, i: usize) -> Option<IpAddr> {
        (self.source_addrs > 0).then(|| {
            let host = 2 + (i % usize::from(self.source_addrs)) as u8;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
        })
    }
}

pub struct Fleet {
    delivered: Arc<AtomicU64>,
    latencies_us: Arc<Mutex<Vec<u64>>>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Connects `n` clients speaking `protocol`, each subscribed to the channel `bench`;
    /// `progress` counts them.
    pub async fn connect(
        protocol: Protocol,
        url: &str,
        n: usize,
        sample_every: usize,
        ramp: Ramp,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let delivered = Arc::new(AtomicU64::new(0));
        let latencies_us = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let sockets: Vec<_> = stream::iter(0..n)
            .map(|i| async move {
                let ws = match protocol {
                    Protocol::Ws => subscriber(url, ramp.source(i)).await,
                    Protocol::Socketio => socketio::subscriber(url).await,
                };
                (i, ws)
            })
            .buffer_unordered(ramp.concurrency.max(1))
            .inspect(|_| progress.inc(1))
            .collect()
            .await;
        for (i, ws) in sockets {
            let mut ws = ws.with_context(|| format!("client {i}"))?;
            let delivered = delivered.clone();
            let sample = (sample_every > 0 && i % sample_every == 0).then(|| latencies_us.clone());
            tasks.spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let inbound = match protocol {
                        Protocol::Ws => Inbound::Event,
                        Protocol::Socketio => socketio::classify(t.as_str()),
                    };
                    match inbound {
                        Inbound::Event => {
                            delivered.fetch_add(1, Relaxed);
                            if let (Some(sample), Some(sent)) = (&sample, sent_at_us(t.as_str())) {
                                sample.lock().push(unix_us().saturating_sub(sent));
                            }
                        }
                        Inbound::Ping => {
                            if ws.send(socketio::pong()).await.is_err() {
                                return;
                            }
                        }
                        Inbound::Other => {}
                    }
                }
            });
        }
        Ok(Self {
            delivered,
            latencies_us,
            tasks,
        })
    }

    /// Waits until `expected` messages arrived in total, or `timeout`; returns the count.
    pub async fn wait_for(&self, expected: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.delivered.load(Relaxed);
            if n >= expected || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Samples the delivered count every `every` until `stop`: the deliveries-over-time
    /// line of `--svg`.
    pub fn sample_deliveries(&self, every: Duration) -> DeliverySampler {
        let delivered = self.delivered.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut samples = Vec::new();
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = &mut stopped => break,
                }
                samples.push((start.elapsed().as_secs_f64(), delivered.load(Relaxed)));
            }
            samples.push((start.elapsed().as_secs_f64(), delivered.load(Relaxed)));
            samples
        });
        DeliverySampler { stop, task }
    }

    /// Closes every client; returns the sorted latency samples in µs.
    pub async fn stop(mut self) -> Vec<u64> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let mut l = std::mem::take(&mut *self.latencies_us.lock());
        l.sort_unstable();
        l
    }
}

/// A running `Fleet::sample_deliveries`.
pub struct DeliverySampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(f64, u64)>>,
}

impl DeliverySampler {
    /// Ends the sampling; (seconds since it began, cumulative deliveries).
    pub async fn stop(self) -> Vec<(f64, u64)> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bench client's WebSocket to `url` (4 KiB read buffer).
pub async fn connect_ws(url: &str) -> anyhow::Result<Ws> {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .context("connect timeout")??;
    Ok(ws)
}

/// A bench client's WebSocket to `url` from the local address `source` (4 KiB read buffer).
async fn connect_ws_from(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let Some(source) = source else {
        return connect_ws(url).await;
    };
    let server: SocketAddr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.parse().ok())
        .with_context(|| format!("source addresses need a ws://IP:PORT/ URL, not {url}"))?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}"))?;
        let tcp = socket.connect(server).await?;
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .context("connect timeout")?
}

/// A `/ws` client subscribed to `bench`, connected from `source` (see [`Ramp`]).
async fn subscriber(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let mut ws = connect_ws_from(url, source).await?;
    let hello = next_text(&mut ws).await?;
    anyhow::ensure!(
        hello.contains("\"hello\""),
        "unexpected first frame {hello}"
    );
    ws.send(Message::Text(
        r#"{"op":"subscribe","channel":"bench"}"#.into(),
    ))
    .await?;
    let sub = next_text(&mut ws).await?;
    anyhow::ensure!(sub.contains("\"subscribed\""), "unexpected answer {sub}");
    Ok(ws)
}

pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no frame")?
            .context("closed")??;
        if let Message::Text(t) = msg {
            return Ok(t.to_string());
        }
    }
}

/// Publishes `rate` messages per second for `duration`; returns how many were accepted.
/// `progress` counts the attempts.
pub async fn publish(
    url: &str,
    rate: u32,
    duration: Duration,
    payload: usize,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let pad = "x".repeat(payload);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let total = (rate as u64) * duration.as_secs();
    let mut accepted = 0;
    for _ in 0..total {
        ticker.tick().await;
        let body = format!(
            r#"{{"channel":"bench","data":{{"t":{},"pad":"{pad}"}}}}"#,
            unix_us()
        );
        let r = http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        if r.status().is_success() {
            accepted += 1;
        }
        progress.inc(1);
    }
    Ok(accepted)
}

/// The publish time the benchmark put in `data.t`, found without parsing the whole frame.
fn sent_at_us(frame: &str) -> Option<u64> {
    let rest = &frame[frame.find("\"t\":")? + 4..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
