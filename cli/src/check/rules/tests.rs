use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::check::facts::{
    CertDates, CrdFacts, DeploymentFacts, Owner, PlaintextProbes, PodRef, Probe, ProbeFacts,
    RootSummary, SecretFacts, WebhookFacts,
};
use crate::check::report::{Status, passed};

const DAY: Duration = Duration::from_secs(86_400);
const CP_ID: &str = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A PEM text whose CERTIFICATE blocks hold these bytes (the rules compare DER, they do not
/// parse X.509).
fn pem(blocks: &[&str]) -> Vec<u8> {
    blocks
        .iter()
        .map(|b64| format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"))
        .collect::<String>()
        .into_bytes()
}

fn status(o: &Outcome) -> Status {
    o.status
}

fn webhook_with(bundles: &[Vec<u8>]) -> Fetched<WebhookFacts> {
    Fetched::Found(WebhookFacts {
        webhooks: bundles
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("inject-{i}.trellis.dev"), b.clone()))
            .collect(),
    })
}

fn secret_with(ca: Option<Vec<u8>>) -> Fetched<SecretFacts> {
    Fetched::Found(SecretFacts { ca_crt: ca })
}

fn answered(status: &str, intermediates: Vec<CertDates>) -> ProbeFacts {
    ProbeFacts::Answered(Probe {
        peer_id: CP_ID.into(),
        status: status.into(),
        leaf_not_after: Some(now() + DAY),
        intermediates,
    })
}

fn healthy_cluster() -> ClusterFacts {
    let bundle = pem(&["AAEC"]);
    ClusterFacts {
        api: Ok("v1.33.1".into()),
        namespace: "trellis-system".into(),
        crd: Fetched::Found(CrdFacts { established: true }),
        control_plane: Fetched::Found(DeploymentFacts {
            desired: 2,
            available: 2,
        }),
        injector: Fetched::Found(DeploymentFacts {
            desired: 1,
            available: 1,
        }),
        webhook: webhook_with(&[bundle.clone(), bundle.clone()]),
        injector_secret: secret_with(Some(bundle)),
        roots: Some((
            "the webhook's caBundle".into(),
            Ok(RootSummary {
                roots: 1,
                earliest_expiry: now() + 3000 * DAY,
            }),
        )),
        probe: answered("SERVING", vec![]),
        namespaces: Fetched::Found(vec!["shop".into()]),
        uninjected: Fetched::Found(vec![]),
        plaintext_probes: Fetched::Found(vec![]),
    }
}

fn pod(name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> PodRef {
    PodRef {
        namespace: "shop".into(),
        name: name.into(),
        owner: owner.map(|(kind, name)| Owner {
            kind: kind.into(),
            name: name.into(),
        }),
        template_hash: hash.map(Into::into),
    }
}

#[test]
fn a_healthy_cluster_passes_every_check() {
    let sections = evaluate_cluster(&healthy_cluster(), now());
    let names: Vec<&str> = sections.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "kubernetes-api",
            "trellis-install",
            "trellis-webhook",
            "trellis-identity",
            "data-plane"
        ]
    );
    for o in sections.iter().flat_map(|s| &s.outcomes) {
        assert_eq!(o.status, Status::Ok, "{o:?}");
    }
    assert!(passed(&sections));
}

#[test]
fn an_unreachable_api_server_is_the_only_check_reported() {
    let facts = ClusterFacts {
        api: Err("connection refused".into()),
        ..healthy_cluster()
    };
    let sections = evaluate_cluster(&facts, now());
    assert_eq!(sections.len(), 1);
    let o = &sections[0].outcomes[0];
    assert_eq!(o.status, Status::Fail);
    assert_eq!(o.detail.as_deref(), Some("connection refused"));
    assert!(!passed(&sections));
}

#[test]
fn an_expired_root_fails_the_check() {
    let facts = ClusterFacts {
        roots: Some((
            "the webhook's caBundle".into(),
            Ok(RootSummary {
                roots: 1,
                earliest_expiry: now() - 2 * DAY,
            }),
        )),
        ..healthy_cluster()
    };
    let sections = evaluate_cluster(&facts, now());
    assert!(!passed(&sections));
    let root = &sections[3].outcomes[0];
    assert_eq!(root.status, Status::Fail);
    assert!(
        root.detail
            .as_deref()
            .unwrap()
            .starts_with("expired 2 days ago")
    );
    assert!(root.hint.as_deref().unwrap().contains("rotate the root"));
}

