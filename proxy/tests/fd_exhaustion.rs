//! The proxy at its open-file limit (issue 15, item 4): while every descriptor is taken, its
//! accept loops back off instead of spinning (CPU time well under a core over the exhausted
//! period — a behaviour bound, kept generous, not a benchmark), and once descriptors are freed
//! it serves again. The proxy runs as a child process whose RLIMIT_NOFILE is lowered with
//! `prlimit`; the child is killed when the test ends, even when it fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections opened to the tunnel port: more than the proxy has descriptors left.
const IDLE: usize = 80;
/// Descriptors left to the proxy above what it holds when ready.
const HEADROOM: usize = 16;
/// The window over which CPU time is measured while exhausted.
const MEASURE: Duration = Duration::from_secs(2);
/// At most this share of one core over [`MEASURE`] (a spinning loop uses ~100 %).
const MAX_CPU_SHARE: f64 = 0.3;

/// Kills the child proxy on drop.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// User + system CPU time of `pid`, from `/proc/<pid>/stat` (clock ticks of 1/100 s).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// `GET /live` on the admin port, answered within `limit`.
async fn live(admin: SocketAddr, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        let mut tcp = TcpStream::connect(admin).await.ok()?;
        tcp.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.ok()?;
        raw.starts_with("HTTP/1.1 200").then_some(())
    })
    .await
    .is_ok_and(|r| r.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_the_proxy_backs_off_and_serves_again_once_descriptors_free_up() {
    let cp = ControlPlane::start(&[]).await;
    let (tunnel, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .args([
            "run",
            "--mode=explicit",
            &format!("--control-plane={}", cp.running.grpc_addr),
            &format!("--token-file={}", cp.token_file(TOKENS[1].0).display()),
            &format!("--trust-bundle={}", cp.root_pem),
            &format!("--tunnel-listen={tunnel}"),
            &format!("--admin-listen={admin}"),
            // Hold every idle connection: the descriptors, not the caps, must run out.
            "--tunnel-max-handshakes-per-source=1000",
            "--tunnel-max-connections-per-source=1000",
            "--tunnel-handshake-timeout=120s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = Proxy(child);
    let pid = proxy.0.id();
    let deadline = Instant::now() + WAIT;
    while !live(admin, Duration::from_secs(1)).await {
        assert!(Instant::now() < deadline, "the proxy never served /live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let limit = open_fds(pid) + HEADROOM;
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(tunnel).await.unwrap());
    }
    assert!(
        eventually(WAIT, || open_fds(pid) >= limit - 1).await,
        "the proxy never reached its limit of {limit} descriptors (holds {})",
        open_fds(pid)
    );

    // Exhausted: nothing is served, and the accept loops do not spin.
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    assert!(
        !live(admin, MEASURE).await,
        "the admin port answered without a free descriptor"
    );
    let cpu = cpu_time(pid) - cpu_before;
    let wall = wall_before.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "CPU while exhausted: {cpu:?} over {wall:?} ({:.1} %)",
        share * 100.0
    );
    assert!(
        share < MAX_CPU_SHARE,
        "the proxy used {:.0} % of a core while out of descriptors",
        share * 100.0
    );

    // Descriptors freed: it serves again.
    drop(idle);
    let deadline = Instant::now() + WAIT;
    while !live(admin, Duration::from_secs(1)).await {
        assert!(
            Instant::now() < deadline,
            "the proxy did not serve again after descriptors were freed"
        );
    }
}
