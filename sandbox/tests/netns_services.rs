//! kube-proxy's job on the sandbox's node: a ClusterIP reached from an unmeshed pod through the
//! node's DNAT, endpoints changed under traffic, the counters of the DNAT rules, REJECTs.
//!
//! Needs root: each test calls `require_root()` first and fails without it. Leave them out on
//! purpose with `cargo nextest run --profile unprivileged` (CONTRIBUTING.md).

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use support::{lines, run_client, spawn_client, tally, wait_lines};
use trellis_sandbox::app::{App, HTTP_PORT};
use trellis_sandbox::{NODE_IP, Pod, Sandbox, Service, require_root};

const SERVICE: &str = "shop/backend";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const URL: &str = "http://198.19.0.10/";
const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const A: SocketAddrV4 = SocketAddrV4::new(A_IP, HTTP_PORT);
const B: SocketAddrV4 = SocketAddrV4::new(B_IP, HTTP_PORT);

/// Two backend pods running the app (`backend-a`, `backend-b`), a client pod without a
/// sidecar, and service `shop/backend` (198.19.0.10:80 → both backends' 8080).
struct Backends {
    client: Pod,
    _apps: [App; 2],
    /// Last: dropped after the handles above.
    sandbox: Sandbox,
}

impl Backends {
    fn start() -> Backends {
        let sandbox = Sandbox::new().expect("sandbox");
        let a = sandbox.add_pod("backend-a", A_IP).expect("pod a");
        let b = sandbox.add_pod("backend-b", B_IP).expect("pod b");
        let client = sandbox
            .add_pod("client", Ipv4Addr::new(198, 18, 0, 20))
            .expect("client pod");
        let apps = [
            App::start(&sandbox, &a, "backend-a").expect("app a"),
            App::start(&sandbox, &b, "backend-b").expect("app b"),
        ];
        sandbox
            .node()
            .add_service(&Service::new(SERVICE, CLUSTER_IP).port(80, [A, B]))
            .expect("service");
        Backends {
            client,
            _apps: apps,
            sandbox,
        }
    }

    fn a_count(&self) -> u64 {
        let counts = self.sandbox.node().dnat_counts(SERVICE).expect("counts");
        counts.by_endpoint.get(&A).copied().unwrap_or(0)
    }
}

#[test]
fn a_cluster_ip_spreads_connections_over_both_backends_and_replies_come_back_through_the_node() {
    require_root();
    let t = Backends::start();
    let node = t.sandbox.node();
    let got = run_client(&t.sandbox, &t.client, &["get", URL, "40"]);
    let (answers, errors) = tally(&got);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answers.values().sum::<u64>(), 40, "{got:?}");
    for backend in ["backend-a", "backend-b"] {
        assert!(answers.get(backend).is_some_and(|n| *n > 0), "{answers:?}");
    }
    // Masqueraded: the backends saw the node, so their replies went back through it.
    let from_node = format!("from {NODE_IP}");
    assert!(got.iter().all(|l| l.ends_with(&from_node)), "{got:?}");

    let counts = node.dnat_counts(SERVICE).expect("counts");
    assert_eq!(counts.total, 40, "{}", node.iptables_save().unwrap());
    assert_eq!(counts.by_endpoint.get(&A), answers.get("backend-a"));
    assert_eq!(counts.by_endpoint.get(&B), answers.get("backend-b"));

    // Pod to pod on the bridge: the node's DNAT never sees it.
    let direct = run_client(
        &t.sandbox,
        &t.client,
        &["get", "http://198.18.0.11:8080/", "5"],
    );
    assert_eq!(tally(&direct).0.get("backend-a"), Some(&5), "{direct:?}");
    assert!(direct.iter().all(|l| l.ends_with("from 198.18.0.20")));
    assert_eq!(node.dnat_counts(SERVICE).unwrap(), counts);
}

