//! The JSON the proxy's admin endpoint serves (`proxy/src/admin.rs`, `proxy/src/records.rs`),
//! as the CLI reads it: `GET /identity` and `GET /handshakes?limit=N` (the connection log and
//! the summary of failed handshakes from outside, `proxy/src/failures.rs`).
//!
//! Owns: those types. Fields the CLI does not know yet are kept in `extra` and printed back by
//! `-o json`, so a newer proxy's output is never silently cut.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /identity`: the proxy's current X509-SVID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The SPIFFE ID the certificate proves.
    pub spiffe_id: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds until `not_after` at the time of the request (0 once expired).
    pub seconds_left: u64,
    /// How many certificates the proxy has had (1 = the first; grows with each renewal).
    #[serde(default)]
    pub generation: u64,
    /// The certificate chain it presents, leaf first, as PEM.
    #[serde(default)]
    pub chain_pem: Vec<String>,
    /// How many roots it trusts.
    #[serde(default)]
    pub trust_bundle_roots: usize,
    /// The roots it checks peers against (older proxies: empty).
    #[serde(default)]
    pub trust_bundle: Vec<TrustedRoot>,
    /// Where those roots came from: `discovery` (the control plane's live bundle) or
    /// `certify` (the last certificate answer; discovery has sent none).
    #[serde(default)]
    pub trust_bundle_source: Option<String>,
    /// Fields this version of the CLI does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One root a proxy trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedRoot {
    /// Its subject (`O=Trellis, CN=...`).
    pub subject: String,
    /// SHA-256 of its DER, lower-case hex (`openssl x509 -fingerprint -sha256`, no colons).
    pub sha256: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// One connection from `GET /handshakes`, accepted or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handshake {
    /// When it was accepted, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// `outbound`, `inbound` or `inbound-plain`.
    pub direction: String,
    /// The other end's address.
    pub peer_addr: String,
    /// The SPIFFE ID the peer proved, if any.
    #[serde(default)]
    pub peer_id: Option<String>,
    /// Where the connection was going.
    #[serde(default)]
    pub dst: Option<String>,
    /// The TLS session it rode on; `None` for plaintext.
    #[serde(default)]
    pub tls: Option<TlsFacts>,
    /// `allow`, `deny` or `would-deny`.
    pub decision: String,
    /// Why, for anything but a plain allow.
    #[serde(default)]
    pub reason: String,
    /// Fields this version of the CLI does not know (byte counters, open flag, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The TLS facts of one connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The negotiated ALPN protocol.
    #[serde(default)]
    pub alpn: Option<String>,
    /// How long the handshake took, in milliseconds (meaningless when `reused`).
    pub handshake_ms: f64,
    /// The connection rode an already-established tunnel: no handshake of its own.
    #[serde(default)]
    pub reused: bool,
    /// Fields this version of the CLI does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `GET /handshakes`: the connection log and the failed handshakes from outside; a proxy
/// older than that summary served the bare list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum HandshakesPage {
    /// `{"connections": [...], "failed_handshakes": {...}}`.
    Page {
        /// Recent connections, oldest first.
        connections: Vec<Handshake>,
        /// The summary of failed handshakes.
        #[serde(default)]
        failed_handshakes: Option<FailedHandshakes>,
    },
    /// `[...]`: the connections only.
    List(Vec<Handshake>),
}

impl HandshakesPage {
    /// The connections and the summary (none from an older proxy).
    pub fn into_parts(self) -> (Vec<Handshake>, Option<FailedHandshakes>) {
        match self {
            HandshakesPage::Page {
                connections,
                failed_handshakes,
            } => (connections, failed_handshakes),
            HandshakesPage::List(connections) => (connections, None),
        }
    }
}