#[test]
fn expiry_is_ok_far_ahead_a_warning_within_thirty_days_and_a_failure_once_past() {
    let cases = [
        (
            now() + 400 * DAY,
            Status::Ok,
            "is valid until 2026-07-20T15:06:40Z (400 days left)",
        ),
        (now() + 31 * DAY, Status::Ok, "(31 days left)"),
        (now() + 29 * DAY, Status::Warn, "expires in 29 days"),
        (
            now() + Duration::from_secs(3 * 3600),
            Status::Warn,
            "expires in 3h 0m",
        ),
        (now() - DAY, Status::Fail, "is valid"),
    ];
    for (not_after, want, title) in cases {
        let o = expiry("root", not_after, now(), EXPIRY_WARNING, "hint");
        assert_eq!(o.status, want, "{o:?}");
        assert!(
            o.title.contains(title),
            "{:?} should contain {title:?}",
            o.title
        );
    }
}

#[test]
fn an_unusable_trust_bundle_fails_with_the_reason() {
    let o = root_expiry(
        "root.pem",
        &Err("trust bundle has no certificates".into()),
        now(),
    );
    assert_eq!(o.status, Status::Fail);
    assert_eq!(o.title, "trust bundle root.pem is usable");
    assert_eq!(
        o.detail.as_deref(),
        Some("trust bundle has no certificates")
    );
}

/// A case of the caBundle comparison: name, webhook, Secret, expected outcome.
type CaBundleCase = (
    &'static str,
    Fetched<WebhookFacts>,
    Fetched<SecretFacts>,
    Option<Status>,
);

#[test]
fn the_ca_bundle_must_equal_the_injector_secrets_ca() {
    let a = pem(&["AAEC"]);
    let b = pem(&["AwQF"]);
    let a_and_b = pem(&["AAEC", "AwQF"]);
    let b_and_a = pem(&["AwQF", "AAEC"]);
    let ns = "trellis-system";
    let cases: Vec<CaBundleCase> = vec![
        (
            "equal",
            webhook_with(std::slice::from_ref(&a)),
            secret_with(Some(a.clone())),
            Some(Status::Ok),
        ),
        (
            "same roots in another order",
            webhook_with(std::slice::from_ref(&a_and_b)),
            secret_with(Some(b_and_a)),
            Some(Status::Ok),
        ),
        (
            "mismatched",
            webhook_with(std::slice::from_ref(&a)),
            secret_with(Some(b.clone())),
            Some(Status::Fail),
        ),
        (
            "empty caBundle",
            webhook_with(&[Vec::new()]),
            secret_with(Some(a.clone())),
            Some(Status::Fail),
        ),
        (
            "webhooks disagree",
            webhook_with(&[a.clone(), b.clone()]),
            secret_with(Some(a.clone())),
            Some(Status::Fail),
        ),
        (
            "caBundle not PEM",
            webhook_with(&[b"junk".to_vec()]),
            secret_with(Some(a.clone())),
            Some(Status::Fail),
        ),
        (
            "no ca.crt",
            webhook_with(std::slice::from_ref(&a)),
            secret_with(None),
            Some(Status::Fail),
        ),
        (
            "no Secret",
            webhook_with(std::slice::from_ref(&a)),
            Fetched::Missing,
            Some(Status::Fail),
        ),
        (
            "Secret unreadable",
            webhook_with(std::slice::from_ref(&a)),
            Fetched::Denied("403 Forbidden".into()),
            Some(Status::Warn),
        ),
        (
            "no webhook",
            Fetched::Missing,
            secret_with(Some(a.clone())),
            None,
        ),
        (
            "webhook without webhooks",
            webhook_with(&[]),
            secret_with(Some(a)),
            None,
        ),
    ];
    for (case, webhook, secret, want) in cases {
        let got = ca_bundle(ns, &webhook, &secret);
        assert_eq!(got.as_ref().map(status), want, "{case}: {got:?}");
    }
}

