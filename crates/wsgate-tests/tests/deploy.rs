//! The deployment artifacts under `deploy/` stay honest.
//!
//! - Every metric that `deploy/prometheus/alerts.yaml` and `deploy/grafana/wsgate.json`
//!   query is exported by a running wsgate (with the label names they match or group on):
//!   renaming a metric in `metrics.rs` without updating them fails here.
//! - Every alert has a severity, a summary and a runbook link to a heading that exists in
//!   `docs/operations.md`.
//! - The Helm chart: helm is not installable from this project's package sources, so the
//!   chart is checked without rendering it: `values.yaml` parses, every `.Values.…` path a
//!   template uses exists in it, template actions balance, each manifest parses as YAML once
//!   its template actions are stripped, every `WSGATE_*` variable it sets is a real setting,
//!   and the facts the seeds require hold (probes, drain timing, instance id, Service
//!   affinity, ingress annotations, secrets, PDB).
//! - The Kustomize base (`deploy/kubernetes`) is what the chart installs with its default
//!   values: the chart is rendered here (`helm_render`) and compared object by object
//!   (env defaults, ports, probes, enableServiceLinks, ingress paths, ...). The renders (the
//!   defaults, and one with gRPC, JWT RS256, NATS and cluster mode on) are validated with
//!   `kubernetes-validate`, as deploy/check.sh validates the rendered Kustomize base.
//! - The Dockerfile keeps its non-root user, listener, port and HEALTHCHECK.

#[path = "deploy/helm_render.rs"]
mod helm_render;
use wsgate_tests as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(text: &str, what: &str) -> Value {
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"));
    serde_json::to_value(v).unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------
// PromQL: which metrics and labels an expression uses
// ---------------------------------------------------------------------------------------

/// What one PromQL expression refers to.
#[derive(Debug, Default)]
struct PromRefs {
    /// Metric name → label names it is matched on (`{reason!="shutdown"}`).
    metrics: BTreeMap<String, BTreeSet<String>>,
    /// Labels in `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`.
    grouping: BTreeSet<String>,
}

const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
];
const PROMQL_GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the closing `close` of a group opened at `i` (strings skipped).
fn skip_group(s: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => i = skip_string(s, i) - 1,
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        s.iter().collect::<String>()
    );
}

fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Label names at the start of each comma-separated item of `{…}` or `(…)`.
fn label_names(inner: &[char]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut expect_name = true;
    while i < inner.len() {
        let c = inner[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(inner, i);
            continue;
        }
        if c == ',' {
            expect_name = true;
        } else if expect_name && is_ident_start(c) {
            let start = i;
            while i < inner.len() && is_ident(inner[i]) {
                i += 1;
            }
            out.insert(inner[start..i].iter().collect());
            expect_name = false;
            continue;
        }
        i += 1;
    }
    out
}

fn promql_refs(expr: &str) -> PromRefs {
    let s: Vec<char> = expr.chars().collect();
    let mut refs = PromRefs::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            i = skip_group(&s, i, '[', ']');
        } else if c == '{' {
            // A selector without a metric name, e.g. {__name__=~"…"}: not used here.
            i = skip_group(&s, i, '{', '}');
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 0.99, 1e3, 5m.
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
        } else if c == '$' {
            // Grafana variables.
            i += 1;
            while i < s.len() && (is_ident(s[i]) || s[i] == '{' || s[i] == '}') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_ws(&s, i);
            let next_char = s.get(next).copied();
            if PROMQL_GROUPING.contains(&word.as_str()) {
                if next_char == Some('(') {
                    let end = skip_group(&s, next, '(', ')');
                    refs.grouping.extend(label_names(&s[next + 1..end - 1]));
                    i = end;
                }
            } else if PROMQL_KEYWORDS.contains(&word.as_str()) || next_char == Some('(') {
                // An aggregation, operator keyword or function call.
            } else {
                let labels = refs.metrics.entry(word).or_default();
                if next_char == Some('{') {
                    let end = skip_group(&s, next, '{', '}');
                    labels.extend(label_names(&s[next + 1..end - 1]));
                    i = end;
                }
            }
        } else {
            i += 1;
        }
    }
    refs
}

