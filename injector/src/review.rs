//! One admission review: the body the API server POSTs in, the body it gets back. Pure; the
//! HTTP side is [`crate::server`].
//!
//! - A well-formed `admission.k8s.io/v1` review is always answered `allowed: true` with its
//!   request's `uid`: with a JSON Patch when the pod is injected, with a warning when the pod
//!   wanted the mesh but cannot have it (bad annotation, hostNetwork, …), plain otherwise. The
//!   injector never blocks a pod and never answers 500.
//! - A malformed body (not JSON, not an `AdmissionReview` v1, no `request`, no `object`, an
//!   object that is not a valid Pod) is a [`ReviewError`], which the server answers with HTTP
//!   400 and the error's text.
//!
//! Requests are read with `kube::core::admission::AdmissionRequest`. The response is written
//! by this module because kube-core 5 serializes `patch` as an array of numbers
//! (kube-rs/kube#1781) where the API documents a base64 string.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{
    AdmissionRequest, META_API_VERSION_V1, META_KIND, Operation, PatchType,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    annotations::{self, InjectRequest},
    config::InjectConfig,
    containers::ProxyLayout,
    decide::{self, Decision, NamespaceScope},
    patch, probes,
};

/// Why a body is not a usable admission review. The text says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// The body is not JSON at all.
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an `AdmissionReview` of `admission.k8s.io/v1`.
    #[error(
        "expected kind \"AdmissionReview\" and apiVersion \"admission.k8s.io/v1\", got kind {kind:?} and apiVersion {api_version:?}"
    )]
    WrongKind {
        /// The body's `kind`.
        kind: String,
        /// The body's `apiVersion`.
        api_version: String,
    },
    /// The review has no `request`.
    #[error("AdmissionReview has no \"request\"")]
    MissingRequest,
    /// The `request` lacks a field the API server always sends, or has one of the wrong type.
    #[error("AdmissionReview \"request\" is malformed: {0}")]
    BadRequest(String),
    /// A Pod CREATE without the pod.
    #[error("AdmissionReview request {uid} has no \"object\"; a Pod CREATE carries the pod")]
    MissingObject {
        /// The request's uid.
        uid: String,
    },
    /// The object does not read as a `v1` Pod.
    #[error("AdmissionReview request {uid}: \"object\" is not a valid v1 Pod: {reason}")]
    BadPod {
        /// The request's uid.
        uid: String,
        /// What serde said, with its position.
        reason: String,
    },
}

/// What happened to the pod, for the decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Patched, with the proxy in this layout.
    Injected(ProxyLayout),
    /// Left alone for this reason.
    Skipped(Decision),
    /// Already injected; app probes added since injection were rewritten.
    ProbesRewritten,
    /// Should have been injected, but the pod has a problem (the text is in the warnings).
    NotInjectable,
    /// Not a Pod CREATE: allowed unchanged (the webhook's rules should not send these).
    NotApplicable,
}

impl Outcome {
    /// A stable name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Injected(ProxyLayout::NativeSidecar) => "injected-native-sidecar",
            Self::Injected(ProxyLayout::FirstContainer) => "injected-first-container",
            Self::Skipped(decision) => decision.as_str(),
            Self::ProbesRewritten => "reinvoked-probes-rewritten",
            Self::NotInjectable => "not-injectable",
            Self::NotApplicable => "not-applicable",
        }
    }
}

/// The answer to one review, and what to log about it.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The JSON `AdmissionReview` to send back.
    pub body: Vec<u8>,
    /// The request's uid.
    pub uid: String,
    /// The namespace of the pod.
    pub namespace: String,
    /// The pod's name, or `<generateName>*` for controller-made pods.
    pub pod: String,
    /// Whether the request was a dry run (nothing differs: the injector has no side effects).
    pub dry_run: bool,
    /// What happened.
    pub outcome: Outcome,
    /// Warnings returned to the user.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    request: Option<AdmissionRequest<Pod>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<PatchType>,
    /// Base64 of the JSON Patch, as `[]byte` fields are in Kubernetes JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// Answers the review in `body`, received on the webhook of `scope`.
