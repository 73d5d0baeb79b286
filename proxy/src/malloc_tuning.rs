//! glibc's allocator settings for the sidecar: with its defaults, glibc hands freed memory at
//! the top of a heap back to the kernel as soon as 128 KiB are free there (and serves requests
//! over 128 KiB with `mmap`), so a bulk transfer — whose TLS records, HTTP/2 read buffers and
//! send-arena blocks come and go — pays a page fault for every page it touches again. Issue
//! 17's profiles: page faults were the largest cost on the data path after the copies, and
//! these settings took CPU per GB 3.54 → 2.76 s. glibc reads them from `GLIBC_TUNABLES` only
//! when a process starts, so `run` starts itself again with them set.
//!
//! Owns: [`TUNABLES`], [`should_reexec`] (the pure decision) and [`reexec`].

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;

/// The environment variable glibc reads its tunables from.
pub const ENV: &str = "GLIBC_TUNABLES";

/// The settings: memory is given back to the kernel only once 4 MiB are free at a heap's top,
/// and requests up to 1 MiB come from the heap (the 256 KiB send-arena blocks included).
pub const TUNABLES: &str =
    "glibc.malloc.trim_threshold=4194304:glibc.malloc.mmap_threshold=1048576";

/// Whether to start again with [`TUNABLES`]: only when asked (`--malloc-tuning`) and when
/// `GLIBC_TUNABLES` is not set at all — whoever set it (even empty) decides, and the process
/// started again sees it set, so this happens at most once.
pub fn should_reexec(wanted: bool, current: Option<&OsStr>) -> bool {
    wanted && current.is_none()
}

/// Replaces this process with the same program and arguments, [`TUNABLES`] in its
/// environment (same PID: to a supervisor nothing changes; the program by its path, not
/// `/proc/self/exe`, so that its process name stays `trellis-proxy`). Returns only if that
/// failed.
pub fn reexec() -> std::io::Error {
    let program = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let arg0 = args
        .next()
        .unwrap_or_else(|| OsString::from("trellis-proxy"));
    std::process::Command::new(program)
        .arg0(arg0)
        .args(args)
        .env(ENV, TUNABLES)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_starts_again_only_when_asked_and_glibc_tunables_is_unset() {
        let cases = [
            (true, None, true),
            (true, Some(""), false),
            (true, Some(TUNABLES), false),
            (true, Some("glibc.malloc.arena_max=1"), false),
            (false, None, false),
        ];
        for (wanted, current, want) in cases {
            assert_eq!(
                should_reexec(wanted, current.map(OsStr::new)),
                want,
                "wanted {wanted}, GLIBC_TUNABLES {current:?}"
            );
        }
    }

    #[test]
    fn the_injector_gives_injected_sidecars_the_same_settings() {
        assert_eq!(trellis_injector::containers::PROXY_GLIBC_TUNABLES, TUNABLES);
    }
}