#[test]
fn promql_reference_extraction() {
    let r = promql_refs(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(websocket_delivery_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) > 0.5"#,
    );
    assert_eq!(
        r.metrics.keys().collect::<Vec<_>>(),
        ["websocket_delivery_latency_seconds_bucket"]
    );
    assert_eq!(
        r.metrics["websocket_delivery_latency_seconds_bucket"],
        BTreeSet::from(["instance".to_string()])
    );
    assert_eq!(
        r.grouping,
        BTreeSet::from(["instance".to_string(), "le".to_string()])
    );
    let r = promql_refs(
        "sum(rate(a_total{reason!=\"x,y\"}[5m])) by (reason) / on(instance) group_left b offset 5m and up{job=~\".*\"} == 0",
    );
    assert_eq!(r.metrics.keys().collect::<Vec<_>>(), ["a_total", "b", "up"]);
    assert_eq!(r.metrics["a_total"], BTreeSet::from(["reason".to_string()]));
    assert!(r.grouping.contains("reason") && r.grouping.contains("instance"));
}

// ---------------------------------------------------------------------------------------
// What the artifacts reference
// ---------------------------------------------------------------------------------------

/// (where, expression) for every alert rule.
fn alert_exprs() -> Vec<(String, String)> {
    let rules = yaml(&read("deploy/prometheus/alerts.yaml"), "alerts.yaml");
    let groups = rules["groups"].as_array().expect("alerts.yaml: groups");
    assert!(!groups.is_empty());
    let mut out = Vec::new();
    for g in groups {
        for r in g["rules"].as_array().expect("group rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("a rule has alert or record");
            let expr = r["expr"].as_str().expect("a rule has expr");
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    out
}

fn collect_exprs(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let here = format!("{path}/{k}");
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) if !e.trim().is_empty() => {
                        out.push((here, e.clone()))
                    }
                    ("definition" | "query", Value::String(q)) => {
                        // Template variables: label_values(metric, label).
                        if let Some(args) = q
                            .trim()
                            .strip_prefix("label_values(")
                            .and_then(|a| a.strip_suffix(')'))
                            && let Some((metric, _label)) = args.split_once(',')
                        {
                            out.push((here, metric.trim().to_string()));
                        }
                    }
                    _ => collect_exprs(v, &here, out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_exprs(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let text = read("deploy/grafana/wsgate.json");
    let dash: Value = serde_json::from_str(&text).expect("wsgate.json is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    assert!(
        dash["panels"].as_array().is_some_and(|p| p.len() > 5),
        "the dashboard has panels"
    );
    let mut out = Vec::new();
    collect_exprs(&dash, "wsgate.json", &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// What a running wsgate exports
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Exported {
    /// Series names a query can select, from `# TYPE` lines and from samples.
    names: BTreeSet<String>,
    /// Series name → label names seen on its samples.
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn exported(text: &str) -> Exported {
    let mut e = Exported::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                e.names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            e.names.insert(name.to_string());
            let labels = e.labels.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                let close = line.rfind('}').expect("closed label set");
                let inner: Vec<char> = line[end + 1..close].chars().collect();
                labels.extend(label_names(&inner));
            }
        }
    }
    e
}

/// Series Prometheus itself adds to every target.
const SYNTHETIC: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_series_added",
];
/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Makes every labelled family have at least one sample: a refused upgrade, a connection
/// that subscribes, receives a publication, sends a bad frame, recovers with `since`, and
/// closes.
async fn exercise(srv: &TestServer) {
    let r = http().get(srv.http("/ws")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "a plain GET /ws is refused");

    let mut c = Client::subscribed(&srv.ws_url(), "deploy:check").await;
    let (status, body) = srv
        .post(
            "/api/v1/publish",
            json!({"channel":"deploy:check","data":{"n":1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.recv().await["op"], "message");

    c.send_text("not json").await;
    assert_eq!(c.recv().await["op"], "error");

    let r = c
        .request(
            json!({"op":"subscribe","channel":"deploy:since","since":{"offset":3,"epoch":"gone"}}),
        )
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");

    c.ws.close(None).await.unwrap();
    srv.await_metric(
        "websocket_disconnections_total{reason=\"client_closed\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn every_metric_in_alerts_and_dashboard_is_exported() {
    let mut exprs = alert_exprs();
    assert!(
        exprs.len() >= 8,
        "alerts.yaml has seed 003's rules and more"
    );
    exprs.extend(dashboard_exprs());

    let srv = TestServer::start().await;
    exercise(&srv).await;
    let text = srv.metrics().await;
    srv.shutdown().await;
    let used = check_exported(&exprs, &text);
    // The core series of seed 003 are covered by both the alerts and the dashboard.
    for m in [
        "websocket_connections_total",
        "websocket_disconnections_total",
        "websocket_heartbeat_failures_total",
        "websocket_slow_consumers_total",
        "websocket_delivery_latency_seconds_bucket",
        "wsgate_broker_errors_total",
        "wsgate_store_errors_total",
    ] {
        assert!(used.contains(m), "nothing in deploy/ watches {m}");
    }
}

/// A node that has seen no traffic at all already exports every series (and label) the
/// alerts and the dashboard use: each known label value starts at 0, so a rule over
/// `wsgate_recoveries_total` has a series on a healthy node.
#[tokio::test]
async fn a_fresh_node_exports_every_metric_in_alerts_and_dashboard() {
    let mut exprs = alert_exprs();
    exprs.extend(dashboard_exprs());
    let node = Process::spawn(&[]).await;
    let text = get_text(&format!("http://{}/metrics", node.addr)).await;
    check_exported(&exprs, &text);
    for series in [
        "wsgate_recoveries_total{reason=\"epoch_changed\"}",
        "websocket_disconnections_total{reason=\"heartbeat_timeout\"}",
        "websocket_protocol_errors_total{code=\"invalid_json\"}",
        "websocket_connection_rejections_total{reason=\"ip_rate\"}",
        "wsgate_api_rejections_total{reason=\"unauthorized\"}",
    ] {
        assert_eq!(
            metric_value(&text, series),
            Some(0.0),
            "{series} in:\n{text}"
        );
    }
}

/// Asserts every metric and label `exprs` use is in the scrape `text`; returns the metrics
/// used.
fn check_exported(exprs: &[(String, String)], text: &str) -> BTreeSet<String> {
    let exp = exported(text);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (where_, expr) in exprs {
        let refs = promql_refs(expr);
        if refs.metrics.is_empty() {
            problems.push(format!("{where_}: no metric found in {expr:?}"));
        }
        let mut expr_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (metric, labels) in &refs.metrics {
            used.insert(metric.clone());
            if SYNTHETIC.contains(&metric.as_str()) {
                expr_labels.extend(labels.iter().map(String::as_str));
                continue;
            }
            if !exp.names.contains(metric) {
                problems.push(format!(
                    "{where_}: metric {metric} is not exported by wsgate"
                ));
                continue;
            }
            let have = exp.labels.get(metric).cloned().unwrap_or_default();
            for l in labels {
                if !have.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    problems.push(format!(
                        "{where_}: {metric} has no label {l} (it has {have:?})"
                    ));
                }
            }
            expr_labels.extend(
                exp.labels
                    .get(metric)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        for l in &refs.grouping {
            if !expr_labels.contains(l.as_str()) {
                problems.push(format!(
                    "{where_}: groups by {l}, which none of its metrics has"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/ refers to series wsgate does not export:\n  {}\n\nexported:\n{text}",
        problems.join("\n  ")
    );
    used
}

// ---------------------------------------------------------------------------------------
// Alerts → runbook
// ---------------------------------------------------------------------------------------

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_severity_summary_and_a_runbook_section() {
    let doc = read("docs/operations.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let rules = yaml(&read("deploy/prometheus/alerts.yaml"), "alerts.yaml");
    let mut names = BTreeSet::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().expect("alert name");
            assert!(names.insert(name.to_string()), "duplicate alert {name}");
            let sev = r["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&sev),
                "{name}: severity {sev:?}"
            );
            assert!(
                r["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            let runbook = r["annotations"]["runbook"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no runbook annotation"));
            let frag = runbook
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| {
                    panic!("{name}: runbook {runbook} is not in docs/operations.md")
                });
            assert!(
                anchors.contains(frag),
                "{name}: docs/operations.md has no heading #{frag}"
            );
        }
    }
    // Seed 003's three rules, under their seed names.
    for seed in [
        "WebSocketConnectionStorm",
        "HighWebSocketDisconnectionRate",
        "WebSocketHeartbeatFailures",
    ] {
        assert!(names.contains(seed), "seed 003's {seed} is missing");
    }
}

#[test]
fn runbook_lists_every_close_code_and_disconnect_reason() {
    let doc = read("docs/operations.md");
    for code in [
        "1001", "1002", "1007", "1008", "1009", "1011", "4001", "4003", "4008", "4029",
    ] {
        assert!(doc.contains(&format!("| {code} ")), "close code {code}");
    }
    // The `reason` labels of websocket_disconnections_total, as the code passes them to
    // request_close / Ending; grep the sources so a new reason shows up here.
    let mut reasons = BTreeSet::new();
    for src in [
        "crates/wsgate-server/src/ws/task.rs",
        "crates/wsgate-core/src/gateway/mod.rs",
        "crates/wsgate-core/src/gateway/session.rs",
    ] {
        let text = read(src);
        for pat in ["Ending::quiet(\"", "reason: \"", "request_close("] {
            for (i, _) in text.match_indices(pat) {
                let tail = &text[i + pat.len()..];
                let literal = if pat == "request_close(" {
                    // request_close(code, "reason", message)
                    tail.split('"').nth(1)
                } else {
                    tail.split('"').next()
                };
                if let Some(r) = literal.filter(|r| {
                    !r.is_empty() && r.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) {
                    reasons.insert(r.to_string());
                }
            }
        }
        // read_error's table: ("message_too_big", close::MESSAGE_TOO_BIG)
        for (i, _) in text.match_indices("(\"") {
            let tail = &text[i + 2..];
            if let Some((r, rest)) = tail.split_once('"')
                && rest.trim_start().starts_with(", close::")
            {
                reasons.insert(r.to_string());
            }
        }
    }
    for expected in ["client_closed", "heartbeat_timeout", "shutdown", "kicked"] {
        assert!(reasons.contains(expected), "grep found {reasons:?}");
    }
    for r in &reasons {
        assert!(
            doc.contains(&format!("`{r}`")),
            "docs/operations.md does not explain disconnect reason `{r}`"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------

const CHART: &str = "deploy/helm/wsgate";

/// Every `.Values.a.b` path in a template.
fn values_paths(template: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in template.match_indices(".Values.") {
        let tail = &template[i + ".Values.".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].trim_end_matches('.').to_string());
    }
    out
}

/// The manifest with template actions removed: lines that are only an action go, inline
/// actions become a placeholder scalar. Conditional blocks keep both branches, which the
/// chart is written to allow (no branch repeats a key of the other).
fn strip_template(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("{{") && t.ends_with("}}") && t.matches("{{").count() == 1 {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("closed action") + start + 2;
            out.push_str("TEMPLATED");
            rest = &rest[end..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(values, |v, key| v.as_object()?.get(key))
}

fn config_env_names() -> BTreeSet<String> {
    let cfg = serde_json::to_value(wsgate_server::Config::default()).unwrap();
    let mut out = BTreeSet::from(["WSGATE_LOG".to_string(), "WSGATE_CONFIG".to_string()]);
    for (k, v) in cfg.as_object().unwrap() {
        out.insert(format!("WSGATE_{}", k.to_uppercase()));
        if let Some(inner) = v.as_object() {
            for k2 in inner.keys() {
                out.insert(format!(
                    "WSGATE_{}__{}",
                    k.to_uppercase(),
                    k2.to_uppercase()
                ));
            }
        }
    }
    out
}

#[test]
fn helm_chart_is_consistent() {
    let chart = yaml(&read(&format!("{CHART}/Chart.yaml")), "Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "wsgate");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion follows the workspace version"
    );
    let values = yaml(&read(&format!("{CHART}/values.yaml")), "values.yaml");
    assert!(values.is_object());

    let dir = repo().join(CHART).join("templates");
    let mut manifests: BTreeMap<String, Value> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}: unbalanced {{{{ }}}}"
        );
        let opens = [
            "{{- if ",
            "{{ if ",
            "{{- range ",
            "{{ range ",
            "{{- with ",
            "{{ with ",
        ]
        .iter()
        .chain(&["{{- define ", "{{ define "])
        .map(|p| text.matches(p).count())
        .sum::<usize>();
        let ends = text.matches("{{- end").count() + text.matches("{{ end").count();
        assert_eq!(
            opens, ends,
            "{name}: if/range/with/define and end do not pair"
        );
        for p in values_paths(&text) {
            assert!(
                lookup(&values, &p).is_some(),
                "{name} uses .Values.{p}, which values.yaml does not define"
            );
        }
        if name.ends_with(".yaml") {
            let doc = yaml(
                &strip_template(&text),
                &format!("templates/{name} (stripped)"),
            );
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no kind"))
                .to_string();
            assert!(doc["apiVersion"].is_string(), "{name}: no apiVersion");
            manifests.insert(kind, doc);
        }
    }
    for kind in [
        "Deployment",
        "Service",
        "Ingress",
        "Secret",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "ServiceAccount",
    ] {
        assert!(manifests.contains_key(kind), "the chart has no {kind}");
    }

    // Values follow the binary's defaults (seed 003's heartbeat) and the drain fits.
    let defaults = wsgate_server::Config::default();
    let cfg = &values["config"];
    assert_eq!(
        cfg["heartbeatIntervalMs"],
        defaults.gateway.heartbeat_interval_ms
    );
    assert_eq!(
        cfg["heartbeatTimeoutMs"],
        defaults.gateway.heartbeat_timeout_ms
    );
    assert_eq!(cfg["drainTimeoutMs"], defaults.drain_timeout_ms);
    assert_eq!(values["probes"]["readiness"]["path"], "/ready");
    assert_eq!(values["probes"]["liveness"]["path"], "/health");
    let grace = values["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = values["lifecycle"]["preStopSleepSeconds"].as_u64().unwrap();
    let drain_s = cfg["drainTimeoutMs"].as_u64().unwrap().div_ceil(1000);
    // run(): drain, then up to 5 s for HTTP connections to finish.
    assert!(
        grace >= pre_stop + drain_s + 5,
        "terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {drain_s} + 5"
    );
    assert_eq!(values["metrics"]["serviceMonitor"]["enabled"], false);
    assert_eq!(values["podDisruptionBudget"]["enabled"], true);

    // Deployment.
    let dep = &manifests["Deployment"];
    let dep_text = read(&format!("{CHART}/templates/deployment.yaml"));
    let pod = &dep["spec"]["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].is_string());
    let c = &pod["containers"][0];
    assert!(c["readinessProbe"]["httpGet"]["port"] == "http");
    assert!(c["livenessProbe"]["httpGet"]["port"] == "http");
    assert_eq!(c["lifecycle"]["preStop"]["exec"]["command"][0], "sleep");
    assert!(c["resources"].is_null(), "resources come from values");
    assert!(values["resources"]["requests"]["cpu"].is_string());
    assert!(values["resources"]["requests"]["memory"].is_string());
    let ports: Vec<&Value> = c["ports"].as_array().unwrap().iter().collect();
    assert!(ports.iter().any(|p| p["containerPort"] == 8080));
    assert!(ports.iter().any(|p| p["name"] == "grpc"));
    assert_eq!(
        values["grpc"]["port"],
        defaults.grpc.grpc_listen.port(),
        "the chart's gRPC port is wsgate's"
    );
    let env: BTreeMap<String, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(
        env["WSGATE_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "instance id = pod name"
    );
    assert_eq!(env["WSGATE_LISTEN"]["value"], "0.0.0.0:8080");
    for secret in [
        "WSGATE_AUTH__JWT_SECRET",
        "WSGATE_API_KEY",
        "WSGATE_REDIS_URL",
    ] {
        assert!(
            env[secret]["valueFrom"]["secretKeyRef"]["key"].is_string(),
            "{secret} comes from a Secret"
        );
    }
    let known = config_env_names();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "the chart sets {name}, which is no wsgate setting (known: {known:?})"
        );
    }
    for cluster in [
        "WSGATE_STORE",
        "WSGATE_BROKER",
        "WSGATE_REDIS_URL",
        "WSGATE_NATS_URL",
        "WSGATE_CLUSTER_KEY",
    ] {
        assert!(env.contains_key(cluster), "cluster setting {cluster}");
    }
    assert!(
        env["WSGATE_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"].is_null(),
        "the API key is required: the pod does not start without it"
    );
    assert_eq!(
        env["WSGATE_AUTH__JWT_PUBLIC_KEY_FILE"]["value"], "TEMPLATED",
        "the RS256 key is a mounted file"
    );
    assert_eq!(
        pod["enableServiceLinks"], false,
        "no service-link variables"
    );
    for text in [&dep_text, &read(&format!("{CHART}/values.yaml"))] {
        assert!(
            !text.to_lowercase().contains("being added") && !text.contains("Being built"),
            "no promises in the chart"
        );
    }

    // Service: affinity at the ingress, never here (seed 001).
    let svc = &manifests["Service"];
    assert_eq!(svc["spec"]["sessionAffinity"], "None");

    // Ingress: seed 001's annotations, timeouts longer than the heartbeat timeout.
    let ing = &manifests["Ingress"];
    let ann = ing["metadata"]["annotations"].as_object().unwrap();
    for key in [
        "websocket-services",
        "affinity",
        "affinity-mode",
        "session-cookie-name",
        "session-cookie-max-age",
        "proxy-read-timeout",
        "proxy-send-timeout",
    ] {
        assert!(
            ann.contains_key(&format!("nginx.ingress.kubernetes.io/{key}")),
            "ingress annotation {key}"
        );
    }
    assert_eq!(ann["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/affinity-mode"],
        "persistent"
    );
    let ingress_text = read(&format!("{CHART}/templates/ingress.yaml"));
    for key in ["proxy-read-timeout", "proxy-send-timeout"] {
        assert!(
            ingress_text.contains(&format!(
                "nginx.ingress.kubernetes.io/{key}: {{{{ .Values.ingress.proxyTimeoutSeconds"
            )),
            "{key} comes from ingress.proxyTimeoutSeconds"
        );
    }
    let timeout = values["ingress"]["proxyTimeoutSeconds"].as_u64().unwrap();
    assert_eq!(timeout, 3600, "seed 001: proxy timeouts 3600");
    assert!(timeout * 1000 > cfg["heartbeatTimeoutMs"].as_u64().unwrap());
}

#[test]
fn dockerfile_facts() {
    let df = read("deploy/Dockerfile");
    let lines: Vec<&str> = df
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(froms[0].contains(" AS builder"));
    assert!(df.contains("WSGATE_LISTEN=0.0.0.0:8080"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("EXPOSE ") && l.contains("8080"))
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "non-root");
    let hc = df.find("HEALTHCHECK").expect("HEALTHCHECK");
    assert!(df[hc..].contains("/health"));
    assert!(df.contains("ENTRYPOINT [\"/usr/local/bin/wsgate\"]"));
    let ignore = read(".dockerignore");
    for l in [".git", "target"] {
        assert!(ignore.lines().any(|x| x.trim() == l), ".dockerignore {l}");
    }
}

// ---------------------------------------------------------------------------------------
// Kustomize base = the chart's default install
// ---------------------------------------------------------------------------------------

const KUSTOMIZE: &str = "deploy/kubernetes";

/// The base's objects by kind, as written (`kubectl kustomize` only sets the image tag).
fn kustomize_base() -> (Value, BTreeMap<String, Value>) {
    let k = yaml(
        &read(&format!("{KUSTOMIZE}/kustomization.yaml")),
        "kustomization.yaml",
    );
    let mut objects = BTreeMap::new();
    for file in k["resources"].as_array().expect("resources") {
        let file = file.as_str().unwrap();
        let doc = yaml(&read(&format!("{KUSTOMIZE}/{file}")), file);
        let kind = doc["kind"].as_str().expect("kind").to_string();
        assert!(objects.insert(kind.clone(), doc).is_none(), "two {kind}s");
    }
    (k, objects)
}

/// Validates rendered objects with `kubernetes-validate` (PyPI; deploy/check.sh installs it,
/// so CI always has it), strictly, against the oldest and newest schemas it ships. Without
/// the tool the check is skipped with a note, except under CI.
fn kubernetes_validate(what: &str, objects: &BTreeMap<String, Value>) {
    let probe = std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if probe.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing (deploy/check.sh installs it)"
        );
        eprintln!("kubernetes-validate not installed: {what} not validated against schemas");
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "wsgate-chart-{}-{}",
        std::process::id(),
        what.replace(' ', "-")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (kind, obj) in objects {
        let path = dir.join(format!("{kind}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(obj).unwrap()).unwrap();
        files.push(path);
    }
    for version in ["1.25.0", "1.37.0"] {
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the chart's {what} render is not valid Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn same(what: &str, chart: &Value, base: &Value) {
    assert_eq!(
        chart, base,
        "{what}: the chart's default (left) and deploy/kubernetes (right) differ"
    );
}

#[test]
fn kustomize_base_is_the_charts_default_install() {
    let values = yaml(&read(&format!("{CHART}/values.yaml")), "values.yaml");
    let chart = helm_render::render(&repo().join(CHART), &values);
    let (kustomization, base) = kustomize_base();
    kubernetes_validate("default", &chart);

    // The same objects, except the Secret: the chart generates the API key, the base leaves
    // creating it to the operator (a key in the repository is a key everyone knows).
    let chart_kinds: BTreeSet<&String> = chart.keys().filter(|k| *k != "Secret").collect();
    assert_eq!(chart_kinds, base.keys().collect::<BTreeSet<_>>());
    assert!(chart.contains_key("Secret"), "the chart makes its Secret");
    assert_eq!(
        chart["Secret"]["stringData"]["api-key"], "generated-at-install",
        "the chart generates an API key when none is given"
    );
    for obj in base.values() {
        assert_eq!(obj["metadata"]["name"], "wsgate");
    }
    // Labels and selectors are written out in the base (any kustomize renders it).
    let selector = &chart["Deployment"]["spec"]["selector"]["matchLabels"];
    for obj in base.values() {
        same("labels", selector, &obj["metadata"]["labels"]);
    }
    let bd = &base["Deployment"]["spec"];
    same(
        "Deployment selector",
        selector,
        &bd["selector"]["matchLabels"],
    );
    same(
        "pod labels",
        selector,
        &bd["template"]["metadata"]["labels"],
    );
    same(
        "Service selector",
        selector,
        &base["Service"]["spec"]["selector"],
    );
    assert_eq!(
        kustomization["images"][0]["newTag"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "the base's image is this version"
    );

    // Deployment: the pod, its container, its env (every default), ports and probes.
    let (cd, bd) = (&chart["Deployment"], &base["Deployment"]);
    same("replicas", &cd["spec"]["replicas"], &bd["spec"]["replicas"]);
    same("strategy", &cd["spec"]["strategy"], &bd["spec"]["strategy"]);
    let (cp, bp) = (
        &cd["spec"]["template"]["spec"],
        &bd["spec"]["template"]["spec"],
    );
    for key in [
        "enableServiceLinks",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
        "securityContext",
        "volumes",
    ] {
        same(&format!("pod {key}"), &cp[key], &bp[key]);
    }
    assert_eq!(bp["enableServiceLinks"], false);
    let (cc, bc) = (&cp["containers"][0], &bp["containers"][0]);
    for key in [
        "name",
        "args",
        "imagePullPolicy",
        "securityContext",
        "ports",
        "env",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "lifecycle",
        "resources",
        "volumeMounts",
    ] {
        same(&format!("container {key}"), &cc[key], &bc[key]);
    }
    assert_eq!(cp["containers"].as_array().unwrap().len(), 1);
    assert_eq!(bp["containers"].as_array().unwrap().len(), 1);
    let known = config_env_names();
    for e in bc["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            known.contains(name),
            "the base sets {name}, no wsgate setting"
        );
    }
    let env = |name: &str| {
        bc["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("the base sets {name}"))
            .clone()
    };
    assert_eq!(env("WSGATE_GRPC_ENABLED")["value"], "false");
    assert_eq!(env("WSGATE_TRUSTED_PROXIES")["value"], "[\"10.0.0.0/8\"]");
    // ingress-nginx writes X-Forwarded-For and passes a client's own `Forwarded` through.
    assert_eq!(env("WSGATE_CLIENT_IP_HEADER")["value"], "x-forwarded-for");
    assert!(env("WSGATE_API_KEY")["valueFrom"]["secretKeyRef"]["optional"].is_null());

    // Service, PDB, ServiceAccount.
    for key in ["type", "sessionAffinity", "ports"] {
        same(
            &format!("Service {key}"),
            &chart["Service"]["spec"][key],
            &base["Service"]["spec"][key],
        );
    }
    same(
        "PodDisruptionBudget",
        &chart["PodDisruptionBudget"]["spec"],
        &base["PodDisruptionBudget"]["spec"],
    );
    same(
        "ServiceAccount token",
        &chart["ServiceAccount"]["automountServiceAccountToken"],
        &base["ServiceAccount"]["automountServiceAccountToken"],
    );

    // Ingress: the same annotations, and only the client endpoints are public.
    let (ci, bi) = (&chart["Ingress"], &base["Ingress"]);
    same(
        "Ingress annotations",
        &ci["metadata"]["annotations"],
        &bi["metadata"]["annotations"],
    );
    same("Ingress spec", &ci["spec"], &bi["spec"]);
    for ing in [ci, bi] {
        let paths: Vec<&Value> = ing["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["http"]["paths"].as_array().unwrap())
            .collect();
        let routed: Vec<(&Value, &Value)> =
            paths.iter().map(|p| (&p["path"], &p["pathType"])).collect();
        assert_eq!(
            routed,
            [
                (&json!("/ws"), &json!("Exact")),
                (&json!("/socket.io/"), &json!("Prefix")),
            ],
            "the ingress routes only the client endpoints"
        );
    }
}

#[test]
fn chart_renders_its_options() {
    let mut values = yaml(&read(&format!("{CHART}/values.yaml")), "values.yaml");
    values["grpc"]["enabled"] = json!(true);
    values["auth"]["mode"] = json!("jwt");
    values["auth"]["jwtPublicKey"]["pem"] =
        json!("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n");
    values["auth"]["requireExp"] = json!(false);
    values["auth"]["audience"] = json!("gate,gate-2");
    values["auth"]["tokenGraceMs"] = json!(5000);
    values["cluster"]["enabled"] = json!(true);
    values["cluster"]["broker"] = json!("nats");
    values["replicaCount"] = json!(3);
    values["secrets"]["natsUrl"] = json!("nats://nats:4222");
    values["secrets"]["redisUrl"] = json!("redis://redis:6379");
    values["secrets"]["apiKey"] = json!("chosen");
    values["config"]["allowedOrigins"] = json!(["https://app.example.com"]);
    let chart = helm_render::render(&repo().join(CHART), &values);
    kubernetes_validate("options", &chart);

    let pod = &chart["Deployment"]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["WSGATE_GRPC_ENABLED"]["value"], "true");
    assert_eq!(env["WSGATE_GRPC_LISTEN"]["value"], "0.0.0.0:50051");
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "grpc" && p["containerPort"] == 50051)
    );
    let grpc_port = chart["Service"]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("the Service exposes gRPC")
        .clone();
    assert_eq!(grpc_port["targetPort"], "grpc");
    assert_eq!(
        env["WSGATE_NATS_URL"]["valueFrom"]["secretKeyRef"]["key"],
        "nats-url"
    );
    assert_eq!(
        chart["Secret"]["stringData"]["nats-url"],
        "nats://nats:4222"
    );
    assert_eq!(chart["Secret"]["stringData"]["api-key"], "chosen");
    assert_eq!(
        env["WSGATE_ALLOWED_ORIGINS"]["value"],
        "[\"https://app.example.com\"]"
    );

    // The RS256 public key: ConfigMap → read-only volume → WSGATE_AUTH__JWT_PUBLIC_KEY_FILE.
    let file = env["WSGATE_AUTH__JWT_PUBLIC_KEY_FILE"]["value"]
        .as_str()
        .unwrap();
    let cm = &chart["ConfigMap"];
    let (dir, key) = file.rsplit_once('/').unwrap();
    assert!(
        cm["data"][key]
            .as_str()
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], dir);
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], c["volumeMounts"][0]["name"]);
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);

    // The token rules: only what differs from the node's defaults is set.
    assert_eq!(env["WSGATE_AUTH__REQUIRE_EXP"]["value"], "false");
    assert_eq!(env["WSGATE_AUTH__AUDIENCE"]["value"], "gate,gate-2");
    assert_eq!(env["WSGATE_AUTH__TOKEN_GRACE_MS"]["value"], "5000");
    assert!(!env.contains_key("WSGATE_AUTH__ISSUER") && !env.contains_key("WSGATE_AUTH__JWKS_URL"));
}
