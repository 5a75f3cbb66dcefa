//! A real `socket.io-client` (npm, v4) driven from a test: `clients/socketio-tests/driver.mjs`
//! under Node, one JSON command per line in, one JSON line per socket happening out
//! (installed by `npm ci` in that folder: `.ci/run` does it, and so does the first test that
//! finds it missing, so that `cargo test` on a fresh clone needs nothing else).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::{spawn_piped, within};

/// The folder of the Node driver.
pub fn driver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/socketio-tests")
}

/// `npm ci` in `dir` unless its packages are there (once per test process; the tests of one
/// binary may start together), bounded like every other wait.
async fn install(dir: &std::path::Path) {
    static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = INSTALLING.lock().await;
    if dir.join("node_modules/socket.io-client").exists() {
        return;
    }
    let npm = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(std::time::Duration::from_secs(300), npm)
        .await
        .expect("`npm ci` for the Socket.IO driver took over 300 s")
        .expect("run npm (Node.js >= 20 with npm is needed for the Socket.IO tests)");
    assert!(
        status.success(),
        "`npm ci` in {} failed: {status}",
        dir.display()
    );
}

/// One Node process holding any number of named `socket.io-client` sockets.
pub struct SioDriver {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while looking for another one, oldest first.
    seen: VecDeque<Value>,
}

impl SioDriver {
    pub async fn start() -> Self {
        let dir = driver_dir();
        install(&dir).await;
        let mut child = spawn_piped(
            Command::new("node").arg(dir.join("driver.mjs")),
            Stdio::inherit(),
            "spawn node (Node.js >= 20 is needed)",
        );
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            stdin,
            lines,
            seen: VecDeque::new(),
        }
    }

    pub async fn cmd(&mut self, cmd: Value) {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// `io(url, opts)` as socket `name`; returns its `connect` or `connect_error` line.
    pub async fn connect(&mut self, name: &str, url: &str, opts: Value) -> Value {
        self.cmd(json!({"cmd": "connect", "name": name, "url": url, "opts": opts}))
            .await;
        self.next_where(&format!("{name} to connect"), |l| {
            l["name"] == name && (l["type"] == "connect" || l["type"] == "connect_error")
        })
        .await
    }

    /// `emitWithAck(event, args)` on socket `name`; returns the acknowledgement.
    pub async fn emit(&mut self, name: &str, event: &str, args: Value) -> Value {
        let tag = format!("{event}-{}", rand_tag());
        self.cmd(json!({"cmd": "emit", "name": name, "event": event, "args": args, "tag": tag}))
            .await;
        let line = self
            .next_where(&format!("the ack of {event}"), |l| {
                l["type"] == "ack" && l["tag"] == tag.as_str()
            })
            .await;
        assert!(
            line.get("error").is_none(),
            "{event} was not acknowledged: {line}"
        );
        line["ack"].clone()
    }

    /// The arguments of the next `event` socket `name` received.
    pub async fn event(&mut self, name: &str, event: &str) -> Vec<Value> {
        let line = self
            .next_where(&format!("{name} to get {event}"), |l| {
                l["type"] == "event" && l["name"] == name && l["event"] == event
            })
            .await;
        line["args"].as_array().cloned().unwrap_or_default()
    }

    /// The first line (earlier ones kept for later calls first) that `pred` accepts.
    pub async fn next_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i).unwrap();
        }
        within(what, async {
            loop {
                let line =
                    self.lines.next_line().await.unwrap().unwrap_or_else(|| {
                        panic!("the Node driver exited while waiting for {what}")
                    });
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                if pred(&v) {
                    return v;
                }
                self.seen.push_back(v);
            }
        })
        .await
    }

    /// Whether a line `pred` accepts was already read (no wait).
    pub fn saw(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.seen.iter().any(pred)
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
