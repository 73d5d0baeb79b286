//! The routes under test and the processes behind them, all on 127.0.0.1:
//!
//! | route | path of one application connection |
//! |---|---|
//! | `direct` | generator → backend |
//! | `trellis` | generator → client `trellis-proxy` (explicit mode) → pooled mTLS HTTP/2 CONNECT tunnel → server `trellis-proxy` → backend |
//! | `haproxy` | generator → client HAProxy (`mode tcp`) → its own TLS 1.3 connection with a client certificate → server HAProxy (`verify required`) → backend |
//! | `trellis-service` | as `trellis`, the client proxy given a Service address (see [`crate::service_route`]) |
//! | `nginx` | generator → client nginx (`stream`, `proxy_ssl`) → its own TLS 1.3 connection → server nginx (`ssl_verify_client on`) → backend |
//!
//! Every proxy holds a certificate from the same Trellis control plane (local mode, join
//! tokens): the Trellis proxies fetch theirs, HAProxy and nginx get theirs from
//! `trellis svid fetch` — one identity for the client side, one for the server side.
//!
//! Owns: starting the control plane, the backend and the proxies; their configuration files.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::{self, Supervisor};
use crate::{load, service_route};

/// A proxy process of a route.
#[derive(Debug, Clone)]
pub struct ProxyProc {
    /// `client` (the generator's side) or `server` (the backend's side).
    pub side: &'static str,
    /// Its PID (for nginx, the master; the workers are found under it).
    pub pid: u32,
}

/// One way from the generator to the backend.
#[derive(Debug, Clone)]
pub struct Route {
    /// `direct`, `trellis`, `haproxy` or `nginx`.
    pub name: &'static str,
    /// Where the generator sends HTTP.
    pub http: SocketAddr,
    /// Where the generator sends throughput streams.
    pub stream: SocketAddr,
    /// The proxies on the way (none for direct).
    pub proxies: Vec<ProxyProc>,
}

/// Where the Trellis binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `trellis-proxy`.
    pub proxy: PathBuf,
    /// `trellis-control-plane`.
    pub control_plane: PathBuf,
    /// `trellis` (for `svid fetch`).
    pub cli: PathBuf,
}

impl Bins {
    /// The binaries in `dir`; fails naming the first that is missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let bins = Self {
            proxy: dir.join("trellis-proxy"),
            control_plane: dir.join("trellis-control-plane"),
            cli: dir.join("trellis"),
        };
        for b in [&bins.proxy, &bins.control_plane, &bins.cli] {
            if !b.is_file() {
                bail!(
                    "{} not found; build it: cargo build --release -p trellis-proxy -p trellis-control-plane -p trellis",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

const CLIENT_TOKEN: &str = "bench-client-token-0123456789";
const SERVER_TOKEN: &str = "bench-server-token-0123456789";
const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
const STARTUP: Duration = Duration::from_secs(30);

/// The path of a system tool: from `PATH`, else `/usr/sbin` (where Debian puts HAProxy and
/// nginx, often not in a non-root user's `PATH`).
pub fn tool(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    in_path.unwrap_or_else(|| Path::new("/usr/sbin").join(name))
}

/// A free port on 127.0.0.1 (bound and released: the processes bind it right after), never
/// one handed out before in this run — the kernel can give a just-released port again, and two
/// listeners of one process on the same port fail its start.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(addr.port()) {
            return Ok(addr);
        }
    }
    anyhow::bail!("no unused port on 127.0.0.1 after 1000 tries")
}

/// Extra arguments for the Trellis proxies (`--proxy-arg`), and for an A/B run the arguments
/// of a second Trellis pair, the `trellis-b` route (`--ab`).
#[derive(Debug, Clone, Default)]
pub struct TrellisArgs {
    /// Given to every Trellis proxy (both routes of an A/B run too).
    pub common: Vec<String>,
    /// Given to the `trellis-b` pair only, after `common`; `None`: no `trellis-b` route.
    pub b: Option<Vec<String>>,
}

/// What [`start`] started.
#[derive(Debug)]
pub struct Started {
    /// Every route, each checked with one request.
    pub routes: Vec<Route>,
    /// For the connections-at-scale measurement, a Trellis pair of its own per Trellis route
    /// (same name; empty unless asked): proxies that held 10,000 connections keep heap the
    /// allocator cannot give back at once, which the other measurements must not inherit.
    pub idle: Vec<Route>,
}