#[test]
fn a_mismatched_ca_bundle_says_so_and_suggests_restarting_the_control_plane() {
    let o = ca_bundle(
        "trellis-system",
        &webhook_with(&[pem(&["AAEC"])]),
        &secret_with(Some(pem(&["AwQF"]))),
    )
    .unwrap();
    assert!(o.detail.unwrap().contains("differ"));
    assert!(
        o.hint
            .unwrap()
            .contains("rollout restart deployment/trellis-control-plane")
    );
}

#[test]
fn deployments_are_judged_by_available_replicas() {
    let d = |desired, available| Fetched::Found(DeploymentFacts { desired, available });
    let cases = [
        (d(2, 2), Status::Ok, "(2/2 replicas available)"),
        (d(2, 1), Status::Warn, "(1/2 replicas available)"),
        (d(1, 0), Status::Fail, "is available"),
        (d(0, 0), Status::Fail, "is available"),
        (Fetched::Missing, Status::Fail, "is available"),
        (Fetched::Denied("403".into()), Status::Warn, "access denied"),
        (
            Fetched::Failed("timeout".into()),
            Status::Fail,
            "cannot be read",
        ),
    ];
    for (facts, want, title) in cases {
        let o = deployment("trellis-system", INJECTOR, &facts);
        assert_eq!(o.status, want, "{facts:?}: {o:?}");
        assert!(o.title.contains(title), "{:?}", o.title);
    }
}

#[test]
fn the_crd_must_be_installed_and_established() {
    let cases = [
        (Fetched::Found(CrdFacts { established: true }), Status::Ok),
        (
            Fetched::Found(CrdFacts { established: false }),
            Status::Fail,
        ),
        (Fetched::Missing, Status::Fail),
        (Fetched::Denied("403".into()), Status::Warn),
    ];
    for (facts, want) in cases {
        assert_eq!(crd(&facts).status, want, "{facts:?}");
    }
    assert!(
        crd(&Fetched::Missing)
            .hint
            .unwrap()
            .contains("helm upgrade --install")
    );
}

#[test]
fn the_webhook_configuration_must_exist_with_webhooks() {
    assert_eq!(webhook(&webhook_with(&[pem(&["AAEC"])])).status, Status::Ok);
    assert_eq!(webhook(&webhook_with(&[])).status, Status::Fail);
    assert_eq!(webhook(&Fetched::Missing).status, Status::Fail);
}

#[test]
fn control_plane_health_needs_a_verified_connection_and_serving() {
    let hint = "hint";
    let serving = answered("SERVING", vec![]);
    let c = control_plane_connection("127.0.0.1:15012", &serving, hint, now());
    assert_eq!(c.status, Status::Ok);
    assert!(c.title.contains(CP_ID), "{}", c.title);
    assert!(
        c.title.contains("serving certificate valid for 1d 0h"),
        "{}",
        c.title
    );
    assert_eq!(control_plane_health(&serving).unwrap().status, Status::Ok);

    let not_serving = answered("NOT_SERVING", vec![]);
    let h = control_plane_health(&not_serving).unwrap();
    assert_eq!(h.status, Status::Fail);
    assert_eq!(h.detail.as_deref(), Some("it reports NOT_SERVING"));

    let refused = ProbeFacts::ConnectFailed("connection refused".into());
    let c = control_plane_connection("127.0.0.1:1", &refused, hint, now());
    assert_eq!(c.status, Status::Fail);
    assert_eq!(c.detail.as_deref(), Some("connection refused"));
    assert_eq!(c.hint.as_deref(), Some(hint));
    assert!(control_plane_health(&refused).is_none(), "no second line");

    let rpc = ProbeFacts::HealthFailed {
        peer_id: CP_ID.into(),
        reason: "Unimplemented".into(),
    };
    assert_eq!(
        control_plane_connection("x", &rpc, hint, now()).status,
        Status::Ok
    );
    assert_eq!(control_plane_health(&rpc).unwrap().status, Status::Fail);

    let skipped = ProbeFacts::Skipped("no ready pod".into());
    assert_eq!(
        control_plane_connection("x", &skipped, hint, now()).status,
        Status::Warn
    );
    assert!(control_plane_health(&skipped).is_none());
}

