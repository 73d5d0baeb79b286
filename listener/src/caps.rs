//! Caps on how many connections may be in one phase at once (pending TLS handshakes,
//! established tunnels), per source and in total, so one noisy host cannot take what every
//! other caller needs.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so counting
//! single IPv6 addresses would cap nothing). Owns: the pure decisions [`check`] (refuse when
//! full) and [`admit`] (queue when only the total is full), and [`Gate`], which counts and
//! hands out [`Ticket`]s that give their place back when dropped, or [`Waiter`]s that wait for
//! one. What a refused connection is told, how long a waiter may wait, and how both are
//! counted, is the caller's.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

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

/// What [`admit`] decides for one more connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A place is free: in now.
    Now,
    /// Only the total is full: wait for a place (the caller bounds the wait).
    Wait,
    /// Refused: its source is full, or the total and the queue are.
    Refuse(CapRefusal),
}

/// Whether one more connection from a source with `from_source` connections in the phase or
/// waiting for it may join, with `in_phase` in the phase and `waiting` waiting overall, at
/// most `max_waiting` of them. The per-source cap counts the waiting too (one host cannot
/// fill the queue either); a full total queues rather than refuses while the queue has room —
/// a burst of callers from many hosts (a fleet restarting) waits a moment instead of being
/// turned away into their backoff.
pub fn admit(
    from_source: usize,
    in_phase: usize,
    waiting: usize,
    caps: Caps,
    max_waiting: usize,
) -> Admission {
    match check(from_source, in_phase, caps) {
        Ok(()) => Admission::Now,
        Err(CapRefusal::Total(_)) if waiting < max_waiting => Admission::Wait,
        Err(refusal) => Admission::Refuse(refusal),
    }
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
    /// Connections waiting for a place (also counted in `by_source`).
    waiting: usize,
}

impl Counts {
    /// Counts one more connection of `key`, in the phase or waiting.
    fn add(&mut self, key: IpAddr, waiting: bool) {
        *self.by_source.entry(key).or_insert(0) += 1;
        match waiting {
            true => self.waiting += 1,
            false => self.total += 1,
        }
    }

    /// Forgets one connection of `key`, in the phase or waiting.
    fn remove(&mut self, key: IpAddr, waiting: bool) {
        match waiting {
            true => self.waiting = self.waiting.saturating_sub(1),
            false => self.total = self.total.saturating_sub(1),
        }
        if let Some(n) = self.by_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&key);
            }
        }
    }
}

/// Counts connections in one phase and lets them in while [`check`] allows.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The caps.
    caps: Caps,
    /// The counts, shared with the tickets.
    counts: Arc<Mutex<Counts>>,
    /// Woken when a ticket gives its place back.
    freed: Arc<Notify>,
}

