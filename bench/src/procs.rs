//! Child processes and what /proc says about them.
//!
//! Owns: [`Supervisor`] — every process the bench starts is spawned through it, logged to a file
//! in the run's directory, and stopped by PID (SIGTERM, then SIGKILL) when the run ends, on
//! error, on a signal, or on a panic (its `Drop`). Also the /proc readings the report uses: peak
//! RSS (`VmHWM`, resettable through `clear_refs`) and CPU time (`utime + stime`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// A process the supervisor started.
#[derive(Debug)]
struct Managed {
    /// Short name (also the log file's stem).
    name: String,
    /// The handle to wait on.
    child: Child,
    /// Where its stdout and stderr go.
    log: PathBuf,
}

/// Starts processes and guarantees they are stopped.
#[derive(Debug)]
pub struct Supervisor {
    /// Directory for the logs.
    dir: PathBuf,
    /// Running (or exited but not yet reaped) children, in start order.
    children: Vec<Managed>,
}

impl Supervisor {
    /// A supervisor writing logs into `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            children: Vec::new(),
        }
    }

    /// Starts `cmd` as `name` (stdout and stderr to `<dir>/<name>.log`); returns its PID.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<u32> {
        let log = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        let pid = child.id();
        self.children.push(Managed {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(pid)
    }

    /// Runs `cmd` to completion within `limit`; fails with its log if it fails or overruns.
    pub async fn run(
        &mut self,
        name: &str,
        cmd: &mut Command,
        limit: Duration,
    ) -> anyhow::Result<()> {
        self.spawn(name, cmd)?;
        let deadline = Instant::now() + limit;
        loop {
            let m = self.find(name)?;
            if let Some(status) = m.child.try_wait()? {
                let tail = log_tail(&m.log);
                if !status.success() {
                    bail!("{name} failed ({status}):\n{tail}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not finish within {limit:?}:\n{}",
                    log_tail(&m.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails (with the end of its log) if `name` has exited.
    pub fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        let m = self.find(name)?;
        if let Some(status) = m.child.try_wait()? {
            bail!("{name} exited ({status}):\n{}", log_tail(&m.log));
        }
        Ok(())
    }

    /// The last lines of `name`'s log.
    pub fn log_of(&mut self, name: &str) -> String {
        self.find(name)
            .map(|m| log_tail(&m.log))
            .unwrap_or_default()
    }

    fn find(&mut self, name: &str) -> anyhow::Result<&mut Managed> {
        self.children
            .iter_mut()
            .rev()
            .find(|m| m.name == name)
            .with_context(|| format!("no process named {name}"))
    }

    /// Stops every child: SIGTERM to each (and its descendants, e.g. nginx workers), up to 3 s
    /// to exit, then SIGKILL by PID. Safe to call twice.
    pub fn stop_all(&mut self) {
        let mut descendants = Vec::new();
        for m in self.children.iter_mut().rev() {
            if matches!(m.child.try_wait(), Ok(None)) {
                descendants.extend(
                    descendants_of(m.child.id())
                        .into_iter()
                        .map(|p| (p, comm(p))),
                );
                signal(m.child.id(), Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for m in self.children.iter_mut() {
            loop {
                match m.child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        eprintln!("bench: {} ignored SIGTERM; killing it", m.name);
                        signal(m.child.id(), Signal::KILL);
                        let _ = m.child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
        // Children of our children (nginx workers) normally exit with their master; kill any
        // left, checking the PID still names the same program.
        for (pid, name) in descendants {
            if name.is_some() && comm(pid) == name {
                signal(pid, Signal::KILL);
            }
        }
        self.children.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// The last 30 lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    // Backtrace frames (RUST_BACKTRACE=1) would push the error line itself out of view.
    let frame = |l: &&str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `/proc/PID/stat` fields after the command name: (state, ppid, …, utime at 11, stime at 12).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Every process whose ancestry leads to `pid` (scans /proc: `children` files need a kernel
/// option that is often off).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// `pid` and its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants_of(pid));
    all
}

/// CPU seconds (user + system, all threads, including exited ones) of the processes `pids`.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&p| {
            let f = stat_fields(p)?;
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / USER_HZ)
        })
        .sum()
}

/// Context switches (voluntary + involuntary, every thread) of the processes `pids`: each is a
/// thread going to sleep or being preempted, the main cost of a proxy at moderate load.
pub fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for p in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sum of the peak resident set sizes (`VmHWM`, KiB) of `pids`.
pub fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, "VmHWM:")).sum()
}

/// Resets the peak RSS of `pids` to their current RSS (`echo 5 > /proc/PID/clear_refs`), so
/// the next [`peak_rss_kib`] covers only what follows. Returns false if the kernel refused.
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    pids.iter()
        .all(|p| fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Sum of the resident set sizes (`VmRSS`, KiB) of `pids` now.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, "VmRSS:")).sum()
}

/// This process's open-file limit (after [`raise_open_files`], what the children get).
pub fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Most application connections an HAProxy pair can hold under the open-file limit: each
/// takes two descriptors in each HAProxy (HAProxy refuses to start when `maxconn` needs more).
pub fn haproxy_connections() -> usize {
    usize::try_from(open_files_limit() / 2)
        .unwrap_or(usize::MAX)
        .saturating_sub(200)
}

/// Raises this process's open-file limit to its hard limit; children started afterwards
/// inherit it (the connections-at-scale fleet holds thousands of sockets in the bench, the
/// backend and HAProxy).
pub fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

/// Bytes `pid` passed to write-like system calls (`wchar` of `/proc/PID/io`): for a server,
/// mostly what it sent on its sockets.
pub fn written_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}