#[test]
fn intermediates_are_checked_for_expiry_and_their_absence_is_said() {
    let none = intermediates(&answered("SERVING", vec![]), now());
    assert_eq!(none.len(), 1);
    assert!(none[0].title.starts_with("no intermediate"));

    let soon = CertDates {
        subject: "CN=Trellis intermediate".into(),
        not_after: now() + 5 * DAY,
    };
    let out = intermediates(&answered("SERVING", vec![soon]), now());
    assert_eq!(out[0].status, Status::Warn);
    assert!(
        out[0]
            .title
            .starts_with("intermediate CN=Trellis intermediate expires in 5 days")
    );

    assert!(intermediates(&ProbeFacts::ConnectFailed("x".into()), now()).is_empty());
}

#[test]
fn labelled_namespaces_are_listed_and_none_is_a_warning() {
    let none = labelled_namespaces("trellis-system", &Fetched::Found(vec![]));
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].status, Status::Warn);
    assert!(
        none[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("kubectl label namespace NAME trellis-injection=enabled")
    );

    let two = labelled_namespaces(
        "trellis-system",
        &Fetched::Found(vec!["shop".into(), "web".into()]),
    );
    assert_eq!(two.len(), 1);
    assert_eq!(
        two[0].title,
        "2 namespaces labelled trellis-injection=enabled: shop, web"
    );

    let own = labelled_namespaces(
        "trellis-system",
        &Fetched::Found(vec!["trellis-system".into()]),
    );
    assert_eq!(
        own.iter().map(|o| o.status).collect::<Vec<_>>(),
        [Status::Ok, Status::Warn]
    );
}

#[test]
fn uninjected_pods_are_a_warning_with_the_commands_that_recreate_them() {
    let pods = vec![
        pod(
            "web-7d9f8b7c5-x2x4q",
            Some(("ReplicaSet", "web-7d9f8b7c5")),
            Some("7d9f8b7c5"),
        ),
        pod(
            "web-7d9f8b7c5-p9k2m",
            Some(("ReplicaSet", "web-7d9f8b7c5")),
            Some("7d9f8b7c5"),
        ),
        pod("db-0", Some(("StatefulSet", "db")), None),
    ];
    let o = uninjected_pods(&Fetched::Found(pods)).unwrap();
    assert_eq!(o.status, Status::Warn);
    assert_eq!(o.title, "3 pods in labelled namespaces not injected yet");
    assert_eq!(
        o.detail.as_deref(),
        Some("shop/web-7d9f8b7c5-x2x4q\nshop/web-7d9f8b7c5-p9k2m\nshop/db-0")
    );
    let hint = o.hint.unwrap();
    assert!(
        hint.contains("kubectl -n shop rollout restart deployment/web;"),
        "{hint}"
    );
    assert!(
        hint.contains("kubectl -n shop rollout restart statefulset/db"),
        "{hint}"
    );
    assert_eq!(
        hint.matches("deployment/web").count(),
        1,
        "one command per workload"
    );

    assert_eq!(
        uninjected_pods(&Fetched::Found(vec![])).unwrap().status,
        Status::Ok
    );
    assert!(uninjected_pods(&Fetched::Missing).is_none());
}

#[test]
fn a_namespaces_mode_is_its_annotation_then_its_label_then_the_meshs() {
    let cases = [
        (Some("PERMISSIVE"), Some("STRICT"), true, false),
        (Some("strict"), None, false, true),
        (None, Some("permissive"), true, false),
        (None, Some("Strict"), false, true),
        (Some("sometimes"), Some("PERMISSIVE"), true, false),
        (Some("sometimes"), None, false, false),
        (None, None, true, true),
        (None, None, false, false),
    ];
    for (annotation, label, mesh, expected) in cases {
        assert_eq!(
            is_strict(annotation, label, mesh),
            expected,
            "{annotation:?} {label:?} {mesh}"
        );
    }
}

