//! Traffic with a ledger, for fault tests: publishers that post numbered publications
//! through the API and keep every accepted one (2xx: its epoch, offset and number), and
//! clients that follow a channel, resume by offset (`subscribe` + `since`) whenever their
//! connection ends or the test asks them to, and keep what they received and every gap
//! notice they were given. [`Ledger::account`] then says, for every accepted publication and
//! every client, whether it arrived, was covered by a notice the client saw, or was lost
//! without one.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::eventually_within;

/// A publication the API accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub epoch: String,
    pub offset: u64,
    pub seq: u64,
    pub at: Instant,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// (epoch, offset) → (publication number, when it arrived). The epoch is the one the
    /// client believes the message belongs to: a silent epoch switch shows as a loss.
    pub messages: HashMap<(String, u64), (u64, Instant)>,
    /// Publications covered by a gap notice: per epoch, ranges of offsets.
    pub covered: Vec<(String, RangeInclusive<u64>)>,
    /// Gap notices: `epoch_changed` and `gap` frames, `subscribed` answers with a `gap`.
    pub notices: u64,
    /// Messages at or below an offset already delivered in the same epoch.
    pub duplicates: u64,
    /// Subscriptions (the first and every resumption).
    pub subscriptions: u64,
    /// Where the client stands (epoch, last offset).
    position: Option<(String, u64)>,
}

impl Seen {
    fn cover(&mut self, epoch: &str, range: RangeInclusive<u64>) {
        self.covered.push((epoch.to_string(), range));
    }

    fn is_covered(&self, a: &Accepted) -> bool {
        self.covered
            .iter()
            .any(|(e, r)| *e == a.epoch && r.contains(&a.offset))
    }

    /// A `subscribed` answer (to a subscribe with `since` when `position` is known).
    fn subscribed(&mut self, f: &Value) {
        self.subscriptions += 1;
        let (epoch, offset) = stream_position(f);
        let Some((old_epoch, old)) = self.position.clone() else {
            self.position = Some((epoch, offset));
            return;
        };
        match f["gap"].as_str() {
            None if old_epoch == epoch => {}
            Some("history_truncated") => {
                self.notices += 1;
                // The replay that follows moves the position on; what it lacks is covered.
                self.cover(&epoch, old + 1..=offset);
            }
            // Another stream (epoch_changed, offset_ahead, or an unannounced switch, which a
            // correct server never answers as recovered).
            _ => self.switch(epoch, offset),
        }
    }

    /// A notice that the stream is another one from now on: what the client lacks of the
    /// old one, and the new one up to `offset`, are covered.
    fn switch(&mut self, epoch: String, offset: u64) {
        self.notices += 1;
        if let Some((old_epoch, old)) = self.position.take() {
            self.cover(&old_epoch, old + 1..=u64::MAX);
        }
        self.cover(&epoch, 1..=offset);
        self.position = Some((epoch, offset));
    }

    /// `gap`: what this client lacks of `epoch` up to `offset` is lost, and said so.
    fn gap(&mut self, f: &Value) {
        self.notices += 1;
        let (epoch, offset) = stream_position(f);
        match &mut self.position {
            Some((e, last)) if *e == epoch => {
                let from = *last + 1;
                *last = (*last).max(offset);
                self.cover(&epoch, from..=offset);
            }
            _ => self.cover(&epoch, 1..=offset),
        }
    }

    fn message(&mut self, f: &Value) {
        let offset = f["offset"].as_u64().unwrap_or(0);
        let seq = f["data"]["seq"].as_u64().unwrap_or(u64::MAX);
        let Some((epoch, last)) = &mut self.position else {
            return;
        };
        if offset <= *last {
            self.duplicates += 1;
        }
        *last = (*last).max(offset);
        self.messages
            .insert((epoch.clone(), offset), (seq, Instant::now()));
    }

    fn since(&self) -> Option<Value> {
        self.position
            .as_ref()
            .map(|(epoch, offset)| json!({"offset": offset, "epoch": epoch}))
    }
}

