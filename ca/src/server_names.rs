//! Host names on a certificate beside its SPIFFE ID: the control plane's serving certificate is an
//! SVID that clients which verify by host name (ztunnel, grpcurl, Go and Java gRPC) accept too.
//!
//! Owns: [`ServerNames`] (DNS names and IP addresses, each checked the way a TLS client checks a
//! server name) and [`CertificateAuthority::issue_named_svid`]. Our own proxies keep checking
//! the SPIFFE ID: the certificate still has exactly one URI SAN.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls_pki_types::ServerName;

use crate::authority::{CertificateAuthority, IssueError, IssuedSvid};
use crate::{SpiffeId, WorkloadKey};

/// Why a host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is neither a DNS name (letters, digits, '-', dot-separated labels) nor an IP address"
)]
pub struct ServerNameError {
    /// The value given.
    pub value: String,
}

/// The DNS names and IP addresses a server certificate carries, in order, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    /// DNS names, lowercase.
    dns: Vec<String>,
    /// IP addresses.
    ips: Vec<IpAddr>,
}

impl ServerNames {
    /// No names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, a DNS name or an IP address (as a TLS client would name the server).
    pub fn add(&mut self, value: &str) -> Result<(), ServerNameError> {
        let refused = || ServerNameError {
            value: value.to_owned(),
        };
        if value.is_empty() || value.ends_with('.') {
            return Err(refused());
        }
        match ServerName::try_from(value).map_err(|_| refused())? {
            ServerName::IpAddress(ip) => self.add_ip(IpAddr::from(ip)),
            ServerName::DnsName(name) => {
                let name = name.as_ref().to_ascii_lowercase();
                if !self.dns.contains(&name) {
                    self.dns.push(name);
                }
            }
            _ => return Err(refused()),
        }
        Ok(())
    }

    /// Adds an IP address.
    pub fn add_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    /// The DNS names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns
    }

    /// The IP addresses.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// Whether there are no names at all.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    fn sans(&self) -> Result<Vec<SanType>, IssueError> {
        let dns = self.dns.iter().map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(IssueError::Signing)
        });
        let ips = self.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip)));
        dns.chain(ips).collect()
    }
}

impl std::fmt::Display for ServerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ips = self.ips.iter().map(ToString::to_string);
        let all: Vec<String> = self.dns.iter().cloned().chain(ips).collect();
        f.write_str(&all.join(","))
    }
}

impl CertificateAuthority {
    /// Issues an SVID for `id` over `key` that also names `names` (DNS and IP SANs): a server
    /// that SPIFFE-aware clients check by its ID and other TLS clients by host name. `id` comes
    /// from the caller's own configuration, not from a CSR.
    pub fn issue_named_svid(
        &self,
        key: &WorkloadKey,
        id: &SpiffeId,
        names: &ServerNames,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        if id.trust_domain() != self.trust_domain() {
            return Err(IssueError::WrongTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain().clone(),
            });
        }
        let uri = id.to_string().try_into().map_err(IssueError::Signing)?;
        let mut sans = vec![SanType::URI(uri)];
        sans.extend(names.sans()?);
        self.sign_leaf(
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            key.key_pair(),
            ttl,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_as_a_tls_client_names_a_server() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("trellis-control-plane", Ok("dns")),
            (
                "trellis-control-plane.trellis-system.svc.cluster.local",
                Ok("dns"),
            ),
            ("CP.Example.COM", Ok("dns")),
            ("127.0.0.1", Ok("ip")),
            ("198.18.0.254", Ok("ip")),
            ("::1", Ok("ip")),
            ("", Err(())),
            ("bad name", Err(())),
            ("under_score..example", Err(())),
            ("trailing.dot.", Err(())),
            ("-leading-hyphen.example", Err(())),
            ("*.wildcard.example", Err(())),
            ("spiffe://cluster.local/ns/a/sa/b", Err(())),
        ];
        for (value, expected) in cases {
            let mut names = ServerNames::new();
            let got = names
                .add(value)
                .map(|()| if names.ips().is_empty() { "dns" } else { "ip" });
            match (got, expected) {
                (Ok(kind), Ok(want)) => assert_eq!(kind, *want, "{value:?}"),
                (Err(e), Err(())) => assert!(e.to_string().contains(value), "{e}"),
                (got, want) => panic!("{value:?}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn duplicate_names_are_kept_once_and_dns_names_lowercased() {
        let mut names = ServerNames::new();
        for v in ["a.example", "A.EXAMPLE", "127.0.0.1", "127.0.0.1"] {
            names.add(v).unwrap();
        }
        assert_eq!(names.dns_names(), ["a.example"]);
        assert_eq!(names.ips().len(), 1);
        assert_eq!(names.to_string(), "a.example,127.0.0.1");
    }

    #[test]
    fn a_named_svid_carries_one_spiffe_id_beside_its_host_names() {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let td = crate::TrustDomain::new("cluster.local").unwrap();
        let now = SystemTime::now();
        let material = crate::CaMaterial::generate_root(&td, now).unwrap();
        let ca = CertificateAuthority::load(td.clone(), &material, now).unwrap();
        let id =
            SpiffeId::for_service_account(&td, "trellis-system", "trellis-control-plane").unwrap();
        let mut names = ServerNames::new();
        names
            .add("trellis-control-plane.trellis-system.svc")
            .unwrap();
        names.add("127.0.0.1").unwrap();
        let key = WorkloadKey::generate().unwrap();
        let svid = ca
            .issue_named_svid(&key, &id, &names, Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(crate::peer_spiffe_id(&svid.leaf).unwrap(), id);
        let (_, cert) = X509Certificate::from_der(&svid.leaf).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let got: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "uri:spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane",
                "dns:trellis-control-plane.trellis-system.svc",
                "ip:[127, 0, 0, 1]",
            ]
        );
        let other = crate::TrustDomain::new("other.example").unwrap();
        let foreign = SpiffeId::for_service_account(&other, "a", "b").unwrap();
        assert!(matches!(
            ca.issue_named_svid(&key, &foreign, &names, Duration::from_secs(3600), now),
            Err(IssueError::WrongTrustDomain { .. })
        ));
    }
}
