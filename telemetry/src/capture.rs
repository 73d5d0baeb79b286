//! Log lines kept in memory instead of written out: what tests read back to check that
//! something was logged, and how.
//!
//! Owns: [`LogBuffer`], a cloneable `MakeWriter` for [`crate::subscriber`], and
//! [`thread_default`], which installs a subscriber for one test thread safely.

use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing::Dispatch;
use tracing::dispatcher::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;

/// Makes `dispatch` this thread's subscriber until the guard is dropped, so that tests running
/// in parallel each read their own logs.
///
/// Why not `tracing::dispatcher::set_default` alone: while only one dispatcher is registered,
/// tracing-core decides whether a newly seen callsite is enabled by asking the *current
/// thread's* subscriber. A parallel test thread without one would then switch that callsite off
/// for every thread, and the test reading its logs would see nothing. One extra dispatcher,
/// registered once and never dropped, makes tracing-core ask all of them.
pub fn thread_default(dispatch: &Dispatch) -> DefaultGuard {
    static ANCHOR: OnceLock<Dispatch> = OnceLock::new();
    ANCHOR.get_or_init(|| Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::dispatcher::set_default(dispatch)
}

/// Everything the subscriber wrote, shared between clones.
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'w self) -> LogBuffer {
        self.clone()
    }
}
