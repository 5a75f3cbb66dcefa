//! Renders the Helm chart with its default values, without helm.
//!
//! helm has no package in this project's sources (Debian, PyPI, npm), yet the chart and the
//! Kustomize base must agree on what a default install runs. This is the subset of Go
//! templates and Helm functions the chart uses: `if`/`else if`/`else`, `with`, `range`,
//! variables, pipelines of `quote`, `int`, `int64`, `toJson`, `toYaml`, `nindent`, `printf
//! "%s"/"%d"`, `not`, `and`, `or`, `eq`, `gt`, `default`, `fail`, and the chart's own named
//! templates, for release `wsgate` (so the objects are named `wsgate`, like the base's). A
//! construct outside the subset fails the test, naming it, rather than rendering wrongly.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One node of a template: a text line, or a block with its branches.
enum Node {
    Line(String),
    Block {
        /// `if`, `with` or `range`, and its pipeline.
        kind: &'static str,
        expr: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// The action of a line that holds only `{{ … }}`, trimmed of `-` and spaces.
fn only_action(line: &str) -> Option<&str> {
    let t = line.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{")).then(|| inner.trim_matches(|c: char| c == '-' || c.is_whitespace()))
}

fn parse(lines: &mut std::str::Lines<'_>) -> (Vec<Node>, Option<String>) {
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let Some(action) = only_action(line) else {
            out.push(Node::Line(line.to_string()));
            continue;
        };
        if action == "end" || action == "else" || action.starts_with("else if ") {
            return (out, Some(action.to_string()));
        }
        let opener = ["if ", "with ", "range "]
            .into_iter()
            .find(|k| action.starts_with(k));
        let Some(k) = opener else {
            out.push(Node::Line(line.to_string()));
            continue;
        };
        let kind = match k {
            "if " => "if",
            "with " => "with",
            _ => "range",
        };
        let expr = action[k.len()..].to_string();
        let (body, mut closer) = parse(lines);
        let mut otherwise = Vec::new();
        // `else if c` is an `if c` nested in the else branch, closed by the same `end`.
        let mut chain: Vec<(String, Vec<Node>)> = Vec::new();
        loop {
            match closer.as_deref() {
                Some("end") => break,
                Some("else") => {
                    let (b, c) = parse(lines);
                    otherwise = b;
                    closer = c;
                }
                Some(e) if e.starts_with("else if ") => {
                    let cond = e["else if ".len()..].to_string();
                    let (b, c) = parse(lines);
                    chain.push((cond, b));
                    closer = c;
                }
                other => panic!("template block `{kind} {expr}` closed by {other:?}"),
            }
        }
        while let Some((cond, b)) = chain.pop() {
            otherwise = vec![Node::Block {
                kind: "if",
                expr: cond,
                body: b,
                otherwise,
            }];
        }
        out.push(Node::Block {
            kind,
            expr,
            body,
            otherwise,
        });
    }
    (out, None)
}

/// Rendering state: the values, the chart, `.` and the variables.
struct Render<'a> {
    values: &'a Value,
    chart: &'a Value,
    vars: BTreeMap<String, Value>,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Go's `{{ x }}` printing.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn to_yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap().trim_end().to_string()
}

/// Splits a pipeline or command into words, keeping "strings" and (groups) whole.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    let mut in_str = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_str = !in_str;
                cur.push(c);
            }
            '(' if !in_str => {
                depth += 1;
                cur.push(c);
            }
            ')' if !in_str => {
                depth -= 1;
                cur.push(c);
            }
            c if c.is_whitespace() && !in_str && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn get(mut v: &Value, path: &str) -> Value {
    for key in path.split('.').filter(|k| !k.is_empty()) {
        match v.get(key) {
            Some(next) => v = next,
            None => return Value::Null,
        }
    }
    v.clone()
}

