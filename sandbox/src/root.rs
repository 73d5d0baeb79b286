//! Whether this process may build a sandbox: [`is_root`] asks, [`require_root`] insists. A test
//! that needs root calls [`require_root`] first, so without root it fails and says why — it
//! never returns early and counts as passed. Leaving such tests out on purpose is the test
//! runner's business (`cargo nextest run --profile unprivileged`, see CONTRIBUTING.md).

/// What [`require_root`] says when this process is not root.
pub const NOT_ROOT: &str = "this test needs root (network namespaces, iptables) and this process \
     is not root: run it as root (CI does), or leave the root tests out on purpose with \
     `cargo nextest run --profile unprivileged`, which reports them as skipped";

/// Whether this process runs as root (effective UID 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
        .is_some_and(|euid| euid == 0)
}

/// Fails the calling test unless this process is root; call it first in every test that needs
/// root.
///
/// # Panics
///
/// When this process is not root, with [`NOT_ROOT`]: a test without the rights it needs has
/// not passed.
pub fn require_root() {
    assert!(is_root(), "{NOT_ROOT}");
}

/// The effective UID in the text of `/proc/<pid>/status` (the second number of `Uid:`).
fn effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_number_of_the_uid_line() {
        let cases = [
            (
                "Name:\tcargo\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n",
                Some(0),
            ),
            ("Uid:\t1000\t0\t1000\t1000\n", Some(0)),
            ("Uid:\t0\t1000\t0\t0\n", Some(1000)),
            ("Uid:\t0\n", None),
            ("Gid:\t0\t0\t0\t0\n", None),
            ("Uid:\tx\ty\n", None),
            ("", None),
        ];
        for (status, expected) in cases {
            assert_eq!(effective_uid(status), expected, "{status:?}");
        }
    }
}
