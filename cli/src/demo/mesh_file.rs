//! The demo's mesh file (the control plane's `--mesh-file`, schema in
//! `control-plane/src/mesh/file.rs`): the three workloads where this mode put them, and the
//! backend's AuthorizationPolicy `shop/backend-allow` at one step of the story. [`render`] is
//! pure; [`write`] replaces the file in one rename, so the control plane — which reloads it
//! within about 250 ms — never reads half of it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::Role;
use super::story::PolicyStep;

/// Where one workload is, as the mesh file says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its IP (the pod's, or 127.0.0.1).
    pub ip: IpAddr,
    /// Its app port, when workloads share an IP (loopback); `None`: every port of `ip`.
    pub port: Option<u16>,
    /// Its sidecar's tunnel, when not `ip:15008`.
    pub tunnel: Option<SocketAddr>,
}

/// Where the three workloads are, and the port the backend serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The frontend.
    pub frontend: Endpoint,
    /// The backend.
    pub backend: Endpoint,
    /// The intruder.
    pub intruder: Endpoint,
    /// The backend's app port: the port the policy covers.
    pub app_port: u16,
}

impl Layout {
    /// Where `role` is.
    pub fn endpoint(&self, role: Role) -> &Endpoint {
        match role {
            Role::Frontend => &self.frontend,
            Role::Backend => &self.backend,
            Role::Intruder => &self.intruder,
        }
    }
}

/// The policy's name, in namespace `shop`.
pub const POLICY: &str = "backend-allow";

/// The mesh file for `layout` with the backend's policy at `step`.
pub fn render(layout: &Layout, step: PolicyStep) -> String {
    let mut text = String::from(
        "# The mesh of `trellis demo`: its workloads, and the backend's AuthorizationPolicy.\n\
         # The demo rewrites this file as it runs; the control plane reloads it by itself.\n\
         workloads:\n",
    );
    for role in [Role::Frontend, Role::Backend, Role::Intruder] {
        let e = layout.endpoint(role);
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
        let _ = writeln!(text, ", labels: {{app: {}}}}}", role.name());
    }
    let allow: Vec<String> = step
        .allowed()
        .iter()
        .map(|r| format!("\"{}\"", r.short_id()))
        .collect();
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
        layout.app_port,
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
        let pod = |last: u8| Endpoint {
            ip: IpAddr::from([198, 18, 0, last]),
            port: None,
            tunnel: None,
        };
        Layout {
            frontend: pod(2),
            backend: pod(3),
            intruder: pod(4),
            app_port: 8080,
        }
    }

    fn loopback() -> Layout {
        let local = |port: u16, tunnel: u16| Endpoint {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: Some(port),
            tunnel: Some(SocketAddr::from(([127, 0, 0, 1], tunnel))),
        };
        Layout {
            frontend: local(21081, 21108),
            backend: local(21080, 21208),
            intruder: local(21082, 21308),
            app_port: 21080,
        }
    }

    fn id(role: Role) -> SpiffeId {
        SpiffeId::parse(&role.spiffe_id()).unwrap()
    }

    #[test]
    fn the_control_plane_reads_the_file_and_gives_the_backend_its_policy() {
        let td = TrustDomain::default();
        for (layout, step, allowed, mode) in [
            (pods(), PolicyStep::FrontendOnly, 1, PolicyMode::Enforce),
            (pods(), PolicyStep::AlsoIntruder, 2, PolicyMode::Enforce),
            (loopback(), PolicyStep::Audit, 1, PolicyMode::Audit),
        ] {
            let text = render(&layout, step);
            let model =
                parse(&text, Path::new("mesh.yaml"), &td).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(model.workloads.len(), 3, "{text}");
            let backend = layout.backend.ip;
            let snapshot =
                model.inbound_for(&model.identity_index(), &id(Role::Backend), Some(backend));
            assert_eq!(snapshot.rules.len(), 1, "{text}");
            let rule = &snapshot.rules[0];
            assert_eq!(rule.name, "shop/backend-allow");
            assert_eq!(rule.ports, [layout.app_port]);
            assert_eq!(rule.allow.len(), allowed, "{text}");
            assert!(
                rule.allow.contains(&Role::Frontend.spiffe_id()),
                "{:?}",
                rule.allow
            );
            assert_eq!(rule.mode, mode);
            // The callers are selected by no policy.
            for caller in [Role::Frontend, Role::Intruder] {
                let ip = layout.endpoint(caller).ip;
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
    fn loopback_workloads_are_told_apart_by_port_and_tunnel() {
        let text = render(&loopback(), PolicyStep::FrontendOnly);
        let model = parse(&text, Path::new("mesh.yaml"), &TrustDomain::default()).unwrap();
        let backend = model
            .workloads
            .values()
            .find(|w| w.service_account == "backend")
            .unwrap();
        assert_eq!(backend.port, 21080);
        assert_eq!(backend.tunnel, SocketAddr::from(([127, 0, 0, 1], 21208)));
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
