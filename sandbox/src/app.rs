//! The test workload ([`App`]): `app.py`, a small HTTP server (answers every GET with its name,
//! the path and the client's address) and a TCP echo server, run with python3 as an ordinary
//! user — what a meshed application looks like to the sidecar. Stopped (SIGTERM) it behaves
//! like a well-behaved app of a deleted pod: new connections are refused at once, the ones in
//! progress are answered, then it exits.

use std::time::Duration;

use crate::Sandbox;
use crate::error::Result;
use crate::http::{python, wait_http_ok};
use crate::netns::Cmd;
use crate::pod::Pod;
use crate::process::Process;

/// The app's source.
const APP_PY: &str = include_str!("app.py");
/// The UID apps run as: an ordinary user, not root and not the proxy.
pub const APP_UID: u32 = 1000;
/// Where the app serves HTTP.
pub const HTTP_PORT: u16 = 8080;
/// Where the app echoes TCP.
pub const ECHO_PORT: u16 = 9090;
/// How long the app may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running app.
#[derive(Debug, Clone)]
pub struct App {
    /// The python process.
    process: Process,
}

impl App {
    /// Starts the app in `pod` as [`APP_UID`], named `name` (it says so in every answer), and
    /// waits until it answers on `127.0.0.1:`[`HTTP_PORT`].
    pub fn start(sandbox: &Sandbox, pod: &Pod, name: &str) -> Result<App> {
        Self::start_on(sandbox, pod, name, HTTP_PORT)
    }

    /// Like [`App::start`], serving HTTP on `http_port` instead of [`HTTP_PORT`] (two pods of
    /// one Service whose named target port means different numbers).
    pub fn start_on(sandbox: &Sandbox, pod: &Pod, name: &str, http_port: u16) -> Result<App> {
        let script = sandbox.write_file("app.py", APP_PY.as_bytes(), 0o644)?;
        let process = pod.spawn(
            &Cmd::new(python())
                .arg(&script)
                .args(["--name", name])
                .args(["--http-port", &http_port.to_string()])
                .args(["--echo-port", &ECHO_PORT.to_string()])
                .uid(Some(APP_UID)),
        )?;
        wait_http_ok(
            pod,
            &format!("http://127.0.0.1:{http_port}/started"),
            START_TIMEOUT,
        )?;
        Ok(App { process })
    }

    /// The python process (its stdout logs every request).
    pub fn process(&self) -> &Process {
        &self.process
    }
}
