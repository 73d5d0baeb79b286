//! The `trellis-service` route: the `trellis` route's path, but the client proxy is given a
//! Service address, as an application in a cluster is — it looks the Service up in discovery,
//! chooses an endpoint (the one backend here) and opens the tunnel to it. Compared with
//! `trellis` in the same run, it shows what the Service path adds to a connection.
//!
//! | route | path of one application connection |
//! |---|---|
//! | `trellis-service` | generator → client `trellis-proxy` (explicit mode, destination `198.19.0.10:80`, discovery on) → endpoint choice → pooled mTLS HTTP/2 CONNECT tunnel → the `trellis` route's server `trellis-proxy` → backend |
//!
//! Owns: the mesh file the control plane serves (the server workload and the Service) and the
//! Service route's client proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::procs::Supervisor;
use crate::routes::{Bins, ProxyProc, Route, free_addr, wait_http_ok};

/// The Service's cluster IP: never dialled (a meshed Service is resolved to an endpoint by the
/// client proxy), from the range reserved for network tests.
const CLUSTER_IP: &str = "198.19.0.10";
/// The Service's ports for the HTTP and the stream backend.
const HTTP_PORT: u16 = 80;
const STREAM_PORT: u16 = 81;

/// The control plane's mesh file: the backend as the server proxy's workload (one entry per
/// application port: they share 127.0.0.1) and the Service `bench/backend` in front of it.
pub fn mesh_file(app_http: SocketAddr, app_stream: SocketAddr, tunnel: SocketAddr) -> String {
    let (h, s) = (app_http.port(), app_stream.port());
    format!(
        "mtls: STRICT\n\
         workloads:\n\
         \x20 - {{namespace: bench, serviceAccount: server, ip: 127.0.0.1, port: {h}, tunnel: \"{tunnel}\", labels: {{app: backend}}}}\n\
         \x20 - {{namespace: bench, serviceAccount: server, ip: 127.0.0.1, port: {s}, tunnel: \"{tunnel}\", labels: {{app: backend}}}}\n\
         services:\n\
         \x20 - namespace: bench\n\
         \x20   name: backend\n\
         \x20   clusterIPs: [{CLUSTER_IP}]\n\
         \x20   ports: [{{name: http, port: {HTTP_PORT}}}, {{name: stream, port: {STREAM_PORT}}}]\n\
         \x20   endpoints:\n\
         \x20     - {{ip: 127.0.0.1, ports: {{http: {h}, stream: {s}}}}}\n"
    )
}

/// Starts the Service route's client proxy; the server side is the `trellis` route's server
/// proxy `server` (its tunnel is in the mesh file), measured with this route while it runs.
pub async fn start(
    sup: &mut Supervisor,
    dir: &Path,
    bins: &Bins,
    cp: SocketAddr,
    root: &Path,
    server: ProxyProc,
    extra: &[String],
) -> anyhow::Result<Route> {
    let (admin, http, stream) = (free_addr()?, free_addr()?, free_addr()?);
    let mut client = Command::new(&bins.proxy);
    client
        .args(["run", "--mode=explicit", "--log=warn", "--drain=1s"])
        .arg(format!("--control-plane={cp}"))
        .arg(format!("--trust-bundle-file={}", root.display()))
        .arg(format!(
            "--token-file={}",
            dir.join("client-token").display()
        ))
        .arg(format!("--admin-listen={admin}"))
        .arg("--tunnel-listen=127.0.0.1:0")
        .arg(format!(
            "--outbound={http}={CLUSTER_IP}:{HTTP_PORT},{stream}={CLUSTER_IP}:{STREAM_PORT}"
        ))
        .args(extra);
    let pid = sup.spawn("trellis-service-client", &mut client)?;
    wait_http_ok(sup, "trellis-service-client", admin, "/ready").await?;
    Ok(Route {
        name: "trellis-service",
        http,
        stream,
        proxies: vec![
            ProxyProc {
                side: "client",
                pid,
            },
            server,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_file_names_both_ports_of_the_backend_behind_the_service() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let text = mesh_file(a(8080), a(8081), a(25008));
        assert!(
            text.contains("port: 8080, tunnel: \"127.0.0.1:25008\""),
            "{text}"
        );
        assert!(
            text.contains("port: 8081, tunnel: \"127.0.0.1:25008\""),
            "{text}"
        );
        assert!(
            text.contains("{ip: 127.0.0.1, ports: {http: 8080, stream: 8081}}"),
            "{text}"
        );
        assert!(text.contains("clusterIPs: [198.19.0.10]"), "{text}");
    }
}