pub fn review(
    body: &[u8],
    scope: NamespaceScope,
    config: &InjectConfig,
) -> Result<Reviewed, ReviewError> {
    let review: ReviewIn = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(err) => return diagnose(body, &err),
    };
    if review.kind != META_KIND || review.api_version != META_API_VERSION_V1 {
        return Err(ReviewError::WrongKind {
            kind: review.kind,
            api_version: review.api_version,
        });
    }
    let request = review.request.ok_or(ReviewError::MissingRequest)?;
    if !is_pod(
        &request.kind.group,
        &request.kind.version,
        &request.kind.kind,
    ) {
        let kind = format!("{}/{}", request.kind.version, request.kind.kind);
        return not_a_pod(request.uid, &kind);
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    if request.operation != Operation::Create {
        return answer(
            request.uid,
            namespace,
            String::new(),
            request.dry_run,
            Outcome::NotApplicable,
            None,
            Vec::new(),
        );
    }
    let Some(pod) = request.object.as_ref() else {
        return Err(ReviewError::MissingObject { uid: request.uid });
    };
    let namespace = if namespace.is_empty() {
        pod.metadata.namespace.clone().unwrap_or_default()
    } else {
        namespace
    };
    let pod_name = display_name(pod);

    let mut warnings = Vec::new();
    if let InjectRequest::Unrecognised(value) = annotations::inject_request(pod) {
        warnings.push(format!(
            "trellis: annotation {}={value:?} ignored; expected \"enabled\" or \"disabled\"",
            annotations::INJECT
        ));
    }
    let decision = decide::decide(pod, &namespace, scope, &config.control_plane_namespace);
    let (outcome, patch) = match decision {
        Decision::Inject => match patch::build(pod, config) {
            Ok(injection) => {
                warnings.extend(injection.warnings);
                (Outcome::Injected(injection.layout), Some(injection.patch))
            }
            Err(err) => {
                warnings.push(err.to_string());
                (Outcome::NotInjectable, None)
            }
        },
        Decision::AlreadyInjected => reinvoked(pod, &mut warnings),
        other => {
            warnings.extend(other.warning().map(str::to_owned));
            (Outcome::Skipped(other), None)
        }
    };
    answer(
        request.uid,
        namespace,
        pod_name,
        request.dry_run,
        outcome,
        patch,
        warnings,
    )
}

/// A pod we injected, seen again (reinvocation after a later webhook): only app probes added
/// since are rewritten, if the pod's were at injection.
fn reinvoked(pod: &Pod, warnings: &mut Vec<String>) -> (Outcome, Option<json_patch::Patch>) {
    let skipped = (Outcome::Skipped(Decision::AlreadyInjected), None);
    let rewritten =
        annotations::get(pod, annotations::APP_PROBES) == Some(annotations::APP_PROBES_REWRITTEN);
    let Some(spec) = pod.spec.as_ref().filter(|_| rewritten) else {
        return skipped;
    };
    match probes::reinvocation(spec) {
        Ok(ops) if ops.is_empty() => skipped,
        Ok(ops) => (Outcome::ProbesRewritten, Some(json_patch::Patch(ops))),
        Err(err) => {
            warnings.push(err.to_string());
            skipped
        }
    }
}

fn answer(
    uid: String,
    namespace: String,
    pod: String,
    dry_run: bool,
    outcome: Outcome,
    patch: Option<json_patch::Patch>,
    warnings: Vec<String>,
) -> Result<Reviewed, ReviewError> {
    let patch = patch
        .map(|p| serde_json::to_vec(&p).map(|json| BASE64.encode(json)))
        .transpose()
        .map_err(|e| ReviewError::BadRequest(format!("cannot encode the patch: {e}")))?;
    let out = ReviewOut {
        api_version: META_API_VERSION_V1,
        kind: META_KIND,
        response: ResponseOut {
            uid: &uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| PatchType::JsonPatch),
            patch,
            warnings: &warnings,
        },
    };
    let body = serde_json::to_vec(&out)
        .map_err(|e| ReviewError::BadRequest(format!("cannot encode the response: {e}")))?;
    Ok(Reviewed {
        body,
        uid,
        namespace,
        pod,
        dry_run,
        outcome,
        warnings,
    })
}

fn not_a_pod(uid: String, kind: &str) -> Result<Reviewed, ReviewError> {
    let warning =
        format!("trellis: the injector only mutates v1 Pods, not {kind}; allowed unchanged");
    answer(
        uid,
        String::new(),
        String::new(),
        false,
        Outcome::NotApplicable,
        None,
        vec![warning],
    )
}

