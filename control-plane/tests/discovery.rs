//! The discovery protocol over the wire: a real control plane (gRPC over TLS, local mode with
//! a mesh file it reloads) and watchers holding real SVIDs. A watcher here mirrors the state
//! the way a proxy must — full updates replace, deltas apply only on the version held, updates
//! split over messages apply whole — and acknowledges each version, so these tests check the
//! protocol independently of the proxy's code: the full state first, then only changes; acks
//! recorded; resuming after a reconnect; everything again after a restart or a reported miss;
//! a slow watcher coalescing without holding up the others.

mod common;

use std::path::Path;

use common::watcher::{Mirror, Watcher, certified};
use common::*;
use trellis_ca::Svid;

/// A mesh file with a frontend, and backends at `backends` (last octets) behind a Service.
fn mesh(backends: &[u8]) -> String {
    let mut text = String::from(
        "workloads:\n  - {namespace: shop, serviceAccount: frontend, ip: 198.18.0.2, labels: {app: frontend}}\n",
    );
    for b in backends {
        text.push_str(&format!(
            "  - {{namespace: shop, serviceAccount: backend, ip: 198.18.0.{b}, labels: {{app: backend}}}}\n"
        ));
    }
    text.push_str(
        "services:\n  - {namespace: shop, name: backend, clusterIPs: [198.19.0.10], selector: {app: backend}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    );
    text
}

/// A mesh file of `n` backend workloads whose addresses start at `offset` (big updates).
fn big_mesh(n: u32, offset: u32) -> String {
    let mut text = String::from("workloads:\n");
    for i in offset..offset + n {
        text.push_str(&format!(
            "  - {{namespace: shop, serviceAccount: w{}, ip: 198.18.{}.{}}}\n",
            i % 100,
            (i / 250) % 256,
            i % 250 + 1
        ));
    }
    text
}

async fn frontend_svid(plane: &LocalPlane) -> Svid {
    certified(&plane.running, &plane.config, FRONTEND_TOKEN, FRONTEND).await
}

async fn open(plane: &LocalPlane, svid: &Svid, mirror: Mirror) -> Watcher {
    Watcher::open(&plane.running, &plane.config, svid, mirror).await
}

async fn plane_with_mesh(dir: &Path, text: &str) -> LocalPlane {
    let path = dir.join("mesh.yaml");
    write_atomically(&path, text.as_bytes());
    LocalPlane::start(&["--mesh-file", path.to_str().expect("UTF-8 path")]).await
}

/// The version the control plane published last, as seen by a watcher that follows it.
async fn published_version(w: &mut Watcher, at_least: u64) -> u64 {
    w.until(at_least).await;
    w.mirror.version
}

#[tokio::test]
async fn a_watcher_gets_the_full_state_then_only_what_changed_and_its_acks_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane_with_mesh(dir.path(), &mesh(&[3, 4])).await;
    let svid = frontend_svid(&plane).await;
    let mut w = open(&plane, &svid, Mirror::default()).await;
    let first = w.next().await;
    assert!(first.full);
    assert_eq!(w.mirror.ips(), ["198.18.0.2", "198.18.0.3", "198.18.0.4"]);
    assert_eq!(w.mirror.roots, Some(1));
    assert_eq!(w.mirror.rules, Some(0));
    let eps = &w.mirror.services["shop/backend"].ports[0].endpoints;
    assert_eq!(eps.len(), 2);

    // One backend replaced by another: only that, on top of the version held.
    let held = w.mirror.version;
    write_atomically(&dir.path().join("mesh.yaml"), mesh(&[3, 5]).as_bytes());
    let delta = w.next().await;
    assert!(!delta.full);
    assert_eq!(delta.base_version, held);
    assert_eq!(delta.workloads.len(), 1, "only the new backend: {delta:?}");
    assert_eq!(delta.removed_workloads.len(), 1);
    assert_eq!(delta.services.len(), 1, "the Service's endpoints changed");
    assert!(delta.trust_bundle.is_none() && delta.inbound.is_none());
    assert_eq!(w.mirror.ips(), ["198.18.0.2", "198.18.0.3", "198.18.0.5"]);

    // The control plane records what the watcher acknowledged.
    let version = w.mirror.version;
    let watchers = plane.running.watchers.clone();
    eventually("the ack is recorded", || {
        let watchers = watchers.clone();
        async move {
            let all = watchers.snapshot();
            if all.len() == 1 && all[0].acked.1 == version && all[0].node == "test-pod" {
                Ok(())
            } else {
                Err(format!("{all:?}"))
            }
        }
    })
    .await;
    drop(w);
    eventually("the stream is forgotten", || {
        let watchers = watchers.clone();
        async move {
            if watchers.is_empty() {
                Ok(())
            } else {
                Err(format!("{} open", watchers.len()))
            }
        }
    })
    .await;
    plane.stop().await;
}

