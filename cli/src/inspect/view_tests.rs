use std::collections::BTreeMap;

use super::*;
use crate::admin_api::TlsFacts;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";

fn tls(ms: f64, reused: bool) -> TlsFacts {
    TlsFacts {
        version: "TLSv1_3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        alpn: Some("h2".into()),
        handshake_ms: ms,
        reused,
        extra: BTreeMap::new(),
    }
}

fn handshake(time: &str, peer_id: Option<&str>, tls: Option<TlsFacts>) -> Handshake {
    Handshake {
        time: time.into(),
        direction: "outbound".into(),
        peer_addr: "10.0.0.7:15008".into(),
        peer_id: peer_id.map(Into::into),
        dst: Some("10.0.0.7:8080".into()),
        tls,
        decision: "allow".into(),
        reason: String::new(),
        extra: BTreeMap::new(),
    }
}

fn denied(reason: &str) -> Handshake {
    Handshake {
        direction: "inbound".into(),
        decision: "deny".into(),
        reason: reason.into(),
        ..handshake(
            "2025-01-01T10:00:02.000Z",
            Some("spiffe://cluster.local/ns/evil/sa/intruder"),
            Some(tls(1.9, false)),
        )
    }
}

fn identity() -> Identity {
    Identity {
        spiffe_id: FRONTEND.into(),
        serial: "4f1c2a".into(),
        not_before: "2025-01-01T09:59:00Z".into(),
        not_after: "2025-01-02T10:00:00Z".into(),
        seconds_left: 86_100,
        generation: 3,
        chain_pem: vec!["leaf".into(), "intermediate".into()],
        trust_bundle_roots: 1,
        trust_bundle: Vec::new(),
        trust_bundle_source: None,
        extra: BTreeMap::new(),
    }
}

fn texts(cells: &[Cell]) -> Vec<&str> {
    cells.iter().map(|c| c.text.as_str()).collect()
}

#[test]
fn a_row_has_one_cell_per_column_in_order() {
    let h = handshake(
        "2025-01-01T10:00:01.250Z",
        Some(BACKEND),
        Some(tls(3.25, false)),
    );
    assert_eq!(
        texts(&row(&h)),
        [
            "10:00:01.250",
            "outbound",
            "10.0.0.7:15008",
            BACKEND,
            "TLSv1_3",
            "TLS13_AES_128_GCM_SHA256",
            "h2",
            "3.2 ms",
            "allow",
        ]
    );
    assert_eq!(row(&h).len(), COLUMNS.len());
}

#[test]
fn a_reused_tunnel_shows_reused_instead_of_a_handshake_time() {
    let h = handshake(
        "2025-01-01T10:00:01.250Z",
        Some(BACKEND),
        Some(tls(0.0, true)),
    );
    assert_eq!(row(&h)[7].text, "reused");
}

#[test]
fn a_refusal_shows_the_decision_with_its_reason_in_red() {
    let cells = row(&denied("ns/evil/sa/intruder is not allowed on port 8080"));
    let decision = cells.last().unwrap();
    assert_eq!(
        decision.text,
        "deny: ns/evil/sa/intruder is not allowed on port 8080"
    );
    assert_eq!(decision.style, Some(Style::Bad));
}

#[test]
fn decisions_are_coloured_by_outcome() {
    let mut audit = denied("would be refused");
    audit.decision = "would-deny".into();
    let cases = [
        (handshake("t", None, None), "allow", Some(Style::Good)),
        (audit, "would-deny: would be refused", Some(Style::Warn)),
    ];
    for (h, text, style) in cases {
        let cells = row(&h);
        let cell = cells.last().unwrap();
        assert_eq!((cell.text.as_str(), cell.style), (text, style));
    }
}

#[test]
fn plaintext_connections_show_an_unauthenticated_caller_allowed_or_refused() {
    let mut h = handshake("2025-01-01T10:00:03.000Z", None, None);
    h.direction = "inbound-plain".into();
    for decision in ["allow", "would-deny", "deny"] {
        h.decision = decision.into();
        let cells = row(&h);
        assert_eq!(
            texts(&cells)[3..8],
            ["unauthenticated", "plaintext", "-", "-", "-"],
            "{decision}: {cells:?}"
        );
    }
}