#[test]
fn endpoints_change_under_traffic_without_a_failed_connection_and_a_removed_one_gets_nothing() {
    require_root();
    let t = Backends::start();
    let node = t.sandbox.node();
    let stop = t.sandbox.dir().join("stop-load");
    let stop_arg = stop.to_string_lossy().into_owned();
    let load = spawn_client(&t.sandbox, &t.client, &["until", &stop_arg, URL, "5000"]);
    wait_lines(&load, 10);

    node.set_endpoints(SERVICE, 80, &[B]).expect("remove a");
    // The client is sequential: at most one connection was on its way when the rules changed.
    let removed_at = lines(&load).len() + 1;
    let a_at_removal = t.a_count();
    wait_lines(&load, removed_at + 40);
    let a_before_adding = t.a_count();
    let before_adding = lines(&load).len();

    node.set_endpoints(SERVICE, 80, &[A, B])
        .expect("add a back");
    let added_at = lines(&load).len() + 1;
    wait_lines(&load, added_at + 40);
    std::fs::write(&stop, b"").unwrap();
    load.wait(std::time::Duration::from_secs(30)).unwrap();

    let all = lines(&load);
    let (_, errors) = tally(&all);
    assert!(
        errors.is_empty(),
        "failed while the rules changed: {errors:?}"
    );
    let (without_a, _) = tally(&all[removed_at..before_adding]);
    assert_eq!(without_a.keys().collect::<Vec<_>>(), ["backend-b"]);
    assert_eq!(
        a_before_adding, a_at_removal,
        "a removed endpoint was DNAT'd to"
    );
    let (with_a, _) = tally(&all[added_at..]);
    assert!(
        with_a.get("backend-a").is_some_and(|n| *n > 0),
        "{with_a:?}"
    );
    // Every connection counted once, the deleted chain of a's first life included.
    let counts = node.dnat_counts(SERVICE).unwrap();
    assert_eq!(counts.total, all.len() as u64, "{counts:?}");
}

#[test]
fn a_port_without_endpoints_and_an_address_no_service_has_are_refused_at_once() {
    require_root();
    let t = Backends::start();
    let node = t.sandbox.node();
    let empty_ip = Ipv4Addr::new(198, 19, 0, 11);
    node.add_service(&Service::new("shop/empty", empty_ip).port(80, []))
        .expect("service without endpoints");
    let connect = |ip: Ipv4Addr, port: u16| {
        let (ip, port) = (ip.to_string(), port.to_string());
        run_client(&t.sandbox, &t.client, &["connect", &ip, &port]).join("\n")
    };
    let refused = "err ConnectionRefusedError";
    for (ip, port) in [
        (empty_ip, 80),
        (CLUSTER_IP, 81),
        (Ipv4Addr::new(198, 19, 7, 7), 80),
    ] {
        let answer = connect(ip, port);
        assert!(answer.starts_with(refused), "{ip}:{port}: {answer}");
    }

    node.set_endpoints("shop/empty", 80, &[A])
        .expect("an endpoint");
    assert_eq!(connect(empty_ip, 80), "connected");
    node.remove_service("shop/empty").expect("removed");
    assert!(connect(empty_ip, 80).starts_with(refused));
    assert_eq!(node.dnat_counts("shop/empty").unwrap().total, 1);
    assert!(node.service("shop/empty").is_none());
    // The other service is untouched.
    assert_eq!(connect(CLUSTER_IP, 80), "connected");
}

#[test]
fn the_node_refuses_a_service_it_cannot_install_and_names_what_is_wrong() {
    require_root();
    let t = Backends::start();
    let node = t.sandbox.node();
    let cases = [
        (
            Service::new(SERVICE, Ipv4Addr::new(198, 19, 0, 12)).port(80, [A]),
            "a service of this name exists",
        ),
        (
            Service::new("shop/other", CLUSTER_IP).port(80, [A]),
            "ClusterIP 198.19.0.10 is taken by service \"shop/backend\"",
        ),
        (
            Service::new("shop/other", Ipv4Addr::new(10, 96, 0, 1)).port(80, [A]),
            "not a host address of 198.19.0.0/16",
        ),
    ];
    for (service, expected) in cases {
        let error = node.add_service(&service).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    let error = node.set_endpoints("shop/none", 80, &[A]).unwrap_err();
    assert!(
        error.to_string().contains("no service of this name"),
        "{error}"
    );
    let error = node.set_endpoints(SERVICE, 80, &[NODE_SOCKET]).unwrap_err();
    assert!(error.to_string().contains("the node's address"), "{error}");
    // Nothing changed.
    let got = run_client(&t.sandbox, &t.client, &["get", URL, "4"]);
    assert!(tally(&got).1.is_empty(), "{got:?}");
    assert_eq!(node.service(SERVICE).unwrap().ports()[0].endpoints, [A, B]);
}

const NODE_SOCKET: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 8080);
