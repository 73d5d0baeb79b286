use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::admin_api::TlsFacts;
use crate::demo::lines::short_serial;

fn identity(serial: &str, generation: u64) -> Identity {
    Identity {
        spiffe_id: Role::Frontend.spiffe_id(),
        serial: serial.into(),
        not_before: "2025-01-01T10:00:00Z".into(),
        not_after: "2025-01-01T10:00:08Z".into(),
        seconds_left: 8,
        generation,
        chain_pem: Vec::new(),
        trust_bundle_roots: 1,
        extra: BTreeMap::new(),
    }
}

fn record(time: &str, from: Role, peer_addr: &str, decision: &str, reason: &str) -> Handshake {
    Handshake {
        time: time.into(),
        direction: "inbound".into(),
        peer_addr: peer_addr.into(),
        peer_id: Some(from.spiffe_id()),
        dst: Some("198.18.0.3:8080".into()),
        tls: Some(TlsFacts {
            version: "TLSv1_3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            alpn: Some("h2".into()),
            handshake_ms: 3.25,
            reused: false,
            extra: BTreeMap::new(),
        }),
        decision: decision.into(),
        reason: reason.into(),
        extra: BTreeMap::new(),
    }
}

const B1: Replica = Replica::backend(1);
const B2: Replica = Replica::backend(2);