/// The `epoch` and `offset` of a frame.
fn stream_position(f: &Value) -> (String, u64) {
    let epoch = f["epoch"].as_str().unwrap_or_default().to_string();
    (epoch, f["offset"].as_u64().unwrap_or(0))
}

/// Publishers and resuming clients on one channel.
pub struct Ledger {
    pub channel: String,
    pub accepted: Arc<Mutex<Vec<Accepted>>>,
    /// Publish requests that got no 2xx (refused, failed or timed out).
    pub refused: Arc<AtomicU64>,
    pub clients: Vec<Arc<Mutex<Seen>>>,
    resume: Vec<Arc<Notify>>,
    stop_publishing: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    publishers: Vec<JoinHandle<()>>,
}

/// What [`Ledger::account`] found.
#[derive(Debug, Default, Clone)]
pub struct Account {
    pub accepted: usize,
    /// Accepted publications times clients that received them.
    pub delivered: usize,
    /// Accepted publications times clients that did not receive them but saw a notice
    /// covering them.
    pub covered: usize,
    /// Accepted publications times clients that neither received them nor saw a notice.
    pub lost: usize,
    /// Received messages whose number differs from what the API accepted at that position.
    pub wrong: usize,
    pub notices: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// Examples of losses, for the failure message.
    pub examples: Vec<String>,
}

impl Ledger {
    /// `clients` WebSocket URLs (one client each) following `channel`, subscribed before
    /// this returns; nothing is published yet.
    pub async fn follow(channel: &str, clients: &[String]) -> Self {
        let (stop_publishing, _) = watch::channel(false);
        let mut ledger = Self {
            channel: channel.to_string(),
            accepted: Arc::default(),
            refused: Arc::default(),
            clients: Vec::new(),
            resume: Vec::new(),
            stop_publishing,
            tasks: Vec::new(),
            publishers: Vec::new(),
        };
        for url in clients {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let resume = Arc::new(Notify::new());
            ledger.tasks.push(tokio::spawn(follow(
                url.clone(),
                channel.to_string(),
                seen.clone(),
                resume.clone(),
            )));
            ledger.clients.push(seen);
            ledger.resume.push(resume);
        }
        let clients = ledger.clients.clone();
        eventually_within("every client subscribed", crate::WAIT, || {
            let all = clients.iter().all(|c| c.lock().unwrap().position.is_some());
            async move { all.then_some(()) }
        })
        .await;
        ledger
    }

