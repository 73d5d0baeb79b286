//! Token audiences in Kubernetes mode: TokenReview asks for the configured audiences
//! (`--token-audiences`, default `trellis-ca`), so tokens Istio's clients send (audience
//! `istio-ca`) are accepted only when the operator says so, and tokens for other audiences never.

mod common;

use common::apiserver::{FakeApiServer, exchange};
use common::*;
use serde_json::json;
use tonic::Code;

/// A token minted (by the fake) for `istio-system/ztunnel` with audience `istio-ca`.
const ISTIO_CA_TOKEN: &str = "minted-istio-ca-token-for-ztunnel";
const ZTUNNEL: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";

async fn certify(
    channel: &tonic::transport::Channel,
    token: &str,
) -> Result<String, tonic::Status> {
    let (_, csr) = key_and_csr(None);
    raw_certify(channel, bearer(token).as_deref(), csr, 0)
        .await
        .map(|answer| answer.spiffe_id)
}

#[tokio::test]
async fn by_default_only_trellis_ca_tokens_are_accepted() {
    let api = FakeApiServer::start().await;
    api.mint(ISTIO_CA_TOKEN, "istio-system", "ztunnel", &["istio-ca"]);
    let (running, channel) = start_kubernetes(&api, &[]).await;
    assert_refused(
        certify(&channel, ISTIO_CA_TOKEN).await,
        Code::Unauthenticated,
        &["token refused", "istio-ca", "trellis-ca"],
    );
    assert_eq!(api.last_review_audiences(), json!(["trellis-ca"]));
    let issued = certify(&channel, exchange("valid").token()).await;
    assert_eq!(issued.as_deref().map_err(|s| s.message()), Ok(FRONTEND));
    stop(running).await;
}

#[tokio::test]
async fn configured_audiences_are_asked_for_and_accepted_and_others_still_refused() {
    let api = FakeApiServer::start().await;
    api.mint(ISTIO_CA_TOKEN, "istio-system", "ztunnel", &["istio-ca"]);
    let (running, channel) =
        start_kubernetes(&api, &["--token-audiences", "trellis-ca,istio-ca"]).await;
    let issued = certify(&channel, ISTIO_CA_TOKEN).await;
    assert_eq!(issued.as_deref().map_err(|s| s.message()), Ok(ZTUNNEL));
    assert_eq!(
        api.last_review_audiences(),
        json!(["trellis-ca", "istio-ca"])
    );
    // Tokens for trellis-ca keep working.
    let issued = certify(&channel, exchange("valid").token()).await;
    assert_eq!(issued.as_deref().map_err(|s| s.message()), Ok(FRONTEND));
    // A token for the API server's default audience is still refused.
    let wrong = exchange("wrong-audience");
    assert_refused(
        certify(&channel, wrong.token()).await,
        Code::Unauthenticated,
        &["token refused", wrong.error_text()],
    );
    stop(running).await;
}
