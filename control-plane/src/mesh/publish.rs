//! Versions of the mesh model and what changed between them, so that discovery sends each proxy
//! only what changed since the version it holds.
//!
//! Owns: [`Publisher`] (sources hand it whole models and it works out the [`Change`], or models
//! with the change they know of; it numbers the ones that differ), [`MeshView`] (one published version with the recent history) and
//! [`MeshView::since`] (the pure "what changed after version v" question). Versions are
//! comparable only within one [`MeshView::epoch`], chosen at random per start, so a proxy that
//! reconnects to a restarted (or another) control plane gets the full state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;
use trellis_ca::{SpiffeId, TrustDomain};

use super::model::{IdentityIndex, MeshModel, Workload, WorkloadKey};

/// Most changes kept: a proxy further behind gets the full state.
pub const HISTORY: usize = 512;
/// Most workload and Service keys kept over the whole history (bounds memory when big changes
/// follow each other, e.g. a cluster resync).
pub const HISTORY_KEYS: usize = 200_000;

/// What one version changed compared with the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The version this change produced.
    pub version: u64,
    /// Workloads added, changed or removed (a change of labels alone is not listed: proxies
    /// are not sent labels; it shows in `identities`).
    pub workloads: BTreeSet<WorkloadKey>,
    /// Services (`namespace/name`) added, changed or removed.
    pub services: BTreeSet<String>,
    /// Policies or mTLS modes changed: any proxy's inbound view may differ.
    pub inbound: bool,
    /// Identities with a workload added, changed or removed: their proxies' inbound views may
    /// differ (labels select policies).
    pub identities: BTreeSet<SpiffeId>,
}

impl Change {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
            && self.services.is_empty()
            && !self.inbound
            && self.identities.is_empty()
    }

    fn keys(&self) -> usize {
        self.workloads.len() + self.services.len()
    }

    /// What differs between `old` and `new` (`version` left 0).
    pub fn between(old: &MeshModel, new: &MeshModel) -> Change {
        let mut change = Change {
            inbound: old.policies != new.policies
                || old.default_mtls != new.default_mtls
                || old.namespace_mtls != new.namespace_mtls
                || old.trust_domain != new.trust_domain,
            ..Change::default()
        };
        for key in changed_keys(&old.workloads, &new.workloads) {
            let (before, after) = (old.workloads.get(&key), new.workloads.get(&key));
            change.note_workload(
                &new.trust_domain,
                key,
                before.map(AsRef::as_ref),
                after.map(AsRef::as_ref),
            );
        }
        change.services = changed_keys(&old.services, &new.services).collect();
        change
    }

    /// Records that the workload at `key` went from `before` to `after` (which differ).
    pub fn note_workload(
        &mut self,
        td: &TrustDomain,
        key: WorkloadKey,
        before: Option<&Workload>,
        after: Option<&Workload>,
    ) {
        for w in [before, after].into_iter().flatten() {
            if let Some(id) = w.id(td) {
                self.identities.insert(id);
            }
        }
        // Labels are not sent to proxies: a relabelled workload only changes inbound views.
        let relabelled_only = match (before, after) {
            (Some(b), Some(a)) => {
                Workload {
                    labels: a.labels.clone(),
                    ..b.clone()
                } == *a
            }
            _ => false,
        };
        if !relabelled_only {
            self.workloads.insert(key);
        }
    }

    fn absorb(&mut self, later: &Change) {
        self.version = later.version;
        self.workloads.extend(later.workloads.iter().copied());
        self.services.extend(later.services.iter().cloned());
        self.inbound |= later.inbound;
        self.identities.extend(later.identities.iter().cloned());
    }
}

/// Keys present in only one map, or with different values (one merge pass over both).
fn changed_keys<'a, K: Ord + Clone, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> + 'a {
    let removed_or_changed = old
        .iter()
        .filter(|(k, v)| new.get(k) != Some(v))
        .map(|(k, _)| k.clone());
    let added = new.keys().filter(|k| !old.contains_key(k)).cloned();
    removed_or_changed.chain(added)
}

/// One published version of the mesh.
#[derive(Debug)]
pub struct MeshView {
    /// Random per start of the control plane.
    pub epoch: u64,
    /// Increases by one with every change.
    pub version: u64,
    /// The mesh at this version.
    pub model: Arc<MeshModel>,
    /// Its workloads by identity.
    pub index: Arc<IdentityIndex>,
    /// The changes that led here, oldest first, the last one producing `version`.
    history: VecDeque<Arc<Change>>,
    /// Parts of the source not yet read in full (e.g. the cluster's first list of pods): while
    /// any is, the model is incomplete and proxies are not sent it.
    pub waiting_for: Vec<&'static str>,
}

