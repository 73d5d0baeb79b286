//! The outbound routing decision, as a pure function: given an original destination and the
//! mesh snapshot, tunnel to a peer, balance over a Service's endpoints, pass through in plain
//! TCP, or refuse.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Unmeshed;
use crate::services::{ServiceEntry, ServicePort};
use crate::state::{MeshState, Peer};

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// Through the tunnel to `peer`, asking it for `target`.
    Tunnel {
        /// The meshed workload.
        peer: Peer,
        /// The address named in the CONNECT authority.
        target: SocketAddr,
    },
    /// To one endpoint of a Service, chosen per connection by [`crate::balance::pick`]; each
    /// endpoint goes through the tunnel when meshed, in plain TCP to its pod IP otherwise.
    Service(ServiceRoute),
    /// Directly, in plain TCP.
    Passthrough(SocketAddr),
    /// Nowhere.
    Refuse(&'static str),
}

/// A Service port a connection was addressed to.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// The Service.
    pub service: Arc<ServiceEntry>,
    /// Which of its ports.
    pub index: usize,
}

impl ServiceRoute {
    /// The port and its endpoints.
    pub fn port(&self) -> &ServicePort {
        // `index` comes from the state that indexed this Service's own ports.
        &self.service.ports[self.index]
    }

    /// `namespace/name:port`, for records.
    pub fn name(&self) -> String {
        format!("{}:{}", self.service.name, self.port().port)
    }
}

/// Decides the route for `dst`. `own` lists the proxy's own listener addresses: a connection
/// that would loop back into the proxy is refused.
///
/// A ClusterIP:port of a Service with at least one meshed endpoint is balanced by this proxy
/// (kube-proxy never sees it); a Service none of whose endpoints is meshed is left to
/// kube-proxy (passthrough to the ClusterIP), like any destination outside the mesh.
pub fn route(dst: SocketAddr, state: &MeshState, own: &[SocketAddr], unmeshed: Unmeshed) -> Route {
    let loops = own
        .iter()
        .any(|o| o.port() == dst.port() && (o.ip() == dst.ip() || o.ip().is_unspecified()));
    if loops {
        return Route::Refuse("destination is the proxy itself");
    }
    if let Some(service) = state.service_at(dst) {
        let endpoints = &service.port().endpoints;
        if endpoints.is_empty() || endpoints.iter().any(|e| state.lookup(e.addr).is_some()) {
            return Route::Service(service);
        }
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
#[path = "route_tests.rs"]
mod tests;
