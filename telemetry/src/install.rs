//! Building the process's subscriber — the filter behind a reload handle, then text or
//! [`FlatJson`] lines on standard error — and [`LogHandle`], which reads and replaces the
//! filter while the process runs (the proxy's admin `/logging` endpoint uses it).
//!
//! Owns: [`subscriber`], [`init`], [`LogHandle`] and [`LogError`]. Logs go to standard error:
//! standard output is for what a command prints (`trellis-proxy init --dry-run`), and
//! Kubernetes collects both.

use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::args::{LogArgs, LogFormat, LogSettings};
use crate::filter::{FilterError, check_filter};
use crate::json::FlatJson;

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The filter text is unusable.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The filter given on the command line (or in the environment) is unusable.
    #[error("--log (TRELLIS_LOG, RUST_LOG): {0}")]
    Flag(FilterError),
    /// `init` was called when a global subscriber was already installed.
    #[error("a global log subscriber is already installed; expected init to be called once")]
    AlreadyInstalled,
    /// The subscriber the handle belongs to has been dropped.
    #[error("the log subscriber this handle controlled no longer exists")]
    Gone,
}

/// Reads and replaces the log filter of a running subscriber. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    /// The filter in force, as directives (`info,trellis_proxy=debug`).
    pub fn filter(&self) -> Result<String, LogError> {
        self.reload
            .with_current(ToString::to_string)
            .map_err(|_| LogError::Gone)
    }

    /// Replaces the filter with `text` once it has been checked; a refused text changes
    /// nothing. Returns the new filter as directives.
    pub fn set(&self, text: &str) -> Result<String, LogError> {
        let filter = check_filter(text)?;
        let shown = filter.to_string();
        self.reload.reload(filter).map_err(|_| LogError::Gone)?;
        Ok(shown)
    }
}

/// A subscriber for `settings` writing to `writer`, and the handle of its filter. Tests pass a
/// buffer; [`init`] passes standard error.
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> Result<(Dispatch, LogHandle), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = check_filter(&settings.filter)?;
    let (filter, reload) = reload::Layer::new(filter);
    let registry = Registry::default().with(filter);
    let dispatch = match settings.format {
        LogFormat::Text => Dispatch::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(settings.ansi),
            ),
        ),
        LogFormat::Json => Dispatch::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson)
                    .with_writer(writer),
            ),
        ),
    };
    Ok((dispatch, LogHandle { reload }))
}

/// Installs the process-wide subscriber the flags ask for, on standard error. Call once, first
/// thing in `main`.
pub fn init(args: &LogArgs) -> Result<LogHandle, LogError> {
    let (dispatch, handle) =
        subscriber(&args.settings(), std::io::stderr).map_err(|e| match e {
            LogError::Filter(e) => LogError::Flag(e),
            other => other,
        })?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| LogError::AlreadyInstalled)?;
    Ok(handle)
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
