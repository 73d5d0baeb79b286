//! Names pods resolve without DNS: every pod's `/etc/hosts` is a file of the sandbox's,
//! `/etc/netns/<namespace>/hosts`, which iproute2 bind-mounts over `/etc/hosts` for every
//! program it starts in the namespace (`ip netns exec`). [`render`] writes its text (localhost
//! first, then the names [`crate::Sandbox::add_host`] was given); [`write`] puts it in place.
//! The file exists from the pod's start and is rewritten in place (same inode), so programs
//! already running see names added later. Deleting it with the namespace is
//! [`crate::netns`]'s business.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::error::{Result, SandboxError, io_error};
use crate::netns::Netns;

/// Longest host name (RFC 1123).
pub const MAX_HOST_NAME: usize = 253;

/// Checks that `name` is a host name `/etc/hosts` can carry: dot-separated labels of 1 to 63
/// characters of `a-z`, `A-Z`, `0-9` and `-`, not starting or ending with `-`; 253 characters
/// at most. (No spaces, `#` or line breaks: a name cannot add lines of its own.)
pub(crate) fn check_name(name: &str) -> Result<()> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if name.len() <= MAX_HOST_NAME && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(SandboxError::HostName {
            name: name.to_owned(),
            reason: "use dot-separated labels of 1 to 63 characters of a-z, A-Z, 0-9 and - \
                     (not at either end), 253 characters at most",
        })
    }
}

/// The text of a pod's `/etc/hosts`: the localhost lines, then one line per `(name, address)`.
pub(crate) fn render(entries: &[(String, Ipv4Addr)]) -> String {
    let mut text = String::from(
        "# Written by trellis-sandbox; `ip netns exec` mounts it over /etc/hosts.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for (name, ip) in entries {
        let _ = writeln!(text, "{ip}\t{name}");
    }
    text
}

/// Writes [`render`]`(entries)` to `ns`'s `/etc/netns/<name>/hosts`, in place.
pub(crate) fn write(ns: &Netns, entries: &[(String, Ipv4Addr)]) -> Result<()> {
    let dir = ns.etc_dir();
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = dir.join("hosts");
    // Truncate and write, not rename: a bind mount holds the inode, not the name.
    std::fs::write(&path, render(entries)).map_err(io_error(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_dns_names_that_cannot_add_lines() {
        for ok in [
            "backend",
            "backend.shop.svc.cluster.local",
            "Web-1.example",
            "a",
            &[
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61),
            ]
            .join("."),
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a b",
            "a\nb",
            "a#b",
            "a_b",
            "é",
            &"a".repeat(64),
            &[
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62),
            ]
            .join("."),
        ] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("dot-separated labels"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn hosts_files_start_with_localhost_and_list_names_in_order() {
        assert_eq!(
            render(&[]),
            "# Written by trellis-sandbox; `ip netns exec` mounts it over /etc/hosts.\n\
             127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        let text = render(&[
            ("backend.shop".into(), Ipv4Addr::new(198, 19, 0, 10)),
            ("db".into(), Ipv4Addr::new(198, 18, 0, 7)),
        ]);
        assert!(
            text.ends_with("localhost ip6-loopback\n198.19.0.10\tbackend.shop\n198.18.0.7\tdb\n"),
            "{text}"
        );
    }
}
