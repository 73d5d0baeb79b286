//! Kubernetes attestation: a projected ServiceAccount token (audience `trellis-ca`) checked by
//! the TokenReview API, with a small bounded cache of positive answers.
//!
//! Owns: the TokenReview call and the interpretation of its answer (a failed review is still
//! HTTP 201; only `status.authenticated` and `status.error` tell). Never caches refusals, never
//! logs tokens.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use trellis_ca::{SpiffeId, TrustDomain};

use super::{AUDIENCE, AttestError, Attested, token_digest};

/// Upper bound on cached positive reviews (one per live workload token is plenty).
const CACHE_CAPACITY: usize = 50_000;
/// How long one TokenReview call may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Checks ServiceAccount tokens with the TokenReview API.
pub struct TokenReviewer {
    /// The Kubernetes client (in-cluster service account or kubeconfig).
    client: kube::Client,
    /// Identities are built in this trust domain.
    trust_domain: TrustDomain,
    /// Positive reviews by token digest, with their expiry.
    cache: Mutex<HashMap<[u8; 32], (Attested, Instant)>>,
    /// How long a positive review is trusted without asking again.
    cache_ttl: Duration,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer using `client`; positive answers are cached for `cache_ttl` (zero disables).
    pub fn new(client: kube::Client, trust_domain: TrustDomain, cache_ttl: Duration) -> Self {
        Self {
            client,
            trust_domain,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
        }
    }

    /// Reviews `token`, using the cache for tokens reviewed positively a moment ago.
    pub async fn review(&self, token: &str) -> Result<Attested, AttestError> {
        let key = token_digest(token);
        let now = Instant::now();
        if let Some(hit) = self.cached(&key, now) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AttestError::Unavailable("TokenReview timed out after 5s".into()))?
                .map_err(review_error)?;
        let attested = interpret(answer.status.as_ref(), &self.trust_domain)?;
        if !self.cache_ttl.is_zero() {
            self.remember(key, attested.clone(), now + self.cache_ttl);
        }
        Ok(attested)
    }

    /// Whether `token` was reviewed positively a moment ago (answering needs no API call).
    pub fn knows(&self, token: &str) -> bool {
        self.cached(&token_digest(token), Instant::now()).is_some()
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Attested> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(key) {
            Some((attested, expiry)) if *expiry > now => Some(attested.clone()),
            _ => None,
        }
    }

    fn remember(&self, key: [u8; 32], attested: Attested, expiry: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            cache.retain(|_, (_, e)| *e > now);
            if cache.len() >= CACHE_CAPACITY {
                return; // full of live entries: skip caching rather than grow without bound
            }
        }
        cache.insert(key, (attested, expiry));
    }
}

fn review_error(err: kube::Error) -> AttestError {
    match err {
        kube::Error::Api(status) if status.code == 403 => AttestError::Unavailable(format!(
            "the control plane may not create tokenreviews (HTTP 403: {}); grant it `create` on \
             authentication.k8s.io/tokenreviews",
            status.message
        )),
        kube::Error::Api(status) => AttestError::Unavailable(format!(
            "TokenReview failed with HTTP {}: {}",
            status.code, status.message
        )),
        other => AttestError::Unavailable(format!("TokenReview request failed: {other}")),
    }
}

/// Interprets a TokenReview status: authenticated, for our audience, a ServiceAccount.
pub(crate) fn interpret(
    status: Option<&TokenReviewStatus>,
    trust_domain: &TrustDomain,
) -> Result<Attested, AttestError> {
    let Some(status) = status else {
        return Err(AttestError::Rejected(
            "TokenReview answered without a status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(AttestError::Rejected(reason));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(AttestError::WrongAudience(audiences));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| AttestError::NotAServiceAccount(username.clone()))?;
    let id = SpiffeId::for_service_account(trust_domain, namespace, service_account)
        .map_err(AttestError::InvalidIdentity)?;
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|names| names.first().cloned());
    Ok(Attested { id, pod })
}
