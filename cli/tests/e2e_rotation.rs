//! Root rotation end to end, on a fake network: three meshed workloads talk to each other in a
//! ring (a → b → c → a: a long-lived connection each, and a new connection every 100 ms) through
//! their sidecars, with 10-second certificates, while the mesh's root is replaced by the
//! documented procedure — add the new root, switch the CA to it, remove the old root — by
//! editing the control plane's CA files as an operator would. Not one connection may fail, and
//! at the end no proxy's certificate or trust bundle, and no CA or published bundle, mentions
//! the old root. Once with the control plane's own self-signed root (its state directory),
//! once with a plug-in CA (`cacerts`: an intermediate under the old root, then one under the
//! new), reloaded without a restart.
//!
//! Needs root and python3, and the binaries built (`cargo build --workspace --bins`). Without
//! root each test fails, saying so.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::{client_result, eventually};
use trellis_ca::{CaMaterial, TrustBundle, TrustDomain, certs_from_pem, fingerprint};
use trellis_control_plane::ca_store::DirStore;
use trellis_sandbox::app::{APP_UID, App, ECHO_PORT, HTTP_PORT};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::python;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, Pod, Process, Sandbox, require_root};

const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The ring's workloads: name, address.
const RING: [(&str, Ipv4Addr); 3] = [
    ("a", Ipv4Addr::new(198, 18, 0, 2)),
    ("b", Ipv4Addr::new(198, 18, 0, 3)),
    ("c", Ipv4Addr::new(198, 18, 0, 4)),
];
/// How long each load runs: longer than the whole rotation takes.
const LOAD_SECONDS: u32 = 60;
/// How long one rotation step may take to reach every proxy.
const STEP: Duration = Duration::from_secs(30);
const CLIENT_PY: &str = include_str!("support/client.py");

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn spiffe(name: &str) -> String {
    format!("spiffe://cluster.local/ns/ring/sa/{name}")
}

/// Which CA the control plane runs with.
#[derive(Debug, Clone, Copy)]
enum Ca {
    /// Its own self-signed root in its state directory.
    SelfSigned,
    /// A plug-in intermediate in a `cacerts` directory.
    PlugIn,
}

/// Three pods with apps and sidecars, and the control plane.
struct Ring {
    cp: ControlPlane,
    pods: Vec<Pod>,
    sidecars: Vec<Sidecar>,
    _apps: Vec<App>,
    /// Where the CA files are edited: the state directory or the `cacerts` directory.
    ca_dir: PathBuf,
    /// Last: dropped after everything above.
    sandbox: Sandbox,
}

impl Ring {
    fn start(ca: Ca, first: &CaMaterial) -> Ring {
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("control plane pod");
        sandbox
            .write_file("client.py", CLIENT_PY.as_bytes(), 0o644)
            .expect("client.py");
        let identities: Vec<Identity> =
            RING.iter().map(|(n, _)| Identity::new("ring", n)).collect();
        let cp = match ca {
            Ca::SelfSigned => {
                let cp = ControlPlane::start(&sandbox, &cp_pod, &identities, &[])
                    .expect("control plane");
                let dir = cp.state_dir().to_owned();
                // Replace the root it made with ours (the test needs the old root's key to
                // build the rotation), as after a restore from backup; proxies bootstrap with it.
                cp.stop().expect("control plane stops");
                write_ca(&dir, first);
                std::fs::write(cp.trust_bundle(), &first.root_cert_pem).expect("bootstrap bundle");
                cp.run().expect("control plane restarts");
                cp
            }
            Ca::PlugIn => {
                let dir = sandbox.dir().join("cacerts");
                write_ca(&dir, first);
                ControlPlane::start_plug_in(&sandbox, &cp_pod, &identities, &dir, &[])
                    .expect("control plane with a plug-in CA")
            }
        };
        let ca_dir = cp
            .cacerts_dir()
            .map_or_else(|| cp.state_dir().to_owned(), Path::to_owned);
        let mut pods = Vec::new();
        let mut apps = Vec::new();
        for (name, ip) in RING {
            let pod = sandbox.add_pod(name, ip).expect("pod");
            apps.push(App::start(&sandbox, &pod, name).expect("app"));
            pods.push(pod);
        }
        let mut sidecars = Vec::new();
        for (i, (name, _)) in RING.iter().enumerate() {
            let mut spec = SidecarSpec::new(Identity::new("ring", name)).arg("--cert-ttl=10s");
            for (j, (peer, ip)) in RING.iter().enumerate() {
                if i != j {
                    spec = spec.workload(*ip, &spiffe(peer));
                }
            }
            sidecars.push(Sidecar::start(&cp, &pods[i], spec).expect("sidecar"));
        }
        Ring {
            cp,
            pods,
            sidecars,
            _apps: apps,
            ca_dir,
            sandbox,
        }
    }

