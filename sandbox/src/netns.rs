//! One network namespace ([`Netns`]): created with `lo` up, commands run inside it
//! ([`Cmd`], as root or as another user), long-lived processes tracked, and on
//! [`Netns::shutdown`] (or drop) every process stopped and the namespace deleted. Plugging
//! namespaces together is [`crate::link`]'s business; what a command is, [`crate::cmd`]'s.
//!
//! Commands run as `ip netns exec NAME [setpriv --reuid U --regid U --clear-groups] PROGRAM`,
//! with a cleared environment (only `PATH` and what the [`Cmd`] sets): what runs in a pod does
//! not depend on the caller's environment (no HTTP proxy variables, no `RUST_LOG`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cmd::PATH;
pub use crate::cmd::{Cmd, EXEC_TIMEOUT};
use crate::error::{Result, SandboxError, io_error};
use crate::process::{POLL, Process, stop_all, tail};

/// Kept here too: callers asked `netns::is_root` before [`crate::root`] existed.
pub use crate::root::is_root;

/// Where iproute2 looks for files to mount over `/etc/<file>` in a namespace:
/// `/etc/netns/<name>/<file>`.
pub const ETC_NETNS: &str = "/etc/netns";
/// How long processes get between SIGTERM and SIGKILL when a namespace shuts down.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// A network namespace that exists until [`Netns::shutdown`] or drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name, as `ip netns` knows it.
    name: String,
    /// Where the output of its processes goes.
    log_dir: PathBuf,
    /// Everything [`Netns::spawn`] started, stopped on shutdown.
    processes: Mutex<Vec<Process>>,
    /// Numbers log files.
    counter: AtomicU32,
    /// Set once shut down (shutdown is idempotent).
    deleted: AtomicBool,
}