impl Render<'_> {
    fn pipeline(&mut self, expr: &str, dot: &Value) -> Value {
        if let Some((var, rhs)) = expr.split_once(":=")
            && let Some(name) = var.trim().strip_prefix('$')
        {
            let v = self.pipeline(rhs.trim(), dot);
            self.vars.insert(name.to_string(), v);
            return Value::Null;
        }
        // Split on `|` outside strings and groups.
        let mut stages = Vec::new();
        let (mut depth, mut in_str, mut start) = (0, false, 0);
        for (i, c) in expr.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '(' if !in_str => depth += 1,
                ')' if !in_str => depth -= 1,
                '|' if !in_str && depth == 0 => {
                    stages.push(&expr[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        stages.push(&expr[start..]);
        let mut piped: Option<Value> = None;
        for stage in stages {
            piped = Some(self.command(stage.trim(), dot, piped));
        }
        piped.unwrap()
    }

    fn term(&mut self, w: &str, dot: &Value) -> Value {
        if let Some(inner) = w.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
            return self.pipeline(inner, dot);
        }
        if let Some(s) = w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
            return Value::String(s.to_string());
        }
        if let Ok(n) = w.parse::<i64>() {
            return json!(n);
        }
        match w {
            "." => return dot.clone(),
            // The root context: only passed on to named templates, which ignore it here.
            "$" => return Value::Null,
            "$.Template.BasePath" => return json!("templates"),
            _ => {}
        }
        if let Some(path) = w.strip_prefix(".Values") {
            return get(self.values, path);
        }
        if let Some(path) = w.strip_prefix(".Chart.") {
            return get(self.chart, path);
        }
        match w {
            ".Release.Name" => return json!("wsgate"),
            ".Release.Namespace" => return json!("default"),
            ".Release.Service" => return json!("Helm"),
            _ => {}
        }
        if let Some(path) = w.strip_prefix('.') {
            return get(dot, path);
        }
        if let Some(var) = w.strip_prefix('$') {
            let (name, path) = var.split_once('.').unwrap_or((var, ""));
            let v = self
                .vars
                .get(name)
                .unwrap_or_else(|| panic!("template variable ${name} is not set"));
            return get(v, path);
        }
        panic!("template term `{w}` is outside what this renderer knows")
    }

    fn command(&mut self, cmd: &str, dot: &Value, piped: Option<Value>) -> Value {
        let w = words(cmd);
        let name = w[0].as_str();
        let is_fn = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if !is_fn {
            assert!(w.len() == 1 && piped.is_none(), "template command `{cmd}`");
            return self.term(name, dot);
        }
        let mut args: Vec<Value> = w[1..].iter().map(|a| self.term(a, dot)).collect();
        args.extend(piped);
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
        match name {
            "quote" => json!(serde_json::to_string(&text(&arg(0))).unwrap()),
            "int" | "int64" => match arg(0) {
                Value::String(s) => json!(s.parse::<i64>().unwrap_or(0)),
                v => json!(v.as_f64().unwrap_or(0.0) as i64),
            },
            "toJson" => json!(arg(0).to_string()),
            "toYaml" => json!(to_yaml(&arg(0))),
            "nindent" => {
                let n = arg(0).as_u64().unwrap() as usize;
                let pad = " ".repeat(n);
                let body: Vec<String> =
                    text(&arg(1)).lines().map(|l| format!("{pad}{l}")).collect();
                json!(format!("\n{}", body.join("\n")))
            }
            "not" => json!(!truthy(&arg(0))),
            "and" => args
                .iter()
                .find(|a| !truthy(a))
                .or(args.last())
                .cloned()
                .unwrap(),
            "or" => args
                .iter()
                .find(|a| truthy(a))
                .or(args.last())
                .cloned()
                .unwrap(),
            "eq" => json!(arg(0) == arg(1)),
            "gt" => json!(arg(0).as_f64() > arg(1).as_f64()),
            "default" => {
                if truthy(&arg(1)) {
                    arg(1)
                } else {
                    arg(0)
                }
            }
            "printf" => {
                let mut s = text(&arg(0));
                for a in &args[1..] {
                    let at = s.find('%').expect("printf arguments match verbs");
                    s.replace_range(at..at + 2, &text(a));
                }
                json!(s)
            }
            "join" => json!(
                arg(1)
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(&text(&arg(0)))
            ),
            "fail" => panic!("the chart fails with its default values: {}", text(&arg(0))),
            "include" => self.include(&text(&arg(0))),
            "print" => json!(args.iter().map(text).collect::<String>()),
            "sha256sum" => json!("0".repeat(64)),
            other => panic!("template function `{other}` is outside what this renderer knows"),
        }
    }

    /// The chart's named templates (`_helpers.tpl`), for release `wsgate`.
    fn include(&self, name: &str) -> Value {
        let selector = json!({
            "app.kubernetes.io/name": "wsgate",
            "app.kubernetes.io/instance": "wsgate",
        });
        match name {
            "wsgate.fullname" | "wsgate.name" => json!("wsgate"),
            "wsgate.secretName" => {
                let existing = text(&get(self.values, "secrets.existingSecret"));
                json!(if existing.is_empty() {
                    "wsgate".into()
                } else {
                    existing
                })
            }
            "wsgate.serviceAccountName" => json!("wsgate"),
            "wsgate.selectorLabels" => json!(to_yaml(&selector)),
            "wsgate.labels" => {
                let mut labels = selector;
                labels["app.kubernetes.io/managed-by"] = json!("Helm");
                json!(to_yaml(&labels))
            }
            "wsgate.apiKey" => match get(self.values, "secrets.apiKey") {
                key if truthy(&key) => key,
                _ => json!("generated-at-install"),
            },
            "wsgate.jwtPublicKeyDir" => json!("/etc/wsgate/jwt"),
            "wsgate.jwtPublicKeyConfigMap" => {
                let key = get(self.values, "auth.jwtPublicKey");
                if truthy(&key["existingConfigMap"]) {
                    key["existingConfigMap"].clone()
                } else if truthy(&key["pem"]) {
                    json!("wsgate-jwt-public-key")
                } else {
                    json!("")
                }
            }
            // The checksum annotation's input: its content does not matter here.
            n if n.ends_with("/secret.yaml") => json!(""),
            other => panic!("named template {other} is unknown to this renderer"),
        }
    }

    fn inline(&mut self, line: &str, dot: &Value) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("closed action") + start;
            let mut before = &rest[..start];
            let mut action = &rest[start + 2..end];
            if let Some(a) = action.strip_prefix('-') {
                before = before.trim_end();
                action = a;
            }
            out.push_str(before);
            let action = action.trim_end_matches('-').trim();
            out.push_str(&text(&self.pipeline(action, dot)));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn nodes(&mut self, nodes: &[Node], dot: &Value, out: &mut String) {
        for node in nodes {
            match node {
                Node::Line(line) => {
                    let rendered = self.inline(line, dot);
                    // A line that was only an action: `{{-` ate the newline before it.
                    if only_action(line).is_some() {
                        out.truncate(out.trim_end_matches('\n').len());
                        out.push_str(&rendered);
                        out.push('\n');
                    } else {
                        out.push_str(&rendered);
                        out.push('\n');
                    }
                }
                Node::Block {
                    kind,
                    expr,
                    body,
                    otherwise,
                } => {
                    let v = self.pipeline(expr, dot);
                    match (*kind, truthy(&v)) {
                        ("if", true) => self.nodes(body, dot, out),
                        ("with", true) => self.nodes(body, &v, out),
                        ("range", true) => {
                            for item in v.as_array().expect("range over a list") {
                                self.nodes(body, item, out);
                            }
                        }
                        _ => self.nodes(otherwise, dot, out),
                    }
                }
            }
        }
    }
}

