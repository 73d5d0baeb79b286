//! What `trellis inspect` shows, as pure functions of what the admin endpoint answered: the
//! identity block, the handshake table's rows, the JSON document, and which rows of a new poll
//! are new (for `--watch`).

use std::collections::HashMap;

use crate::admin_api::{FailedHandshakes, Handshake, Identity, Snapshot};
use crate::humanize::short_duration;
use crate::style::{Palette, Style};
use crate::table::{Cell, Table};

/// The handshake table's columns.
pub const COLUMNS: [&str; 9] = [
    "TIME (UTC)",
    "DIRECTION",
    "PEER",
    "PEER ID",
    "TLS",
    "CIPHER",
    "ALPN",
    "HANDSHAKE",
    "DECISION",
];

/// An hour, in seconds: less than this left on the certificate is worth a colour.
const HOUR: u64 = 3600;

/// The identity block: SPIFFE ID, serial, validity, time left, chain, trusted roots.
pub fn identity_block(identity: Option<&Identity>, palette: Palette) -> String {
    let Some(id) = identity else {
        return format!(
            "{}\n",
            palette.paint(
                Style::Warn,
                "Identity   none yet: the proxy has no certificate (it is still starting, or cannot reach the control plane)"
            )
        );
    };
    let left = match id.seconds_left {
        0 => palette.paint(Style::Bad, "expired"),
        s if s < HOUR => palette.paint(Style::Warn, &short_duration(s)),
        s => short_duration(s),
    };
    let lines = [
        ("Identity", palette.paint(Style::Strong, &id.spiffe_id)),
        ("Serial", id.serial.clone()),
        ("Valid", format!("{} → {}", id.not_before, id.not_after)),
        ("Time left", left),
        ("Chain", chain_summary(id)),
        ("Renewals", id.generation.saturating_sub(1).to_string()),
    ];
    let mut out: String = lines
        .iter()
        .map(|(label, value)| format!("{label:<10} {value}\n"))
        .collect();
    out.push_str(&roots_block(id));
    out
}

/// One line per root the proxy trusts: subject, fingerprint, expiry; and where they came
/// from. Nothing for a proxy that does not say (older versions).
fn roots_block(id: &Identity) -> String {
    let source = match id.trust_bundle_source.as_deref() {
        Some("discovery") => " (live, from discovery)",
        Some("certify") => " (from the last certificate; discovery sent none)",
        _ => "",
    };
    id.trust_bundle
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let label = if i == 0 { "Roots" } else { "" };
            let tail = if i == 0 { source } else { "" };
            format!(
                "{label:<10} {}  sha256 {}  until {}{tail}\n",
                r.subject, r.sha256, r.not_after
            )
        })
        .collect()
}

/// "1 certificate (leaf, signed by the root); trusts 1 root".
fn chain_summary(id: &Identity) -> String {
    let chain = match id.chain_pem.len() {
        0 => "empty".to_owned(),
        1 => "1 certificate (leaf, signed by the root)".to_owned(),
        n => format!(
            "{n} certificates (leaf + {} intermediate{})",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
    };
    let roots = id.trust_bundle_roots;
    format!(
        "{chain}; trusts {roots} root{}",
        if roots == 1 { "" } else { "s" }
    )
}

/// One handshake as a table row.
pub fn row(h: &Handshake) -> Vec<Cell> {
    let dash = || Cell::plain("-");
    // Plaintext at an application port: a caller without identity, allowed or not.
    let plaintext = h.direction == "inbound-plain";
    let peer = match h.peer_id.as_deref() {
        Some(id) => Cell::plain(id),
        None if plaintext => Cell::styled("unauthenticated", Style::Warn),
        None => dash(),
    };
    let (version, cipher, alpn, took) = match &h.tls {
        Some(tls) => (
            Cell::plain(&tls.version),
            Cell::plain(&tls.cipher),
            tls.alpn.as_deref().map_or_else(dash, Cell::plain),
            if tls.reused {
                Cell::plain("reused")
            } else {
                Cell::plain(format!("{:.1} ms", tls.handshake_ms))
            },
        ),
        // A refused connection without TLS facts never got a session (the tunnel could not be
        // opened), unless it arrived in plaintext; anything else without them carried plaintext.
        None if h.decision == "deny" && !plaintext => (dash(), dash(), dash(), dash()),
        None => (
            Cell::styled("plaintext", Style::Warn),
            dash(),
            dash(),
            dash(),
        ),
    };
    vec![
        Cell::plain(clock_time(&h.time)),
        Cell::plain(&h.direction),
        Cell::plain(&h.peer_addr),
        peer,
        version,
        cipher,
        alpn,
        took,
        decision(h),
    ]
}

/// `allow`, or the decision with its reason, coloured by outcome.
fn decision(h: &Handshake) -> Cell {
    let text = if h.reason.is_empty() {
        h.decision.clone()
    } else {
        format!("{}: {}", h.decision, h.reason)
    };
    let style = match h.decision.as_str() {
        "allow" => Style::Good,
        "deny" => Style::Bad,
        _ => Style::Warn,
    };
    Cell::styled(text, style)
}

/// `10:00:00.123` from `2025-01-01T10:00:00.123Z`; anything else unchanged.
fn clock_time(rfc3339: &str) -> String {
    rfc3339
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z').to_owned())
        .unwrap_or_else(|| rfc3339.to_owned())
}

/// The first screen: identity, then the table (or a line saying there is nothing yet).
pub fn first_screen(
    identity: Option<&Identity>,
    handshakes: &[Handshake],
    table: &mut Table,
    palette: Palette,
) -> String {
    let mut out = identity_block(identity, palette);
    out.push('\n');
    let rows: Vec<_> = handshakes.iter().map(row).collect();
    table.fit(&rows);
    out.push_str(&table.header(palette));
    out.push('\n');
    for r in &rows {
        out.push_str(&table.line(r, palette));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no connections yet)\n");
    }
    out
}

