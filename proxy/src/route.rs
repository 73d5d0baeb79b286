//! The outbound routing decision, as a pure function: given an original destination and the
//! mesh snapshot, tunnel to a peer, pass through in plain TCP, or refuse.

use std::net::SocketAddr;

use crate::config::Unmeshed;
use crate::state::{MeshState, Peer};

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the tunnel to `peer`, asking it for `target`.
    Tunnel {
        /// The meshed workload.
        peer: Peer,
        /// The address named in the CONNECT authority.
        target: SocketAddr,
    },
    /// Directly, in plain TCP.
    Passthrough(SocketAddr),
    /// Nowhere.
    Refuse(&'static str),
}

/// Decides the route for `dst`. `own` lists the proxy's own listener addresses: a connection
/// that would loop back into the proxy is refused.
pub fn route(dst: SocketAddr, state: &MeshState, own: &[SocketAddr], unmeshed: Unmeshed) -> Route {
    let loops = own
        .iter()
        .any(|o| o.port() == dst.port() && (o.ip() == dst.ip() || o.ip().is_unspecified()));
    if loops {
        return Route::Refuse("destination is the proxy itself");
    }
    match state.lookup(dst) {
        Some(peer) => Route::Tunnel {
            peer: peer.clone(),
            target: dst,
        },
        None => match unmeshed {
            Unmeshed::Allow => Route::Passthrough(dst),
            Unmeshed::Deny => Route::Refuse("destination is not in the mesh"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticWorkload;

    fn state() -> MeshState {
        let ws: Vec<StaticWorkload> = [
            "198.18.0.3=spiffe://cluster.local/ns/shop/sa/backend",
            "127.0.0.1:8081=spiffe://cluster.local/ns/shop/sa/local@127.0.0.1:25008",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        MeshState::from_static(&ws)
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routing_table() {
        let own = [a("0.0.0.0:15001"), a("0.0.0.0:15006"), a("127.0.0.1:15000")];
        let st = state();
        let cases: &[(&str, Unmeshed, &str)] = &[
            (
                "198.18.0.3:8080",
                Unmeshed::Allow,
                "tunnel backend 198.18.0.3:15008",
            ),
            (
                "198.18.0.3:9999",
                Unmeshed::Deny,
                "tunnel backend 198.18.0.3:15008",
            ),
            (
                "127.0.0.1:8081",
                Unmeshed::Deny,
                "tunnel local 127.0.0.1:25008",
            ),
            ("127.0.0.1:8082", Unmeshed::Allow, "passthrough"),
            ("198.18.0.9:80", Unmeshed::Allow, "passthrough"),
            (
                "198.18.0.9:80",
                Unmeshed::Deny,
                "refuse: destination is not in the mesh",
            ),
            (
                "198.18.0.2:15001",
                Unmeshed::Allow,
                "refuse: destination is the proxy itself",
            ),
            (
                "127.0.0.1:15000",
                Unmeshed::Allow,
                "refuse: destination is the proxy itself",
            ),
        ];
        for (dst, unmeshed, want) in cases {
            let got = match route(a(dst), &st, &own, *unmeshed) {
                Route::Tunnel { peer, target } => {
                    assert_eq!(target, a(dst));
                    format!(
                        "tunnel {} {}",
                        peer.id.service_account().unwrap(),
                        peer.tunnel
                    )
                }
                Route::Passthrough(d) => {
                    assert_eq!(d, a(dst));
                    "passthrough".into()
                }
                Route::Refuse(r) => format!("refuse: {r}"),
            };
            assert_eq!(&got, want, "{dst} {unmeshed:?}");
        }
    }
}
