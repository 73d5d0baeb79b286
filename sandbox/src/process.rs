//! A long-lived process started inside a namespace ([`Process`]): its PID, its standard output
//! and error in log files, waiting for it, and stopping it — SIGTERM, then SIGKILL once a
//! deadline passes. Starting it (which namespace, which user) is [`crate::netns`]'s business;
//! [`Process::spawn_host`] starts one outside any namespace (`trellis demo`'s loopback mode).
//!
//! Signals go only to processes this sandbox started, by PID, and only while their exit has
//! not been collected: the [`Child`] is held locked while signalling, so the PID cannot have
//! been reused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError};

/// How often waits poll.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A signal to send with [`Process::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: please stop (proxies drain, then exit).
    Term,
    /// SIGINT: like Ctrl-C (capture tools flush their file).
    Int,
    /// SIGKILL: stop now.
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Kill => "KILL",
        }
    }
}

/// A process started in a pod or the node; cheap to clone (all clones are the same process).
///
/// The namespace that started it stops it when the namespace is shut down; [`Process::stop`]
/// stops it earlier.
#[derive(Debug, Clone)]
pub struct Process(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `namespace/program-n`, for messages.
    label: String,
    /// The PID (also the PID of the program itself: `ip netns exec` and `setpriv` exec, they
    /// do not fork).
    pid: u32,
    /// The handle; locked while signalling or reaping.
    child: Mutex<Child>,
    /// Where standard output goes.
    stdout: PathBuf,
    /// Where standard error goes.
    stderr: PathBuf,
}

impl Process {
    /// Wraps a started child whose output goes to `stdout` and `stderr`.
    pub(crate) fn new(label: String, child: Child, stdout: PathBuf, stderr: PathBuf) -> Self {
        Process(Arc::new(Inner {
            label,
            pid: child.id(),
            child: Mutex::new(child),
            stdout,
            stderr,
        }))
    }

    /// Starts `command` on this machine, outside any namespace, as the current user: standard
    /// input from `/dev/null`, output to the files `stdout` and `stderr`; `label` names it in
    /// messages. Unlike a pod's processes, nobody stops it but the caller
    /// ([`Process::stop`], [`stop_all`]). `trellis demo` runs the control plane and the proxies
    /// this way when it cannot make namespaces (loopback mode).
    pub fn spawn_host(
        label: impl Into<String>,
        command: &mut Command,
        stdout: PathBuf,
        stderr: PathBuf,
    ) -> Result<Process> {
        let label = label.into();
        let out = std::fs::File::create(&stdout).map_err(crate::error::io_error(&stdout))?;
        let err = std::fs::File::create(&stderr).map_err(crate::error::io_error(&stderr))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                command: format!("{label}: {command:?}"),
                source,
            })?;
        Ok(Process::new(label, child, stdout, stderr))
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// `namespace/program-n`.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The file its standard output goes to.
    pub fn stdout_path(&self) -> &Path {
        &self.0.stdout
    }

    /// The file its standard error goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.0.stderr
    }

    /// Its standard output so far (lossy UTF-8; empty if unreadable).
    pub fn stdout(&self) -> String {
        read_lossy(&self.0.stdout)
    }

    /// Its standard error so far (lossy UTF-8; empty if unreadable).
    pub fn stderr(&self) -> String {
        read_lossy(&self.0.stderr)
    }

    /// Its exit status, if it has exited (collecting it if need be).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal`, unless it has already exited.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let mut child = self.child();
        if !matches!(child.try_wait(), Ok(None)) {
            return Ok(());
        }
        if signal == Signal::Kill {
            return child.kill().map_err(|source| SandboxError::Spawn {
                command: format!("kill -KILL {} ({})", self.0.pid, self.0.label),
                source,
            });
        }
        let mut kill = Command::new("kill");
        kill.args(["-s", signal.name(), &self.0.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let command = format!(
            "kill -s {} {} ({})",
            signal.name(),
            self.0.pid,
            self.0.label
        );
        let status = kill.status().map_err(|source| SandboxError::Spawn {
            command: command.clone(),
            source,
        })?;
        // Held locked, the child cannot have been reaped in between; a failure means it exited
        // on its own just now, which is what was wanted.
        drop(child);
        if !status.success() && self.is_running() {
            return Err(SandboxError::Failed {
                command,
                status,
                stderr: String::new(),
            });
        }
        Ok(())
    }

    /// Waits at most `timeout` for it to exit.
    pub fn wait(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Deadline {
                    what: format!("{} to exit", self.0.label),
                    after: timeout,
                    last: "still running".into(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it is still running after `grace`. Returns how it
    /// exited.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        stop_all(std::slice::from_ref(self), grace);
        self.wait(Duration::from_secs(5))
    }

    /// Waits at most `timeout` until its standard output or error contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            if !self.is_running() || Instant::now() >= deadline {
                return Err(SandboxError::Deadline {
                    what: format!("{:?} in the output of {}", needle, self.0.label),
                    after: timeout,
                    last: if self.is_running() {
                        "not printed yet".into()
                    } else {
                        format!("exited; stderr: {}", tail(&self.stderr(), 2000))
                    },
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.0.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops `processes` together: SIGTERM to each one still running, then SIGKILL to those still
/// running after `grace`, then collects every exit. Never fails: this is clean-up; what cannot
/// be signalled has exited already.
pub fn stop_all(processes: &[Process], grace: Duration) {
    for p in processes {
        let _ = p.signal(Signal::Term);
    }
    let deadline = Instant::now() + grace;
    while processes.iter().any(Process::is_running) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    for p in processes {
        let _ = p.signal(Signal::Kill);
        let _ = p.wait(Duration::from_secs(5));
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `text` (on a character boundary), for error messages.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().trim()
}