fn at(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn plain(line: &Line) -> String {
    line.render(&Palette::plain())
}

#[test]
fn the_policy_changes_at_a_quarter_half_and_three_quarters_of_the_show() {
    let p = plan(Duration::from_secs(20));
    assert_eq!(
        p,
        [
            (at(5), PolicyStep::AlsoIntruder),
            (at(10), PolicyStep::Audit),
            (at(15), PolicyStep::FrontendOnly),
        ]
    );
    // Every step changes what happens to the intruder, so each edit can be seen taking effect.
    let mut before = PolicyStep::FrontendOnly;
    for (_, step) in p {
        assert_ne!(step.intruder_decision(), before.intruder_decision());
        before = step;
    }
}

#[test]
fn an_allowed_connection_shows_both_spiffe_ids_tls_and_whether_it_paid_a_handshake() {
    let mut story = Story::default();
    let first = record(
        "2025-01-01T10:00:01.000Z",
        Role::Frontend,
        "198.18.0.2:40000",
        "allow",
        "",
    );
    let second = record(
        "2025-01-01T10:00:02.000Z",
        Role::Frontend,
        "198.18.0.2:40000",
        "allow",
        "",
    );
    let lines = story.records(B1, &[first, second], at(2));
    let text: Vec<String> = lines.iter().map(plain).collect();
    assert_eq!(
        text,
        [
            "   2.0s ✔ allowed spiffe://cluster.local/ns/shop/sa/frontend → spiffe://cluster.local/ns/shop/sa/backend on backend-1 (198.18.0.3:8080)  TLSv1_3 TLS13_AES_256_GCM_SHA384 (handshake 3.2 ms)",
            "   2.0s ✔ allowed spiffe://cluster.local/ns/shop/sa/frontend → spiffe://cluster.local/ns/shop/sa/backend on backend-1 (198.18.0.3:8080)  TLSv1_3 TLS13_AES_256_GCM_SHA384 (reused)",
        ]
    );
}

#[test]
fn a_refused_connection_names_the_intruder_and_the_backends_reason() {
    let mut story = Story::default();
    let reason = "spiffe://cluster.local/ns/evil/sa/intruder is not allowed on port 8080 by shop/backend-allow";
    let lines = story.records(
        B1,
        &[record(
            "2025-01-01T10:00:01.000Z",
            Role::Intruder,
            "198.18.0.4:41000",
            "deny",
            reason,
        )],
        at(1),
    );
    assert_eq!(
        lines.iter().map(plain).collect::<Vec<_>>(),
        [format!(
            "   1.0s ✘ refused spiffe://cluster.local/ns/evil/sa/intruder → spiffe://cluster.local/ns/shop/sa/backend on backend-1 (198.18.0.3:8080): {reason}"
        )]
    );
}

#[test]
fn outbound_records_are_not_the_backends_decisions() {
    let mut story = Story::default();
    let mut r = record(
        "2025-01-01T10:00:01.000Z",
        Role::Frontend,
        "x:1",
        "allow",
        "",
    );
    r.direction = "outbound".into();
    assert!(story.records(B1, &[r], at(1)).is_empty());
}

#[test]
fn each_backend_pod_pays_its_own_handshake_and_says_so() {
    let mut story = Story::default();
    let on = |pod: Replica, dst: &str| {
        let mut r = record(
            "2025-01-01T10:00:01.000Z",
            Role::Frontend,
            "198.18.0.2:40000",
            "allow",
            "",
        );
        r.dst = Some(dst.into());
        (pod, r)
    };
    let mut text = Vec::new();
    for (pod, r) in [
        on(B1, "198.18.0.3:8080"),
        on(B2, "198.18.0.5:8080"),
        on(B2, "198.18.0.5:8080"),
    ] {
        text.extend(story.records(pod, &[r], at(1)).iter().map(plain));
    }
    // The same caller's address on two pods is two tunnels: each paid a handshake once.
    assert!(
        text[0].ends_with(
            "on backend-1 (198.18.0.3:8080)  TLSv1_3 TLS13_AES_256_GCM_SHA384 (handshake 3.2 ms)"
        ),
        "{text:?}"
    );
    assert!(
        text[1].ends_with(
            "on backend-2 (198.18.0.5:8080)  TLSv1_3 TLS13_AES_256_GCM_SHA384 (handshake 3.2 ms)"
        ),
        "{text:?}"
    );
    assert!(text[2].ends_with("(reused)"), "{text:?}");
}

#[test]
fn the_summary_says_which_pod_the_callers_sidecars_chose_and_what_kube_proxy_took() {
    let endpoints = [
        (B1, "198.18.0.3:8080".parse().unwrap()),
        (B2, "198.18.0.5:8080".parse().unwrap()),
    ];
    let mut story = Story::new(&BTreeMap::new(), &endpoints);
    let out = |dst: &str, decision: &str, reason: &str| {
        let mut r = record(
            "2025-01-01T10:00:01.000Z",
            Role::Backend,
            "198.18.0.3:15008",
            decision,
            reason,
        );
        r.direction = "outbound".into();
        r.dst = Some(dst.into());
        r
    };
    let records = [
        out("198.18.0.3:8080", "allow", "via Service shop/backend:8080"),
        out("198.18.0.5:8080", "allow", "via Service shop/backend:8080"),
        out(
            "198.18.0.5:8080",
            "deny",
            "via Service shop/backend:8080: refused: 403",
        ),
        out("198.18.0.9:8080", "allow", "via Service shop/backend:8080"),
        out(
            "198.19.0.10:8080",
            "allow",
            "passthrough: destination is not in the mesh",
        ),
    ];
    assert!(
        story
            .records(Replica::of(Role::Frontend), &records, at(1))
            .is_empty()
    );
    let text = story.summary(at(20), &Palette::plain(), Some(0)).join("\n");
    assert!(
        text.contains("⇄ via Service shop/backend  4 (198.18.0.9:8080 1, backend-1 1, backend-2 2): the callers' sidecars chose the pod"),
        "{text}"
    );
    assert!(
        text.contains("kube-proxy (the node's DNAT for the ClusterIP) took 0 of them"),
        "{text}"
    );
    assert!(
        text.contains("callers' connections not balanced by their sidecar  1"),
        "{text}"
    );
    // On loopback there is no node to ask.
    assert!(
        !story
            .summary(at(20), &Palette::plain(), None)
            .join("\n")
            .contains("kube-proxy")
    );
}

#[test]
fn an_edit_is_in_effect_at_the_first_intruder_decision_it_explains() {
    let mut story = Story::default();
    let written = humantime::parse_rfc3339("2025-01-01T10:00:05Z").unwrap();
    let edit = story.policy_edit(PolicyStep::AlsoIntruder, at(5), written);
    assert!(
        plain(&edit)
            .contains("✎ policy updated: shop/backend-allow: allow ns/evil/sa/intruder too")
    );

    // Still refused (decided before the control plane's change reached the backend): no effect yet.
    let late = record(
        "2025-01-01T10:00:05.200Z",
        Role::Intruder,
        "198.18.0.4:1",
        "deny",
        "no",
    );
    let lines = story.records(B1, &[late], at(5));
    assert_eq!(lines.len(), 1);
    // Allowed 0.6 s after the edit: in effect.
    let now = record(
        "2025-01-01T10:00:05.600Z",
        Role::Intruder,
        "198.18.0.4:1",
        "allow",
        "",
    );
    let lines = story.records(B1, std::slice::from_ref(&now), at(6));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        plain(&lines[1]),
        "   6.0s ✎ policy in effect: the intruder is now allowed (first call under it 0.60 s after the edit)"
    );
    // Said once.
    assert_eq!(story.records(B1, &[now], at(7)).len(), 1);
    let summary = story.summary(at(20), &Palette::plain(), None).join("\n");
    assert!(
        summary.contains("policy edits  1: the backends' sidecars had each ? after the edit"),
        "{summary}"
    );
    assert!(
        summary.contains("✔ allowed     2 (intruder 2)"),
        "{summary}"
    );
    assert!(
        summary.contains("✘ refused     1 (intruder 1)"),
        "{summary}"
    );
}

