//! The certification pipeline shared by every gRPC front (Trellis `Certify`, Istio
//! `CreateCertificate`): authenticate → rate-limit → check the CSR → issue → count → audit.
//!
//! Owns: the order of those steps and [`CertifyError`], the one place that knows every reason a
//! request can fail. Turning those reasons into gRPC statuses is done once, in
//! [`crate::grpc::to_status`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use trellis_ca::{CsrError, IssueError, IssuedSvid, SpiffeId, ValidatedCsr};

use crate::attest::{AttestError, Attested, Attestor};
use crate::ca_live::LiveCa;
use crate::metrics::Metrics;
use crate::node_agent::{ImpersonationError, NodeAgents};
use crate::rate_limit::RateLimiter;

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertifyError {
    /// The caller was not authenticated.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The caller asked too often.
    #[error("{caller} is rate limited; retry in {retry_after:?}")]
    RateLimited {
        /// The authenticated caller, or its address when it is not authenticated yet.
        caller: String,
        /// When a token will be free.
        retry_after: Duration,
    },
    /// A node agent may not have the identity it asked for (`ImpersonatedIdentity`).
    #[error(transparent)]
    Impersonation(#[from] ImpersonationError),
    /// The CSR was refused (including a CSR asking for another identity).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Issuing failed (lifetime out of range, CA expired, signing error).
    #[error(transparent)]
    Issue(#[from] IssueError),
}

impl CertifyError {
    /// A short stable label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            CertifyError::Attest(AttestError::MissingToken) => "missing_token",
            CertifyError::Attest(AttestError::WrongAudience { .. }) => "wrong_audience",
            CertifyError::Attest(AttestError::NotAServiceAccount(_)) => "not_service_account",
            CertifyError::Attest(AttestError::Unavailable(_)) => "attestation_unavailable",
            CertifyError::Attest(_) => "token_rejected",
            CertifyError::RateLimited { .. } => "rate_limited",
            CertifyError::Impersonation(e) => e.reason(),
            CertifyError::Csr(CsrError::IdentityMismatch { .. })
            | CertifyError::Issue(IssueError::Csr(CsrError::IdentityMismatch { .. })) => {
                "identity_mismatch"
            }
            CertifyError::Csr(_) | CertifyError::Issue(IssueError::Csr(_)) => "csr_invalid",
            CertifyError::Issue(IssueError::Lifetime { .. }) => "lifetime",
            CertifyError::Issue(IssueError::WrongTrustDomain { .. }) => "wrong_trust_domain",
            CertifyError::Issue(_) => "internal",
        }
    }
}

/// Every value [`CertifyError::reason`] returns (counted at 0 from the start).
pub const REFUSAL_REASONS: [&str; 16] = [
    "missing_token",
    "wrong_audience",
    "not_service_account",
    "attestation_unavailable",
    "token_rejected",
    "rate_limited",
    "identity_mismatch",
    "csr_invalid",
    "lifetime",
    "wrong_trust_domain",
    "internal",
    "impersonation_invalid_identity",
    "impersonation_not_node_agent",
    "impersonation_not_pod_bound",
    "impersonation_caller_pod_unknown",
    "impersonation_not_on_node",
];

/// Failed attestations per second one source address may cause (sustained).
const SOURCE_RATE: f64 = 20.0;
/// Failed attestations one source address may cause in a burst.
const SOURCE_BURST: u32 = 100;

/// A certificate that was issued, with the bundle to send along.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The identity it carries.
    pub id: SpiffeId,
    /// Leaf, chain, serial, validity.
    pub svid: IssuedSvid,
    /// Every root the mesh trusts (the same bundle discovery sends), the root the leaf chains
    /// to first.
    pub bundle: Vec<CertificateDer<'static>>,
}

/// A request as the gRPC fronts hand it over.
#[derive(Debug)]
pub struct CertifyRequest<'a> {
    /// The bearer token, if any was sent.
    pub token: Option<&'a str>,
    /// The CSR bytes (DER or PEM).
    pub csr: &'a [u8],
    /// The requested lifetime, if any.
    pub ttl: Option<Duration>,
    /// The identity a node agent asks for on behalf of a pod of its node (Istio's
    /// `ImpersonatedIdentity`); `None`: the caller's own.
    pub impersonate: Option<&'a str>,
    /// The caller's address, for the audit line.
    pub peer: Option<SocketAddr>,
    /// Which API was called, for the audit line.
    pub api: &'static str,
}

/// Runs the pipeline; shared by every gRPC service.
#[derive(Debug)]
pub struct Certifier {
    /// The CA in use (it can change while running: root rotation).
    ca: Arc<LiveCa>,
    /// How callers are authenticated.
    attestor: Attestor,
    /// Per-identity limits.
    limiter: RateLimiter<SpiffeId>,
    /// Per-source-address limits on attestation attempts.
    source_limiter: RateLimiter<std::net::IpAddr>,
    /// Counters and histograms.
    metrics: Arc<Metrics>,
    /// Lifetime when none is requested.
    default_ttl: Duration,
    /// Who may ask for the identities of pods on their node; `None`: nobody.
    node_agents: Option<NodeAgents>,
}

