//! What the proxy knows about the mesh: which addresses are meshed workloads (with their
//! identity and tunnel endpoint), which ClusterIP:ports are Services (and their endpoints), the
//! inbound policy of our own workload, and the roots the mesh trusts. Swapped whole through a
//! `watch` channel, so listeners always read one consistent snapshot and updates never touch
//! open connections; consecutive snapshots share their workload entries (`Arc`).
//!
//! Owns: [`MeshState`], address and Service lookup, and the edits discovery applies to a copy
//! (upsert and remove by key). Static flags fill it before discovery does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use trellis_ca::{SpiffeId, TrustBundle};

use crate::config::{MtlsMode, StaticWorkload, WorkloadAddr};
use crate::policy::InboundPolicy;
use crate::route::ServiceRoute;
use crate::services::ServiceEntry;

/// A meshed destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The identity it must present; shared by every workload with that identity
    /// ([`Identities`]).
    pub id: Arc<SpiffeId>,
    /// Its tunnel endpoint.
    pub tunnel: SocketAddr,
}

/// The SPIFFE IDs discovery handed out, one `Arc` per distinct ID: the pods of a
/// ServiceAccount share theirs. Kept across updates, as [`crate::services::Loads`] is.
#[derive(Debug, Default)]
pub struct Identities {
    /// IDs by their text.
    by_text: HashMap<String, Arc<SpiffeId>>,
}

impl Identities {
    /// The ID `text` names, shared with every holder of the same text; `None` when it is not
    /// a valid SPIFFE ID.
    pub fn of(&mut self, text: &str) -> Option<Arc<SpiffeId>> {
        if let Some(id) = self.by_text.get(text) {
            return Some(id.clone());
        }
        let id = Arc::new(SpiffeId::parse(text).ok()?);
        self.by_text.insert(text.to_owned(), id.clone());
        Some(id)
    }

    /// Forgets IDs no workload holds any more.
    pub fn prune(&mut self) {
        self.by_text.retain(|_, id| Arc::strong_count(id) > 1);
    }

    /// Distinct IDs held.
    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }
}

/// Where the control plane's state comes from, for acknowledgements and resuming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Version {
    /// The control plane's epoch (0: nothing from a control plane yet).
    pub epoch: u64,
    /// The version within the epoch.
    pub version: u64,
}

/// One snapshot of the mesh.
#[derive(Debug, Default, Clone)]
pub struct MeshState {
    /// Workloads reachable only on one port (explicit mode on a shared loopback IP).
    /// Shared with the snapshots before and after it: applying an update copies the maps'
    /// pointers, not every workload's identity strings (at 10,000 workloads, copying them was
    /// most of a proxy's CPU per update and doubled its memory while an update applied).
    by_socket: HashMap<SocketAddr, Arc<Peer>>,
    /// Workloads reachable on every port of an IP (a pod); shared as `by_socket`.
    by_ip: HashMap<IpAddr, Arc<Peer>>,
    /// Services by `namespace/name`.
    services: HashMap<String, Arc<ServiceEntry>>,
    /// ClusterIP:port → (Service, index of the port in it).
    vips: HashMap<SocketAddr, (Arc<ServiceEntry>, usize)>,
    /// The inbound policy of our own workload.
    pub policy: InboundPolicy,
    /// STRICT/PERMISSIVE as the control plane says; `None` until it does (the flag applies).
    pub mtls_mode: Option<MtlsMode>,
    /// The roots the mesh trusts, as discovery last sent them (`None`: not sent yet). A new
    /// `Arc` only when they changed.
    pub trust_bundle: Option<Arc<TrustBundle>>,
    /// Which control plane state this is (0/0: static configuration).
    pub version: Version,
}

impl MeshState {
    /// A snapshot of statically configured workloads.
    pub fn from_static(workloads: &[StaticWorkload]) -> Self {
        let mut state = Self::default();
        for w in workloads {
            let peer = Peer {
                id: Arc::new(w.id.clone()),
                tunnel: w.tunnel,
            };
            state.insert(w.addr, peer);
        }
        state
    }

    /// Adds (or replaces) a workload reachable at `addr`.
    pub fn insert(&mut self, addr: WorkloadAddr, peer: Peer) {
        let peer = Arc::new(peer);
        match addr {
            WorkloadAddr::Ip(ip) => self.by_ip.insert(ip, peer),
            WorkloadAddr::Socket(s) => self.by_socket.insert(s, peer),
        };
    }

    /// Removes the workload at `addr`.
    pub fn remove(&mut self, addr: WorkloadAddr) {
        match addr {
            WorkloadAddr::Ip(ip) => self.by_ip.remove(&ip),
            WorkloadAddr::Socket(s) => self.by_socket.remove(&s),
        };
    }

    /// Adds (or replaces) a Service.
    pub fn insert_service(&mut self, service: ServiceEntry) {
        self.remove_service(&service.name.clone());
        let service = Arc::new(service);
        for ip in &service.addresses {
            for (i, p) in service.ports.iter().enumerate() {
                self.vips
                    .insert(SocketAddr::new(*ip, p.port), (service.clone(), i));
            }
        }
        self.services.insert(service.name.clone(), service);
    }

    /// Removes the Service `name`.
    pub fn remove_service(&mut self, name: &str) {
        if let Some(old) = self.services.remove(name) {
            for ip in &old.addresses {
                for p in &old.ports {
                    let vip = SocketAddr::new(*ip, p.port);
                    // Only if it is still this Service's (another may have taken the address).
                    if self
                        .vips
                        .get(&vip)
                        .is_some_and(|(s, _)| Arc::ptr_eq(s, &old))
                    {
                        self.vips.remove(&vip);
                    }
                }
            }
        }
    }

    /// This state without its workloads and Services (a full update follows): the rest
    /// copied, the mesh not — copying it only to clear it doubled the proxy's peak memory
    /// while a full state applied.
    pub fn without_mesh(&self) -> MeshState {
        MeshState {
            policy: self.policy.clone(),
            mtls_mode: self.mtls_mode,
            trust_bundle: self.trust_bundle.clone(),
            version: self.version,
            ..MeshState::default()
        }
    }

    /// The meshed workload at `dst`, if any (an exact IP:port entry wins over an IP entry).
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Peer> {
        self.by_socket
            .get(&dst)
            .or_else(|| self.by_ip.get(&dst.ip()))
            .map(Arc::as_ref)
    }

    /// The Service port `dst` is a ClusterIP:port of, if any.
    pub fn service_at(&self, dst: SocketAddr) -> Option<ServiceRoute> {
        let (service, index) = self.vips.get(&dst)?;
        Some(ServiceRoute {
            service: service.clone(),
            index: *index,
        })
    }

    /// The Services, for `/config_dump`.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values().map(AsRef::as_ref)
    }

    /// Number of known workloads.
    pub fn len(&self) -> usize {
        self.by_socket.len() + self.by_ip.len()
    }

    /// Whether no workload is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of known Services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// Readers of the current snapshot.
pub type StateWatch = watch::Receiver<Arc<MeshState>>;