/// The answer to "what changed after version v?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Nothing: v is the current version.
    Nothing,
    /// These keys changed (values: the current model).
    Changed(Change),
    /// v is from another epoch, in the future, or older than the history: send everything.
    Everything,
}

impl MeshView {
    /// What changed after `version` of `epoch`.
    pub fn since(&self, epoch: u64, version: u64) -> Since {
        if epoch != self.epoch || version > self.version || version == 0 {
            return Since::Everything;
        }
        if version == self.version {
            return Since::Nothing;
        }
        let first_needed = version + 1;
        let Some(start) = self.history.iter().position(|c| c.version == first_needed) else {
            return Since::Everything;
        };
        let mut merged = Change::default();
        for c in self.history.iter().skip(start) {
            merged.absorb(c);
        }
        Since::Changed(merged)
    }

    /// Versions a proxy may resume from without the full state (oldest first).
    pub fn resumable(&self) -> std::ops::RangeInclusive<u64> {
        let oldest = self.history.front().map_or(self.version, |c| c.version - 1);
        oldest.max(1)..=self.version
    }
}

/// Numbers models and publishes them with their changes.
#[derive(Debug)]
pub struct Publisher {
    /// Where views go.
    tx: watch::Sender<Arc<MeshView>>,
}

impl Publisher {
    /// Publishes `initial` as version 1 of a new epoch, complete.
    pub fn new(initial: MeshModel) -> (Publisher, watch::Receiver<Arc<MeshView>>) {
        Self::with_epoch(initial, fastrand::u64(1..))
    }

    /// As [`Publisher::new`] with a chosen epoch (tests).
    pub fn with_epoch(
        initial: MeshModel,
        epoch: u64,
    ) -> (Publisher, watch::Receiver<Arc<MeshView>>) {
        let view = MeshView {
            epoch,
            version: 1,
            index: Arc::new(initial.identity_index()),
            model: Arc::new(initial),
            history: VecDeque::new(),
            waiting_for: Vec::new(),
        };
        let (tx, rx) = watch::channel(Arc::new(view));
        (Publisher { tx }, rx)
    }

    /// A new receiver of views.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshView>> {
        self.tx.subscribe()
    }

    /// The current view.
    pub fn current(&self) -> Arc<MeshView> {
        self.tx.borrow().clone()
    }

    /// Publishes `model` as the next version if it differs from the current one; returns the
    /// change (`None`: nothing changed, nothing published). Compares the whole models: for
    /// small sources (a mesh file); a source that knows what it changed calls
    /// [`Publisher::publish_change`].
    pub fn publish(&self, model: MeshModel) -> Option<Arc<Change>> {
        let current = self.current();
        let change = Change::between(&current.model, &model);
        let index = model.identity_index();
        self.publish_change(model, index, change)
    }

    /// Publishes `model` (with its identity `index`) as the next version, `change` saying what
    /// differs from the current one (its `version` is set here); nothing when `change` is
    /// empty. The caller answers for `change` and `index` being exact.
    pub fn publish_change(
        &self,
        model: MeshModel,
        index: IdentityIndex,
        mut change: Change,
    ) -> Option<Arc<Change>> {
        if change.is_empty() {
            return None;
        }
        let current = self.current();
        change.version = current.version + 1;
        let change = Arc::new(change);
        let mut history = current.history.clone();
        history.push_back(change.clone());
        let mut keys: usize = history.iter().map(|c| c.keys()).sum();
        while history.len() > HISTORY || (keys > HISTORY_KEYS && history.len() > 1) {
            if let Some(dropped) = history.pop_front() {
                keys -= dropped.keys();
            }
        }
        let view = MeshView {
            epoch: current.epoch,
            version: change.version,
            index: Arc::new(index),
            model: Arc::new(model),
            history,
            waiting_for: current.waiting_for.clone(),
        };
        self.tx.send_replace(Arc::new(view));
        Some(change)
    }

    /// Says which parts of the source have not been read in full yet (empty: the model is
    /// complete); the version does not change. Watch streams hold their first update until
    /// the view is complete ([`MeshView::waiting_for`]).
    pub fn set_waiting_for(&self, kinds: Vec<&'static str>) {
        let current = self.current();
        if current.waiting_for == kinds {
            return;
        }
        let view = MeshView {
            epoch: current.epoch,
            version: current.version,
            index: current.index.clone(),
            model: current.model.clone(),
            history: current.history.clone(),
            waiting_for: kinds,
        };
        self.tx.send_replace(Arc::new(view));
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
