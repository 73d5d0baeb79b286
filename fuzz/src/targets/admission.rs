//! `admission_review`: the body the Kubernetes API server POSTs to the injector's webhook,
//! answered by `trellis_injector::review::review` on both webhook paths. A well-formed review is
//! answered `allowed: true` with the request's uid, and a patch, when there is one, applies to
//! the pod as the injector read it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use trellis_injector::config::InjectConfig;
use trellis_injector::decide::NamespaceScope;
use trellis_injector::review::review;

/// The largest body the webhook reads (`server::Limits::max_body_bytes`).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The injection settings, made once.
#[derive(Debug)]
pub struct Admission {
    /// Both layouts are covered by alternating on the input's length.
    configs: [InjectConfig; 2],
}

impl Admission {
    /// The binary's defaults, with a trust bundle placeholder.
    pub fn new() -> Self {
        let pem = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        Self {
            configs: [
                InjectConfig::with_defaults("trellis-proxy:fuzz", pem, true),
                InjectConfig::with_defaults("trellis-proxy:fuzz", pem, false),
            ],
        }
    }
}

impl super::Stateful for Admission {
    fn run(&self, data: &[u8]) {
        if data.len() > MAX_BODY {
            return;
        }
        let config = &self.configs[data.len() % 2];
        for scope in [NamespaceScope::Labelled, NamespaceScope::OptInOnly] {
            let Ok(reviewed) = review(data, scope, config) else {
                continue;
            };
            let answer: Value = serde_json::from_slice(&reviewed.body).expect("the answer is JSON");
            let response = &answer["response"];
            assert_eq!(response["uid"].as_str(), Some(reviewed.uid.as_str()));
            assert_eq!(
                response["allowed"],
                Value::Bool(true),
                "a pod is never blocked"
            );
            if let Some(patch) = response["patch"].as_str() {
                check_patch_applies(data, patch);
            }
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new()
    }
}

/// The request's pod, read the way the injector reads it (serde skips the fields it does not
/// need without checking them, so a body may be a valid review but not a valid JSON value).
#[derive(serde::Deserialize)]
struct Body {
    request: Request,
}

#[derive(serde::Deserialize)]
struct Request {
    object: Pod,
}

/// Applies the answer's JSON Patch to the request's pod as the injector typed it (the API
/// server never sends the `null`s a raw body may hold): it must apply cleanly.
fn check_patch_applies(body: &[u8], patch_b64: &str) {
    let patch_json = BASE64.decode(patch_b64).expect("the patch is base64");
    let patch: json_patch::Patch =
        serde_json::from_slice(&patch_json).expect("the patch is a JSON Patch");
    let body: Body = serde_json::from_slice(body).expect("an injected pod was read as a Pod");
    let mut doc = serde_json::to_value(&body.request.object).expect("a Pod serializes");
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply to the pod: {e}"));
}
