//! Metrics every Trellis process exposes alike, unprefixed as Prometheus expects:
//! `trellis_build_info{component,version} 1` and the standard process metrics
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from `/proc/self` at scrape time.
//!
//! Owns: [`register`] and the pure parsers of `/proc/self/stat` and `/proc/self/limits`. A value
//! that cannot be read (not Linux, `/proc` hidden) is left out of the scrape, never made up.
//! prometheus-client has no process collector; this is the small one the part metrics share.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Kernel clock ticks per second (`USER_HZ`): 100 on every Linux architecture Trellis runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Registers `trellis_build_info{component, version}` and the process collector in `registry`
/// (which must have no prefix, so the names are the standard ones).
pub fn register(registry: &mut Registry, component: &'static str, version: &'static str) {
    registry.register(
        "trellis_build",
        "Build of this Trellis process (always 1)",
        Info::new(vec![("component", component), ("version", version)]),
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// What `/proc/self/stat` says about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Start time, clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/self/stat`; `None` when it is not in the documented layout (`proc(5)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        start_ticks: field(22)?,
    })
}

/// The resident set size in bytes from `/proc/self/status` (`VmRSS: N kB`: exact whatever the
/// page size, which `/proc/self/stat` would need).
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit on open files from `/proc/self/limits`; `None` if missing or `unlimited`.
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot time from `/proc/stat` (`btime`, seconds since the epoch).
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads `/proc/self` on each scrape.
#[derive(Debug)]
struct ProcessCollector;

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            if let Some(boot) = read("/proc/stat").as_deref().and_then(parse_boot_time) {
                let start = boot as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND;
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    start,
                )?;
            }
        }
        if let Some(rss) = read("/proc/self/status")
            .as_deref()
            .and_then(parse_rss_bytes)
        {
            let help = "Resident memory size in bytes";
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                help,
                rss as f64,
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let open = dir.count() as f64;
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open,
            )?;
        }
        if let Some(max) = read("/proc/self/limits").as_deref().and_then(parse_max_fds) {
            let help = "Maximum number of open file descriptors";
            gauge(&mut encoder, "process_max_fds", help, max as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let text = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 \
                    12345 1000000 789 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(text).expect("parses");
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 3.0,
                start_ticks: 12345,
            }
        );
    }

    #[test]
    fn a_truncated_or_garbled_stat_is_none_not_a_panic() {
        for bad in [
            "",
            "1 (x",
            "1 (x) S 1 2",
            "1 (x) S a b c d e f g h i j k l m n o p q r s t u",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_soft_open_files_limit_is_read_and_unlimited_is_none() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(parse_max_fds(""), None);
    }

    #[test]
    fn resident_memory_is_vmrss_in_bytes() {
        let status =
            "Name:\ttrellis-proxy\nVmPeak:\t  20000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_bytes(status), Some(5120 * 1024));
        for bad in ["", "VmRSS:\t12 MB\n", "VmRSS:\tlots kB\n"] {
            assert_eq!(parse_rss_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn a_registry_shows_build_info_and_this_process_s_metrics() {
        let mut registry = Registry::default();
        register(&mut registry, "test", "1.2.3");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        assert!(
            out.contains("trellis_build_info{component=\"test\",version=\"1.2.3\"} 1"),
            "{out}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
        let value = |name: &str| -> f64 {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..].trim().parse().unwrap()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds ");
        assert!(
            started <= now + 5.0 && started > now - 86_400.0,
            "this test process started at {started}, now is {now}"
        );
        assert!(
            value("process_resident_memory_bytes ") > 1_000_000.0,
            "{out}"
        );
        assert!(value("process_open_fds ") >= 3.0, "{out}");
    }
}
