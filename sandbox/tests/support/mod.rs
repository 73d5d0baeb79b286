//! What the sandbox's own tests share: `client.py` run in a pod, and reading its answers.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trellis_sandbox::app::APP_UID;
use trellis_sandbox::http::python;
use trellis_sandbox::{Cmd, Pod, Process, Sandbox};

const CLIENT_PY: &str = include_str!("client.py");

/// `client.py ARGS` in `pod`, as the apps' user (an ordinary one).
pub fn client(sandbox: &Sandbox, args: &[&str]) -> Cmd {
    let script = sandbox
        .write_file("client.py", CLIENT_PY.as_bytes(), 0o644)
        .expect("client.py written");
    Cmd::new(python())
        .arg(script)
        .args(args)
        .uid(Some(APP_UID))
        .timeout(Duration::from_secs(120))
}

/// Runs `client.py ARGS` in `pod` to completion; its lines.
pub fn run_client(sandbox: &Sandbox, pod: &Pod, args: &[&str]) -> Vec<String> {
    let out = pod.exec_ok(&client(sandbox, args)).expect("client.py runs");
    out.lines().map(str::to_owned).collect()
}

/// Starts `client.py ARGS` in `pod` in the background.
pub fn spawn_client(sandbox: &Sandbox, pod: &Pod, args: &[&str]) -> Process {
    pod.spawn(&client(sandbox, args)).expect("client.py starts")
}

/// The lines a background client printed so far.
pub fn lines(process: &Process) -> Vec<String> {
    process.stdout().lines().map(str::to_owned).collect()
}

/// Waits (at most 60 s) until the background client printed at least `n` lines; its lines.
pub fn wait_lines(process: &Process, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = lines(process);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline && process.is_running(),
            "client printed {} of {n} lines: {lines:?}; stderr: {}",
            lines.len(),
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many `ok` answers came from each app (the app's name is the first word of its answer),
/// and the `err` lines.
pub fn tally(lines: &[String]) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut answers = BTreeMap::new();
    let mut errors = Vec::new();
    for line in lines {
        match line.strip_prefix("ok ") {
            Some(body) => {
                let name = body.split_whitespace().next().unwrap_or_default();
                *answers.entry(name.to_owned()).or_insert(0) += 1;
            }
            None => errors.push(line.clone()),
        }
    }
    (answers, errors)
}
