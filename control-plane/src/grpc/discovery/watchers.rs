//! The open Watch streams, as operators see them: who (SPIFFE ID, pod, address, proxy
//! version), since when, which version was sent and which the proxy acknowledged. Read by
//! metrics and status; written by each stream through its [`WatcherHandle`], which removes the
//! entry when the stream ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use trellis_ca::SpiffeId;

use crate::mesh::model::MtlsMode;
use crate::tls_listener::PeerCert;

/// One open stream.
#[derive(Debug, Clone)]
pub struct WatcherInfo {
    /// The proxy's verified identity.
    pub id: SpiffeId,
    /// The pod name it gave (not trusted; for display).
    pub node: String,
    /// Its address.
    pub peer: SocketAddr,
    /// The build version it gave (not trusted; for display).
    pub proxy_version: String,
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// Epoch and version of the last update sent.
    pub sent: (u64, u64),
    /// Epoch and version the proxy last acknowledged.
    pub acked: (u64, u64),
    /// Full states sent after the first (the proxy missed something, or fell behind the history).
    pub resyncs: u64,
    /// The client certificate the stream was opened with (the proxy reopens its stream with
    /// each new certificate).
    pub cert: Option<PeerCert>,
    /// The mTLS mode last sent to the proxy.
    pub mtls: Option<MtlsMode>,
}

/// Every open stream.
#[derive(Debug, Default)]
pub struct Watchers {
    /// Numbers streams.
    next: AtomicU64,
    /// Open streams by number.
    streams: Mutex<HashMap<u64, WatcherInfo>>,
}

impl Watchers {
    /// Records a new stream; the handle removes it when dropped.
    pub fn register(self: &Arc<Self>, info: WatcherInfo) -> WatcherHandle {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, info);
        WatcherHandle {
            watchers: self.clone(),
            key,
        }
    }

    /// A copy of every open stream's entry.
    pub fn snapshot(&self) -> Vec<WatcherInfo> {
        self.lock().values().cloned().collect()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WatcherInfo>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stream's entry; removed on drop.
#[derive(Debug)]
pub struct WatcherHandle {
    /// The registry.
    watchers: Arc<Watchers>,
    /// Its number there.
    key: u64,
}

impl WatcherHandle {
    /// Updates the entry.
    pub fn update(&self, f: impl FnOnce(&mut WatcherInfo)) {
        if let Some(info) = self.watchers.lock().get_mut(&self.key) {
            f(info);
        }
    }
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.watchers.lock().remove(&self.key);
    }
}
