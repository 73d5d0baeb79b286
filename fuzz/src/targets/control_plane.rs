//! `mesh_file`, `join_tokens` and `authorization_policy`: the control plane's inputs that come
//! from files and from the API server, parsed as the control plane parses them.

use std::collections::BTreeMap;
use std::path::Path;

use trellis_ca::{SpiffeId, TrustDomain};
use trellis_control_plane::attest::join_token_file;
use trellis_control_plane::mesh::crd::{AuthorizationPolicy, Policy};
use trellis_control_plane::mesh::file;

use super::text;

/// The control plane's own identity, which no join token may prove.
const CONTROL_PLANE: &str = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane";

/// Texts larger than this are skipped: the parsers are linear, and small inputs run faster.
const MAX_TEXT: usize = 64 * 1024;

/// The mesh file: a model that parses yields an inbound view for each of its workloads, and
/// every Service endpoint names a port and every Service an address.
pub fn mesh_file(data: &[u8]) {
    let Some(input) = text(data).filter(|t| t.len() <= MAX_TEXT) else {
        return;
    };
    let td = TrustDomain::default();
    let Ok(model) = file::parse(input, Path::new("mesh.yaml"), &td) else {
        return;
    };
    let index = model.identity_index();
    for workload in model.workloads.values().take(8) {
        let id = workload
            .id(&td)
            .expect("an accepted workload has a valid identity");
        let view = model.inbound_for(&index, &id, Some(workload.ip));
        assert!(
            view.rules.len() <= model.policies.len(),
            "more rules than policies"
        );
    }
    for service in model.services.values() {
        assert!(
            !service.addresses.is_empty(),
            "a Service without a ClusterIP"
        );
        for port in &service.ports {
            assert_ne!(port.port, 0);
        }
    }
    for policy in &model.policies {
        assert!(!policy.ports.contains(&0));
    }
}

/// The join-token file: every accepted entry proves an identity of our trust domain, never the
/// control plane's own.
pub fn join_tokens(data: &[u8]) {
    let Some(input) = text(data).filter(|t| t.len() <= MAX_TEXT) else {
        return;
    };
    let td = TrustDomain::default();
    let control_plane = SpiffeId::parse(CONTROL_PLANE).expect("a fixed ID parses");
    let Ok(table) = join_token_file::parse(input, &td, &control_plane) else {
        return;
    };
    for entry in table.by_digest.values() {
        assert_eq!(entry.id.trust_domain(), &td);
        assert_ne!(entry.id, control_plane);
    }
}

/// An AuthorizationPolicy as YAML (mesh files, `kubectl apply`) and as JSON (the API server's
/// watch events): what converts has no port 0, and its selector and patterns evaluate.
pub fn authorization_policy(data: &[u8]) {
    if data.len() > MAX_TEXT {
        return;
    }
    if let Ok(policy) = serde_json::from_slice::<AuthorizationPolicy>(data) {
        check_policy(&policy);
    }
    if let Some(input) = text(data)
        && let Ok(policy) = serde_saphyr::from_str::<AuthorizationPolicy>(input)
    {
        check_policy(&policy);
    }
}

fn check_policy(resource: &AuthorizationPolicy) {
    let td = TrustDomain::default();
    let Ok(policy) = Policy::from_resource(resource, &td) else {
        let denied = Policy::deny_all_like(resource, "invalid");
        assert!(denied.allow.is_empty() && denied.ports.is_empty());
        return;
    };
    assert!(!policy.ports.contains(&0));
    assert!(!policy.namespace.is_empty() && !policy.name.is_empty());
    let labels = BTreeMap::from([("app".to_owned(), "backend".to_owned())]);
    let _ = policy.selects("shop", &labels);
    let frontend =
        SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("a fixed ID parses");
    for pattern in &policy.allow {
        let _ = pattern.matches(&frontend);
    }
}
