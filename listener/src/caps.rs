//! Caps on how many connections may be in one phase at once (pending TLS handshakes,
//! established tunnels), per source and in total, so one noisy host cannot take what every
//! other caller needs.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so counting
//! single IPv6 addresses would cap nothing). Owns: the pure decision [`check`] and [`Gate`],
//! which counts and hands out [`Ticket`]s that give their place back when dropped. What a
//! refused connection is told, and how it is counted, is the caller's.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// How many connections may be in the phase at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// From one source.
    pub per_source: usize,
    /// From everyone.
    pub total: usize,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapRefusal {
    /// Its source already has `Caps::per_source` connections in the phase.
    #[error("this source already has {0} connections in progress (the most one source may have)")]
    PerSource(usize),
    /// `Caps::total` connections are in the phase.
    #[error("{0} connections are in progress (the most at once)")]
    Total(usize),
}

impl CapRefusal {
    /// Which cap: `per_source` or `total` (a bounded metric label).
    pub fn cap(self) -> &'static str {
        match self {
            CapRefusal::PerSource(_) => "per_source",
            CapRefusal::Total(_) => "total",
        }
    }
}

/// Whether one more connection from a source with `from_source` connections in the phase may
/// join, with `total` in the phase overall. The per-source cap is checked first: a flood from
/// one host is named as such even when it also fills the total.
pub fn check(from_source: usize, total: usize, caps: Caps) -> Result<(), CapRefusal> {
    if from_source >= caps.per_source {
        return Err(CapRefusal::PerSource(caps.per_source));
    }
    if total >= caps.total {
        return Err(CapRefusal::Total(caps.total));
    }
    Ok(())
}

/// What connections are counted by: the address, or its /64 for IPv6.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The counts behind a [`Gate`].
#[derive(Debug, Default)]
struct Counts {
    /// Connections in the phase per source key; sources at zero are removed.
    by_source: HashMap<IpAddr, usize>,
    /// All connections in the phase.
    total: usize,
}

/// Counts connections in one phase and lets them in while [`check`] allows.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The caps.
    caps: Caps,
    /// The counts, shared with the tickets.
    counts: Arc<Mutex<Counts>>,
}

impl Gate {
    /// A gate with nobody in.
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    /// Lets a connection from `ip` in, or says which cap is full. The place is held until the
    /// ticket is dropped.
    pub fn enter(&self, ip: IpAddr) -> Result<Ticket, CapRefusal> {
        let key = source_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = counts.by_source.get(&key).copied().unwrap_or(0);
        check(from_source, counts.total, self.caps)?;
        *counts.by_source.entry(key).or_insert(0) += 1;
        counts.total += 1;
        Ok(Ticket {
            key,
            counts: self.counts.clone(),
        })
    }

    /// Connections in the phase now, from everyone.
    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }
}

/// A place in a [`Gate`]; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    /// Whose place.
    key: IpAddr,
    /// The gate's counts.
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_source.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        per_source: 2,
        total: 3,
    };

    #[test]
    fn the_decision_checks_the_source_then_the_total() {
        let table = [
            (0, 0, Ok(())),
            (1, 2, Ok(())),
            (2, 0, Err(CapRefusal::PerSource(2))),
            (2, 3, Err(CapRefusal::PerSource(2))),
            (0, 3, Err(CapRefusal::Total(3))),
            (1, 9, Err(CapRefusal::Total(3))),
        ];
        for (from_source, total, want) in table {
            assert_eq!(
                check(from_source, total, CAPS),
                want,
                "{from_source} {total}"
            );
        }
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let table = [
            ("198.18.0.1", "198.18.0.1"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("::ffff:198.18.0.7", "198.18.0.7"),
        ];
        for (ip, key) in table {
            assert_eq!(
                source_key(ip.parse().unwrap()),
                key.parse::<IpAddr>().unwrap(),
                "{ip}"
            );
        }
    }

    #[test]
    fn a_full_source_is_refused_while_others_get_in_until_the_total_and_places_come_back() {
        let gate = Gate::new(CAPS);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let a1 = gate.enter(a).unwrap();
        let _a2 = gate.enter(a).unwrap();
        assert_eq!(gate.enter(a).unwrap_err(), CapRefusal::PerSource(2));
        let _b1 = gate.enter(b).unwrap();
        assert_eq!(gate.enter(b).unwrap_err(), CapRefusal::Total(3));
        drop(a1);
        assert_eq!(gate.total(), 2);
        let _a3 = gate.enter(a).unwrap();
        assert_eq!(gate.total(), 3);
    }
}