/// The line under the table about failed handshakes from outside (empty when there were
/// none): the total and the top three sources.
pub fn failed_handshakes(failed: Option<&FailedHandshakes>) -> String {
    let Some(f) = failed.filter(|f| f.total > 0) else {
        return String::new();
    };
    let top: Vec<String> = f
        .top
        .iter()
        .take(3)
        .map(|s| format!("{} {} ×{}", s.source, s.reason, s.count))
        .collect();
    format!(
        "failed handshakes from outside (last {}s): {} — {}\n",
        f.window_seconds,
        f.total,
        top.join(", ")
    )
}

/// `-o json`: `{"identity": ..., "handshakes": [...]}`, pretty-printed.
pub fn json_document(snapshot: &Snapshot) -> String {
    // Serializing plain data (strings, numbers, maps of JSON values) cannot fail.
    let mut out = serde_json::to_string_pretty(snapshot).unwrap_or_default();
    out.push('\n');
    out
}

/// `-o yaml`: the document as YAML, opened with `---` so that `--watch`'s documents form
/// one YAML stream.
pub fn yaml_document(snapshot: &Snapshot) -> Result<String, crate::output::RenderError> {
    let body = crate::output::structured(crate::output::Format::Yaml, snapshot)?;
    Ok(format!("---\n{}", body.unwrap_or_default()))
}

/// `-o json --watch`: the same document on one line (JSON Lines).
pub fn json_line(snapshot: &Snapshot) -> String {
    let mut out = serde_json::to_string(snapshot).unwrap_or_default();
    out.push('\n');
    out
}

/// The rows of a poll that the previous poll did not have.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRows {
    /// New connections, oldest first.
    pub rows: Vec<Handshake>,
    /// The poll shares no row with the previous one and is full: connections may have come
    /// and gone in between without being shown.
    pub gap: bool,
}

/// Which of `next` are new since `prev`. Records carry no ID, so each is known by what never
/// changes about it (time, addresses, identity, TLS facts, decision); the byte counters and
/// the open flag, which do change, are left out. Equal keys are matched by count.
pub fn new_since(prev: &[Handshake], next: &[Handshake], limit: u64) -> NewRows {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for h in prev {
        *seen.entry(key(h)).or_default() += 1;
    }
    let mut rows = Vec::new();
    let mut matched = 0;
    for h in next {
        match seen.get_mut(&key(h)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                matched += 1;
            }
            _ => rows.push(h.clone()),
        }
    }
    let full = u64::try_from(next.len()).unwrap_or(u64::MAX) >= limit;
    NewRows {
        gap: !prev.is_empty() && matched == 0 && full,
        rows,
    }
}

fn key(h: &Handshake) -> String {
    let tls = h.tls.as_ref().map(|t| {
        (
            &t.version,
            &t.cipher,
            &t.alpn,
            t.handshake_ms.to_bits(),
            t.reused,
        )
    });
    format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{}|{}",
        h.time, h.direction, h.peer_addr, h.peer_id, h.dst, tls, h.decision, h.reason
    )
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
