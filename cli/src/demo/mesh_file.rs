//! The demo's mesh file (the control plane's `--mesh-file`, schema in
//! `control-plane/src/mesh/file/`): the four pods where this mode put them, the Service
//! `shop/backend` in front of the backend pods (selected by label, named target port `http`
//! resolved per pod), and the backends' AuthorizationPolicy `shop/backend-allow` at one step of
//! the story. [`render`] is pure; [`write`] replaces the file in one rename, so the control
//! plane — which reloads it within about 250 ms — never reads half of it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use super::story::PolicyStep;
use super::{Replica, Role};

/// The Service's namespace/name.
pub const SERVICE: &str = "shop/backend";
/// The Service's ClusterIP: from the sandbox's Service range. In loopback mode it exists
/// nowhere: the callers' explicit outbound listeners stand for it.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The Service's port (the samples chart's).
pub const SERVICE_PORT: u16 = 8080;
/// The Service's name as the callers' apps resolve it (network namespace mode).
pub const SERVICE_HOST: &str = "backend.shop";

/// The Service's ClusterIP:port.
pub fn cluster_addr() -> SocketAddr {
    SocketAddr::from((CLUSTER_IP, SERVICE_PORT))
}

/// Where one pod is, as the mesh file says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its IP (the pod's, or 127.0.0.1).
    pub ip: IpAddr,
    /// Its app port, when workloads share an IP (loopback); `None`: every port of `ip`.
    pub port: Option<u16>,
    /// Its sidecar's tunnel, when not `ip:15008`.
    pub tunnel: Option<SocketAddr>,
    /// The number of its container port named `http` (the backends': the Service's target).
    pub http: Option<u16>,
}

/// Where the pods are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The frontend.
    pub frontend: Endpoint,
    /// The backend pods, in [`Replica::BACKENDS`] order.
    pub backends: Vec<Endpoint>,
    /// The intruder.
    pub intruder: Endpoint,
}

impl Layout {
    /// Where `replica` is (`None` for a backend replica the layout does not have).
    pub fn endpoint(&self, replica: Replica) -> Option<&Endpoint> {
        match replica.role {
            Role::Frontend => Some(&self.frontend),
            Role::Intruder => Some(&self.intruder),
            Role::Backend => self.backends.get(usize::from(replica.n).checked_sub(1)?),
        }
    }

    /// Every pod with where it is, in [`Replica::ALL`] order.
    pub fn pods(&self) -> Vec<(Replica, &Endpoint)> {
        Replica::ALL
            .into_iter()
            .filter_map(|r| Some((r, self.endpoint(r)?)))
            .collect()
    }

    /// Each backend pod's Service endpoint: its IP and the number of its `http` port.
    pub fn service_endpoints(&self) -> Vec<(Replica, SocketAddr)> {
        Replica::BACKENDS
            .into_iter()
            .filter_map(|r| {
                let e = self.endpoint(r)?;
                Some((r, SocketAddr::new(e.ip, e.http?)))
            })
            .collect()
    }

    /// The backends' app ports (their `http` numbers), each once: what the policy covers.
    pub fn app_ports(&self) -> Vec<u16> {
        let ports: BTreeSet<u16> = self.backends.iter().filter_map(|e| e.http).collect();
        ports.into_iter().collect()
    }
}

/// The policy's name, in namespace `shop`.
pub const POLICY: &str = "backend-allow";

/// The mesh file for `layout` with the backends' policy at `step`.
pub fn render(layout: &Layout, step: PolicyStep) -> String {
    let mut text = String::from(
        "# The mesh of `trellis demo`: its pods, the Service in front of the backends, and the\n\
         # backends' AuthorizationPolicy. The demo rewrites this file as it runs; the control\n\
         # plane reloads it by itself.\n\
         workloads:\n",
    );
    for (replica, e) in layout.pods() {
        let role = replica.role;
        let _ = write!(
            text,
            "  - {{namespace: {}, serviceAccount: {}, ip: {}",
            role.namespace(),
            role.service_account(),
            e.ip
        );
        if let Some(port) = e.port {
            let _ = write!(text, ", port: {port}");
        }
        if let Some(tunnel) = e.tunnel {
            let _ = write!(text, ", tunnel: \"{tunnel}\"");
        }
        if let Some(http) = e.http {
            let _ = write!(text, ", ports: {{http: {http}}}");
        }
        let _ = writeln!(text, ", labels: {{app: {}}}}}", role.name());
    }
    let _ = writeln!(
        text,
        "services:\n\
         \x20 - {{namespace: shop, name: backend, clusterIPs: [{CLUSTER_IP}], selector: {{app: backend}}, \
         ports: [{{name: http, port: {SERVICE_PORT}, targetPort: http}}]}}"
    );
    let allow: Vec<String> = step
        .allowed()
        .iter()
        .map(|r| format!("\"{}\"", r.short_id()))
        .collect();
    let ports: Vec<String> = layout.app_ports().iter().map(u16::to_string).collect();
    let _ = write!(
        text,
        "policies:\n\
         \x20 - apiVersion: trellis.dev/v1alpha1\n\
         \x20   kind: AuthorizationPolicy\n\
         \x20   metadata: {{name: {POLICY}, namespace: shop}}\n\
         \x20   spec:\n\
         \x20     selector: {{matchLabels: {{app: backend}}}}\n\
         \x20     ports: [{}]\n\
         \x20     allow: [{}]\n\
         \x20     mode: {}\n",
        ports.join(", "),
        allow.join(", "),
        step.mode()
    );
    text
}

