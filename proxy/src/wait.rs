//! `trellis-proxy wait`: blocks until the sidecar in this pod is ready. The injector runs it
//! as the proxy container's `postStart` hook in the classic layout (no native sidecars), which
//! holds the kubelet from starting the app's containers until the proxy is up.
//!
//! It asks the admin port's `/ready` on loopback (127.0.0.1:15000, or `TRELLIS_ADMIN_LISTEN`
//! as the proxy itself reads it): the admin listener is always on loopback, whatever the pod's
//! IP, and the hook runs in the pod's network namespace. (The health port is bound to the pod
//! IP only, so polling 127.0.0.1:15020 would never succeed.)
//!
//! Owns: the flags and the poll loop. Blocking std I/O: it runs before any runtime exists.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;

/// How long one attempt (connect + answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts.
const RETRY: Duration = Duration::from_millis(200);

/// Flags of `trellis-proxy wait`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The proxy's admin address (loopback), as `trellis-proxy run --admin-listen`.
    #[arg(long, env = "TRELLIS_ADMIN_LISTEN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why the wait ended without a ready proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed.
    #[error(
        "sidecar not ready: GET http://{admin}/ready did not answer 200 within {timeout:?} (last: {last})"
    )]
    NotReady {
        /// Where it asked.
        admin: SocketAddr,
        /// How long it waited.
        timeout: Duration,
        /// What the last attempt saw.
        last: String,
    },
}

/// Polls `GET /ready` on `args.admin` until it answers 200, for at most `args.timeout`.
pub fn wait(args: &WaitArgs) -> Result<(), WaitError> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match ready(args.admin) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + RETRY >= deadline {
            return Err(WaitError::NotReady {
                admin: args.admin,
                timeout: args.timeout,
                last,
            });
        }
        std::thread::sleep(RETRY);
    }
}

/// One attempt: `Ok` on `HTTP/1.1 200`, else what was seen.
fn ready(admin: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&admin, ATTEMPT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(ATTEMPT_TIMEOUT)))
        .and_then(|()| {
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let head = buf.get(..n).unwrap_or_default();
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let line = String::from_utf8_lossy(head);
        Err(line.lines().next().unwrap_or("no answer").to_owned())
    }
}
