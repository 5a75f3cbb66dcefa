//! `wsgate doctor URL`: the seed guides' checks against a live deployment, each printed as
//! PASS, WARN or FAIL with the likely cause and the fix, in the order an on-call engineer
//! would run them by hand: DNS, TCP, TLS, the 101 upgrade, hello, ping, an idle hold against
//! proxy timeouts, cross-node delivery; then the HTTP API (`--api`) and Redis (`--redis`).
//!
//! Every check is a small function returning a [`CheckResult`]; printing is separate.
//! Exit code 0 when nothing failed (warnings allowed), 1 on any FAIL.

mod api;
mod raw_upgrade;
mod redis;
mod tls;
mod ws;

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::{Api, parse_duration};

/// Where the runbook lives; anchors are its section headings.
pub const RUNBOOK: &str = "docs/operations.md";

#[derive(Args)]
pub struct DoctorArgs {
    /// The WebSocket URL clients use, e.g. ws://wsgate.example.com/ws (add ?token=… for JWT).
    url: String,
    /// The wsgate HTTP API (e.g. http://127.0.0.1:8080, `kubectl port-forward deploy/wsgate 8080`):
    /// enables /ready, /version, metrics and upstream checks, and the delivery check.
    #[arg(long)]
    api: Option<String>,
    /// API key for the control API.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Redis URL of the cluster store (redis://host:6379/0, rediss:// for TLS): enables the
    /// store checks.
    #[arg(long)]
    redis: Option<String>,
    /// `rediss://` signed by a private CA: PEM file of the CA to trust (instead of the
    /// platform's roots), as the nodes' `redis_ca_file`.
    #[arg(long)]
    redis_ca_file: Option<std::path::PathBuf>,
    /// Key prefix of the cluster's Redis keys. Records are `{prefix}:websocket-<id>` in the
    /// set `{prefix}:websocket-index`; an empty prefix gives seed 000's bare layout.
    #[arg(long, default_value = "wsgate")]
    key_prefix: String,
    /// How long to hold an idle connection to detect proxy read timeouts.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    idle: Duration,
    /// Time between the two /metrics reads that give rates (0 = judge totals only).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample: Duration,
    /// Limit for each network step (connect, answer, frame).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Extra handshake header, `Name: value` (repeatable), e.g. `Authorization: Bearer …`.
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    headers: Vec<String>,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One check's verdict. `cause` and `fix` are for WARN and FAIL; `runbook` links a section.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
}

impl CheckResult {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            status,
            detail: detail.into(),
            cause: None,
            fix: None,
            runbook: None,
        }
    }
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail)
    }
    pub fn warn(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail)
    }
    pub fn fail(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail)
    }
    pub fn cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
    /// A section of the runbook, by its heading's anchor.
    pub fn runbook(mut self, anchor: &str) -> Self {
        self.runbook = Some(format!("{RUNBOOK}#{anchor}"));
        self
    }
}

/// Collects results and, for people, prints each as it arrives.
struct Report {
    json: bool,
    checks: Vec<CheckResult>,
}

impl Report {
    fn push(&mut self, c: CheckResult) {
        if !self.json {
            print!("{}", render(&c));
        }
        self.checks.push(c);
    }

    fn extend(&mut self, cs: impl IntoIterator<Item = CheckResult>) {
        for c in cs {
            self.push(c);
        }
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }
}

/// The string fields `keys` of a server answer `v`, "?" where one is missing: the details name
/// what the server said without failing on an older or foreign answer.
pub fn fields<'a, const N: usize>(v: &'a serde_json::Value, keys: [&str; N]) -> [&'a str; N] {
    keys.map(|k| v[k].as_str().unwrap_or("?"))
}

pub fn render(c: &CheckResult) -> String {
    let status = match c.status {
        Status::Pass => "PASS",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    };
    let mut out = format!("{status}  {:<16} {}\n", c.name, c.detail);
    for (label, v) in [("cause", &c.cause), ("fix", &c.fix), ("see", &c.runbook)] {
        if let Some(v) = v {
            out.push_str(&format!("      {label:<6} {v}\n"));
        }
    }
    out
}

pub fn main(args: DoctorArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = super::block_on(run(args))?;
    let (pass, warn, fail) = (
        report.count(Status::Pass),
        report.count(Status::Warn),
        report.count(Status::Fail),
    );
    if json {
        let out = json!({
            "ok": fail == 0,
            "summary": {"pass": pass, "warn": warn, "fail": fail},
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("\n{pass} passed, {warn} warning(s), {fail} failed");
    }
    if fail > 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: DoctorArgs) -> Report {
    let mut r = Report {
        json: args.json,
        checks: Vec::new(),
    };
    let progress = !args.json && std::io::stderr().is_terminal();
    let api = match args
        .api
        .as_deref()
        .map(|a| Api::new(a, args.api_key.clone(), args.timeout))
    {
        Some(Ok(api)) => Some(api),
        Some(Err(e)) => {
            r.push(CheckResult::fail("api", e.to_string()).fix("pass --api http://HOST:PORT"));
            None
        }
        None => None,
    };

    // The client's path: DNS, TCP, TLS, upgrade, hello, ping, idle hold, delivery.
    let opts = ws::Opts {
        url: args.url.clone(),
        headers: args.headers.clone(),
        timeout: args.timeout,
    };
    ws::client_path(&opts, args.idle, progress, api.as_ref(), &mut |c| r.push(c)).await;

    if let Some(api) = &api {
        r.extend(api::checks(api, args.sample).await);
    }
    if let Some(url) = &args.redis {
        let target = redis::Target {
            url,
            ca_file: args.redis_ca_file.as_deref(),
        };
        r.extend(redis::checks(&target, &args.key_prefix, args.timeout).await);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every runbook link the checks print names a heading of docs/operations.md.
    #[test]
    fn runbook_links_resolve() {
        let doc = include_str!("../../../../docs/operations.md");
        let slugs: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| {
                h.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect();
        let mut linked = 0;
        for src in [
            include_str!("doctor/ws.rs"),
            include_str!("doctor/api.rs"),
            include_str!("doctor/redis.rs"),
        ] {
            // `.runbook("anchor")`, and `const X: &str = "anchor";` used as `.runbook(X)`.
            let literal = src
                .split("runbook(\"")
                .skip(1)
                .filter_map(|p| p.split('"').next());
            let consts = src.split("const ").skip(1).filter_map(|p| {
                let (name, rest) = p.split_once(": &str = \"")?;
                let value = rest.split('"').next()?;
                src.contains(&format!("runbook({name})")).then_some(value)
            });
            for anchor in literal.chain(consts) {
                linked += 1;
                assert!(
                    slugs.iter().any(|s| s == anchor),
                    "docs/operations.md has no #{anchor}"
                );
            }
        }
        assert!(linked >= 9, "found {linked} links");
    }

    #[test]
    fn render_shows_cause_fix_and_runbook() {
        let c = CheckResult::fail("tcp", "refused")
            .cause("nothing listens")
            .fix("start it")
            .runbook("x");
        let s = render(&c);
        assert!(s.starts_with("FAIL  tcp"), "{s}");
        assert!(s.contains("cause  nothing listens") && s.contains("fix    start it"));
        assert!(s.contains("see    docs/operations.md#x"), "{s}");
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["status"], "FAIL");
    }
}
