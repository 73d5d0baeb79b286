//! A command to run in a namespace ([`Cmd`]): program, arguments, environment, user and time
//! limit. Running it is [`crate::netns`]'s business.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

/// `PATH` inside pods.
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long [`crate::Netns::exec`] lets a command run unless its [`Cmd`] says otherwise.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// A command to run in a namespace: program, arguments, environment, user, time limit.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The program (a path, or a name looked up in [`PATH`]).
    pub(crate) program: OsString,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Environment variables besides `PATH`.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// Run as this UID (and the GID of the same number) instead of root.
    pub(crate) uid: Option<u32>,
    /// [`crate::Netns::exec`] kills it after this long.
    pub(crate) timeout: Duration,
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

    /// The time limit of [`crate::Netns::exec`] (default [`EXEC_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program's file name, for log file names.
    pub(crate) fn short_name(&self) -> String {
        let name = PathBuf::from(&self.program);
        name.file_name()
            .map_or_else(|| "cmd".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The command line, for messages.
    pub(crate) fn display(&self, ns: &str) -> String {
        let mut words = vec![format!("[{ns}]")];
        if let Some(uid) = self.uid {
            words.push(format!("[uid {uid}]"));
        }
        words.push(self.program.to_string_lossy().into_owned());
        words.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    }
}
