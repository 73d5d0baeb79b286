//! The client-certificate verifier of the control plane's TLS listener, following the live
//! trust bundle: after a root is added, proxies holding certificates of the new root are
//! accepted on their next handshake; after one is removed, its certificates no longer are.
//!
//! Owns: [`LiveClientVerifier`]. The checks themselves are [`SpiffeClientVerifier`]'s.

use std::sync::{Arc, RwLock};

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use trellis_ca::TrustBundle;
use trellis_ca::tls::SpiffeClientVerifier;

/// Asks for a client SVID and checks any that is presented against the current bundle;
/// clients without one (here to get their first certificate) complete the handshake.
#[derive(Debug)]
pub struct LiveClientVerifier {
    /// The verifier for the bundle last seen, and that bundle.
    current: RwLock<(Arc<TrustBundle>, Arc<SpiffeClientVerifier>)>,
    /// The live bundle.
    bundles: watch::Receiver<Arc<TrustBundle>>,
}

impl LiveClientVerifier {
    /// A verifier following `bundles`.
    pub fn new(bundles: watch::Receiver<Arc<TrustBundle>>) -> Self {
        let bundle = bundles.borrow().clone();
        let verifier = Arc::new(SpiffeClientVerifier::optional((*bundle).clone()));
        Self {
            current: RwLock::new((bundle, verifier)),
            bundles,
        }
    }

    /// The verifier for the current bundle (rebuilt once per bundle change).
    fn verifier(&self) -> Arc<SpiffeClientVerifier> {
        let latest = self.bundles.borrow().clone();
        {
            let current = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if Arc::ptr_eq(&current.0, &latest) {
                return current.1.clone();
            }
        }
        let verifier = Arc::new(SpiffeClientVerifier::optional((*latest).clone()));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (latest, verifier.clone());
        verifier
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}
