//! `wsgate connections`: the connections of a running server, as a table
//! (`GET /connections`, every page), and `wsgate connections show ID` (`GET /connections/{id}`).
//! With `--watch` the table is fetched again every `--interval` seconds and redrawn in place
//! on a terminal (in a pipe every refresh is appended, so logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::{Api, api_error, encode};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct ConnectionsArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// The server's HTTP address.
    #[arg(
        long,
        global = true,
        env = "WSGATE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API key, when the server requires one (`Authorization: Bearer`).
    #[arg(long, global = true, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Only this user's connections.
    #[arg(long)]
    user: Option<String>,
    /// Only connections subscribed to this channel.
    #[arg(long)]
    channel: Option<String>,
    /// Only gateway (clients) or upstream (managed outbound) connections.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Redraw the table every `--interval` seconds until interrupted (or `--count` refreshes).
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, default_value_t = 2.0, requires = "watch")]
    interval: f64,
    /// Stop after this many refreshes with `--watch`.
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

#[derive(Subcommand)]
enum Action {
    /// The debug view of one connection: uptime, heartbeat, counters, errors, state, owner.
    Show { id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Gateway,
    Upstream,
}

pub fn main(args: ConnectionsArgs) -> anyhow::Result<()> {
    super::block_on(run(args))?
}

async fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server, args.api_key.clone(), Duration::from_secs(10))?;
    match &args.action {
        Some(Action::Show { id }) => show(&api, id, args.json).await,
        None if args.watch => watch(&api, &args).await,
        None => list(&api, &args).await,
    }
}

async fn list(api: &Api, args: &ConnectionsArgs) -> anyhow::Result<()> {
    let all = fetch_all(api, args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(all))?);
    } else {
        print!("{}", table(&all));
        eprintln!("{} connection(s) on {}", all.len(), api.base);
    }
    Ok(())
}

/// Home the cursor and clear the screen: the next table replaces the last one.
const CLEAR: &str = "\x1b[H\x1b[2J";

async fn watch(api: &Api, args: &ConnectionsArgs) -> anyhow::Result<()> {
    let in_place = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(args.interval.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for refresh in 1u64.. {
        ticker.tick().await;
        let all = fetch_all(api, args).await?;
        let mut out = String::new();
        if in_place {
            out.push_str(CLEAR);
        } else if refresh > 1 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} connection(s) on {} · refresh {refresh} · every {}s{}\n\n",
            all.len(),
            api.base,
            args.interval,
            if in_place { " · Ctrl-C to stop" } else { "" },
        ));
        out.push_str(&table(&all));
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        if args.count.is_some_and(|c| refresh >= c) {
            break;
        }
    }
    Ok(())
}

/// Every page of `GET /connections` with the filters of `args`.
async fn fetch_all(api: &Api, args: &ConnectionsArgs) -> anyhow::Result<Vec<Value>> {
    let mut query = String::from("limit=1000");
    if let Some(u) = &args.user {
        query.push_str(&format!("&user={}", encode(u)));
    }
    if let Some(c) = &args.channel {
        query.push_str(&format!("&channel={}", encode(c)));
    }
    if let Some(k) = args.kind {
        let k = match k {
            Kind::Gateway => "gateway",
            Kind::Upstream => "upstream",
        };
        query.push_str(&format!("&kind={k}"));
    }
    let mut all = Vec::new();
    let mut missing = std::collections::BTreeSet::new();
    let mut offset = 0u64;
    loop {
        let (status, body) = api
            .get(&format!("/connections?{query}&offset={offset}"))
            .await?;
        if status != 200 {
            anyhow::bail!("{}", api_error(status, &body));
        }
        if let Some(page) = body["connections"].as_array() {
            all.extend(page.iter().cloned());
        }
        let nodes = body["missing_nodes"].as_array().into_iter().flatten();
        missing.extend(nodes.filter_map(Value::as_str).map(str::to_string));
        match body["next_offset"].as_u64() {
            Some(next) if next > offset => offset = next,
            _ => break,
        }
    }
    if !missing.is_empty() {
        let names: Vec<String> = missing.into_iter().collect();
        eprintln!(
            "warning: incomplete: node(s) {} did not answer in time",
            names.join(", ")
        );
    }
    Ok(all)
}

async fn show(api: &Api, id: &str, json: bool) -> anyhow::Result<()> {
    let (status, body) = api.get(&format!("/connections/{}", encode(id))).await?;
    if status != 200 {
        anyhow::bail!("{}", api_error(status, &body));
    }
    let conn = &body["connection"];
    if json {
        println!("{}", serde_json::to_string_pretty(conn)?);
        return Ok(());
    }
    let Some(fields) = conn.as_object() else {
        anyhow::bail!("unexpected answer: {body}");
    };
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in fields {
        let shown = match (k.as_str(), v) {
            ("uptime_ms" | "last_heartbeat_ms_ago", Value::Number(n)) => {
                format!("{n} ({})", human_ms(n.as_u64().unwrap_or(0)))
            }
            (_, Value::String(s)) => s.clone(),
            (_, Value::Null) => "-".to_string(),
            (_, Value::Array(a)) if a.is_empty() => "-".to_string(),
            (_, Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            (_, other) => other.to_string(),
        };
        println!("{k:width$}  {shown}");
    }
    Ok(())
}

/// `93s`, `4m12s`, `2h03m`.
fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

const COLUMNS: [&str; 11] = [
    "ID", "KIND", "USER", "STATE", "NODE", "UPTIME", "LAST HB", "SENT", "RECV", "QUEUE", "CHANNELS",
];

fn table(conns: &[Value]) -> String {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let rows: Vec<[String; 11]> = conns
        .iter()
        .map(|c| {
            let channels = c["channels"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            [
                s(&c["id"]),
                s(&c["kind"]),
                s(&c["user"]),
                s(&c["state"]),
                s(&c["node"]),
                human_ms(c["uptime_ms"].as_u64().unwrap_or(0)),
                human_ms(c["last_heartbeat_ms_ago"].as_u64().unwrap_or(0)),
                s(&c["messages_sent"]),
                s(&c["messages_received"]),
                s(&c["queue_depth"]),
                if channels.is_empty() {
                    "-".into()
                } else {
                    channels
                },
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&COLUMNS);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let c = serde_json::json!({"id":"c1-n","kind":"gateway","user":"alice","state":"open",
            "node":"n","uptime_ms":61_000,"last_heartbeat_ms_ago":500,"messages_sent":3,
            "messages_received":1,"queue_depth":0,"channels":["a","b"]});
        let t = table(&[c]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("USER"), lines[1].find("alice"));
        assert!(
            lines[1].contains("1m01s") && lines[1].ends_with("a,b"),
            "{t}"
        );
    }
}
