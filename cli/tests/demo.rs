//! `trellis demo` as people run it: the built `trellis` binary, `demo --duration 20s`, its
//! output read for the story it must tell — the frontend allowed with both SPIFFE IDs, through
//! the Service, on both backend pods (each paying its own handshake), the intruder refused with
//! its SPIFFE ID and the reason, a policy update taking effect, a certificate rotation, the
//! callers' sidecars choosing the pods (kube-proxy taking none of it, as root) — and the machine
//! checked afterwards for anything left behind: network namespaces, iptables rules, processes,
//! the temporary directory.
//!
//! As root the first test runs the network-namespace mode (what `sudo trellis demo` does), else
//! the loopback mode; the second forces loopback mode (`--loopback`), so CI covers both. Needs
//! the binaries built (`cargo build --workspace --bins`; or `TRELLIS_BIN_DIR`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use trellis_sandbox::binaries::{CONTROL_PLANE, PROXY, binary};
use trellis_sandbox::netns;

const FRONTEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const BACKEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const INTRUDER_ID: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
/// The demo shows 20 s of traffic; starting and stopping take a few more.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A finished demo run.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    pid: u32,
    took: Duration,
}

/// Runs `trellis demo ARGS` to completion (killed after [`RUN_LIMIT`]), output in files.
fn demo(args: &[&str]) -> Run {
    for name in [CONTROL_PLANE, PROXY] {
        if let Err(e) = binary(name) {
            panic!("{e}");
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["--color", "never", "demo"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("trellis demo starts");
    let pid = child.id();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for trellis demo") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            // Not reaped yet, so the PID is still this child's.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trellis demo ran longer than {RUN_LIMIT:?}; output so far:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = Run {
        status,
        stdout: std::fs::read_to_string(&out).expect("its stdout"),
        stderr: std::fs::read_to_string(&err).expect("its stderr"),
        pid,
        took: started.elapsed(),
    };
    eprintln!(
        "trellis demo {} ran {:?}, {}; its output:\n{}{}",
        args.join(" "),
        run.took,
        run.status,
        run.stdout,
        run.stderr
    );
    run
}

/// Asserts the output tells the whole story; `pods` are the backend pods with the address
/// (pod IP and target port) their sidecar is asked for.
fn assert_story(run: &Run, pods: &[(&str, &str)]) {
    let out = &run.stdout;
    assert!(run.status.success(), "exit status {}", run.status);
    let lines: Vec<&str> = out.lines().collect();
    let has = |what: &str, f: &dyn Fn(&str) -> bool| {
        assert!(lines.iter().any(|l| f(l)), "no line with {what}");
    };
    for (pod, dst) in pods {
        has(
            &format!(
                "the frontend allowed on {pod}, with both SPIFFE IDs, TLS 1.3 and a handshake"
            ),
            &|l| {
                l.contains(&format!(
                    "✔ allowed {FRONTEND_ID} → {BACKEND_ID} on {pod} ({dst})  TLSv1_3"
                )) && l.contains("(handshake ")
            },
        );
    }
    has(
        "the intruder refused, with its SPIFFE ID and the reason",
        &|l| {
            l.contains(&format!(
                "✘ refused {INTRUDER_ID} → {BACKEND_ID} on backend-"
            )) && l.contains("is not allowed on port")
                && l.contains("shop/backend-allow")
        },
    );
    has("the Service and its endpoints", &|l| {
        l.starts_with("service shop/backend: 198.19.0.10:8080")
            && pods
                .iter()
                .all(|(pod, dst)| l.contains(&format!("{pod} {dst}")))
    });
    has("the callers' sidecars choosing both pods", &|l| {
        l.contains("⇄ via Service shop/backend ")
            && pods.iter().all(|(pod, _)| l.contains(&format!("{pod} ")))
    });
    has("a policy update", &|l| l.contains("✎ policy updated: "));
    has("the intruder allowed after the update", &|l| {
        l.contains("✎ policy in effect: the intruder is now allowed")
    });
    has("audit mode", &|l| {
        l.contains(&format!("‼ would-deny, let through (audit) {INTRUDER_ID}"))
    });
    has("a certificate rotation", &|l| {
        l.contains("↻ certificate rotated: ") && l.contains(" serial ")
    });
    has("the clean-up", &|l| l.starts_with("stopped; cleaned up: "));
    assert!(
        run.took < Duration::from_secs(60),
        "a 20 s demo took {:?}",
        run.took
    );
}

/// The PIDs the demo printed as it started things (`(pid N)`).
fn printed_pids(out: &str) -> Vec<u32> {
    out.split("(pid ")
        .skip(1)
        .filter_map(|rest| rest.split(')').next()?.parse().ok())
        .collect()
}

/// The temporary directory the demo said it used.
fn printed_dir(out: &str) -> PathBuf {
    out.lines()
        .find_map(|l| l.split_once("files in ").or_else(|| l.split_once(") in ")))
        .map(|(_, path)| PathBuf::from(path.trim()))
        .unwrap_or_else(|| panic!("the demo did not say where its files are:\n{out}"))
}

/// Whether `pid` is a live process (not gone, not a zombie) whose command line mentions
/// `needle`: so a PID reused since by something else does not count.
fn alive_with(pid: u32, needle: &str) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let state = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned()));
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    matches!(state.as_deref(), Some(s) if s != "Z" && s != "X")
        && String::from_utf8_lossy(&cmdline).contains(needle)
}

