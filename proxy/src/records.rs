//! The connection log behind `/handshakes`: the last N connections, accepted or refused, with
//! their TLS facts and the decision. Byte counters are live (updated as data flows).
//!
//! Owns: [`ConnRecord`], [`TlsFacts`] and the bounded ring [`HandshakeLog`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde::ser::SerializeStruct;

/// Which way a connection went through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From our app to a peer (through the tunnel or passthrough).
    Outbound,
    /// From a peer's proxy to our app, through the tunnel.
    Inbound,
    /// Plaintext that arrived at an application port directly.
    InboundPlain,
}

impl Direction {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::InboundPlain => "inbound-plain",
        }
    }
}

/// Facts about the TLS session a connection rode on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsFacts {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// Negotiated ALPN.
    pub alpn: Option<String>,
    /// How long the handshake took, in milliseconds.
    pub handshake_ms: f64,
    /// Whether this connection reused an already-established tunnel (no new handshake).
    pub reused: bool,
}

impl TlsFacts {
    /// Reads the facts off a finished handshake.
    pub fn from_conn(conn: &rustls::CommonState, started: Instant) -> Self {
        Self {
            version: conn
                .protocol_version()
                .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
            cipher: conn
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite())),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            handshake_ms: started.elapsed().as_secs_f64() * 1000.0,
            reused: false,
        }
    }
}

/// One connection.
#[derive(Debug)]
pub struct ConnRecord {
    /// When it was accepted.
    pub time: SystemTime,
    /// Which way.
    pub direction: Direction,
    /// The other end's address (for inbound: the peer proxy or plaintext client).
    pub peer_addr: SocketAddr,
    /// The peer's SPIFFE ID, if it proved one.
    pub peer_id: Option<String>,
    /// Where the connection was going (original destination or CONNECT target).
    pub dst: Option<SocketAddr>,
    /// TLS facts; `None` for plaintext.
    pub tls: Option<TlsFacts>,
    /// `allow`, `deny` or `would-deny`.
    pub decision: &'static str,
    /// Why, for anything but a plain allow.
    pub reason: String,
    /// Bytes from the peer towards the app (inbound) or from the app towards the peer (outbound).
    pub bytes_sent: AtomicU64,
    /// Bytes the other way.
    pub bytes_received: AtomicU64,
    /// Whether the connection is still open.
    pub open: AtomicBool,
    /// When it was accepted, on the monotonic clock (its duration when it closes).
    pub started: Instant,
    /// `bytes_sent` already added to the metrics.
    pub reported_sent: AtomicU64,
    /// `bytes_received` already added to the metrics.
    pub reported_received: AtomicU64,
}

impl ConnRecord {
    /// A record for a connection being accepted or refused now.
    pub fn new(
        direction: Direction,
        peer_addr: SocketAddr,
        peer_id: Option<String>,
        dst: Option<SocketAddr>,
        tls: Option<TlsFacts>,
        decision: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            time: SystemTime::now(),
            direction,
            peer_addr,
            peer_id,
            dst,
            tls,
            decision,
            reason: reason.into(),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            open: AtomicBool::new(decision != "deny"),
            started: Instant::now(),
            reported_sent: AtomicU64::new(0),
            reported_received: AtomicU64::new(0),
        }
    }

    /// Marks the connection closed.
    pub fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
    }
}

impl Serialize for ConnRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ConnRecord", 11)?;
        st.serialize_field(
            "time",
            &humantime::format_rfc3339_millis(self.time).to_string(),
        )?;
        st.serialize_field("direction", &self.direction)?;
        st.serialize_field("peer_addr", &self.peer_addr)?;
        st.serialize_field("peer_id", &self.peer_id)?;
        st.serialize_field("dst", &self.dst)?;
        st.serialize_field("tls", &self.tls)?;
        st.serialize_field("decision", self.decision)?;
        st.serialize_field("reason", &self.reason)?;
        st.serialize_field("bytes_sent", &self.bytes_sent.load(Ordering::Relaxed))?;
        st.serialize_field(
            "bytes_received",
            &self.bytes_received.load(Ordering::Relaxed),
        )?;
        st.serialize_field("open", &self.open.load(Ordering::Relaxed))?;
        st.end()
    }
}

/// The last `capacity` connections, newest last.
#[derive(Debug)]
pub struct HandshakeLog {
    /// Most records kept.
    capacity: usize,
    /// The ring.
    entries: Mutex<VecDeque<Arc<ConnRecord>>>,
}

impl HandshakeLog {
    /// An empty log keeping `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 4096))),
        }
    }

    /// Adds a record, dropping the oldest when full; returns it for live updates.
    pub fn push(&self, record: ConnRecord) -> Arc<ConnRecord> {
        let record = Arc::new(record);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(record.clone());
        record
    }

    /// The newest `limit` records, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<ConnRecord>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = entries.len().saturating_sub(limit);
        entries.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_only_the_newest_records() {
        let log = HandshakeLog::new(2);
        for port in [1u16, 2, 3] {
            log.push(ConnRecord::new(
                Direction::Inbound,
                SocketAddr::from(([127, 0, 0, 1], port)),
                None,
                None,
                None,
                "allow",
                "",
            ));
        }
        let ports: Vec<u16> = log.recent(10).iter().map(|r| r.peer_addr.port()).collect();
        assert_eq!(ports, [2, 3]);
        assert_eq!(log.recent(1)[0].peer_addr.port(), 3);
    }

    #[test]
    fn records_serialize_with_live_byte_counts() {
        let log = HandshakeLog::new(4);
        let r = log.push(ConnRecord::new(
            Direction::Outbound,
            SocketAddr::from(([198, 18, 0, 3], 15008)),
            Some("spiffe://cluster.local/ns/a/sa/b".into()),
            Some(SocketAddr::from(([198, 18, 0, 3], 8080))),
            None,
            "allow",
            "",
        ));
        r.bytes_sent.fetch_add(42, Ordering::Relaxed);
        r.close();
        let json = serde_json::to_value(&*log.recent(1)[0]).unwrap();
        assert_eq!(json["bytes_sent"], 42);
        assert_eq!(json["open"], false);
        assert_eq!(json["direction"], "outbound");
        assert_eq!(json["peer_id"], "spiffe://cluster.local/ns/a/sa/b");
    }
}