#[tokio::test]
async fn a_reconnecting_watcher_resumes_and_after_a_restart_gets_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane_with_mesh(dir.path(), &mesh(&[3])).await;
    let svid = frontend_svid(&plane).await;
    let mut w = open(&plane, &svid, Mirror::default()).await;
    w.next().await;
    let held = w.mirror.clone();
    drop(w);

    // While it is away, the mesh changes.
    write_atomically(&dir.path().join("mesh.yaml"), mesh(&[3, 6]).as_bytes());
    let mut other = open(&plane, &svid, Mirror::default()).await;
    other.next().await;
    let latest = published_version(&mut other, held.version + 1).await;

    let mut back = open(&plane, &svid, held.clone()).await;
    let resumed = back.next().await;
    assert!(!resumed.full, "the control plane still knows what changed");
    assert_eq!(resumed.base_version, held.version);
    assert_eq!(back.mirror.version, latest);
    assert_eq!(back.mirror.workloads, other.mirror.workloads);

    // A restarted control plane has another epoch: everything again.
    drop((back, other));
    plane.stop().await;
    let restarted = plane_with_mesh(dir.path(), &mesh(&[3, 6])).await;
    let new_svid = frontend_svid(&restarted).await;
    let mut again = open(&restarted, &new_svid, held).await;
    let first = again.next().await;
    assert!(first.full, "another epoch: the full state");
    assert_eq!(
        again.mirror.ips(),
        ["198.18.0.2", "198.18.0.3", "198.18.0.6"]
    );
    restarted.stop().await;
}

#[tokio::test]
async fn a_watcher_that_reports_a_missed_update_gets_the_full_state() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane_with_mesh(dir.path(), &mesh(&[3])).await;
    let svid = frontend_svid(&plane).await;
    let mut w = open(&plane, &svid, Mirror::default()).await;
    w.next().await;
    // Pretend the next delta could not be applied.
    w.mirror.version -= 1;
    write_atomically(&dir.path().join("mesh.yaml"), mesh(&[3, 7]).as_bytes());
    let delta = w.next().await;
    assert!(!delta.full);
    assert_ne!(
        delta.base_version, w.mirror.version,
        "the mirror refused it"
    );
    let resync = w.next().await;
    assert!(resync.full, "{resync:?}");
    assert_eq!(w.mirror.ips(), ["198.18.0.2", "198.18.0.3", "198.18.0.7"]);
    let watchers = plane.running.watchers.snapshot();
    assert_eq!(watchers[0].resyncs, 1);
    plane.stop().await;
}

#[tokio::test]
async fn a_slow_watcher_does_not_hold_up_the_others_and_catches_up_in_one_coalesced_update() {
    let dir = tempfile::tempdir().unwrap();
    const N: u32 = 5000;
    let plane = plane_with_mesh(dir.path(), &big_mesh(N, 0)).await;
    let svid = frontend_svid(&plane).await;
    let mut fast = open(&plane, &svid, Mirror::default()).await;
    let mut slow = open(&plane, &svid, Mirror::default()).await;
    fast.next().await;
    slow.next().await;
    let start = fast.mirror.version;
    // Each change moves every workload to a new address: ~400 KB per update, so the slow
    // watcher's HTTP/2 window fills after a few and the control plane must wait for it.
    const CHANGES: u32 = 12;
    for c in 1..=CHANGES {
        write_atomically(
            &dir.path().join("mesh.yaml"),
            big_mesh(N, (c % 2) * N).as_bytes(),
        );
        // The fast watcher keeps up while the slow one reads nothing.
        let want = start + u64::from(c);
        within("the fast watcher keeps up", fast.until(want)).await;
    }
    let last = fast.mirror.version;
    let before = slow.messages;
    slow.until(last).await;
    assert_eq!(slow.mirror.workloads, fast.mirror.workloads);
    let updates_read = slow.messages - before;
    assert!(
        updates_read < CHANGES as usize,
        "the slow watcher got {updates_read} messages for {CHANGES} changes: none coalesced"
    );
    plane.stop().await;
}