impl Certifier {
    /// Assembles the pipeline.
    pub fn new(
        ca: Arc<LiveCa>,
        attestor: Attestor,
        limiter: RateLimiter<SpiffeId>,
        metrics: Arc<Metrics>,
        default_ttl: Duration,
    ) -> Self {
        Self {
            ca,
            attestor,
            limiter,
            source_limiter: RateLimiter::new(SOURCE_RATE, SOURCE_BURST),
            metrics,
            default_ttl,
            node_agents: None,
        }
    }

    /// Lets `node_agents` ask for the identities of pods on their node.
    pub fn with_node_agents(mut self, node_agents: NodeAgents) -> Self {
        self.node_agents = Some(node_agents);
        self
    }

    /// The attestor (the join-token reloader needs it).
    pub fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// Authenticates the caller and issues a certificate for its identity.
    pub async fn certify(&self, req: CertifyRequest<'_>) -> Result<Certified, CertifyError> {
        let started = Instant::now();
        let result = self.run(&req).await;
        self.metrics
            .certify_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok((c, caller)) => {
                self.metrics.issued.inc();
                tracing::info!(
                    target: "trellis::audit",
                    api = req.api,
                    peer.addr = ?req.peer,
                    peer.id = %c.id,
                    caller.id = %caller.id,
                    pod = caller.pod.as_deref().unwrap_or(""),
                    serial = %c.svid.serial,
                    not_after = %humantime::format_rfc3339_seconds(c.svid.not_after),
                    "certificate issued"
                );
            }
            Err(e) => {
                self.metrics.refuse(e.reason());
                tracing::warn!(
                    target: "trellis::audit",
                    api = req.api,
                    peer.addr = ?req.peer,
                    reason = e.reason(),
                    error = %e,
                    "certificate refused"
                );
            }
        }
        result.map(|(certified, _)| certified)
    }

    async fn run(&self, req: &CertifyRequest<'_>) -> Result<(Certified, Attested), CertifyError> {
        // Failed attestations are counted per source address: a flood of bad tokens must not
        // become a flood of TokenReviews. An attempt that would cost an API call takes one from
        // its address's budget before it is made (so attempts in flight at once cannot all
        // pass) and gives it back when it succeeds. A join token, or a token reviewed
        // positively a moment ago, is checked anyway — so a flood of bad tokens does not lock
        // out good callers of the same address. Successful attempts are limited per identity
        // below.
        let source = req.peer.map(|p| p.ip());
        let token = req.token.unwrap_or_default();
        let budgeted = match source {
            Some(ip) if !self.attestor.is_cheap(token) => {
                self.source_limiter
                    .check(&ip, Instant::now())
                    .map_err(|retry_after| CertifyError::RateLimited {
                        caller: format!("{ip} (too many failed attempts)"),
                        retry_after,
                    })?;
                Some(ip)
            }
            _ => None,
        };
        let started = Instant::now();
        let attested = self.attestor.attest(token).await;
        self.metrics
            .observe_attestation(self.attestor.kind(), started.elapsed());
        match (&attested, budgeted, source) {
            (Ok(_), Some(ip), _) => self.source_limiter.refund(&ip, Instant::now()),
            // A cheap attempt that failed (a wrong join token) still counts against its address.
            (Err(_), None, Some(ip)) => {
                let _ = self.source_limiter.check(&ip, Instant::now());
            }
            _ => {}
        }
        let attested = attested?;
        // The identity to issue: the caller's own, or — for a node agent — that of a pod on its
        // node. Limits apply per issued identity.
        let id = match req.impersonate {
            None => attested.id.clone(),
            Some(requested) => match &self.node_agents {
                Some(agents) => agents.authorize(&attested, requested)?,
                None => {
                    return Err(ImpersonationError::NotANodeAgent {
                        caller: attested.id,
                    }
                    .into());
                }
            },
        };
        self.limiter
            .check(&id, Instant::now())
            .map_err(|retry_after| CertifyError::RateLimited {
                caller: id.to_string(),
                retry_after,
            })?;
        let csr = ValidatedCsr::parse(req.csr)?;
        let ttl = req.ttl.unwrap_or(self.default_ttl);
        // One snapshot for the leaf and the bundle, so they always agree.
        let ca = self.ca.current();
        let svid = ca.issue(&csr, &id, ttl, SystemTime::now())?;
        let signer_root = ca.signer_root();
        let bundle = std::iter::once(signer_root)
            .chain(ca.bundle().roots().iter().filter(|r| *r != signer_root))
            .cloned()
            .collect();
        Ok((Certified { id, svid, bundle }, attested))
    }
}