fn is_pod(group: &str, version: &str, kind: &str) -> bool {
    group.is_empty() && version == "v1" && kind == "Pod"
}

fn display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) => name.clone(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => String::new(),
    }
}

/// The slow path for a body the typed parse refused: find out what is wrong, in the order a
/// reader would check, and say so. A well-formed review of something other than a Pod is not
/// an error: it is allowed unchanged.
fn diagnose(body: &[u8], err: &serde_json::Error) -> Result<Reviewed, ReviewError> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Err(ReviewError::NotJson(err.to_string()));
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let (kind, api_version) = (text(value.get("kind")), text(value.get("apiVersion")));
    if kind != META_KIND || api_version != META_API_VERSION_V1 {
        return Err(ReviewError::WrongKind { kind, api_version });
    }
    let request = match value.get("request") {
        None | Some(Value::Null) => return Err(ReviewError::MissingRequest),
        Some(request) => request,
    };
    let uid = request.get("uid").and_then(Value::as_str);
    let gvk = request.get("kind");
    let field = |name| text(gvk.and_then(|k| k.get(name)));
    let (group, version, req_kind) = (field("group"), field("version"), field("kind"));
    if let Some(uid) = uid {
        if !req_kind.is_empty() && !is_pod(&group, &version, &req_kind) {
            let full = if group.is_empty() {
                version
            } else {
                format!("{group}/{version}")
            };
            return not_a_pod(uid.to_owned(), &format!("{full}/{req_kind}"));
        }
        match request.get("object") {
            None | Some(Value::Null) => {
                return Err(ReviewError::MissingObject {
                    uid: uid.to_owned(),
                });
            }
            Some(object) => {
                if let Err(e) = Pod::deserialize(object) {
                    return Err(ReviewError::BadPod {
                        uid: uid.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    Err(ReviewError::BadRequest(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig::with_defaults("proxy:1", "PEM", true)
    }

    fn run(body: &str) -> Result<Reviewed, ReviewError> {
        review(body.as_bytes(), NamespaceScope::Labelled, &config())
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "not JSON"),
            ("{\"kind\":", "not JSON"),
            ("[1,2]", "expected kind \"AdmissionReview\""),
            (r#"{"kind":"Pod","apiVersion":"v1"}"#, "got kind \"Pod\""),
            (
                r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1"}"#,
                "admission.k8s.io/v1beta1",
            ),
            (
                r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
                "no \"request\"",
            ),
            (
                r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":null}"#,
                "no \"request\"",
            ),
            (
                r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"kind":{"group":"","version":"v1","kind":"Pod"}}}"#,
                "\"request\" is malformed",
            ),
        ];
        for (body, expected) in cases {
            let err = run(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    const REQUEST: &str = r#""uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","operation":"CREATE","userInfo":{}"#;

    #[test]
    fn a_create_without_a_valid_pod_is_refused() {
        let missing = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{{REQUEST}}}}}"#
        );
        assert_eq!(
            run(&missing).unwrap_err(),
            ReviewError::MissingObject { uid: "u1".into() }
        );

        let bad = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{{REQUEST},"object":{{"kind":"Pod","apiVersion":"v1","spec":{{"containers":"nope"}}}}}}}}"#
        );
        let err = run(&bad).unwrap_err();
        assert!(
            matches!(&err, ReviewError::BadPod { uid, .. } if uid == "u1"),
            "{err:?}"
        );
    }

    #[test]
    fn other_resources_are_allowed_unchanged_with_a_warning() {
        let body = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u2","kind":{"group":"apps","version":"v1","kind":"Deployment"},"resource":{"group":"apps","version":"v1","resource":"deployments"},"operation":"CREATE","userInfo":{},"object":{"kind":"Deployment","apiVersion":"apps/v1"}}}"#;
        let reviewed = run(body).unwrap();
        assert_eq!(reviewed.outcome, Outcome::NotApplicable);
        assert_eq!(reviewed.uid, "u2");
        assert!(
            reviewed.warnings[0].contains("apps/v1/Deployment"),
            "{:?}",
            reviewed.warnings
        );
        let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn non_create_operations_are_not_mutated() {
        let body = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{{}}}}}"#,
            REQUEST.replace("CREATE", "DELETE")
        );
        let reviewed = run(&body).unwrap();
        assert_eq!(reviewed.outcome, Outcome::NotApplicable);
        assert!(reviewed.warnings.is_empty());
    }
}