impl Gate {
    /// A gate with nobody in.
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
            freed: Arc::default(),
        }
    }

    /// Lets a connection from `ip` in, or says which cap is full. The place is held until the
    /// ticket is dropped.
    pub fn enter(&self, ip: IpAddr) -> Result<Ticket, CapRefusal> {
        let key = source_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = counts.by_source.get(&key).copied().unwrap_or(0);
        check(from_source, counts.total, self.caps)?;
        counts.add(key, false);
        Ok(self.ticket(key))
    }

    /// As [`Gate::enter`], but when only the total is full and fewer than `max_waiting` wait,
    /// a [`Waiter`] holds a place in the queue (counted against its source) until it gets a
    /// place in the phase — the caller bounds how long, by dropping it.
    pub fn admit(&self, ip: IpAddr, max_waiting: usize) -> Result<Entry, CapRefusal> {
        let key = source_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = counts.by_source.get(&key).copied().unwrap_or(0);
        match admit(
            from_source,
            counts.total,
            counts.waiting,
            self.caps,
            max_waiting,
        ) {
            Admission::Now => {
                counts.add(key, false);
                Ok(Entry::Now(self.ticket(key)))
            }
            Admission::Wait => {
                counts.add(key, true);
                Ok(Entry::Wait(Waiter {
                    key,
                    gate: self.clone(),
                    placed: false,
                }))
            }
            Admission::Refuse(refusal) => Err(refusal),
        }
    }

    /// Connections waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
    }

    fn ticket(&self, key: IpAddr) -> Ticket {
        Ticket {
            key,
            counts: self.counts.clone(),
            freed: self.freed.clone(),
        }
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

/// A connection let into a [`Gate`] by [`Gate::admit`]: in, or queued.
#[derive(Debug)]
pub enum Entry {
    /// In the phase.
    Now(Ticket),
    /// Waiting for a place.
    Wait(Waiter),
}

/// A place in a [`Gate`]'s queue; [`Waiter::place`] turns it into a [`Ticket`] once a place is
/// free. Dropped (the caller's deadline passed), it leaves the queue.
#[derive(Debug)]
pub struct Waiter {
    /// Whose place.
    key: IpAddr,
    /// The gate.
    gate: Gate,
    /// Whether it became a ticket (then the queue's count was moved already).
    placed: bool,
}

impl Waiter {
    /// Waits until a place in the phase is free and takes it. Cancel-safe: dropping the
    /// future leaves the queue.
    pub async fn place(mut self) -> Ticket {
        loop {
            let freed = self.gate.freed.notified();
            {
                let mut counts = self
                    .gate
                    .counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if counts.total < self.gate.caps.total {
                    counts.waiting = counts.waiting.saturating_sub(1);
                    counts.total += 1;
                    self.placed = true;
                    return self.gate.ticket(self.key);
                }
            }
            freed.await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.placed {
            let mut counts = self
                .gate
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            counts.remove(self.key, true);
        }
    }
}

/// A place in a [`Gate`]; given back on drop (and a waiter, if any, woken).
#[derive(Debug)]
pub struct Ticket {
    /// Whose place.
    key: IpAddr,
    /// The gate's counts.
    counts: Arc<Mutex<Counts>>,
    /// Woken on drop.
    freed: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key, false);
        self.freed.notify_one();
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
    fn a_full_total_queues_while_the_queue_has_room_and_a_full_source_is_refused() {
        let table = [
            // (from source, in phase, waiting, max waiting) -> admission
            ((0, 0, 0, 4), Admission::Now),
            ((1, 2, 0, 4), Admission::Now),
            ((0, 3, 0, 4), Admission::Wait),
            ((1, 3, 3, 4), Admission::Wait),
            ((0, 3, 4, 4), Admission::Refuse(CapRefusal::Total(3))),
            ((0, 3, 0, 0), Admission::Refuse(CapRefusal::Total(3))),
            ((2, 0, 0, 4), Admission::Refuse(CapRefusal::PerSource(2))),
            ((2, 3, 0, 4), Admission::Refuse(CapRefusal::PerSource(2))),
        ];
        for ((from_source, in_phase, waiting, max), want) in table {
            assert_eq!(
                admit(from_source, in_phase, waiting, CAPS, max),
                want,
                "{from_source} {in_phase} {waiting} {max}"
            );
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_first_place_given_back_and_leaves_the_queue_when_dropped() {
        let gate = Gate::new(CAPS);
        let ip = |n: u8| IpAddr::from([198, 18, 0, n]);
        let held: Vec<Ticket> = (1..=3)
            .map(|n| match gate.admit(ip(n), 2) {
                Ok(Entry::Now(t)) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        let Ok(Entry::Wait(first)) = gate.admit(ip(4), 2) else {
            panic!("not queued")
        };
        let Ok(Entry::Wait(second)) = gate.admit(ip(5), 2) else {
            panic!("not queued")
        };
        assert_eq!(gate.admit(ip(6), 2).unwrap_err(), CapRefusal::Total(3));
        assert_eq!(gate.waiting(), 2);
        // Nothing free yet: still waiting.
        let first = tokio::spawn(first.place());
        tokio::task::yield_now().await;
        assert!(!first.is_finished());
        drop(held);
        let _placed = first.await.unwrap();
        assert_eq!((gate.total(), gate.waiting()), (1, 1));
        drop(second);
        assert_eq!(gate.waiting(), 0);
        // The source that waited is counted while it waits and once in, and only then.
        let _a = gate.enter(ip(4)).unwrap();
        assert_eq!(gate.enter(ip(4)).unwrap_err(), CapRefusal::PerSource(2));
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
