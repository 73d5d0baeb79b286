//! The tunnel between proxies: one mutual-TLS connection (TLS 1.3, ALPN h2) per peer, each
//! application connection an HTTP/2 CONNECT stream naming `ip:port` — HBONE-style.
//!
//! Owns: [`server`] (port 15008: verify the client, authorize, deliver to the app) and [`pool`]
//! (the client side: pooled connections per peer identity, CONNECT streams over them).

pub mod pool;
pub mod server;

use std::net::SocketAddr;

/// Response header carrying the reason a CONNECT was refused.
pub const REASON_HEADER: &str = "x-trellis-reason";

/// Parses a CONNECT authority: exactly `ip:port` (`[v6]:port`), port not 0.
pub fn parse_authority(authority: Option<&http::uri::Authority>) -> Result<SocketAddr, String> {
    let authority = authority.ok_or("CONNECT without an authority")?;
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| format!("authority {:?} is not ip:port", authority.as_str()))?;
    if addr.port() == 0 {
        return Err("authority has port 0".into());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_and_port_authorities_are_accepted() {
        let parse = |s: &str| parse_authority(Some(&s.parse().unwrap()));
        assert_eq!(
            parse("198.18.0.3:8080").unwrap(),
            "198.18.0.3:8080".parse().unwrap()
        );
        assert_eq!(parse("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse("backend:8080").unwrap_err().contains("not ip:port"));
        assert!(parse("198.18.0.3").unwrap_err().contains("not ip:port"));
        assert!(parse("198.18.0.3:0").unwrap_err().contains("port 0"));
        assert!(parse("user@198.18.0.3:80").is_err());
        assert!(parse_authority(None).is_err());
    }
}
