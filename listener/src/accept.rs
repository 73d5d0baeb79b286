//! One accept step for a listener's loop: an accept error (out of file descriptors, buffers or
//! memory) is not retried at once — that spins a core and serves nothing — but after a delay
//! that starts at [`MIN_DELAY`] and doubles up to [`MAX_DELAY`], reset by the next success.
//! The errors are logged at `warn`, at most once per [`WARN_EVERY`] per listener, with the
//! count of errors since the last line.
//!
//! Owns: [`Acceptor`] and the pure [`delay`]. What to do with an accepted connection is the
//! caller's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The delay after the first failed accept of a streak.
pub const MIN_DELAY: Duration = Duration::from_millis(10);
/// The longest delay between accept attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// The least time between two warnings of one listener.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The delay after failed accept number `failures` in a row (1 for the first):
/// `MIN_DELAY · 2^(failures-1)`, at most `MAX_DELAY`.
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    MIN_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// Accepts from one listener, backing off while accepting fails.
#[derive(Debug)]
pub struct Acceptor {
    /// The listener.
    listener: TcpListener,
    /// Names the listener in warnings (`tunnel`, `admin`, ...).
    name: &'static str,
    /// Failed accepts since the last success.
    failures: u32,
    /// When the last warning was logged.
    warned_at: Option<Instant>,
    /// Failed accepts not yet mentioned in a warning.
    unreported: u64,
}

impl Acceptor {
    /// Wraps `listener`; `name` says which one it is in warnings.
    pub fn new(listener: TcpListener, name: &'static str) -> Self {
        Self {
            listener,
            name,
            failures: 0,
            warned_at: None,
            unreported: 0,
        }
    }

    /// The next connection, or `None` once `shutdown` is cancelled. Accept errors are waited
    /// out (see the module documentation), never returned.
    pub async fn accept(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(conn) => {
                    self.failures = 0;
                    return Some(conn);
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    self.unreported += 1;
                    let wait = delay(self.failures);
                    if self.warned_at.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        warn!(
                            listener = self.name,
                            error = %e,
                            errors = self.unreported,
                            retry_in_ms = wait.as_millis() as u64,
                            "accepting connections failed; backing off"
                        );
                        self.warned_at = Some(Instant::now());
                        self.unreported = 0;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_ten_milliseconds_up_to_one_second() {
        let table = [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (7, 640),
            (8, 1000),
            (40, 1000),
            (u32::MAX, 1000),
        ];
        for (failures, ms) in table {
            assert_eq!(delay(failures), Duration::from_millis(ms), "{failures}");
        }
    }

    #[tokio::test]
    async fn accept_returns_connections_and_none_after_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, "test");
        let shutdown = CancellationToken::new();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (_, from) = acceptor.accept(&shutdown).await.unwrap();
        assert!(from.ip().is_loopback());
        shutdown.cancel();
        assert!(acceptor.accept(&shutdown).await.is_none());
    }
}