    /// `client.py load` from pod `i` to the next pod of the ring.
    fn spawn_load(&self, i: usize) -> Process {
        let (_, next) = RING[(i + 1) % RING.len()];
        let cmd = Cmd::new(python())
            .arg(self.sandbox.dir().join("client.py"))
            .args([
                "load",
                &next.to_string(),
                &HTTP_PORT.to_string(),
                &ECHO_PORT.to_string(),
                &LOAD_SECONDS.to_string(),
            ])
            .uid(Some(APP_UID));
        self.pods[i].spawn(&cmd).expect("client.py starts")
    }

    /// Waits until every sidecar's `/identity` satisfies `check`; fails naming `what`.
    fn until_every_proxy(&self, what: &str, check: impl Fn(&Value) -> bool) {
        let all = eventually(STEP, || {
            self.sidecars
                .iter()
                .all(|s| s.identity().is_ok_and(|id| check(&id)))
                .then_some(())
        });
        if all.is_none() {
            let seen: Vec<Value> = self
                .sidecars
                .iter()
                .filter_map(|s| s.identity().ok())
                .collect();
            panic!("{what}: not every proxy within {STEP:?}: {seen:#?}");
        }
    }
}

/// Writes CA files as an operator should: each replaced atomically, the key 0600.
fn write_ca(dir: &Path, m: &CaMaterial) {
    DirStore::new(dir).restore(m).expect("write the CA files");
}

/// The SHA-256 fingerprints of a PEM bundle.
fn fingerprints(pem: &str) -> Vec<String> {
    certs_from_pem(pem.as_bytes())
        .expect("PEM")
        .iter()
        .map(|c| fingerprint(c))
        .collect()
}

