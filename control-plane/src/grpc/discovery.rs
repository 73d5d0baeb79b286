//! `trellis.discovery.v1.Discovery/Watch`: for the calling proxy — identified by its client
//! certificate, never by the request — a full snapshot now and after every change.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span};
use trellis_proto::discovery::discovery_server::Discovery;
use trellis_proto::discovery::{
    Endpoint, MeshSnapshot, MtlsMode as PbMtls, PolicyMode as PbMode, PolicyRule, WatchRequest,
};

use crate::mesh::crd::PolicyMode;
use crate::mesh::{MeshModel, MtlsMode, Snapshot};
use crate::tls_listener::PeerInfo;

/// The discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    /// The current model.
    model: watch::Receiver<Arc<MeshModel>>,
    /// Ends every stream on shutdown.
    shutdown: CancellationToken,
}

impl DiscoveryService {
    /// A service publishing snapshots of `model`.
    pub fn new(model: watch::Receiver<Arc<MeshModel>>, shutdown: CancellationToken) -> Self {
        Self { model, shutdown }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = ReceiverStream<Result<MeshSnapshot, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection information missing"))?;
        let caller = peer.id.clone().ok_or_else(|| {
            Status::unauthenticated("Watch needs a client certificate (the proxy's SVID)")
        })?;
        let node = request.into_inner().node;
        let (tx, rx) = mpsc::channel(4);
        let mut model = self.model.clone();
        let shutdown = self.shutdown.clone();
        let span = info_span!("watch", peer.id = %caller, peer.addr = %peer.remote, node = %node);
        tokio::spawn(
            async move {
                let mut last: Option<Snapshot> = None;
                loop {
                    let snapshot = model
                        .borrow_and_update()
                        .snapshot_for(&caller, Some(peer.remote.ip()));
                    if last.as_ref() != Some(&snapshot) {
                        debug!(
                            version = snapshot.version,
                            rules = snapshot.rules.len(),
                            "sending snapshot"
                        );
                        if tx.send(Ok(to_proto(&snapshot))).await.is_err() {
                            return; // the proxy went away
                        }
                        last = Some(snapshot);
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tx.closed() => return,
                        changed = model.changed() => if changed.is_err() { return },
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn to_proto(s: &Snapshot) -> MeshSnapshot {
    MeshSnapshot {
        version: s.version,
        endpoints: s
            .endpoints
            .iter()
            .map(|e| Endpoint {
                ip: e.ip.to_string(),
                port: u32::from(e.port),
                spiffe_id: e.id.to_string(),
                tunnel: e.tunnel.to_string(),
            })
            .collect(),
        rules: s
            .rules
            .iter()
            .map(|r| PolicyRule {
                name: r.name.clone(),
                ports: r.ports.iter().map(|p| u32::from(*p)).collect(),
                allow: r.allow.clone(),
                mode: match r.mode {
                    PolicyMode::Enforce => PbMode::Enforce,
                    PolicyMode::Audit => PbMode::Audit,
                } as i32,
            })
            .collect(),
        mtls_mode: match s.mtls {
            MtlsMode::Strict => PbMtls::Strict,
            MtlsMode::Permissive => PbMtls::Permissive,
        } as i32,
    }
}