/// Starts everything (with `idle_pairs`, the [`Started::idle`] pairs too).
pub async fn start(
    sup: &mut Supervisor,
    dir: &Path,
    bins: &Bins,
    args: &TrellisArgs,
    max_conns: usize,
    idle_pairs: bool,
) -> anyhow::Result<Started> {
    // Backend.
    let (app_http, app_stream) = (free_addr()?, free_addr()?);
    let exe = std::env::current_exe()?;
    sup.spawn(
        "backend",
        Command::new(exe)
            .arg("backend")
            .arg(format!("--http={app_http}"))
            .arg(format!("--stream={app_stream}")),
    )?;
    wait_tcp(sup, "backend", app_http).await?;
    wait_tcp(sup, "backend", app_stream).await?;
    let direct = Route {
        name: "direct",
        http: app_http,
        stream: app_stream,
        proxies: vec![],
    };

    // Control plane and certificates.
    fs::write(
        dir.join("join-tokens"),
        format!("{CLIENT_TOKEN} ns/bench/sa/client\n{SERVER_TOKEN} ns/bench/sa/server\n"),
    )?;
    // Join-token files must be private: the control plane refuses others' access.
    fs::set_permissions(
        dir.join("join-tokens"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    fs::write(dir.join("client-token"), CLIENT_TOKEN)?;
    fs::write(dir.join("server-token"), SERVER_TOKEN)?;
    let (cp, cp_metrics) = (free_addr()?, free_addr()?);
    let state = dir.join("state");
    // The Trellis server proxy's tunnel, named in the mesh file for the Service route.
    let tunnel = free_addr()?;
    let mesh = dir.join("mesh.yaml");
    fs::write(
        &mesh,
        service_route::mesh_file(app_http, app_stream, tunnel),
    )?;
    sup.spawn(
        "control-plane",
        Command::new(&bins.control_plane)
            .arg("--mode=local")
            .arg(format!("--state-dir={}", state.display()))
            .arg(format!(
                "--join-tokens={}",
                dir.join("join-tokens").display()
            ))
            .arg(format!("--mesh-file={}", mesh.display()))
            .arg(format!("--listen={cp}"))
            .arg(format!("--metrics-listen={cp_metrics}"))
            .arg("--shutdown-grace=1s")
            .arg("--log=warn"),
    )?;
    wait_http_ok(sup, "control-plane", cp_metrics, "/ready").await?;
    let root = state.join("root-cert.pem");
    for side in ["client", "server"] {
        sup.run(
            &format!("svid-fetch-{side}"),
            Command::new(&bins.cli)
                .args(["svid", "fetch"])
                .arg(format!("--control-plane={cp}"))
                .arg(format!(
                    "--token-file={}",
                    dir.join(format!("{side}-token")).display()
                ))
                .arg(format!("--trust-bundle={}", root.display()))
                .arg(format!("--out={}", dir.join(side).display())),
            STARTUP,
        )
        .await?;
        // HAProxy wants the chain and the key in one file.
        let chain = fs::read_to_string(dir.join(side).join("svid.pem"))?;
        let key = fs::read_to_string(dir.join(side).join("svid.key"))?;
        fs::write(dir.join(side).join("haproxy.pem"), format!("{chain}{key}"))?;
    }

    let app = (app_http, app_stream);
    let trellis = start_trellis(
        sup,
        dir,
        bins,
        cp,
        &root,
        tunnel,
        app,
        ("trellis", "trellis", &args.common),
    )
    .await?;
    let server = trellis
        .proxies
        .iter()
        .find(|p| p.side == "server")
        .cloned()
        .context("the trellis route has a server proxy")?;
    let trellis_service =
        service_route::start(sup, dir, bins, cp, &root, server, &args.common).await?;
    let mut routes = vec![direct, trellis, trellis_service];
    let b_args: Option<Vec<String>> = args
        .b
        .as_ref()
        .map(|b| args.common.iter().chain(b).cloned().collect());
    if let Some(b_args) = &b_args {
        let b_route = start_trellis(
            sup,
            dir,
            bins,
            cp,
            &root,
            free_addr()?,
            app,
            ("trellis-b", "trellis-b", b_args),
        )
        .await?;
        routes.push(b_route);
    }
    let mut idle = vec![];
    if idle_pairs {
        let pairs = std::iter::once(("trellis", "idle-trellis", &args.common))
            .chain(b_args.iter().map(|b| ("trellis-b", "idle-trellis-b", b)));
        for (name, logs, extra) in pairs {
            let tunnel = free_addr()?;
            idle.push(
                start_trellis(sup, dir, bins, cp, &root, tunnel, app, (name, logs, extra)).await?,
            );
        }
    }
    routes.push(start_haproxy(sup, dir, app, max_conns).await?);
    routes.push(start_nginx(sup, dir, app_http, app_stream).await?);
    for r in routes.iter().chain(&idle) {
        let mut c = load::open_connections(r.http, 1, Duration::from_secs(10))
            .await
            .with_context(|| format!("route {} does not carry a request", r.name))?;
        c.clear();
    }
    Ok(Started { routes, idle })
}

/// Starts a Trellis pair as route `name` (`trellis`, or `trellis-b` in an A/B run), its logs
/// `<logs>-server.log` and `<logs>-client.log`, every proxy given `extra` after the bench's own
/// arguments (a later flag overrides an earlier one).
#[allow(clippy::too_many_arguments)]
async fn start_trellis(
    sup: &mut Supervisor,
    dir: &Path,
    bins: &Bins,
    cp: SocketAddr,
    root: &Path,
    tunnel: SocketAddr,
    (app_http, app_stream): (SocketAddr, SocketAddr),
    (name, logs, extra): (&'static str, &str, &[String]),
) -> anyhow::Result<Route> {
    let (server_admin, client_admin) = (free_addr()?, free_addr()?);
    let (http, stream) = (free_addr()?, free_addr()?);
    let common = |cmd: &mut Command, side: &str, admin: SocketAddr| {
        cmd.args([
            "run",
            "--mode=explicit",
            "--discovery=false",
            "--log=warn",
            "--drain=1s",
        ])
        .arg(format!("--control-plane={cp}"))
        .arg(format!("--trust-bundle-file={}", root.display()))
        .arg(format!(
            "--token-file={}",
            dir.join(format!("{side}-token")).display()
        ))
        .arg(format!("--admin-listen={admin}"));
    };
    let logs = (format!("{logs}-server"), format!("{logs}-client"));
    let mut server = Command::new(&bins.proxy);
    common(&mut server, "server", server_admin);
    server.arg(format!("--tunnel-listen={tunnel}")).args(extra);
    let server_pid = sup.spawn(&logs.0, &mut server)?;
    let mut client = Command::new(&bins.proxy);
    common(&mut client, "client", client_admin);
    client
        .arg("--tunnel-listen=127.0.0.1:0")
        .arg(format!(
            "--outbound={http}={app_http},{stream}={app_stream}"
        ))
        .arg(format!(
            "--workload={app_http}={SERVER_ID}@{tunnel},{app_stream}={SERVER_ID}@{tunnel}"
        ))
        .args(extra);
    let client_pid = sup.spawn(&logs.1, &mut client)?;
    wait_http_ok(sup, &logs.0, server_admin, "/ready").await?;
    wait_http_ok(sup, &logs.1, client_admin, "/ready").await?;
    Ok(Route {
        name,
        http,
        stream,
        proxies: vec![
            ProxyProc {
                side: "client",
                pid: client_pid,
            },
            ProxyProc {
                side: "server",
                pid: server_pid,
            },
        ],
    })
}

/// HAProxy in `mode tcp`: each application connection is its own TLS connection between the
/// two HAProxies (no multiplexing in TCP mode); TLS sessions are resumed by default.
/// `maxconn` is at least 8,000 and `max_conns` (the connections-at-scale fleet and more) when
/// the open-file limit allows it.
async fn start_haproxy(
    sup: &mut Supervisor,
    dir: &Path,
    (app_http, app_stream): (SocketAddr, SocketAddr),
    max_conns: usize,
) -> anyhow::Result<Route> {
    let (tls_http, tls_stream, http, stream) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let d = dir.display();
    let head = format!(
        "global\n  maxconn {}\n  nbthread 2\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        max_conns.min(procs::haproxy_connections()).max(8000)
    );
    let mut server = head.clone();
    let mut client = head;
    for (name, tls, listen, app) in [
        ("http", tls_http, http, app_http),
        ("stream", tls_stream, stream, app_stream),
    ] {
        writeln!(
            server,
            "frontend {name}\n  bind {tls} ssl crt {d}/server/haproxy.pem ca-file {d}/server/bundle.pem verify required ssl-min-ver TLSv1.3 alpn h2\n  default_backend {name}\n\
             backend {name}\n  server app {app}"
        )?;
        writeln!(
            client,
            "frontend {name}\n  bind {listen}\n  default_backend {name}\n\
             backend {name}\n  server peer {tls} ssl crt {d}/client/haproxy.pem ca-file {d}/client/bundle.pem verify required ssl-min-ver TLSv1.3 alpn h2"
        )?;
    }
    let mut pids = Vec::new();
    for (side, cfg) in [("server", server), ("client", client)] {
        let path = dir.join(format!("haproxy-{side}.cfg"));
        fs::write(&path, cfg)?;
        let pid = sup.spawn(
            &format!("haproxy-{side}"),
            Command::new(tool("haproxy"))
                .arg("-db")
                .arg("-f")
                .arg(&path),
        )?;
        pids.push(ProxyProc { side, pid });
    }
    for (side, addr) in [
        ("server", tls_http),
        ("server", tls_stream),
        ("client", http),
        ("client", stream),
    ] {
        wait_tcp(sup, &format!("haproxy-{side}"), addr).await?;
    }
    pids.reverse();
    Ok(Route {
        name: "haproxy",
        http,
        stream,
        proxies: pids,
    })
}

/// The nginx stream module: like HAProxy, one TLS connection per application connection.
async fn start_nginx(
    sup: &mut Supervisor,
    dir: &Path,
    app_http: SocketAddr,
    app_stream: SocketAddr,
) -> anyhow::Result<Route> {
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    if !module.is_file() {
        bail!(
            "{} missing: run bench/setup (installs libnginx-mod-stream)",
            module.display()
        );
    }
    let (tls_http, tls_stream, http, stream) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let d = dir.display();
    let mut pids = Vec::new();
    for side in ["server", "client"] {
        let mut cfg = format!(
            "load_module {};\nworker_processes 2;\npid {d}/nginx-{side}.pid;\n\
             events {{ worker_connections 8000; }}\nstream {{\n",
            module.display()
        );
        for (tls, listen, app) in [(tls_http, http, app_http), (tls_stream, stream, app_stream)] {
            if side == "server" {
                let lines = [
                    format!("listen {tls} ssl;"),
                    "ssl_protocols TLSv1.3;".into(),
                    format!("ssl_certificate {d}/server/svid.pem;"),
                    format!("ssl_certificate_key {d}/server/svid.key;"),
                    format!("ssl_client_certificate {d}/server/bundle.pem;"),
                    "ssl_verify_client on;".into(),
                    format!("proxy_pass {app};"),
                ];
                writeln!(cfg, "  server {{\n    {}\n  }}", lines.join("\n    "))?;
            } else {
                // proxy_ssl_verify would also check the host name, and an SVID has no DNS name
                // or CN — only the URI SAN ("upstream SSL certificate does not match"). nginx
                // has no chain-only mode, so the client side does not verify the server here (it
                // still presents its certificate, and the server verifies it). This favours
                // nginx a little; the report says so.
                let lines = [
                    format!("listen {listen};"),
                    format!("proxy_pass {tls};"),
                    "proxy_ssl on;".into(),
                    "proxy_ssl_protocols TLSv1.3;".into(),
                    format!("proxy_ssl_certificate {d}/client/svid.pem;"),
                    format!("proxy_ssl_certificate_key {d}/client/svid.key;"),
                    format!("proxy_ssl_trusted_certificate {d}/client/bundle.pem;"),
                    "proxy_ssl_verify off;".into(),
                    "proxy_ssl_session_reuse on;".into(),
                    "proxy_half_close on;".into(),
                ];
                writeln!(cfg, "  server {{\n    {}\n  }}", lines.join("\n    "))?;
            }
        }
        cfg.push_str("}\n");
        let path = dir.join(format!("nginx-{side}.conf"));
        fs::write(&path, cfg)?;
        let pid = sup.spawn(
            &format!("nginx-{side}"),
            Command::new(tool("nginx"))
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&path)
                .arg("-e")
                .arg(dir.join(format!("nginx-{side}.err")))
                .args(["-g", "daemon off;"]),
        )?;
        pids.push(ProxyProc { side, pid });
    }
    for (side, addr) in [
        ("server", tls_http),
        ("server", tls_stream),
        ("client", http),
        ("client", stream),
    ] {
        wait_tcp(sup, &format!("nginx-{side}"), addr).await?;
    }
    pids.reverse();
    Ok(Route {
        name: "nginx",
        http,
        stream,
        proxies: pids,
    })
}

/// Waits until `addr` accepts TCP, failing early if `name` exits.
async fn wait_tcp(sup: &mut Supervisor, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        sup.check_alive(name)?;
        if Instant::now() >= deadline {
            bail!("{name} does not listen on {addr}:\n{}", sup.log_of(name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `GET http://addr/path` answers 200.
pub(crate) async fn wait_http_ok(
    sup: &mut Supervisor,
    name: &str,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if http_status(addr, path).await.ok() == Some(200) {
            return Ok(());
        }
        sup.check_alive(name)?;
        if Instant::now() >= deadline {
            bail!(
                "{name}: http://{addr}{path} not ready:\n{}",
                sup.log_of(name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await?;
        let code = std::str::from_utf8(&buf[9..12])?.parse()?;
        anyhow::Ok(code)
    };
    tokio::time::timeout(Duration::from_secs(2), fut).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addr_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..300).map(|_| free_addr().unwrap().port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
