//! The tunnel between proxies: one mutual-TLS connection (TLS 1.3, ALPN h2) per peer, each
//! application connection an HTTP/2 CONNECT stream naming `ip:port` — HBONE-style.
//!
//! Owns: [`server`] (port 15008: verify the client, authorize, deliver to the app), [`admit`]
//! (the pure CONNECT admission decision the server asks), [`limits`] (the caps on handshakes,
//! connections and refused streams per source and in total), [`pool`]
//! (the client side: pooled connections per peer identity, CONNECT streams over them),
//! [`stream`] (a CONNECT stream as bytes), [`send_arena`] (the memory of the bytes it sends),
//! [`read_ahead`] (large socket reads under rustls), and
//! the HTTP/2 settings both sides share.

pub mod admit;
pub mod limits;
pub mod pool;
pub mod read_ahead;
pub mod send_arena;
pub mod server;
pub mod stream;

use std::net::SocketAddr;
use std::time::Duration;

/// Flow-control window of one stream: also the most a receiving proxy buffers for a stream
/// whose app reads slowly. 2 MiB carries ~2 GB/s at 1 ms round trip; on loopback (bench/) it
/// keeps ~1.4× HAProxy's single-stream throughput with a peak RSS of ~12 MiB, where 4 MiB
/// windows gave ~1.6× but ~14.6 MiB and 1 MiB windows ~1.1× at ~11 MiB.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Flow-control window of a whole tunnel connection (four streams at full speed).
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest DATA frame we accept (HTTP/2 allows 16 KiB to 16 MiB): 64 KiB frames let a bulk
/// transfer go out in 64 KiB socket writes (four TLS records each) instead of 16 KiB ones.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Encrypted bytes rustls may hold for the socket (its default: 64 KiB). A 64 KiB DATA frame and
/// its header need more than 64 KiB once encrypted, so with the default every frame went out in
/// two `writev`s; with room for four frames, one (bench/: tunnel writes 31 → 54 KB on average,
/// 40 % fewer, CPU per GB −3.5 %, upload +7 %). Only a peer that does not read keeps it full.
pub const TLS_SEND_BUFFER: usize = 256 * 1024;
// A full DATA frame and its header, encrypted (16 KiB records, 22 bytes of overhead each), fit.
const _: () = assert!(TLS_SEND_BUFFER >= MAX_FRAME_SIZE as usize + 9 + 22 * 5);
/// Largest header block we accept: a CONNECT needs a few hundred bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Idle time after which a tunnel connection is probed with a PING.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time the peer has to answer the PING before the connection is given up.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pings the peer every [`KEEPALIVE_INTERVAL`]; returns when a PING went unanswered for
/// [`KEEPALIVE_TIMEOUT`] (or could not be sent). The connection must be polled meanwhile.
pub(crate) async fn keepalive(mut pings: h2::PingPong) {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            _ => return,
        }
    }
}

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