#[test]
fn meshed_pods_with_plaintext_probes_in_strict_namespaces_are_a_warning_saying_why() {
    let plaintext = |name: &str, marker: Option<&str>| PlaintextProbes {
        pod: pod(name, Some(("ReplicaSet", "api-5f6b7")), Some("5f6b7")),
        probes: vec!["api/readinessProbe".into(), "api/livenessProbe".into()],
        marker: marker.map(Into::into),
    };
    let o = plaintext_probes(&Fetched::Found(vec![
        plaintext("api-5f6b7-a", None),
        plaintext("api-5f6b7-b", Some("kept")),
        plaintext("api-5f6b7-c", Some("rewritten")),
    ]))
    .unwrap();
    assert_eq!(o.status, Status::Warn);
    assert_eq!(
        o.title,
        "3 meshed pods in STRICT namespaces have app probes the proxy refuses (plaintext from kubelet)"
    );
    assert_eq!(
        o.detail.as_deref(),
        Some(
            "shop/api-5f6b7-a: api/readinessProbe, api/livenessProbe (injected before probes were rewritten)\n\
             shop/api-5f6b7-b: api/readinessProbe, api/livenessProbe (probe rewriting off for this pod)\n\
             shop/api-5f6b7-c: api/readinessProbe, api/livenessProbe (the injector could not rewrite them (see its warnings))"
        )
    );
    let hint = o.hint.unwrap();
    assert!(
        hint.contains("kubectl -n shop rollout restart deployment/api"),
        "{hint}"
    );
    assert_eq!(hint.matches("rollout restart").count(), 1, "{hint}");

    assert_eq!(
        plaintext_probes(&Fetched::Found(vec![])).unwrap().status,
        Status::Ok
    );
    assert!(plaintext_probes(&Fetched::Missing).is_none());
    assert_eq!(
        plaintext_probes(&Fetched::Denied("403".into()))
            .unwrap()
            .status,
        Status::Warn
    );
}

#[test]
fn long_pod_lists_are_cut() {
    let pods: Vec<_> = (0..13).map(|i| pod(&format!("p{i}"), None, None)).collect();
    let o = uninjected_pods(&Fetched::Found(pods)).unwrap();
    let detail = o.detail.unwrap();
    assert_eq!(detail.lines().count(), 11);
    assert!(detail.ends_with("and 3 more"));
}

#[test]
fn the_restart_command_follows_the_pods_controller() {
    let cases = [
        (
            pod(
                "web-abc12-x",
                Some(("ReplicaSet", "web-abc12")),
                Some("abc12"),
            ),
            "kubectl -n shop rollout restart deployment/web",
        ),
        (
            pod("rs-x", Some(("ReplicaSet", "rs")), None),
            "kubectl -n shop delete pod rs-x",
        ),
        (
            pod("agent-x", Some(("DaemonSet", "agent")), None),
            "kubectl -n shop rollout restart daemonset/agent",
        ),
        (
            pod("job-x", Some(("Job", "job")), None),
            "kubectl -n shop delete pod job-x",
        ),
        (
            pod("bare", None, None),
            "kubectl -n shop delete pod bare (then re-create it)",
        ),
    ];
    for (p, want) in cases {
        assert_eq!(restart_command(&p), want);
    }
}

#[test]
fn local_mode_against_a_closed_port_fails() {
    let facts = LocalFacts {
        addr: "127.0.0.1:1".into(),
        bundle_file: "root-cert.pem".into(),
        roots: Ok(RootSummary {
            roots: 1,
            earliest_expiry: now() + 3000 * DAY,
        }),
        probe: ProbeFacts::ConnectFailed("Connection refused (os error 111)".into()),
        ready: Some(("127.0.0.1:2".into(), Err("connection refused".into()))),
    };
    let sections = evaluate_local(&facts, now());
    assert!(!passed(&sections));
    let statuses: Vec<Status> = sections
        .iter()
        .flat_map(|s| &s.outcomes)
        .map(|o| o.status)
        .collect();
    assert_eq!(statuses, [Status::Fail, Status::Fail, Status::Ok]);
}

#[test]
fn local_mode_against_a_healthy_control_plane_passes() {
    let facts = LocalFacts {
        addr: "127.0.0.1:15012".into(),
        bundle_file: "root-cert.pem".into(),
        roots: Ok(RootSummary {
            roots: 1,
            earliest_expiry: now() + 3000 * DAY,
        }),
        probe: answered("SERVING", vec![]),
        ready: Some(("127.0.0.1:15014".into(), Ok(200))),
    };
    let sections = evaluate_local(&facts, now());
    assert!(passed(&sections));
    assert_eq!(sections.iter().flat_map(|s| &s.outcomes).count(), 5);
}

#[test]
fn a_ready_endpoint_must_answer_200() {
    assert_eq!(ready_endpoint("a", &Ok(200)).status, Status::Ok);
    assert_eq!(ready_endpoint("a", &Ok(503)).status, Status::Fail);
    assert_eq!(
        ready_endpoint("a", &Err("refused".into())).status,
        Status::Fail
    );
}