impl Netns {
    /// Creates namespace `name` with `lo` up; process output goes under `log_dir`.
    pub(crate) fn create(name: String, log_dir: PathBuf) -> Result<Netns> {
        std::fs::create_dir_all(&log_dir).map_err(io_error(&log_dir))?;
        run_host(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, drop deletes it.
        let ns = Netns {
            name,
            log_dir,
            processes: Mutex::new(Vec::new()),
            counter: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/etc/netns/<name>`: files here are mounted over `/etc/<file>` for every command run
    /// inside (`ip netns exec` does it). Deleted with the namespace.
    pub fn etc_dir(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.name)
    }

    /// Runs `ip ARGS` inside (as root); fails on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.exec_ok(&Cmd::new("ip").args(args)).map(drop)
    }

    /// Starts `cmd` inside, in the background; its output goes to log files. It is stopped
    /// when the namespace shuts down, if not before.
    pub fn spawn(&self, cmd: &Cmd) -> Result<Process> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}-{n}", cmd.short_name());
        let stdout = self.log_dir.join(format!("{base}.stdout"));
        let stderr = self.log_dir.join(format!("{base}.stderr"));
        let mut command = self.command(cmd);
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).map_err(io_error(&stdout))?)
            .stderr(File::create(&stderr).map_err(io_error(&stderr))?);
        let child = command.spawn().map_err(|source| SandboxError::Spawn {
            command: cmd.display(&self.name),
            source,
        })?;
        let label = format!("{}/{base}", self.name);
        let process = Process::new(label, child, stdout, stderr);
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(process.clone());
        Ok(process)
    }

    /// Runs `cmd` inside to completion (killed after its timeout) and returns its output,
    /// whatever its exit status.
    pub fn exec(&self, cmd: &Cmd) -> Result<Output> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Files, not pipes: a grandchild keeping a pipe open cannot block us.
        let stdout = self.log_dir.join(format!(".exec-{n}.stdout"));
        let stderr = self.log_dir.join(format!(".exec-{n}.stderr"));
        let mut command = self.command(cmd);
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).map_err(io_error(&stdout))?)
            .stderr(File::create(&stderr).map_err(io_error(&stderr))?);
        let display = cmd.display(&self.name);
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            command: display.clone(),
            source,
        })?;
        let deadline = Instant::now() + cmd.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    // Not reaped yet, so the PID is still this child's.
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(SandboxError::Timeout {
                        command: display.clone(),
                        after: cmd.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(source) => {
                    break Err(SandboxError::Spawn {
                        command: display.clone(),
                        source,
                    });
                }
            }
        };
        let out = std::fs::read(&stdout).map_err(io_error(&stdout));
        let err = std::fs::read(&stderr).map_err(io_error(&stderr));
        let _ = std::fs::remove_file(&stdout);
        let _ = std::fs::remove_file(&stderr);
        Ok(Output {
            status: status?,
            stdout: out?,
            stderr: err?,
        })
    }

    /// Runs `cmd` inside to completion; a non-zero exit is an error carrying its standard
    /// error. Returns its standard output (lossy UTF-8).
    pub fn exec_ok(&self, cmd: &Cmd) -> Result<String> {
        let output = self.exec(cmd)?;
        if !output.status.success() {
            return Err(SandboxError::Failed {
                command: cmd.display(&self.name),
                status: output.status,
                stderr: tail(&String::from_utf8_lossy(&output.stderr), 4000).to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Every process [`Netns::spawn`] started here, running or not.
    pub fn processes(&self) -> Vec<Process> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops every process started here (SIGTERM, SIGKILL after `grace`), kills whatever else
    /// still runs inside (their children), and deletes the namespace. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        if self.deleted.swap(true, Ordering::AcqRel) {
            return;
        }
        stop_all(&self.processes(), grace);
        kill_inside(&self.name);
        if let Err(e) = run_host(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("sandbox: could not delete network namespace: {e}");
        }
        remove_etc_dir(&self.name);
    }

    fn command(&self, cmd: &Cmd) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]);
        if let Some(uid) = cmd.uid {
            let id = uid.to_string();
            command.args([
                "setpriv",
                "--reuid",
                &id,
                "--regid",
                &id,
                "--clear-groups",
                "--",
            ]);
        }
        command
            .arg(&cmd.program)
            .args(&cmd.args)
            .env_clear()
            .env("PATH", PATH)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.shutdown(STOP_GRACE);
    }
}

/// Moves the calling thread, and only it, into namespace `name` (by its `/run/netns` entry):
/// every socket the thread opens from then on lives there — it reaches the pod's loopback and
/// the pod's iptables rules apply to it — while the rest of the process stays where it was.
/// For a thread of its own that ends when its work is done (never a pooled one): there is no
/// way back. Needs root. `trellis demo` reads the sidecars' admin endpoints (127.0.0.1:15000
/// in each pod) and calls the backend from the frontend's pod this way, without starting a
/// process per request.
pub fn enter_thread(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).map_err(io_error(&path))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| SandboxError::Io {
        path,
        source: e.into(),
    })
}

/// Names of the network namespaces that exist now (`/run/netns`).
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Deletes namespaces named `<prefix><pid>-…` whose creating process `<pid>` no longer runs
/// (killed before it could clean up), and their `/etc/netns` entries, and kills what still
/// runs inside them: all of it was started by a sandbox.
pub(crate) fn remove_stale(prefix: &str) {
    let etc_entries = std::fs::read_dir(ETC_NETNS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let mut names: Vec<String> = list().into_iter().chain(etc_entries).collect();
    names.sort();
    names.dedup();
    for name in names {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            kill_inside(&name);
            let _ = run_host(Command::new("ip").args(["netns", "del", &name]));
            remove_etc_dir(&name);
        }
    }
}

/// Deletes `/etc/netns/<name>` (the files mounted over `/etc` in namespace `name`), if there.
fn remove_etc_dir(name: &str) {
    let dir = Path::new(ETC_NETNS).join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("sandbox: could not delete {}: {e}", dir.display()),
    }
}

/// PIDs of every process inside namespace `name` (`ip netns pids`); empty if it is gone.
pub fn pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process inside namespace `name`, and waits (briefly) for them to be gone.
fn kill_inside(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids(name);
        if left.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(left.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(POLL);
    }
}

/// Runs `command` on the host; a non-zero exit is an error with its standard error.
fn run_host(command: &mut Command) -> Result<Output> {
    let display = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SandboxError::Spawn {
            command: display.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(SandboxError::Failed {
            command: display,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}
