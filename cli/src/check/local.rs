//! Gathering the facts of `trellis check --local`: the trust bundle file, the control plane's
//! gRPC health over TLS at an address, and its `/ready` on the metrics port.

use trellis_ca::{SpiffeId, TrustDomain};

use super::facts::LocalFacts;
use super::probe_facts;
use crate::dial::Target;
use crate::health_probe;
use crate::http1::Http1Client;
use crate::x509;

/// What `--local` needs to know.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// The control plane's gRPC address.
    pub addr: String,
    /// The PEM file of the mesh's roots.
    pub bundle_file: std::path::PathBuf,
    /// The metrics address, for `/ready`.
    pub metrics: Option<String>,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The identity the control plane must prove.
    pub expected: SpiffeId,
}

/// Reads the bundle, probes the control plane, asks `/ready`.
pub async fn gather(t: &LocalTarget) -> LocalFacts {
    let bundle_file = t.bundle_file.display().to_string();
    let parsed = std::fs::read(&t.bundle_file)
        .map_err(|e| format!("cannot read {bundle_file}: {e}"))
        .and_then(|pem| x509::roots(&t.trust_domain, &pem));
    let (roots, probe) = match parsed {
        Ok((bundle, summary)) => {
            let result = health_probe::probe(
                Target::tcp(t.addr.clone()),
                bundle.clone(),
                t.expected.clone(),
            )
            .await;
            (Ok(summary), probe_facts(result, bundle.roots()))
        }
        Err(reason) => (
            Err(reason),
            super::facts::ProbeFacts::Skipped("the trust bundle is unusable".into()),
        ),
    };
    let ready = match &t.metrics {
        Some(addr) => {
            let answer = Http1Client::new(Target::tcp(addr.clone()))
                .get("/ready")
                .await
                .map(|(status, _)| status.as_u16())
                .map_err(|e| e.to_string());
            Some((addr.clone(), answer))
        }
        None => None,
    };
    LocalFacts {
        addr: t.addr.clone(),
        bundle_file,
        roots,
        probe,
        ready,
    }
}
