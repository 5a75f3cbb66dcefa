//! The process's own resources as the standard `process_*` series, read at scrape time.
//!
//! prometheus-client has no process collector, so [`ProcessCollector`] reads `/proc/self`
//! on each scrape (and nothing between scrapes): resident memory, open and maximum file
//! descriptors, OS threads, and the tokio runtime's live tasks (`wsgate_runtime_alive_tasks`).
//! Seed 002's leak alerts (memory growth, task growth) and the flapping benchmark watch
//! these. A value the platform does not offer (no `/proc`) is left out, not reported as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` and the current tokio runtime on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// Bytes of resident memory (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// OS threads (`Threads` of `/proc/self/status`).
fn threads() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors (entries of `/proc/self/fd`).
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n).ok()
}

/// The soft limit on open file descriptors (`Max open files` of `/proc/self/limits`).
fn max_fds() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Tasks alive in the tokio runtime serving the scrape.
fn alive_tasks() -> Option<i64> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    i64::try_from(handle.metrics().num_alive_tasks()).ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series: [(&str, &str, Option<i64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                resident_bytes(),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                open_fds(),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                max_fds(),
            ),
            ("process_threads", "Number of OS threads", threads()),
            (
                "wsgate_runtime_alive_tasks",
                "Tasks alive in the tokio runtime (connections, pumps, drivers, timers)",
                alive_tasks(),
            ),
        ];
        for (name, help, value) in series {
            let Some(v) = value else { continue };
            let gauge = ConstGauge::new(v);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[tokio::test]
    async fn reads_this_process() {
        let mut r = Registry::default();
        r.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("wsgate_runtime_alive_tasks") >= 0.0);
    }
}
