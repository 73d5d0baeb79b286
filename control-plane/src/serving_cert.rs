//! The control plane's own serving certificate: an SVID for its own SPIFFE ID that also names the
//! host names clients dial (its Service's DNS names in Kubernetes mode, its listen address in
//! local mode, and `--extra-server-names`), issued by its own CA at start and renewed at half its
//! lifetime, swapped in without dropping connections.
//!
//! Owns: [`ServingCert`], a rustls certificate resolver, the renewal task, and
//! [`server_names`], the choice of names (pure). Trellis proxies check the SPIFFE ID; ztunnel,
//! grpcurl and other gRPC clients check a host name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::{CertificateAuthority, ServerNameError, ServerNames, SpiffeId, WorkloadKey};

use crate::config::Mode;

/// Lifetime of the serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the control plane's serving certificate: {0}")]
pub struct ServingCertError(String);

/// The current serving certificate, readable by rustls on every handshake.
#[derive(Debug)]
pub struct ServingCert {
    /// The certificate and key in use.
    current: RwLock<Arc<CertifiedKey>>,
    /// When the current certificate expires.
    not_after: RwLock<SystemTime>,
}

impl ServingCert {
    /// Issues the first certificate for `id`, naming `names` too.
    pub fn issue(
        ca: &CertificateAuthority,
        id: &SpiffeId,
        names: &ServerNames,
    ) -> Result<Self, ServingCertError> {
        let (key, not_after) = make(ca, id, names)?;
        Ok(Self {
            current: RwLock::new(Arc::new(key)),
            not_after: RwLock::new(not_after),
        })
    }

    /// Renews at half the lifetime until `shutdown`.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        ca: Arc<CertificateAuthority>,
        id: SpiffeId,
        names: ServerNames,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = SERVING_TTL / 2;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                match make(&ca, &id, &names) {
                    Ok((key, not_after)) => {
                        *this.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                        *this.not_after.write().unwrap_or_else(|e| e.into_inner()) = not_after;
                        info!(id = %id, "serving certificate renewed");
                    }
                    Err(e) => {
                        warn!(error = %e, "serving certificate renewal failed; keeping the current one")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn make(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    names: &ServerNames,
) -> Result<(CertifiedKey, SystemTime), ServingCertError> {
    let err = |e: &dyn std::fmt::Display| ServingCertError(e.to_string());
    let key = WorkloadKey::generate().map_err(|e| err(&e))?;
    let ttl = SERVING_TTL.min(ca.max_ttl());
    let svid = ca
        .issue_named_svid(&key, id, names, ttl, SystemTime::now())
        .map_err(|e| err(&e))?;
    let mut chain = vec![svid.leaf.clone()];
    chain.extend(svid.chain.iter().cloned());
    let provider = trellis_ca::tls::provider();
    let certified =
        CertifiedKey::from_der(chain, key.private_key_der(), &provider).map_err(|e| err(&e))?;
    Ok((certified, svid.not_after))
}

/// Where the control plane is reached, as the flags say: what [`server_names`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Reachable<'a> {
    /// Kubernetes (a Service) or local (an address).
    pub mode: Mode,
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--service`: the control plane's Service.
    pub service: &'a str,
    /// `--namespace`.
    pub namespace: &'a str,
    /// `--cluster-domain`.
    pub cluster_domain: &'a str,
}

/// The host names on the serving certificate: in Kubernetes mode the Service's DNS names
/// (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<cluster domain>`); in local mode the listen
/// address (loopback and `localhost` when it listens on every address); then `extra`, in order.
pub fn server_names(at: Reachable<'_>, extra: &[String]) -> Result<ServerNames, ServerNameError> {
    let mut names = ServerNames::new();
    match at.mode {
        Mode::Kubernetes => {
            let (svc, ns) = (at.service, at.namespace);
            names.add(svc)?;
            names.add(&format!("{svc}.{ns}"))?;
            names.add(&format!("{svc}.{ns}.svc"))?;
            names.add(&format!("{svc}.{ns}.svc.{}", at.cluster_domain))?;
        }
        Mode::Local if at.listen.ip().is_unspecified() => {
            names.add("localhost")?;
            names.add_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            names.add_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        Mode::Local => names.add_ip(at.listen.ip()),
    }
    for name in extra {
        names.add(name.trim())?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mode: Mode, listen: &str) -> Reachable<'static> {
        Reachable {
            mode,
            listen: listen.parse().unwrap(),
            service: "trellis-control-plane",
            namespace: "mesh-system",
            cluster_domain: "corp.example",
        }
    }

    #[test]
    fn the_serving_certificate_names_where_clients_dial_the_control_plane() {
        let k8s = "trellis-control-plane,trellis-control-plane.mesh-system,\
                   trellis-control-plane.mesh-system.svc,\
                   trellis-control-plane.mesh-system.svc.corp.example";
        let cases: &[(Reachable<'static>, &[&str], &str)] = &[
            (at(Mode::Kubernetes, "0.0.0.0:15012"), &[], k8s),
            (
                at(Mode::Kubernetes, "0.0.0.0:15012"),
                &["cp.example.com", "198.18.0.7"],
                &format!("{k8s},cp.example.com,198.18.0.7"),
            ),
            (at(Mode::Local, "198.18.0.254:15012"), &[], "198.18.0.254"),
            (
                at(Mode::Local, "127.0.0.1:0"),
                &["localhost"],
                "localhost,127.0.0.1",
            ),
            (
                at(Mode::Local, "0.0.0.0:15012"),
                &[],
                "localhost,127.0.0.1,::1",
            ),
            (
                at(Mode::Local, "[::]:15012"),
                &[" ::1 "],
                "localhost,127.0.0.1,::1",
            ),
        ];
        for (reach, extra, want) in cases {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let got = server_names(*reach, &extra).unwrap().to_string();
            assert_eq!(
                got,
                want.replace(char::is_whitespace, ""),
                "{reach:?} {extra:?}"
            );
        }
    }

    #[test]
    fn a_bad_extra_name_is_refused_by_name() {
        let err = server_names(at(Mode::Local, "127.0.0.1:0"), &["not a name".into()]).unwrap_err();
        assert!(err.to_string().contains("\"not a name\""), "{err}");
    }
}