/// Each manifest template of the chart, rendered with `values`: kind → object. Templates
/// that render to nothing are left out.
pub fn render(chart_dir: &std::path::Path, values: &Value) -> BTreeMap<String, Value> {
    let chart_yaml = std::fs::read_to_string(chart_dir.join("Chart.yaml")).unwrap();
    let chart: serde_yaml_ng::Value = serde_yaml_ng::from_str(&chart_yaml).unwrap();
    let mut chart = serde_json::to_value(chart).unwrap();
    // `.Chart.AppVersion` in Go is `appVersion` in the file.
    chart["AppVersion"] = chart["appVersion"].clone();
    let mut out = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(chart_dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let (nodes, closer) = parse(&mut text.lines());
        assert!(closer.is_none(), "{}: stray {closer:?}", path.display());
        let mut r = Render {
            values,
            chart: &chart,
            vars: BTreeMap::new(),
        };
        let mut rendered = String::new();
        r.nodes(&nodes, values, &mut rendered);
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rendered)
            .unwrap_or_else(|e| panic!("{} renders to bad YAML: {e}\n{rendered}", path.display()));
        let doc = serde_json::to_value(doc).unwrap();
        if let Some(kind) = doc["kind"].as_str() {
            out.insert(kind.to_string(), doc);
        }
    }
    out
}
