//! A TCP proxy the test controls, between wsgate nodes and the brokers they use
//! (redis-server, nats-server): it forwards, and on request cuts the link (closes every
//! connection and refuses new ones), stalls it (holds every byte, connections stay open),
//! delays every chunk, or restores it.
//!
//! A stall is what a partition that heals looks like to TCP (the bytes arrive late, none is
//! lost); a cut is what a reset or a refusing firewall looks like (the connections end).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the link does now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    Forward {
        delay: Duration,
    },
    /// Bytes are held until the link is restored.
    Stall,
    /// Connections are closed and new ones refused until the link is restored.
    Cut,
}

pub struct Proxy {
    pub port: u16,
    link: watch::Sender<Link>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, rx) = watch::channel(Link::Forward {
            delay: Duration::ZERO,
        });
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tasks = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Link::Cut {
                    continue; // dropped: refused
                }
                let rx = rx.clone();
                let mut list = tasks.lock().unwrap();
                list.retain(|t| !t.is_finished());
                list.push(tokio::spawn(connection(inbound, target, rx)));
            }
        });
        Self {
            port,
            link,
            conns,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `nats://` URL through the proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Holds every byte (both ways) until [`Self::restore`]; connections stay open.
    pub fn stall(&self) {
        self.link.send_replace(Link::Stall);
    }

    /// Forwards each chunk `delay` late (in order).
    pub fn delay(&self, delay: Duration) {
        self.link.send_replace(Link::Forward { delay });
    }

    /// Forwards again, at once.
    pub fn restore(&self) {
        self.delay(Duration::ZERO);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn connection(inbound: TcpStream, target: SocketAddr, rx: watch::Receiver<Link>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    // Either direction ending ends both (dropping the halves closes the sockets).
    tokio::select! {
        _ = pump(ri, wo, rx.clone()) => {}
        _ = pump(ro, wi, rx) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Wait while stalled; a cut ends the connection (the task is aborted too).
        let link = match rx.wait_for(|l| *l != Link::Stall).await {
            Ok(l) => *l,
            Err(_) => return,
        };
        match link {
            Link::Cut => return,
            Link::Forward { delay } if !delay.is_zero() => tokio::time::sleep(delay).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