/// Every live process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive_with(*pid, needle))
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Asserts nothing the run started is left: processes, its directory, namespaces, rules.
fn assert_nothing_left(run: &Run) {
    let pids = printed_pids(&run.stdout);
    assert!(pids.len() >= 4, "PIDs printed: {pids:?}");
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| alive_with(*p, "trellis") || alive_with(*p, "app.py"))
        .collect();
    assert!(
        alive.is_empty(),
        "processes the demo started still run: {alive:?}"
    );
    let dir = printed_dir(&run.stdout);
    let dir_text = dir.to_string_lossy().into_owned();
    let users = processes_mentioning(&dir_text);
    assert!(users.is_empty(), "processes using {dir_text}: {users:?}");
    assert!(!dir.exists(), "{dir_text} left behind");
    let prefix = format!("{}{}-", trellis_sandbox::NAME_PREFIX, run.pid);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
    // The rules lived in the pods' namespaces, now gone; the host's own tables never had any.
    if netns::is_root()
        && let Ok(saved) = Command::new("iptables-save").output()
    {
        let text = String::from_utf8_lossy(&saved.stdout);
        assert!(
            !text.contains("TRELLIS"),
            "Trellis iptables rules on the host:\n{text}"
        );
    }
}

#[test]
fn the_demo_tells_the_story_and_leaves_nothing_behind() {
    let run = demo(&["--duration", "20s"]);
    if netns::is_root() {
        assert!(
            run.stdout.contains("mode: network namespaces"),
            "as root the demo uses network namespaces"
        );
        assert!(
            run.stdout.contains(&format!(
                "sandbox {}{}-",
                trellis_sandbox::NAME_PREFIX,
                run.pid
            )),
            "the demo names its sandbox"
        );
        assert_story(
            &run,
            &[
                ("backend-1", "198.18.0.3:8080"),
                ("backend-2", "198.18.0.5:8080"),
            ],
        );
        // The callers' apps called the ClusterIP (by name and by address); their sidecars
        // balanced it; the node's DNAT never saw a connection.
        assert!(
            run.stdout
                .contains("kube-proxy (the node's DNAT for the ClusterIP) took 0 of them"),
            "kube-proxy took meshed connections"
        );
    } else {
        assert!(
            run.stdout
                .contains("mode: loopback, because this is not root")
        );
        assert_story(
            &run,
            &[
                ("backend-1", "127.0.0.1:21080"),
                ("backend-2", "127.0.0.1:21083"),
            ],
        );
    }
    assert_nothing_left(&run);
}

#[test]
fn the_loopback_demo_tells_the_story_and_leaves_nothing_behind() {
    // Ports of its own, so it can run next to the test above when that one is on loopback too.
    let run = demo(&["--duration", "20s", "--loopback", "--base-port", "23000"]);
    assert!(run.stdout.contains("mode: loopback (--loopback)"));
    assert_story(
        &run,
        &[
            ("backend-1", "127.0.0.1:23080"),
            ("backend-2", "127.0.0.1:23083"),
        ],
    );
    assert_nothing_left(&run);
    let ports_free = [23012, 23080, 23083, 23108, 23208, 23258, 23308]
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
    assert!(ports_free, "a port of the demo is still bound");
}

#[test]
fn a_taken_port_is_named_and_nothing_is_started() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The demo's control plane takes BASE+12: make that the taken one.
    let Some(base) = port
        .checked_sub(12)
        .filter(|b| *b >= 1024 && *b <= u16::MAX - 308)
    else {
        return;
    };
    let run = demo(&[
        "--loopback",
        "--base-port",
        &base.to_string(),
        "--duration",
        "5s",
    ]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains(&format!(
            "port {port} on 127.0.0.1 (control plane gRPC) is taken"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("(pid "), "something was started");
}