#[test]
fn a_connection_refused_before_any_session_shows_no_tls_at_all() {
    let mut h = handshake("2025-01-01T10:00:04.000Z", None, None);
    h.decision = "deny".into();
    h.reason = "cannot reach peer tunnel 10.0.0.7:15008: Connection refused".into();
    let cells = row(&h);
    assert_eq!(texts(&cells)[3..8], ["-", "-", "-", "-", "-"]);
    assert!(cells[8].text.starts_with("deny: cannot reach peer tunnel"));
}

#[test]
fn the_first_screen_has_the_identity_then_the_table_with_every_column() {
    let hs = vec![
        handshake(
            "2025-01-01T10:00:01.250Z",
            Some(BACKEND),
            Some(tls(3.25, false)),
        ),
        denied("not allowed"),
    ];
    let mut table = Table::new(&COLUMNS);
    let out = first_screen(Some(&identity()), &hs, &mut table, Palette::plain());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("Identity   {FRONTEND}"));
    assert!(out.contains("Serial     4f1c2a\n"), "{out}");
    assert!(out.contains("Time left  23h 55m\n"), "{out}");
    assert!(
        out.contains("Chain      2 certificates (leaf + 1 intermediate); trusts 1 root\n"),
        "{out}"
    );
    assert!(out.contains("Renewals   2\n"), "{out}");
    let header = lines.iter().position(|l| l.starts_with("TIME")).unwrap();
    for column in COLUMNS {
        assert!(
            lines[header].contains(column),
            "{column} in {}",
            lines[header]
        );
    }
    // The PEER ID column starts at the same offset in the header and in each row.
    let at = lines[header].find("PEER ID").unwrap();
    assert_eq!(&lines[header + 1][at..at + BACKEND.len()], BACKEND);
    assert!(lines[header + 2][at..].starts_with("spiffe://cluster.local/ns/evil"));
    assert!(lines[header + 2].ends_with("deny: not allowed"));
}

#[test]
fn an_empty_log_says_so() {
    let mut table = Table::new(&COLUMNS);
    let out = first_screen(Some(&identity()), &[], &mut table, Palette::plain());
    assert!(out.ends_with("(no connections yet)\n"), "{out}");
}

#[test]
fn a_proxy_without_a_certificate_says_so() {
    let out = identity_block(None, Palette::plain());
    assert!(out.starts_with("Identity   none yet"), "{out}");
}

#[test]
fn an_expired_certificate_shows_expired() {
    let id = Identity {
        seconds_left: 0,
        ..identity()
    };
    assert!(identity_block(Some(&id), Palette::plain()).contains("Time left  expired\n"));
}

#[test]
fn json_output_has_identity_and_handshakes() {
    let snapshot = Snapshot {
        failed_handshakes: None,
        identity: Some(identity()),
        handshakes: vec![handshake(
            "2025-01-01T10:00:01.250Z",
            Some(BACKEND),
            Some(tls(3.25, true)),
        )],
    };
    let value: serde_json::Value = serde_json::from_str(&json_document(&snapshot)).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["handshakes", "identity"]);
    assert_eq!(value["identity"]["spiffe_id"], FRONTEND);
    assert_eq!(value["identity"]["chain_pem"].as_array().unwrap().len(), 2);
    let h = &value["handshakes"][0];
    assert_eq!(h["peer_id"], BACKEND);
    assert_eq!(h["tls"]["version"], "TLSv1_3");
    assert_eq!(h["tls"]["reused"], true);
    assert_eq!(h["decision"], "allow");
    // One line per document when watching.
    assert_eq!(json_line(&snapshot).lines().count(), 1);
}

