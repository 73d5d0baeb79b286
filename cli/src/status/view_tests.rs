#![allow(clippy::unwrap_used)]

use super::*;

const NOW: u64 = 1_000_000;

fn stream(node: &str, ip: &str, acked: [u64; 2], not_after: u64) -> CpProxy {
    CpProxy {
        id: format!("spiffe://cluster.local/ns/shop/sa/{node}"),
        node: node.into(),
        peer: format!("{ip}:41000"),
        proxy_version: "0.1.0".into(),
        acked,
        cert_serial: Some("00aa11bb22cc33dd44ee".into()),
        cert_not_before: Some(not_after.saturating_sub(4 * 3600 + BACKDATE_SECS)),
        cert_not_after: Some(not_after),
        mtls: Some("STRICT".into()),
    }
}

fn pod(name: &str, ip: Option<&str>) -> MeshedPod {
    MeshedPod {
        namespace: "shop".into(),
        name: name.into(),
        ip: ip.map(Into::into),
        app_probes: Some("rewritten".into()),
    }
}

fn cp(proxies: Vec<CpProxy>) -> CpStatus {
    CpStatus {
        control_plane_version: "0.1.0".into(),
        epoch: 9,
        version: 12,
        proxies,
    }
}

#[test]
fn each_pod_is_judged_by_its_stream() {
    let status = cp(vec![
        stream("a", "198.18.0.2", [9, 12], NOW + 3600),
        stream("b", "198.18.0.3", [9, 11], NOW + 3600),
        stream("c", "198.18.0.4", [9, 12], NOW + 60),
        stream("d", "198.18.0.5", [4, 12], NOW + 3600),
    ]);
    let pods = [
        pod("a", Some("198.18.0.2")),
        pod("b", Some("198.18.0.3")),
        pod("c", Some("198.18.0.4")),
        pod("d", Some("198.18.0.5")),
        pod("e", Some("198.18.0.6")),
    ];
    let report = report(&status, Some(&pods), NOW);
    let states: Vec<_> = report
        .proxies
        .iter()
        .map(|r| (r.pod.as_str(), r.state))
        .collect();
    assert_eq!(
        states,
        [
            ("shop/a", State::Synced),
            ("shop/b", State::Stale),
            ("shop/c", State::Expiring),
            ("shop/d", State::Stale),
            ("shop/e", State::Unreachable),
        ]
    );
    assert_eq!(report.proxies[0].cert_secs_left, Some(3600));
    assert_eq!(
        report.proxies[3].acked_version, None,
        "another epoch's version means nothing"
    );
}

#[test]
fn the_exit_code_gate_passes_only_when_every_listed_proxy_is_synced() {
    let synced = stream("a", "198.18.0.2", [9, 12], NOW + 3600);
    let behind = stream("b", "198.18.0.3", [9, 11], NOW + 3600);
    let pods = [pod("a", Some("198.18.0.2")), pod("b", Some("198.18.0.3"))];
    assert!(report(&cp(vec![synced.clone()]), Some(&pods[..1]), NOW).all_synced());
    assert!(!report(&cp(vec![synced.clone(), behind]), Some(&pods), NOW).all_synced());
    assert!(
        !report(&cp(vec![synced]), Some(&pods), NOW).all_synced(),
        "a meshed pod without a stream fails the gate"
    );
    assert!(
        report(&cp(vec![]), Some(&[]), NOW).all_synced(),
        "no meshed pod, nothing to wait for"
    );
}

#[test]
fn a_pod_is_found_by_its_ip_before_the_name_its_proxy_gave() {
    // The stream from .3 claims to be "a"; the pod "a" is at .2 and has its own stream.
    let status = cp(vec![
        stream("a", "198.18.0.3", [9, 11], NOW + 3600),
        stream("x", "198.18.0.2", [9, 12], NOW + 3600),
    ]);
    let report = report(&status, Some(&[pod("a", Some("198.18.0.2"))]), NOW);
    assert_eq!(report.proxies.len(), 1);
    assert_eq!(report.proxies[0].state, State::Synced);
    // No IP yet: the node name it gave is all there is.
    let report = super::report(&status, Some(&[pod("a", None)]), NOW);
    assert_eq!(report.proxies[0].state, State::Stale);
}

#[test]
fn without_a_cluster_every_stream_is_listed_by_its_node_name() {
    let status = cp(vec![stream("frontend", "127.0.0.1", [9, 12], NOW + 3600)]);
    let report = report(&status, None, NOW);
    assert_eq!(report.proxies[0].pod, "frontend");
    assert_eq!(report.proxies[0].app_probes, None);
    let text = table(&report, Palette::plain());
    assert!(text.contains("v12 (current)"), "{text}");
    assert!(text.contains("SYNCED"), "{text}");
    assert!(text.contains("1 proxies, 0 need attention"), "{text}");
}

#[test]
fn the_table_says_how_far_behind_a_stale_proxy_is_and_that_a_pod_is_unreachable() {
    let status = cp(vec![stream("b", "198.18.0.3", [9, 11], NOW - 5)]);
    let report = report(
        &status,
        Some(&[pod("b", Some("198.18.0.3")), pod("e", None)]),
        NOW,
    );
    let text = table(&report, Palette::plain());
    assert!(text.contains("v11 of v12"), "{text}");
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("UNREACHABLE"), "{text}");
    assert!(text.contains("2 proxies, 2 need attention"), "{text}");
}

#[test]
fn a_certificate_is_expiring_under_a_quarter_of_its_lifetime_left() {
    for (not_before, not_after, now, want) in [
        // Issued at 300 (back-dated to 0), valid until 400: expiring under 25 s left.
        (Some(0), 400, 374, false),
        (Some(0), 400, 376, true),
        (Some(0), 400, 400, true),
        (Some(0), 400, 500, true),
        (Some(0), 306, 302, false), // a 6 s certificate, fresh
        (None, 10_000, 0, false),
        (None, 10_000, 10_000 - EXPIRING_SECS + 1, true),
        (Some(50), 50, 0, true), // nonsense dates: judged by time left
    ] {
        assert_eq!(
            expiring(not_before, not_after, now),
            want,
            "{not_before:?} {not_after} {now}"
        );
    }
}

#[test]
fn peer_addresses_give_their_ip() {
    assert_eq!(peer_ip("198.18.0.2:41000"), Some("198.18.0.2"));
    assert_eq!(peer_ip("[fd00::2]:41000"), Some("fd00::2"));
    assert_eq!(peer_ip("nonsense"), None);
}
