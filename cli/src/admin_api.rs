//! The JSON the proxy's admin endpoint serves (`proxy/src/admin.rs`, `proxy/src/records.rs`),
//! as the CLI reads it: `GET /identity` and `GET /handshakes?limit=N`.
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

/// What `trellis inspect -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The proxy's identity; `null` while it has no certificate yet.
    pub identity: Option<Identity>,
    /// Recent connections, oldest first.
    pub handshakes: Vec<Handshake>,
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