    /// Starts one publisher per API base URL (`http://host:port`), each posting the next
    /// number every `pace`, one request at a time.
    pub fn publish(&mut self, apis: &[String], pace: Duration) {
        let next = Arc::new(AtomicU64::new(0));
        for api in apis {
            let url = format!("{api}/api/v1/publish");
            let channel = self.channel.clone();
            let (accepted, refused, next) =
                (self.accepted.clone(), self.refused.clone(), next.clone());
            let mut stop = self.stop_publishing.subscribe();
            self.publishers.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .unwrap();
                while !*stop.borrow() {
                    let seq = next.fetch_add(1, Relaxed);
                    let body = json!({"channel": channel, "data": {"seq": seq}});
                    let answer = http.post(&url).json(&body).send().await;
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap_or_default();
                            accepted.lock().unwrap().push(Accepted {
                                epoch: v["epoch"].as_str().unwrap_or_default().to_string(),
                                offset: v["offset"].as_u64().unwrap_or(0),
                                seq,
                                at: Instant::now(),
                            });
                        }
                        _ => {
                            refused.fetch_add(1, Relaxed);
                        }
                    }
                    // Pacing, not synchronisation: a steady stream through the fault.
                    tokio::select! {
                        _ = tokio::time::sleep(pace) => {}
                        _ = stop.changed() => {}
                    }
                }
            }));
        }
    }

    /// Publications accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Waits until `n` more publications than now were accepted (bounded by `limit`).
    pub async fn await_accepted(&self, more: usize, limit: Duration) {
        let target = self.accepted_count() + more;
        eventually_within("publications accepted", limit, || {
            let n = self.accepted_count();
            async move { (n >= target).then_some(()) }
        })
        .await;
    }

    /// Makes client `i` drop its connection and resume by offset.
    pub fn resume(&self, i: usize) {
        self.resume[i].notify_one();
    }

    /// Stops the publishers and waits until every accepted publication reached every
    /// client or is covered by a notice it saw (bounded by `limit`; what is missing then
    /// shows in the account).
    pub async fn finish(&mut self, limit: Duration) -> Account {
        self.stop_publishing.send_replace(true);
        for p in self.publishers.drain(..) {
            let _ = p.await;
        }
        // Not `eventually`: running out of time is an outcome here (the account shows it),
        // not a test failure of its own.
        let _ = tokio::time::timeout(limit, async {
            while self.account().lost > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        self.account()
    }

    pub fn account(&self) -> Account {
        let accepted = self.accepted.lock().unwrap();
        let by_position: HashMap<(&str, u64), u64> = accepted
            .iter()
            .map(|a| ((a.epoch.as_str(), a.offset), a.seq))
            .collect();
        let mut acc = Account {
            accepted: accepted.len(),
            refused: self.refused.load(Relaxed),
            ..Account::default()
        };
        for (i, client) in self.clients.iter().enumerate() {
            let seen = client.lock().unwrap();
            acc.notices += seen.notices;
            acc.duplicates += seen.duplicates;
            for ((epoch, offset), (seq, _)) in &seen.messages {
                if by_position
                    .get(&(epoch.as_str(), *offset))
                    .is_some_and(|s| s != seq)
                {
                    acc.wrong += 1;
                }
            }
            for a in accepted.iter() {
                match seen.messages.get(&(a.epoch.clone(), a.offset)) {
                    Some((seq, _)) if *seq == a.seq => acc.delivered += 1,
                    _ if seen.is_covered(a) => acc.covered += 1,
                    _ => {
                        acc.lost += 1;
                        if acc.examples.len() < 5 {
                            acc.examples.push(format!(
                                "client {i}: seq {} at {}/{} (client at {:?})",
                                a.seq, a.epoch, a.offset, seen.position
                            ));
                        }
                    }
                }
            }
        }
        acc
    }

    /// Time from `since` until the first publication accepted after it had reached every
    /// client (the delivery path's recovery after a fault ends).
    pub fn recovery_after(&self, since: Instant) -> Option<Duration> {
        let accepted = self.accepted.lock().unwrap();
        let seen: Vec<_> = self.clients.iter().map(|c| c.lock().unwrap()).collect();
        accepted.iter().filter(|a| a.at >= since).find_map(|a| {
            let key = (a.epoch.clone(), a.offset);
            let arrivals: Option<Vec<Instant>> = seen
                .iter()
                .map(|s| s.messages.get(&key).map(|(_, at)| *at))
                .collect();
            arrivals
                .and_then(|t| t.into_iter().max())
                .map(|t| t - since)
        })
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.publishers) {
            t.abort();
        }
    }
}

/// One client: connects, subscribes (with `since` once it has a position), records, and
/// starts over when the connection ends or `resume` is notified.
async fn follow(url: String, channel: String, seen: Arc<Mutex<Seen>>, resume: Arc<Notify>) {
    loop {
        let ws = match tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (mut tx, mut rx) = ws.split();
        let subscribe = || {
            let since = seen.lock().unwrap().since();
            let mut f = json!({"op":"subscribe","channel":channel});
            if let Some(since) = since {
                f["since"] = since;
            }
            Message::Text(f.to_string().into())
        };
        if tx.send(subscribe()).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::select! {
                f = rx.next() => f,
                _ = resume.notified() => break,
            };
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                _ => break,
            };
            let f: Value = serde_json::from_str(&text).unwrap_or_default();
            match f["op"].as_str() {
                Some("subscribed") => seen.lock().unwrap().subscribed(&f),
                Some("epoch_changed") => {
                    let (epoch, offset) = stream_position(&f);
                    seen.lock().unwrap().switch(epoch, offset);
                }
                Some("gap") => seen.lock().unwrap().gap(&f),
                Some("message") => seen.lock().unwrap().message(&f),
                // A refused subscribe (the broker is down): ask again shortly.
                Some("error") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if tx.send(subscribe()).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
}
