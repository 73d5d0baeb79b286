//! How much of the tunnel port (15008) one source, and everyone together, may hold: TLS
//! handshakes in progress, TCP connections in any phase, and how many CONNECT streams in a row
//! a connection may have refused before it is closed. Anyone who can reach the pod can open
//! connections to 15008 without a certificate, and an authenticated peer the policy refuses
//! everywhere could otherwise keep thousands of connections open (issue 15).
//!
//! Owns: the `--tunnel-*` flags ([`TunnelLimits`]), the refusal codes of the caps
//! ([`refusal_code`]) and the refused-streams rule ([`StreamRefusals`]). The server applies
//! them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use trellis_listener::{CapRefusal, Caps};

/// The tunnel port's caps (flags and environment variables of `trellis-proxy run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, Serialize)]
pub struct TunnelLimits {
    /// TLS handshakes in progress on the tunnel port from one source address (an IPv6 /64).
    #[arg(
        long = "tunnel-max-handshakes-per-source",
        env = "TRELLIS_TUNNEL_MAX_HANDSHAKES_PER_SOURCE",
        default_value_t = 32
    )]
    pub handshakes_per_source: usize,
    /// TLS handshakes in progress on the tunnel port, from everyone.
    #[arg(
        long = "tunnel-max-handshakes",
        env = "TRELLIS_TUNNEL_MAX_HANDSHAKES",
        default_value_t = 256
    )]
    pub handshakes: usize,
    /// Connections to the tunnel port (any phase) from one source address.
    #[arg(
        long = "tunnel-max-connections-per-source",
        env = "TRELLIS_TUNNEL_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 128
    )]
    pub connections_per_source: usize,
    /// Connections to the tunnel port (any phase), from everyone.
    #[arg(
        long = "tunnel-max-connections",
        env = "TRELLIS_TUNNEL_MAX_CONNECTIONS",
        default_value_t = 2048
    )]
    pub connections: usize,
    /// Time a tunnel client has for its TLS and HTTP/2 handshakes.
    #[arg(
        long = "tunnel-handshake-timeout",
        env = "TRELLIS_TUNNEL_HANDSHAKE_TIMEOUT",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    #[serde(serialize_with = "as_humantime")]
    pub handshake_timeout: Duration,
    /// CONNECT streams refused in a row (none admitted in between) after which the tunnel
    /// connection is closed (GOAWAY).
    #[arg(
        long = "tunnel-max-refused-streams",
        env = "TRELLIS_TUNNEL_MAX_REFUSED_STREAMS",
        default_value_t = 32
    )]
    pub refused_streams: u32,
}

fn as_humantime<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl TunnelLimits {
    /// The flag of the first value that cannot work (zero), if any.
    pub fn zero_flag(&self) -> Option<&'static str> {
        [
            (
                "--tunnel-max-handshakes-per-source",
                self.handshakes_per_source,
            ),
            ("--tunnel-max-handshakes", self.handshakes),
            (
                "--tunnel-max-connections-per-source",
                self.connections_per_source,
            ),
            ("--tunnel-max-connections", self.connections),
            (
                "--tunnel-max-refused-streams",
                self.refused_streams as usize,
            ),
            (
                "--tunnel-handshake-timeout",
                usize::from(!self.handshake_timeout.is_zero()),
            ),
        ]
        .into_iter()
        .find_map(|(flag, v)| (v == 0).then_some(flag))
    }

    /// Caps on handshakes in progress.
    pub fn handshake_caps(&self) -> Caps {
        Caps {
            per_source: self.handshakes_per_source,
            total: self.handshakes,
        }
    }

    /// Caps on connections in any phase.
    pub fn connection_caps(&self) -> Caps {
        Caps {
            per_source: self.connections_per_source,
            total: self.connections,
        }
    }
}

/// Which gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshakes in progress.
    Handshake,
    /// Connections in any phase.
    Connection,
}

/// The refusal code (`trellis_proxy_refusals_total{reason}`) of a cap refusal.
pub fn refusal_code(phase: Phase, refusal: CapRefusal) -> &'static str {
    match (phase, refusal) {
        (Phase::Handshake, CapRefusal::PerSource(_)) => "handshakes_per_source",
        (Phase::Handshake, _) => "handshakes_total",
        (Phase::Connection, CapRefusal::PerSource(_)) => "connections_per_source",
        (Phase::Connection, _) => "connections_total",
    }
}

/// Counts one connection's refused streams in a row.
#[derive(Debug)]
pub struct StreamRefusals {
    /// Refused since the last admitted stream.
    in_a_row: AtomicU32,
    /// How many in a row close the connection.
    limit: u32,
}

impl StreamRefusals {
    /// Closes after `limit` refusals in a row.
    pub fn new(limit: u32) -> Self {
        Self {
            in_a_row: AtomicU32::new(0),
            limit: limit.max(1),
        }
    }

    /// A stream was admitted: the count starts again.
    pub fn admitted(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A stream was refused; true exactly when this refusal reaches the limit (the connection
    /// must be closed).
    pub fn refused(&self) -> bool {
        self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1 == self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_has_its_own_refusal_code() {
        let table = [
            (
                Phase::Handshake,
                CapRefusal::PerSource(1),
                "handshakes_per_source",
            ),
            (Phase::Handshake, CapRefusal::Total(1), "handshakes_total"),
            (
                Phase::Connection,
                CapRefusal::PerSource(1),
                "connections_per_source",
            ),
            (Phase::Connection, CapRefusal::Total(1), "connections_total"),
        ];
        for (phase, refusal, code) in table {
            assert_eq!(refusal_code(phase, refusal), code);
        }
    }

    #[test]
    fn the_limit_is_reached_once_by_refusals_in_a_row_only() {
        let r = StreamRefusals::new(3);
        assert!(!r.refused());
        assert!(!r.refused());
        r.admitted();
        assert!(!r.refused());
        assert!(!r.refused());
        assert!(r.refused(), "third in a row");
        assert!(!r.refused(), "reported once");
    }
}
