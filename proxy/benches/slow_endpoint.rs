//! How the Service balancer treats a slow endpoint: three backends behind one ClusterIP, one of
//! which answers 5 ms later than the others, and C clients (1, 8, 16) making new connections to
//! the ClusterIP one after another for a few seconds each. Prints, per concurrency, the share
//! of new connections each backend got; round-robin (or kube-proxy's random choice) would give
//! each a third whatever its speed. A run with three equal backends comes first, as the control.
//!
//! Everything on loopback in this process: a control plane in local mode with a mesh file, one
//! proxy per backend, a frontend proxy whose explicit outbound listener stands for the ClusterIP
//! (as in `tests/service_mesh.rs`). Not a criterion bench: it measures shares, not time.
//!
//! ```sh
//! cargo bench -p trellis-proxy --bench slow_endpoint            # 4 s per run
//! SLOW_ENDPOINT_SECS=10 cargo bench -p trellis-proxy --bench slow_endpoint
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{ControlPlane, TOKENS, proxy, roundtrip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The ClusterIP:port (nothing listens there: only the proxy's balancing reaches a backend).
const VIP: &str = "198.19.0.10:80";
/// How much later the slow backend answers.
const SLOW_BY: Duration = Duration::from_millis(5);

/// An app that reads the request (until the client half-closes), waits `delay`, and answers
/// with its name.
async fn app(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut input = Vec::new();
                let _ = s.read_to_end(&mut input).await;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// One measured setup: a control plane, three backends (the last `slow` or not), a frontend.
struct Setup {
    _cp: ControlPlane,
    _backends: Vec<trellis_proxy::run::Running>,
    frontend: trellis_proxy::run::Running,
    listen: SocketAddr,
}

async fn setup(slow: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap().keep();
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, "workloads: []\n").unwrap();
    let cp = ControlPlane::start(&[&format!("--mesh-file={}", mesh.display())]).await;
    let mut text = String::from("workloads:\n");
    let mut backends = Vec::new();
    for (i, name) in ["b1", "b2", "b3"].into_iter().enumerate() {
        let delay = if slow && i == 2 {
            SLOW_BY
        } else {
            Duration::ZERO
        };
        let addr = app(name, delay).await;
        let p = proxy(&cp, TOKENS[1].0, &[]).await;
        text.push_str(&format!(
            "  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, tunnel: \"{tunnel}\", labels: {{app: backend}}, ports: {{http: {port}}}}}\n",
            port = addr.port(),
            tunnel = p.addrs.tunnel.unwrap(),
        ));
        backends.push(p);
    }
    text.push_str(
        "services:\n  - {namespace: shop, name: backend, clusterIPs: [198.19.0.10], selector: {app: backend}, ports: [{name: http, port: 80, targetPort: http}]}\n",
    );
    let tmp = mesh.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, &mesh).unwrap();
    let frontend = proxy(&cp, TOKENS[0].0, &[format!("--outbound=127.0.0.1:0={VIP}")]).await;
    let listen = frontend.addrs.explicit_outbound[0];
    let vip: SocketAddr = VIP.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while frontend
        .ctx
        .state
        .borrow()
        .service_at(vip)
        .is_none_or(|s| s.port().ready.len() < 3)
    {
        assert!(Instant::now() < deadline, "the Service never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        _cp: cp,
        _backends: backends,
        frontend,
        listen,
    }
}

/// `clients` tasks making new connections one after another for `secs`: who answered, how
/// many failed.
async fn load(listen: SocketAddr, clients: usize, secs: Duration) -> BTreeMap<String, u64> {
    let seen = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let stop = Instant::now() + secs;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let who = match roundtrip(listen, b"GET /").await {
                    Ok(a) => String::from_utf8_lossy(&a).into_owned(),
                    Err(_) => "failed".to_owned(),
                };
                *seen.lock().unwrap().entry(who).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    seen.lock().unwrap().clone()
}

fn main() {
    let secs = std::env::var("SLOW_ENDPOINT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(4), Duration::from_secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "three backends behind {VIP}; b3 answers {} ms later when slow; {}s per run",
            SLOW_BY.as_millis(),
            secs.as_secs()
        );
        println!("round-robin or kube-proxy's random choice: 33.3% each, whatever the speed");
        for slow in [false, true] {
            let s = setup(slow).await;
            for clients in [1usize, 8, 16] {
                let seen = load(s.listen, clients, secs).await;
                let total: u64 = seen.values().sum();
                let share = |k: &str| {
                    100.0 * seen.get(k).copied().unwrap_or(0) as f64 / total.max(1) as f64
                };
                println!(
                    "{:<10} {clients:>2} clients: {total:>6} connections  b1 {:>5.1}%  b2 {:>5.1}%  b3 {:>5.1}%{}  failed {}",
                    if slow { "b3 slow" } else { "all equal" },
                    share("b1"),
                    share("b2"),
                    share("b3"),
                    if slow { " (slow)" } else { "" },
                    seen.get("failed").copied().unwrap_or(0)
                );
            }
            drop(s.frontend);
        }
    });
}