/// The fingerprints of the roots a proxy trusts, from `/identity`.
fn trusted(id: &Value) -> Vec<String> {
    id["trust_bundle"]
        .as_array()
        .map(|roots| {
            roots
                .iter()
                .filter_map(|r| r["sha256"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the certificate a proxy presents chains to a root of `roots`.
fn chains_to(id: &Value, roots: &TrustBundle) -> bool {
    let pem: String = id["chain_pem"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Ok(chain) = certs_from_pem(pem.as_bytes()) else {
        return false;
    };
    chain
        .split_first()
        .is_some_and(|(leaf, rest)| roots.issuing_root(leaf, rest).is_some())
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn rotate_under_traffic(ca: Ca) {
    require_root();
    let now = SystemTime::now();
    let old_root = CaMaterial::generate_root(&td(), now).expect("old root");
    let new_root = CaMaterial::generate_root(&td(), now).expect("new root");
    let hour = Duration::from_secs(3600);
    // What signs before and after: the roots themselves, or an intermediate under each.
    let (before, after) = match ca {
        Ca::SelfSigned => (old_root.clone(), new_root.clone()),
        Ca::PlugIn => (
            old_root
                .generate_intermediate(&td(), now, hour)
                .expect("intermediate under the old root"),
            new_root
                .generate_intermediate(&td(), now, hour)
                .expect("intermediate under the new root"),
        ),
    };
    let ring = Ring::start(ca, &before);
    let (old_fp, new_fp) = (
        fingerprints(&old_root.root_cert_pem),
        fingerprints(&new_root.root_cert_pem),
    );
    let both_pem = format!("{}{}", old_root.root_cert_pem, new_root.root_cert_pem);
    let both_fp = fingerprints(&both_pem);
    let only_new =
        TrustBundle::from_pem(td(), new_root.root_cert_pem.as_bytes()).expect("new root PEM");
    let only_old =
        TrustBundle::from_pem(td(), old_root.root_cert_pem.as_bytes()).expect("old root PEM");
    ring.until_every_proxy("the old root trusted", |id| same_set(&trusted(id), &old_fp));
    let loads: Vec<Process> = (0..RING.len()).map(|i| ring.spawn_load(i)).collect();

    // 1. Add the new root to the bundle: every proxy trusts both.
    write_ca(
        &ring.ca_dir,
        &CaMaterial {
            root_cert_pem: both_pem.clone(),
            ..before.clone()
        },
    );
    ring.until_every_proxy("both roots trusted", |id| same_set(&trusted(id), &both_fp));

    // 2. The CA signs under the new root: certificates roll at their renewal.
    write_ca(
        &ring.ca_dir,
        &CaMaterial {
            root_cert_pem: both_pem.clone(),
            ..after.clone()
        },
    );
    ring.until_every_proxy("certificates under the new root", |id| {
        chains_to(id, &only_new)
    });

    // 3. The old root leaves the bundle.
    write_ca(&ring.ca_dir, &after);
    ring.until_every_proxy("only the new root trusted", |id| {
        same_set(&trusted(id), &new_fp)
    });
    for (i, load) in loads.iter().enumerate() {
        assert!(
            load.is_running(),
            "the load from {} ended before the rotation did: the test did not cover it",
            RING[i].0
        );
    }

    for (i, load) in loads.iter().enumerate() {
        let result = client_result(load, Duration::from_secs(u64::from(LOAD_SECONDS) + 30));
        eprintln!("load {} → next: {result}", RING[i].0);
        assert_eq!(result["long"]["failures"], 0, "{}: {result:#}", RING[i].0);
        assert_eq!(result["new"]["failures"], 0, "{}: {result:#}", RING[i].0);
        assert!(
            result["new"]["ok"].as_u64().unwrap_or(0) >= 100,
            "{}: too few new connections to tell: {result:#}",
            RING[i].0
        );
        assert!(
            result["long"]["exchanges"].as_u64().unwrap_or(0) >= 100,
            "{}: too few exchanges on the long-lived connection: {result:#}",
            RING[i].0
        );
    }

    // Nothing mentions the old root any more: the proxies' certificates and bundles, the CA,
    // and (self-signed) the published bundle.
    for s in &ring.sidecars {
        let id = s.identity().expect("the proxy's /identity");
        assert!(same_set(&trusted(&id), &new_fp), "{id:#}");
        assert!(!chains_to(&id, &only_old), "{id:#}");
        let chain: String = id["chain_pem"]
            .as_array()
            .expect("chain_pem in /identity")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            fingerprints(&chain).iter().all(|f| !old_fp.contains(f)),
            "{id:#}"
        );
    }
    let ca_root = std::fs::read_to_string(ring.cp.root_cert()).expect("the CA's root-cert.pem");
    assert_eq!(fingerprints(&ca_root), new_fp);
    if matches!(ca, Ca::SelfSigned) {
        let published = std::fs::read_to_string(ring.cp.state_dir().join("trust-bundle.pem"))
            .expect("the published trust-bundle.pem");
        assert_eq!(fingerprints(&published), new_fp);
    }
    let log = ring
        .cp
        .process()
        .map(|p| format!("{}{}", p.stdout(), p.stderr()))
        .unwrap_or_default();
    assert!(log.contains("CA store changed; adopting it"), "{log}");
}

#[test]
fn the_self_signed_root_rotates_under_traffic_between_three_workloads_without_a_failed_connection()
{
    rotate_under_traffic(Ca::SelfSigned);
}

#[test]
fn a_plug_in_ca_rotates_to_a_new_root_under_traffic_without_a_failed_connection_or_a_restart() {
    rotate_under_traffic(Ca::PlugIn);
}
