//! The proxy's well-known ports (docs/design.md "Ports and names"), in one place.

/// Admin endpoint, 127.0.0.1 only.
pub const ADMIN: u16 = 15000;
/// Outbound listener (iptables target for the app's outbound TCP).
pub const OUTBOUND: u16 = 15001;
/// Inbound plaintext listener (iptables target for TCP to app ports).
pub const INBOUND: u16 = 15006;
/// Tunnel: mTLS + HTTP/2 CONNECT.
pub const TUNNEL: u16 = 15008;
/// Health and metrics on the pod IP.
pub const HEALTH: u16 = 15020;

/// Every port of the proxy itself: never a valid CONNECT target.
pub const PROXY_PORTS: [u16; 5] = [ADMIN, OUTBOUND, INBOUND, TUNNEL, HEALTH];
