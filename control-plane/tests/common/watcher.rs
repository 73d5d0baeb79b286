//! A watcher of the discovery stream, as a test sees it: it mirrors the state the way a proxy
//! must (full updates replace, deltas apply only on the version held, split updates apply
//! whole) and acknowledges every version — independently of the proxy's own code.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use trellis_ca::Svid;
use trellis_client::IdentityClient;
use trellis_control_plane::config::Config;
use trellis_control_plane::server::Running;
use trellis_proto::discovery::discovery_client::DiscoveryClient;
use trellis_proto::discovery::{MeshUpdate, Service, WatchRequest};

use super::within;

/// What a proxy holds, mirrored from the updates.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mirror {
    pub epoch: u64,
    pub version: u64,
    /// (ip bytes, port) → SPIFFE ID.
    pub workloads: BTreeMap<(Vec<u8>, u32), String>,
    pub services: BTreeMap<String, Service>,
    pub rules: Option<usize>,
    pub roots: Option<usize>,
}

impl Mirror {
    pub fn apply(&mut self, u: &MeshUpdate) -> Result<(), String> {
        if u.full {
            self.workloads.clear();
            self.services.clear();
        } else if (u.epoch, u.base_version) != (self.epoch, self.version) {
            return Err(format!(
                "update on {}/{} but holding {}/{}",
                u.epoch, u.base_version, self.epoch, self.version
            ));
        }
        for r in &u.removed_workloads {
            self.workloads.remove(&(r.ip.clone(), r.port));
        }
        for w in &u.workloads {
            self.workloads
                .insert((w.ip.clone(), w.port), w.spiffe_id.clone());
        }
        for name in &u.removed_services {
            self.services.remove(name);
        }
        for s in &u.services {
            self.services.insert(s.name.clone(), s.clone());
        }
        if let Some(i) = &u.inbound {
            self.rules = Some(i.rules.len());
        }
        if let Some(b) = &u.trust_bundle {
            self.roots = Some(b.roots_pem.len());
        }
        (self.epoch, self.version) = (u.epoch, u.version);
        Ok(())
    }

    pub fn ips(&self) -> Vec<String> {
        self.workloads
            .keys()
            .map(|(ip, _)| {
                let o: [u8; 4] = ip.as_slice().try_into().unwrap();
                std::net::Ipv4Addr::from(o).to_string()
            })
            .collect()
    }
}

/// A watcher with a real SVID.
pub struct Watcher {
    requests: mpsc::Sender<WatchRequest>,
    stream: Streaming<MeshUpdate>,
    /// What it holds.
    pub mirror: Mirror,
    /// Messages received.
    pub messages: usize,
}

/// An SVID for `identity` from `running`, authenticated with `token`.
pub async fn certified(running: &Running, config: &Config, token: &str, identity: &str) -> Svid {
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let mut client = IdentityClient::new(super::channel(running, config).await);
    within(
        "certify",
        client.certify(&key, Some(&super::id(identity)), token, None),
    )
    .await
    .expect("the token is accepted")
}

impl Watcher {
    /// Opens a stream holding `mirror` (its epoch and version go in the first request).
    pub async fn open(running: &Running, config: &Config, svid: &Svid, mirror: Mirror) -> Watcher {
        let channel = within(
            "connect with an SVID",
            trellis_client::connect(
                &running.grpc_addr.to_string(),
                running.bundle.clone(),
                Some(config.own_id.clone()),
                Some(svid),
            ),
        )
        .await
        .unwrap();
        let (requests, rx) = mpsc::channel(64);
        requests
            .send(WatchRequest {
                node: "test-pod".into(),
                proxy_version: "test".into(),
                epoch: mirror.epoch,
                version: mirror.version,
                error: String::new(),
            })
            .await
            .unwrap();
        let stream = within(
            "Watch",
            DiscoveryClient::new(channel).watch(ReceiverStream::new(rx)),
        )
        .await
        .expect("Watch is accepted")
        .into_inner();
        Watcher {
            requests,
            stream,
            mirror,
            messages: 0,
        }
    }

    /// Reads one whole update, applies it, acknowledges it; returns its first message.
    pub async fn next(&mut self) -> MeshUpdate {
        let mut whole: Option<MeshUpdate> = None;
        loop {
            let m = within("an update", self.stream.message())
                .await
                .expect("the stream is healthy")
                .expect("the stream stays open");
            self.messages += 1;
            let more = m.more;
            match &mut whole {
                None => whole = Some(m),
                Some(w) => {
                    w.workloads.extend(m.workloads);
                    w.removed_workloads.extend(m.removed_workloads);
                    w.services.extend(m.services);
                    w.removed_services.extend(m.removed_services);
                }
            }
            if !more {
                break;
            }
        }
        let update = whole.unwrap();
        let error = self.mirror.apply(&update).err().unwrap_or_default();
        self.requests
            .send(WatchRequest {
                epoch: self.mirror.epoch,
                version: self.mirror.version,
                error,
                ..WatchRequest::default()
            })
            .await
            .unwrap();
        update
    }

    /// Reads updates until the mirror holds `version`.
    pub async fn until(&mut self, version: u64) {
        while self.mirror.version < version {
            self.next().await;
        }
    }
}
