//! The webhook's TLS: the serving certificate read from PEM, a rustls certificate resolver that
//! always hands out the newest one (so a renewed certificate is used by the next handshake, with
//! no restart and no dropped connection), and the rustls server configuration (*ring*, TLS 1.2
//! and 1.3, ALPN `http/1.1`).
//!
//! Watching the files is [`crate::reload`]'s job; serving is [`crate::server`]'s.

use std::sync::Arc;

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::watch;

/// Why the serving certificate or the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate PEM has no `CERTIFICATE` block, or a broken one.
    #[error("serving certificate PEM: {0}")]
    Certificate(String),
    /// The key PEM has no private key, or a broken one.
    #[error("serving key PEM: {0}")]
    Key(String),
    /// The key does not belong to the certificate, or is of a kind *ring* cannot sign with.
    #[error("serving key does not fit the certificate: {0}")]
    Mismatch(rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The crypto provider of the whole workspace: *ring*.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain (leaf first) and its private key from PEM, and checks they match.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            "no CERTIFICATE block found".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)
}

/// Resolves every handshake to the newest serving certificate published on the channel.
#[derive(Debug)]
pub struct LatestCertificate(watch::Receiver<Arc<CertifiedKey>>);

impl LatestCertificate {
    /// Serves whatever `current` holds at each handshake.
    pub fn new(current: watch::Receiver<Arc<CertifiedKey>>) -> Self {
        Self(current)
    }
}

impl ResolvesServerCert for LatestCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.borrow()))
    }
}

/// The server configuration of the webhook: certificates from `resolver`, no client
/// certificates (the API server authenticates us, not the other way round), HTTP/1.1.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair("injector.trellis-system.svc");
        let ck = certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(ck.cert.len(), 1);
    }

    #[test]
    fn broken_or_mismatched_pairs_are_refused() {
        let (cert, key) = pair("a");
        let (_, other_key) = pair("b");
        assert!(matches!(
            certified_key(cert.as_bytes(), other_key.as_bytes()),
            Err(TlsError::Mismatch(_))
        ));
        assert!(matches!(
            certified_key(b"", key.as_bytes()),
            Err(TlsError::Certificate(_))
        ));
        assert!(matches!(
            certified_key(cert.as_bytes(), b"not a key"),
            Err(TlsError::Key(_))
        ));
    }
}