/// Failed handshakes from outside (refused on the tunnel port before the peer proved an
/// identity), summed per source address and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedHandshakes {
    /// How far back the counts go.
    pub window_seconds: u64,
    /// Failures in the window.
    pub total: u64,
    /// (source, reason) pairs in the window.
    #[serde(default)]
    pub sources: u64,
    /// The pairs with the most failures.
    #[serde(default)]
    pub top: Vec<FailedSource>,
    /// Fields this version of the CLI does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One source's failures for one reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedSource {
    /// The source address.
    pub source: String,
    /// The refusal's reason code.
    pub reason: String,
    /// How many in the window.
    pub count: u64,
    /// The latest one, RFC 3339.
    #[serde(default)]
    pub last: String,
    /// What the latest one said.
    #[serde(default)]
    pub detail: String,
    /// Fields this version of the CLI does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// What `trellis inspect -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The proxy's identity; `null` while it has no certificate yet.
    pub identity: Option<Identity>,
    /// Recent connections, oldest first.
    pub handshakes: Vec<Handshake>,
    /// Failed handshakes from outside, when the proxy summarises them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_handshakes: Option<FailedHandshakes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `proxy/src/admin.rs` serves today.
    const IDENTITY_JSON: &str = r#"{
      "spiffe_id": "spiffe://cluster.local/ns/shop/sa/frontend",
      "serial": "4f1c2a",
      "not_before": "2025-01-01T10:00:00Z",
      "not_after": "2025-01-02T10:00:00Z",
      "seconds_left": 86100,
      "generation": 1,
      "chain_pem": ["-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"],
      "trust_bundle_roots": 1,
      "trust_bundle_source": "discovery",
      "trust_bundle": [{"subject": "O=Trellis, CN=Trellis root CA for cluster.local 1a2b3c4d",
                        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                        "not_after": "2035-01-01T10:00:00Z"}]
    }"#;

    #[test]
    fn the_proxy_identity_parses() {
        let id: Identity = serde_json::from_str(IDENTITY_JSON).unwrap();
        assert_eq!(id.spiffe_id, "spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(id.chain_pem.len(), 1);
        assert_eq!(id.trust_bundle.len(), 1);
        assert_eq!(id.trust_bundle_source.as_deref(), Some("discovery"));
        assert!(id.extra.is_empty());
    }

    #[test]
    fn handshakes_parse_as_a_page_with_failures_or_as_an_older_proxys_list() {
        let row = r#"{"time":"2025-01-01T10:00:00.000Z","direction":"inbound",
          "peer_addr":"198.18.0.1:4000","decision":"allow"}"#;
        let page = format!(
            r#"{{"connections":[{row}],"failed_handshakes":{{"window_seconds":600,"total":3,
              "sources":1,"dropped":0,"top":[{{"source":"198.18.0.9","reason":"tls_handshake",
              "count":3,"first":"","last":"","detail":"bad"}}]}}}}"#
        );
        let (rows, failed) = serde_json::from_str::<HandshakesPage>(&page)
            .unwrap()
            .into_parts();
        assert_eq!(rows.len(), 1);
        let failed = failed.unwrap();
        assert_eq!((failed.total, failed.top[0].count), (3, 3));
        let (rows, failed) = serde_json::from_str::<HandshakesPage>(&format!("[{row}]"))
            .unwrap()
            .into_parts();
        assert_eq!((rows.len(), failed), (1, None));
    }

    #[test]
    fn unknown_fields_are_kept_for_json_output() {
        let json = r#"{"time":"2025-01-01T10:00:00.000Z","direction":"inbound",
          "peer_addr":"10.0.0.1:4000","peer_id":null,"dst":null,"tls":null,
          "decision":"allow","reason":"","bytes_sent":7,"open":true}"#;
        let h: Handshake = serde_json::from_str(json).unwrap();
        assert_eq!(h.extra["bytes_sent"], 7);
        let back = serde_json::to_value(&h).unwrap();
        assert_eq!(back["bytes_sent"], 7);
        assert_eq!(back["open"], true);
    }
}
