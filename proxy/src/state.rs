//! What the proxy knows about the mesh: which addresses are meshed workloads (with their
//! identity and tunnel endpoint). Swapped whole through a `watch` channel, so listeners always
//! read one consistent snapshot and updates never touch open connections.
//!
//! Owns: [`MeshState`] and address lookup. Filled from static flags today; the discovery stream
//! replaces the snapshot when it arrives.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use trellis_ca::SpiffeId;

use crate::config::{MtlsMode, StaticWorkload, WorkloadAddr};
use crate::policy::InboundPolicy;

/// A meshed destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The identity it must present.
    pub id: SpiffeId,
    /// Its tunnel endpoint.
    pub tunnel: SocketAddr,
}

/// One snapshot of the mesh.
#[derive(Debug, Default, Clone)]
pub struct MeshState {
    /// Workloads reachable only on one port (explicit mode on a shared loopback IP).
    by_socket: HashMap<SocketAddr, Peer>,
    /// Workloads reachable on every port of an IP (a pod).
    by_ip: HashMap<IpAddr, Peer>,
    /// The inbound policy of our own workload.
    pub policy: InboundPolicy,
    /// STRICT/PERMISSIVE as the control plane says; `None` until it does (the flag applies).
    pub mtls_mode: Option<MtlsMode>,
    /// Version of the control plane's snapshot (0: static configuration).
    pub version: u64,
}

impl MeshState {
    /// A snapshot of statically configured workloads.
    pub fn from_static(workloads: &[StaticWorkload]) -> Self {
        let mut state = Self::default();
        for w in workloads {
            let peer = Peer {
                id: w.id.clone(),
                tunnel: w.tunnel,
            };
            state.insert(w.addr, peer);
        }
        state
    }

    /// Adds a workload reachable at `addr`.
    pub fn insert(&mut self, addr: WorkloadAddr, peer: Peer) {
        match addr {
            WorkloadAddr::Ip(ip) => self.by_ip.insert(ip, peer),
            WorkloadAddr::Socket(s) => self.by_socket.insert(s, peer),
        };
    }

    /// The meshed workload at `dst`, if any (an exact IP:port entry wins over an IP entry).
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Peer> {
        self.by_socket
            .get(&dst)
            .or_else(|| self.by_ip.get(&dst.ip()))
    }

    /// Number of known workloads.
    pub fn len(&self) -> usize {
        self.by_socket.len() + self.by_ip.len()
    }

    /// Whether no workload is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Readers of the current snapshot.
pub type StateWatch = watch::Receiver<Arc<MeshState>>;