#[test]
fn json_output_has_a_null_identity_before_the_first_certificate() {
    let snapshot = Snapshot {
        failed_handshakes: None,
        identity: None,
        handshakes: vec![],
    };
    let value: serde_json::Value = serde_json::from_str(&json_document(&snapshot)).unwrap();
    assert!(value["identity"].is_null());
    assert_eq!(value["handshakes"], serde_json::json!([]));
}

#[test]
fn watching_shows_only_rows_not_seen_before() {
    let a = handshake("2025-01-01T10:00:01.000Z", Some(BACKEND), None);
    let b = handshake("2025-01-01T10:00:02.000Z", Some(BACKEND), None);
    let c = denied("no");
    // Byte counters change between polls; the row is still the same connection.
    let mut a_later = a.clone();
    a_later
        .extra
        .insert("bytes_sent".into(), serde_json::json!(99));
    let new = new_since(
        &[a.clone(), b.clone()],
        &[a_later, b.clone(), c.clone()],
        100,
    );
    assert_eq!(new.rows, [c]);
    assert!(!new.gap);
}

#[test]
fn identical_records_are_matched_by_count() {
    let a = handshake("2025-01-01T10:00:01.000Z", Some(BACKEND), None);
    let new = new_since(
        std::slice::from_ref(&a),
        &[a.clone(), a.clone(), a.clone()],
        100,
    );
    assert_eq!(new.rows.len(), 2);
}

#[test]
fn a_full_poll_with_nothing_in_common_reports_a_gap() {
    let old = handshake("2025-01-01T10:00:01.000Z", Some(BACKEND), None);
    let fresh: Vec<_> = (0..2)
        .map(|i| handshake(&format!("2025-01-01T10:00:0{}.000Z", i + 5), None, None))
        .collect();
    assert!(new_since(std::slice::from_ref(&old), &fresh, 2).gap);
    assert!(
        !new_since(&[old], &fresh, 3).gap,
        "not full: nothing missed"
    );
    assert!(!new_since(&[], &fresh, 2).gap, "first poll");
}

#[test]
fn the_identity_block_lists_every_trusted_root_with_its_fingerprint_and_source() {
    let root = |cn: &str, fp: &str| crate::admin_api::TrustedRoot {
        subject: format!("O=Trellis, CN={cn}"),
        sha256: fp.repeat(64 / fp.len()),
        not_after: "2035-01-01T10:00:00Z".into(),
    };
    let id = Identity {
        trust_bundle_roots: 2,
        trust_bundle: vec![root("old", "ab"), root("new", "cd")],
        trust_bundle_source: Some("discovery".into()),
        ..identity()
    };
    let block = identity_block(Some(&id), Palette::plain());
    let lines: Vec<&str> = block.lines().filter(|l| l.contains("sha256")).collect();
    assert_eq!(lines.len(), 2, "{block}");
    assert!(
        lines[0].starts_with("Roots      O=Trellis, CN=old  sha256 abab"),
        "{block}"
    );
    assert!(
        lines[0].ends_with("until 2035-01-01T10:00:00Z (live, from discovery)"),
        "{block}"
    );
    assert!(
        lines[1].starts_with("           O=Trellis, CN=new  sha256 cdcd"),
        "{block}"
    );
    assert!(block.contains("trusts 2 roots"), "{block}");
    // An older proxy that lists no roots: no Roots line.
    assert!(!identity_block(Some(&identity()), Palette::plain()).contains("Roots"));
}

#[test]
fn failed_handshakes_show_as_one_line_with_the_top_sources() {
    let failed: crate::admin_api::FailedHandshakes = serde_json::from_str(
        r#"{"window_seconds":600,"total":1000,"sources":2,"top":[
          {"source":"198.18.0.9","reason":"tls_handshake","count":990,"detail":"bad"},
          {"source":"198.18.0.8","reason":"handshakes_per_source","count":10}]}"#,
    )
    .unwrap();
    let line = failed_handshakes(Some(&failed));
    assert_eq!(
        line,
        "failed handshakes from outside (last 600s): 1000 — 198.18.0.9 tls_handshake ×990, 198.18.0.8 handshakes_per_source ×10\n"
    );
    assert_eq!(failed_handshakes(None), "");
}
