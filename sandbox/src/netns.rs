//! One network namespace ([`Netns`]): created with `lo` up, commands run inside it
//! ([`Cmd`], as root or as another user), long-lived processes tracked, and on
//! [`Netns::shutdown`] (or drop) every process stopped and the namespace deleted. Plugging
//! namespaces together is [`crate::pod`]'s business.
//!
//! Commands run as `ip netns exec NAME [setpriv --reuid U --regid U --clear-groups] PROGRAM`,
//! with a cleared environment (only `PATH` and what the [`Cmd`] sets): what runs in a pod does
//! not depend on the caller's environment (no HTTP proxy variables, no `RUST_LOG`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError, io_error};
use crate::process::{POLL, Process, stop_all, tail};

/// `PATH` inside pods.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long [`Netns::exec`] lets a command run unless its [`Cmd`] says otherwise.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long processes get between SIGTERM and SIGKILL when a namespace shuts down.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// A command to run in a namespace: program, arguments, environment, user, time limit.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The program (a path, or a name looked up in [`PATH`]).
    program: OsString,
    /// Its arguments.
    args: Vec<OsString>,
    /// Environment variables besides `PATH`.
    env: Vec<(OsString, OsString)>,
    /// Run as this UID (and the GID of the same number) instead of root.
    uid: Option<u32>,
    /// [`Netns::exec`] kills it after this long.
    timeout: Duration,
}

impl Cmd {
    /// Runs `program` as root with no arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            uid: None,
            timeout: EXEC_TIMEOUT,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs as `uid` (GID `uid`, no supplementary groups) instead of root; `None` is root.
    pub fn uid(mut self, uid: Option<u32>) -> Self {
        self.uid = uid;
        self
    }

    /// The time limit of [`Netns::exec`] (default [`EXEC_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program's file name, for log file names.
    fn short_name(&self) -> String {
        let name = PathBuf::from(&self.program);
        name.file_name()
            .map_or_else(|| "cmd".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The command line, for messages.
    fn display(&self, ns: &str) -> String {
        let mut words = vec![format!("[{ns}]")];
        if let Some(uid) = self.uid {
            words.push(format!("[uid {uid}]"));
        }
        words.push(self.program.to_string_lossy().into_owned());
        words.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    }
}

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

/// Whether this process runs as root (effective UID 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
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
/// (killed before it could clean up), and kills what still runs inside them: all of it was
/// started by a sandbox.
pub(crate) fn remove_stale(prefix: &str) {
    for name in list() {
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
        }
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