/// Replaces `path` with `text`: written next to it, then renamed over it.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ca::{SpiffeId, TrustDomain};
    use trellis_control_plane::mesh::crd::PolicyMode;
    use trellis_control_plane::mesh::file::parse;

    fn pods() -> Layout {
        let pod = |last: u8, http| Endpoint {
            ip: IpAddr::from([198, 18, 0, last]),
            port: None,
            tunnel: None,
            http,
        };
        Layout {
            frontend: pod(2, None),
            backends: vec![pod(3, Some(8080)), pod(5, Some(8080))],
            intruder: pod(4, None),
        }
    }

    fn loopback() -> Layout {
        let local = |port: u16, tunnel: u16, http| Endpoint {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: Some(port),
            tunnel: Some(SocketAddr::from(([127, 0, 0, 1], tunnel))),
            http,
        };
        Layout {
            frontend: local(21081, 21108, None),
            backends: vec![
                local(21080, 21208, Some(21080)),
                local(21083, 21258, Some(21083)),
            ],
            intruder: local(21082, 21308, None),
        }
    }

    fn id(role: Role) -> SpiffeId {
        SpiffeId::parse(&role.spiffe_id()).unwrap()
    }

    #[test]
    fn the_control_plane_reads_the_file_and_gives_every_backend_pod_its_policy() {
        let td = TrustDomain::default();
        for (layout, step, allowed, mode) in [
            (pods(), PolicyStep::FrontendOnly, 1, PolicyMode::Enforce),
            (pods(), PolicyStep::AlsoIntruder, 2, PolicyMode::Enforce),
            (loopback(), PolicyStep::Audit, 1, PolicyMode::Audit),
        ] {
            let text = render(&layout, step);
            let model =
                parse(&text, Path::new("mesh.yaml"), &td).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(model.workloads.len(), 4, "{text}");
            for backend in &layout.backends {
                let snapshot = model.inbound_for(
                    &model.identity_index(),
                    &id(Role::Backend),
                    Some(backend.ip),
                );
                assert_eq!(snapshot.rules.len(), 1, "{text}");
                let rule = &snapshot.rules[0];
                assert_eq!(rule.name, "shop/backend-allow");
                assert_eq!(rule.ports, layout.app_ports());
                assert_eq!(rule.allow.len(), allowed, "{text}");
                assert!(rule.allow.contains(&Role::Frontend.spiffe_id()));
                assert_eq!(rule.mode, mode);
            }
            // The callers are selected by no policy.
            for caller in [Role::Frontend, Role::Intruder] {
                let ip = layout.endpoint(Replica::of(caller)).unwrap().ip;
                assert!(
                    model
                        .inbound_for(&model.identity_index(), &id(caller), Some(ip))
                        .rules
                        .is_empty()
                );
            }
        }
    }

    #[test]
    fn the_service_stands_for_both_backend_pods_on_the_number_each_gives_its_http_port() {
        for layout in [pods(), loopback()] {
            let text = render(&layout, PolicyStep::FrontendOnly);
            let model = parse(&text, Path::new("mesh.yaml"), &TrustDomain::default()).unwrap();
            let service = &model.services[SERVICE];
            assert_eq!(service.addresses, [IpAddr::V4(CLUSTER_IP)]);
            assert_eq!(service.ports.len(), 1);
            assert_eq!(service.ports[0].port, SERVICE_PORT);
            let mut endpoints: Vec<SocketAddr> = service.ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr())
                .collect();
            endpoints.sort();
            let mut expected: Vec<SocketAddr> = layout
                .service_endpoints()
                .into_iter()
                .map(|(_, a)| a)
                .collect();
            expected.sort();
            assert_eq!(endpoints, expected, "{text}");
            assert!(service.ports[0].endpoints.iter().all(|e| e.ready));
        }
        // On loopback the two pods share an IP: the named port tells them apart.
        assert_eq!(
            loopback()
                .service_endpoints()
                .iter()
                .map(|(r, a)| (r.name(), a.port()))
                .collect::<Vec<_>>(),
            [
                ("backend-1".to_owned(), 21080),
                ("backend-2".to_owned(), 21083)
            ]
        );
    }

    #[test]
    fn loopback_workloads_are_told_apart_by_port_and_tunnel() {
        let text = render(&loopback(), PolicyStep::FrontendOnly);
        let model = parse(&text, Path::new("mesh.yaml"), &TrustDomain::default()).unwrap();
        let mut backends: Vec<(u16, SocketAddr)> = model
            .workloads
            .values()
            .filter(|w| w.service_account == "backend")
            .map(|w| (w.port, w.tunnel))
            .collect();
        backends.sort();
        assert_eq!(
            backends,
            [
                (21080, SocketAddr::from(([127, 0, 0, 1], 21208))),
                (21083, SocketAddr::from(([127, 0, 0, 1], 21258)))
            ]
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        write(&path, "a: 1\n").unwrap();
        write(&path, "b: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b: 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