#[test]
fn audit_mode_lets_the_intruder_through_as_would_deny() {
    let endpoints = [
        (B1, "198.18.0.3:8080".parse().unwrap()),
        (B2, "198.18.0.5:8080".parse().unwrap()),
    ];
    let mut story = Story::new(&BTreeMap::new(), &endpoints);
    let written = humantime::parse_rfc3339("2025-01-01T10:00:10Z").unwrap();
    story.policy_edit(PolicyStep::Audit, at(10), written);
    let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
    // Seen applied before the edit: not this edit's doing.
    story.mesh_applied(B1, t("2025-01-01T10:00:09Z"));
    story.mesh_applied(B1, t("2025-01-01T10:00:10.150Z"));
    // Applied when the last backend pod has it; later applications do not count.
    story.mesh_applied(B2, t("2025-01-01T10:00:10.250Z"));
    story.mesh_applied(B1, t("2025-01-01T10:00:10.280Z"));
    let r = record(
        "2025-01-01T10:00:10.300Z",
        Role::Intruder,
        "198.18.0.4:1",
        "would-deny",
        "not allowed by shop/backend-allow",
    );
    let lines: Vec<String> = story.records(B1, &[r], at(11)).iter().map(plain).collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains(
            "‼ would-deny, let through (audit) spiffe://cluster.local/ns/evil/sa/intruder"
        ),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("the intruder passes, recorded as would-deny (the backends' sidecars had it 0.25 s after the edit; first call under it 0.30 s after the edit)"),
        "{lines:?}"
    );
}

#[test]
fn a_new_serial_is_a_rotation_and_the_same_serial_is_nothing() {
    let frontend = Replica::of(Role::Frontend);
    let mut start = BTreeMap::new();
    start.insert(frontend, identity("5d2c81a9e0f1aabbccdd", 1));
    start.insert(B1, identity("b1", 1));
    let mut story = Story::new(&start, &[]);
    assert_eq!(
        story.identity(frontend, &identity("5d2c81a9e0f1aabbccdd", 1), at(1)),
        None
    );
    let line = story
        .identity(frontend, &identity("0b77e4f2", 2), at(4))
        .expect("a rotation");
    assert_eq!(
        plain(&line),
        "   4.0s ↻ certificate rotated: frontend serial 5d2c81a9e0f1… → 0b77e4f2 (certificate #2, valid for 8 s)"
    );
    // Each backend pod rotates on its own, named.
    let line = story
        .identity(B1, &identity("b1-2", 2), at(5))
        .expect("a rotation");
    assert!(
        plain(&line).contains("rotated: backend-1 serial b1 → b1-2"),
        "{}",
        plain(&line)
    );
    // A pod first seen now is not a rotation.
    assert_eq!(story.identity(B2, &identity("aa", 1), at(5)), None);
    assert_eq!(story.rotation_count(), 2);
    let summary = story.summary(at(20), &Palette::plain(), None).join("\n");
    assert!(
        summary.contains("certificate rotations  2 (frontend 1, backend-1 1)"),
        "{summary}"
    );
}

#[test]
fn trouble_is_reported_once_until_the_workload_answers_again() {
    let mut story = Story::default();
    assert!(story.trouble(B1, "refused", at(1)).is_some());
    assert!(story.trouble(B1, "refused", at(2)).is_none());
    // Another pod's trouble is its own.
    assert!(story.trouble(B2, "refused", at(2)).is_some());
    story.records(B1, &[], at(3));
    assert!(story.trouble(B1, "refused", at(4)).is_some());
    assert!(story.trouble(B2, "refused", at(4)).is_none());
}

#[test]
fn serials_are_shortened_only_when_long() {
    assert_eq!(short_serial("abc"), "abc");
    assert_eq!(short_serial("0123456789abcd"), "0123456789abcd");
    assert_eq!(short_serial("0123456789abcdef"), "0123456789ab…");
}

#[test]
fn nothing_seen_is_a_summary_of_zeros() {
    let story = Story::default();
    let text = story.summary(at(20), &Palette::plain(), None).join("\n");
    assert!(text.starts_with("summary of 20.0 s of traffic:"), "{text}");
    assert!(text.contains("✔ allowed     0"), "{text}");
    assert!(text.contains("policy edits  0"), "{text}");
}
