//! Binding a listening socket with an accept queue deep enough for a burst: when every pod of a
//! node (or 2,000 proxies of a cluster) restarts at once, their SYNs arrive together, and a
//! connection that finds the accept queue full is dropped and retried by the client's TCP
//! after 1 s, then 3 s, 7 s... — seconds lost before the server ever sees it. Tokio's
//! `TcpListener::bind` asks for 1,024 (the standard library for 128); Go's servers (the
//! Kubernetes API server, istiod) ask for the system's maximum.
//!
//! Owns: [`bind`] and [`BACKLOG`]. The kernel caps the backlog at `net.core.somaxconn`
//! (4,096 by default since Linux 5.4).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for: a 2,000-proxy restart storm's SYNs twice over.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and listens with
/// [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// More than the 1,024 `TcpListener::bind` would queue.
    const BURST: usize = 1_500;

    #[tokio::test]
    async fn a_burst_of_connections_is_queued_while_nobody_accepts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::with_capacity(BURST);
        for i in 0..BURST {
            // A connection the queue cannot take waits for a SYN retransmission (1 s or more).
            let tcp = tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| panic!("connection {i} was not queued"))
                .unwrap();
            held.push(tcp);
        }
        let (_, from) = listener.accept().await.unwrap();
        assert!(from.ip().is_loopback());
    }
}
