//! Kubernetes attestation: a projected ServiceAccount token checked by the TokenReview API for
//! the accepted audiences (`--token-audiences`: `trellis-ca`, and e.g. Istio's `istio-ca`), with
//! a small bounded cache of positive answers. The API server accepts a token whose audiences
//! meet the review's and reports the ones that did; the answer is checked against the list too.
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

/// The audiences accepted when none are configured.
pub fn default_audiences() -> Vec<String> {
    vec![AUDIENCE.to_owned()]
}

/// Upper bound on cached positive reviews (one per live workload token is plenty).
const CACHE_CAPACITY: usize = 50_000;
/// How long one TokenReview call may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

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
    /// A token must be for one of these audiences.
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .field("cache_ttl", &self.cache_ttl)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer using `client`; positive answers are cached for `cache_ttl` (zero disables).
    /// Tokens must be for `trellis-ca` unless [`TokenReviewer::with_audiences`] says otherwise.
    pub fn new(client: kube::Client, trust_domain: TrustDomain, cache_ttl: Duration) -> Self {
        Self {
            client,
            trust_domain,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
            audiences: default_audiences(),
        }
    }

    /// Accepts tokens for any of `audiences` (not empty: the caller checked).
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        if !audiences.is_empty() {
            self.audiences = audiences;
        }
        self
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
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AttestError::Unavailable("TokenReview timed out after 5s".into()))?
                .map_err(review_error)?;
        let attested = interpret(answer.status.as_ref(), &self.trust_domain, &self.audiences)?;
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

/// Interprets a TokenReview status: authenticated, for one of `accepted`, a ServiceAccount.
pub(crate) fn interpret(
    status: Option<&TokenReviewStatus>,
    trust_domain: &TrustDomain,
    accepted: &[String],
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
    if !audiences.iter().any(|a| accepted.contains(a)) {
        return Err(AttestError::WrongAudience {
            got: audiences,
            accepted: accepted.to_vec(),
        });
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| AttestError::NotAServiceAccount(username.clone()))?;
    let id = SpiffeId::for_service_account(trust_domain, namespace, service_account)
        .map_err(AttestError::InvalidIdentity)?;
    // What the API server says the token is bound to: one value per key, or it is not used.
    let extra = |key: &str| {
        let values = user.and_then(|u| u.extra.as_ref())?.get(key)?;
        match values.as_slice() {
            [one] if !one.is_empty() => Some(one.clone()),
            _ => None,
        }
    };
    Ok(Attested {
        id,
        pod: extra(POD_NAME_EXTRA),
        pod_uid: extra(POD_UID_EXTRA),
        node: extra(NODE_NAME_EXTRA),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:istio-system:ztunnel".into()),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn a_token_is_accepted_for_any_configured_audience_and_refused_for_others() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let both = ["trellis-ca".to_owned(), "istio-ca".to_owned()];
        let cases: &[(&[&str], &[String], bool)] = &[
            (&["trellis-ca"], &both[..1], true),
            (&["istio-ca"], &both[..1], false),
            (&["istio-ca"], &both, true),
            (&["trellis-ca"], &both, true),
            (
                &["https://kubernetes.default.svc.cluster.local"],
                &both,
                false,
            ),
            (&[], &both, false),
        ];
        for (got, accepted, ok) in cases {
            let result = interpret(Some(&status(got)), &td, accepted);
            match result {
                Ok(a) => {
                    assert!(ok, "{got:?} accepted by {accepted:?}");
                    assert_eq!(
                        a.id.to_string(),
                        "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
                    );
                }
                Err(e) => {
                    assert!(!ok, "{got:?} refused by {accepted:?}: {e}");
                    assert!(e.to_string().contains("--token-audiences"), "{e}");
                }
            }
        }
    }
}
