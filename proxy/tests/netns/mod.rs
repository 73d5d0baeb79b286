//! Network namespaces for tests: [`Netns`] creates one with a unique name, runs commands and
//! long-lived processes inside it, links namespaces with veth pairs (directly or through a
//! bridge), and on drop — also when the test panics — kills what it started and deletes the
//! namespace (its interfaces go with it). Shared by every test crate that needs pods on a
//! fake network; each uses part of it, hence `dead_code` is allowed here.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` from iproute2; [`skip_unless_root`]
//! lets a test say why it did not run elsewhere. Use addresses from 198.18.0.0/15 only.

#![allow(dead_code)]

use std::{
    cell::RefCell,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Makes names unique within this process; the pid makes them unique across processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process runs as root (effective UID 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .to_owned();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// `true` when the test can run; otherwise prints why `test` is skipped and returns `false`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    // Straight to stderr, not `eprintln!`: the test harness would swallow that unless run
    // with --nocapture, and a skipped test must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root for network namespaces and iptables (CI runs as root)"
    );
    false
}

/// A network namespace that exists for as long as this value does.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Processes started with [`Netns::spawn`], killed on drop.
    children: RefCell<Vec<Child>>,
}

impl Netns {
    /// Creates `<prefix><pid>-<n>` with `lo` up. First deletes namespaces with this prefix
    /// left behind by test processes that no longer run (killed before they could clean up).
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        remove_stale(prefix);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, drop deletes it.
        let ns = Netns {
            name,
            children: RefCell::new(Vec::new()),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name>`: the words to put before a command to run it inside.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// A command that runs `args` inside the namespace, to configure before running.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `args` inside the namespace and waits; a non-zero exit is an error carrying the
    /// command line and its standard error.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(&mut self.command(args))
    }

    /// Runs `args` inside the namespace and returns its standard output as text.
    pub fn exec_stdout(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.exec(args)?.stdout).into_owned())
    }

    /// Starts `args` inside the namespace, owned by this namespace (killed on drop). Its
    /// standard output is read line by line into the returned [`Lines`].
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Lines> {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))?;
        let stdout = child.stdout.take().context("child stdout is piped")?;
        self.children.borrow_mut().push(child);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Lines(rx))
    }

    /// Links this namespace and `peer` with a veth pair, this end named `local_if` with
    /// `local_cidr`, the other `peer_if` with `peer_cidr` (e.g. `198.18.0.1/24`), both up.
    pub fn veth_to(
        &self,
        peer: &Netns,
        (local_if, local_cidr): (&str, &str),
        (peer_if, peer_cidr): (&str, &str),
    ) -> anyhow::Result<()> {
        self.exec(&[
            "ip", "link", "add", local_if, "type", "veth", "peer", "name", peer_if, "netns",
            &peer.name,
        ])?;
        self.exec(&["ip", "addr", "add", local_cidr, "dev", local_if])?;
        self.exec(&["ip", "link", "set", local_if, "up"])?;
        peer.exec(&["ip", "addr", "add", peer_cidr, "dev", peer_if])?;
        peer.exec(&["ip", "link", "set", peer_if, "up"])?;
        Ok(())
    }

    /// Creates bridge `name` (up) in this namespace, for [`Netns::join_bridge`].
    pub fn add_bridge(&self, name: &str) -> anyhow::Result<()> {
        self.exec(&["ip", "link", "add", name, "type", "bridge"])?;
        self.exec(&["ip", "link", "set", name, "up"])?;
        Ok(())
    }

    /// Plugs this namespace into `bridge` of `host` (a node): a veth pair whose end here is
    /// `eth0` with `cidr` and whose other end, named `port_if`, is a port of the bridge.
    pub fn join_bridge(
        &self,
        host: &Netns,
        bridge: &str,
        port_if: &str,
        cidr: &str,
    ) -> anyhow::Result<()> {
        host.exec(&[
            "ip", "link", "add", port_if, "type", "veth", "peer", "name", "eth0", "netns",
            &self.name,
        ])?;
        host.exec(&["ip", "link", "set", port_if, "master", bridge])?;
        host.exec(&["ip", "link", "set", port_if, "up"])?;
        self.exec(&["ip", "addr", "add", cidr, "dev", "eth0"])?;
        self.exec(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in self.children.get_mut().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still inside was started from here too (a child's children).
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        if let Err(error) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "could not delete network namespace {}: {error:#}",
                self.name
            );
        }
    }
}

/// Standard output of a process started with [`Netns::spawn`], line by line.
#[derive(Debug)]
pub struct Lines(Receiver<String>);

impl Lines {
    /// The next line, waiting at most `timeout`.
    pub fn next_within(&self, timeout: Duration) -> anyhow::Result<String> {
        self.0
            .recv_timeout(timeout)
            .with_context(|| format!("no line of output within {timeout:?}"))
    }

    /// Waits at most `timeout` for a line satisfying `wanted`, skipping others.
    pub fn wait_for(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_within(left)?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }
}

/// Runs `command`; a non-zero exit is an error with the command and its standard error.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Deletes `<prefix><pid>-<n>` namespaces whose process is gone.
fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}
