//! Label values that come from outside, bounded: a port scan or a stream of identities must
//! not grow `/metrics` (served unauthenticated on 15020) without end (issue 15: a 5,000-port
//! scan grew it from 4.7 KB to 650 KB). A port keeps its own label when this workload knows it
//! — a policy selecting the workload names it, or the app has accepted a connection on it
//! (at most [`MAX_SERVED_PORTS`] remembered) — and is `other` otherwise; peer identities keep
//! their label for the first [`MAX_PEER_IDS`] distinct ones, later ones are `other`.
//!
//! Owns: [`LabelBounds`] and the pure [`port_label`] / [`admit_value`].

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use crate::policy::InboundPolicy;

/// The label of every value past a bound.
pub const OTHER: &str = "other";
/// Distinct peer identities that get their own label.
pub const MAX_PEER_IDS: usize = 100;
/// Ports the app accepted on that are remembered as known.
pub const MAX_SERVED_PORTS: usize = 64;

/// A port's label: its number when known, else [`OTHER`].
pub fn port_label(port: u16, known: bool) -> String {
    if known {
        port.to_string()
    } else {
        OTHER.to_owned()
    }
}

/// Whether `value` keeps its own label, given the values that already have one and the bound.
pub fn admit_value(value: &str, labelled: &HashSet<String>, bound: usize) -> bool {
    value.is_empty() || labelled.contains(value) || labelled.len() < bound
}

/// The values seen so far.
#[derive(Debug, Default)]
pub struct LabelBounds {
    /// Peer identities with their own label.
    peers: Mutex<HashSet<String>>,
    /// Ports the app accepted a connection on.
    served: Mutex<BTreeSet<u16>>,
}

impl LabelBounds {
    /// The label for peer identity `id` (empty stays empty: no identity).
    pub fn peer(&self, id: &str) -> String {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if !admit_value(id, &peers, MAX_PEER_IDS) {
            return OTHER.to_owned();
        }
        if !id.is_empty() && !peers.contains(id) {
            peers.insert(id.to_owned());
        }
        id.to_owned()
    }

    /// Remembers that the app accepted a connection on `port`.
    pub fn served(&self, port: u16) {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.len() < MAX_SERVED_PORTS {
            served.insert(port);
        }
    }

    /// The label for target port `port` under `policy`.
    pub fn port(&self, port: u16, policy: &InboundPolicy) -> String {
        let declared = policy.rules.iter().any(|r| r.ports.contains(&port));
        let served = self
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&port);
        port_label(port, declared || served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Rule, RuleMode};

    #[test]
    fn ports_keep_their_label_only_when_known() {
        let table = [
            (8080, true, "8080"),
            (8080, false, "other"),
            (0, false, "other"),
        ];
        for (port, known, want) in table {
            assert_eq!(port_label(port, known), want, "{port} {known}");
        }
    }

    #[test]
    fn declared_and_served_ports_are_known_and_scanned_ones_are_other() {
        let bounds = LabelBounds::default();
        let policy = InboundPolicy {
            rules: vec![Rule {
                name: "shop/backend".into(),
                ports: vec![9090],
                allow: vec![],
                allow_unauthenticated: false,
                mode: RuleMode::Enforce,
            }],
        };
        bounds.served(8080);
        assert_eq!(bounds.port(9090, &policy), "9090");
        assert_eq!(bounds.port(8080, &policy), "8080");
        assert_eq!(bounds.port(1234, &policy), OTHER);
        for port in 0..1000 {
            bounds.served(port);
        }
        assert_eq!(
            bounds.port(999, &policy),
            OTHER,
            "served ports are bounded too"
        );
    }

    #[test]
    fn the_first_peer_identities_keep_their_label_and_later_ones_are_other() {
        let bounds = LabelBounds::default();
        let id = |i: usize| format!("spiffe://cluster.local/ns/n/sa/s{i}");
        for i in 0..MAX_PEER_IDS {
            assert_eq!(bounds.peer(&id(i)), id(i));
        }
        assert_eq!(bounds.peer(&id(MAX_PEER_IDS)), OTHER);
        assert_eq!(
            bounds.peer(&id(0)),
            id(0),
            "a labelled identity keeps its label"
        );
        assert_eq!(bounds.peer(""), "", "no identity stays empty");
    }
}
