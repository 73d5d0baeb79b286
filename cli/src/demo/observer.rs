//! One thread per pod, standing where the pod is — inside its network namespace (so
//! 127.0.0.1:15000 is its sidecar's admin endpoint, and its connections are intercepted like
//! the app's), or on this machine in loopback mode. Each thread waits until its sidecar holds a
//! certificate and has applied the control plane's mesh (a caller's: with the Service and both
//! its endpoints), then, once told to go, makes the app's call every second where the mode
//! says so (loopback: the callers' apps are these threads), and polls the sidecar's
//! `/identity` and `/handshakes`, sending what it sees to the story as [`Event`]s.
//!
//! Owns: the threads, their stop, and telling new records from ones already sent ([`fresh`]).
//! What the observations mean is [`super::story`]'s business.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use trellis_sandbox::netns;
use trellis_sandbox::sidecar::metric_value;

use super::mesh_file::SERVICE;
use super::{Replica, Role};
use crate::admin_api::{Handshake, Identity};
use crate::admin_client::AdminClient;
use crate::dial::Target;
use crate::http1::Http1Client;

/// How long a sidecar may take to hold a certificate and the mesh.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the app calls the backend.
const CALL_EVERY: Duration = Duration::from_secs(1);
/// How often the sidecar's admin endpoint is read.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often the backend's sidecar's metrics are read, to see when it applies a new mesh.
const MESH_POLL_EVERY: Duration = Duration::from_millis(100);
/// Records asked for per poll: far more than arrive between two polls.
const RECORDS_PER_POLL: u64 = 200;
/// Pods in the mesh file: a sidecar that knows this many has the whole mesh.
const WORKLOADS: u64 = Replica::ALL.len() as u64;
/// Ready endpoints of the Service a caller's sidecar must hold before its app calls.
const ENDPOINTS: usize = Replica::BACKENDS.len();

/// Where to observe one pod from.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Which pod.
    pub replica: Replica,
    /// The network namespace to enter (`None`: stay on this machine).
    pub netns: Option<String>,
    /// Its sidecar's admin endpoint, as seen from there.
    pub admin: SocketAddr,
    /// Where this thread connects, as the pod's app, to call the backend's Service (`None`: not
    /// here — it does not call, or its app is a process of its pod).
    pub call: Option<SocketAddr>,
    /// Where it is, for people: `198.18.0.2` or `127.0.0.1 (tunnel :21108)`.
    pub place: String,
}

/// What a thread saw.
#[derive(Debug)]
pub enum Event {
    /// The sidecar holds a certificate and has applied the mesh.
    Ready {
        /// Whose.
        replica: Replica,
        /// Its certificate.
        identity: Identity,
    },
    /// The sidecar's certificate, read again.
    Identity {
        /// Whose.
        replica: Replica,
        /// Its certificate now.
        identity: Identity,
    },
    /// Connection records not sent before, oldest first.
    Records {
        /// Whose.
        replica: Replica,
        /// The records.
        records: Vec<Handshake>,
    },
    /// The sidecar applied a new snapshot of the mesh from the control plane.
    MeshApplied {
        /// Whose.
        replica: Replica,
        /// When it was seen (within [`MESH_POLL_EVERY`]).
        seen: SystemTime,
    },
    /// The admin endpoint failed once.
    Trouble {
        /// Whose.
        replica: Replica,
        /// What failed.
        message: String,
    },
    /// The thread gave up: it could not enter the namespace, or the sidecar never got ready.
    Failed {
        /// Whose.
        replica: Replica,
        /// Why.
        message: String,
    },
}

/// The running threads; dropping them stops and joins them.
#[derive(Debug)]
pub struct Sites {
    /// One per workload.
    threads: Vec<JoinHandle<()>>,
    /// Set to stop them.
    stop: watch::Sender<bool>,
    /// Set to let the calls and polls begin.
    go: watch::Sender<bool>,
}

impl Sites {
    /// Starts a thread per site; they send to `events`.
    pub fn start(sites: &[SiteSpec], events: &mpsc::Sender<Event>) -> std::io::Result<Sites> {
        let (stop, stop_rx) = watch::channel(false);
        let (go, go_rx) = watch::channel(false);
        let mut started = Sites {
            threads: Vec::new(),
            stop,
            go,
        };
        for site in sites {
            let (site, events, stop_rx, go_rx) =
                (site.clone(), events.clone(), stop_rx.clone(), go_rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("demo-{}", site.replica.name()))
                .spawn(move || site_main(&site, &events, stop_rx, go_rx))?;
            started.threads.push(thread);
        }
        Ok(started)
    }

    /// Lets the calls and polls begin.
    pub fn go(&self) {
        self.go.send_replace(true);
    }

    /// Stops the threads and waits for them (each stops at its next await).
    pub fn stop(&mut self) {
        self.stop.send_replace(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.stop();
    }
}

fn site_main(
    site: &SiteSpec,
    events: &mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
    go: watch::Receiver<bool>,
) {
    let fail = |message: String| {
        let _ = events.send(Event::Failed {
            replica: site.replica,
            message,
        });
    };
    if let Some(ns) = &site.netns
        && let Err(e) = netns::enter_thread(ns)
    {
        return fail(format!("cannot enter network namespace {ns}: {e}"));
    }
    // A runtime of this thread only: every socket it opens is opened here, in the namespace.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async {
        tokio::select! {
            () = observe(site, events, go) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    });
}

async fn observe(site: &SiteSpec, events: &mpsc::Sender<Event>, mut go: watch::Receiver<bool>) {
    let send = |e: Event| {
        let _ = events.send(e);
    };
    let target = Target::tcp(site.admin.to_string());
    let mut admin = AdminClient::new(target.clone());
    let mut raw = Http1Client::new(target);
    let deadline = Instant::now() + READY_TIMEOUT;
    let caller = site.replica.role.calls();
    let (identity, mut updates) = loop {
        let last = match ready(&mut admin, &mut raw, caller).await {
            Ok(ready) => break ready,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return send(Event::Failed {
                replica: site.replica,
                message: format!(
                    "sidecar not ready within {}s: {last}",
                    READY_TIMEOUT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut serial = identity.serial.clone();
    send(Event::Ready {
        replica: site.replica,
        identity,
    });
    if go.wait_for(|g| *g).await.is_err() {
        return;
    }
    let mut poll = tokio::time::interval(POLL_EVERY);
    // Calls half a second out of step with the show's whole seconds, when policy edits happen:
    // the first call after an edit comes half a second later, not at the same instant.
    let mut call = tokio::time::interval_at(Instant::now() + CALL_EVERY / 2, CALL_EVERY);
    let mut mesh_poll = tokio::time::interval(MESH_POLL_EVERY);
    for i in [&mut poll, &mut call, &mut mesh_poll] {
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    let mut last: Option<RecordKey> = None;
    loop {
        tokio::select! {
            _ = call.tick(), if site.call.is_some() => {
                if let Some(to) = site.call {
                    // A task of its own (same thread, same namespace): a slow refusal must not
                    // hold up the polls. The story reads the outcome from the backend's records.
                    tokio::spawn(call_backend(to, site.replica.role));
                }
            }
            _ = mesh_poll.tick(), if !caller => {
                if let Ok(now) = mesh_updates(&mut raw).await && now > updates {
                    updates = now;
                    send(Event::MeshApplied { replica: site.replica, seen: SystemTime::now() });
                }
            }
            _ = poll.tick() => {
                match admin.identity().await {
                    Ok(Some(id)) if id.serial != serial => {
                        serial = id.serial.clone();
                        send(Event::Identity { replica: site.replica, identity: id });
                    }
                    Ok(_) => {}
                    Err(e) => send(Event::Trouble { replica: site.replica, message: e.to_string() }),
                }
                match admin.handshakes(RECORDS_PER_POLL).await {
                    Ok(all) => {
                        let new = fresh(last.as_ref(), &all).to_vec();
                        if let Some(newest) = new.last() {
                            last = Some(RecordKey::of(newest));
                            send(Event::Records { replica: site.replica, records: new });
                        }
                    }
                    Err(e) => send(Event::Trouble { replica: site.replica, message: e.to_string() }),
                }
            }
        }
    }
}

/// The sidecar's identity, and how many mesh snapshots it has applied, once it holds a
/// certificate and has applied the whole mesh (so the backends enforce their policy before the
/// first call, and a `caller`'s sidecar balances the Service over both backend pods); else what
/// is missing.
async fn ready(
    admin: &mut AdminClient,
    raw: &mut Http1Client,
    caller: bool,
) -> Result<(Identity, u64), String> {
    let identity = admin
        .identity()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no certificate yet")?;
    let updates = mesh_updates(raw).await?;
    if updates < 1 {
        return Err("no mesh snapshot from the control plane yet".into());
    }
    let (status, dump) = raw.get("/config_dump").await.map_err(|e| e.to_string())?;
    let dump = serde_json::from_slice::<serde_json::Value>(&dump).unwrap_or_default();
    let known = dump["workloads_known"].as_u64().unwrap_or(0);
    if status != StatusCode::OK || known < WORKLOADS {
        return Err(format!(
            "knows {known} of the mesh's {WORKLOADS} workloads so far"
        ));
    }
    let endpoints = ready_endpoints(&dump);
    if caller && endpoints < ENDPOINTS {
        return Err(format!(
            "holds {endpoints} of the {ENDPOINTS} ready endpoints of Service {SERVICE} so far"
        ));
    }
    Ok((identity, updates))
}

/// The ready endpoints of the Service in a sidecar's `/config_dump`, over all its ports.
pub fn ready_endpoints(dump: &serde_json::Value) -> usize {
    dump["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == SERVICE)
        .flat_map(|s| s["ports"].as_array().into_iter().flatten())
        .flat_map(|p| p["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["health"] == "ready")
        .count()
}

/// How many mesh snapshots the sidecar has applied (`trellis_proxy_discovery_updates_total`).
async fn mesh_updates(raw: &mut Http1Client) -> Result<u64, String> {
    let (status, metrics) = raw.get("/metrics").await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("/metrics answered {status}"));
    }
    let n = metric_value(
        &String::from_utf8_lossy(&metrics),
        "trellis_proxy_discovery_updates_total",
        &[],
    );
    // A counter: a whole number well within u64.
    Ok(n.max(0.0) as u64)
}

/// One call from the app: a new connection (so each call is a connection of its own in the
/// records), `GET /from-<role>`. The answer does not matter here.
async fn call_backend(to: SocketAddr, role: Role) {
    let mut client = Http1Client::new(Target::tcp(to.to_string()));
    let _ = client.get(&format!("/from-{}", role.name())).await;
}

/// What tells a record apart in successive `/handshakes` answers (its byte counters change;
/// these do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    time: String,
    direction: String,
    peer_addr: String,
    dst: Option<String>,
    decision: String,
    reason: String,
}

impl RecordKey {
    /// The key of `h`.
    pub fn of(h: &Handshake) -> Self {
        RecordKey {
            time: h.time.clone(),
            direction: h.direction.clone(),
            peer_addr: h.peer_addr.clone(),
            dst: h.dst.clone(),
            decision: h.decision.clone(),
            reason: h.reason.clone(),
        }
    }
}

/// The records of `all` (oldest first) that come after the one keyed `last`; all of them when
/// there is no `last`, or when it has left the log.
pub fn fresh<'a>(last: Option<&RecordKey>, all: &'a [Handshake]) -> &'a [Handshake] {
    let after = last.and_then(|k| all.iter().rposition(|h| RecordKey::of(h) == *k));
    match after {
        Some(i) => all.get(i + 1..).unwrap_or_default(),
        None => all,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rec(time: &str) -> Handshake {
        Handshake {
            time: time.into(),
            direction: "inbound".into(),
            peer_addr: "198.18.0.2:40000".into(),
            peer_id: None,
            dst: Some("198.18.0.3:8080".into()),
            tls: None,
            decision: "allow".into(),
            reason: String::new(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn only_records_after_the_last_one_sent_are_fresh() {
        let all = [rec("t1"), rec("t2"), rec("t3")];
        assert_eq!(fresh(None, &all).len(), 3);
        let k2 = RecordKey::of(&all[1]);
        assert_eq!(fresh(Some(&k2), &all), &all[2..]);
        let k3 = RecordKey::of(&all[2]);
        assert!(fresh(Some(&k3), &all).is_empty());
        // The last one sent has left the bounded log: everything there is new.
        let gone = RecordKey::of(&rec("t0"));
        assert_eq!(fresh(Some(&gone), &all).len(), 3);
    }

    #[test]
    fn only_ready_endpoints_of_the_demo_service_count() {
        let dump = serde_json::json!({"services": [
            {"name": "shop/other", "ports": [{"endpoints": [{"health": "ready"}]}]},
            {"name": "shop/backend", "ports": [{"endpoints": [
                {"addr": "198.18.0.3:8080", "health": "ready"},
                {"addr": "198.18.0.5:8080", "health": "unavailable"},
                {"addr": "198.18.0.6:8080", "health": "ready"}
            ]}]}
        ]});
        assert_eq!(ready_endpoints(&dump), 2);
        assert_eq!(
            ready_endpoints(&serde_json::json!({"workloads_known": 4})),
            0
        );
    }

    #[test]
    fn growing_byte_counters_do_not_make_a_record_new() {
        let mut before = rec("t1");
        before.extra.insert("bytes_sent".into(), 10.into());
        let mut now = rec("t1");
        now.extra.insert("bytes_sent".into(), 99.into());
        assert!(fresh(Some(&RecordKey::of(&before)), &[now]).is_empty());
    }
}
