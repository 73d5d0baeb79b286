//! The sandbox as one node: pods route through it, nothing gets past it, names resolve in every
//! pod, and dropping the sandbox leaves nothing behind.
//!
//! Needs root: each test calls `require_root()` first and fails without it. Leave them out on
//! purpose with `cargo nextest run --profile unprivileged` (CONTRIBUTING.md).

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use support::{run_client, spawn_client};
use trellis_sandbox::app::App;
use trellis_sandbox::netns::{self, ETC_NETNS};
use trellis_sandbox::{Cmd, NODE_IP, Sandbox, Service, require_root};

const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

#[test]
fn pods_route_through_the_node_and_nothing_gets_past_it() {
    require_root();
    let sandbox = Sandbox::new().expect("sandbox");
    let client = sandbox.add_pod("client", CLIENT_IP).expect("pod");
    let routes = client
        .exec_ok(&Cmd::new("ip").args(["-4", "route"]))
        .unwrap();
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("default via 198.18.0.254 dev eth0")),
        "{routes}"
    );
    let node = sandbox.node().netns();
    let forwarding = node
        .exec_ok(&Cmd::new("sysctl").args(["-n", "net.ipv4.ip_forward"]))
        .unwrap();
    assert_eq!(forwarding.trim(), "1");
    // The node's routes: the bridge's subnet and the ClusterIPs (on the bridge), nothing beyond.
    let node_routes = node.exec_ok(&Cmd::new("ip").args(["-4", "route"])).unwrap();
    let mut destinations: Vec<&str> = node_routes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    destinations.sort();
    assert_eq!(
        destinations,
        ["198.18.0.0/24", "198.19.0.0/16"],
        "{node_routes}"
    );

    // An address outside the sandbox: the node says it has no route (at once, no timeout).
    let answer = run_client(&sandbox, &client, &["connect", "198.51.100.1", "80"]).join("\n");
    assert!(
        answer.contains("unreachable") || answer.contains("No route"),
        "{answer}"
    );
    // The node itself answers on its address, like any gateway: here, that nothing listens.
    let answer = run_client(&sandbox, &client, &["connect", "198.18.0.254", "9"]).join("\n");
    assert!(answer.starts_with("err ConnectionRefusedError"), "{answer}");
}

#[test]
fn a_pod_cannot_take_the_nodes_address_or_name_or_one_outside_the_bridges_subnet() {
    require_root();
    let sandbox = Sandbox::new().expect("sandbox");
    let cases = [
        ("web", NODE_IP, "198.18.0.254 is the node's address"),
        (
            "web",
            Ipv4Addr::new(198, 19, 0, 5),
            "198.18.0.1 to 198.18.0.253 only",
        ),
        ("web", Ipv4Addr::new(198, 18, 0, 0), "network and broadcast"),
        ("node", WEB_IP, "reserved: the node's namespace"),
    ];
    for (name, ip, expected) in cases {
        let error = sandbox.add_pod(name, ip).unwrap_err().to_string();
        assert!(error.contains(expected), "{name} {ip}: {error}");
    }
    assert!(sandbox.pods().is_empty());
}

#[test]
fn a_named_host_resolves_in_every_pod_present_and_future_and_localhost_still_does() {
    require_root();
    let sandbox = Sandbox::new().expect("sandbox");
    let web = sandbox.add_pod("web", WEB_IP).expect("pod");
    let _app = App::start(&sandbox, &web, "web").expect("app");
    let early = sandbox.add_pod("early", CLIENT_IP).expect("pod");
    let name = "web.shop.svc.cluster.local";
    // Already running when the name is added: it must see it too.
    let waiting = spawn_client(&sandbox, &early, &["resolve", name, "20"]);
    // Once it runs, its /etc/hosts is mounted: what it sees later comes from the same file.
    waiting
        .wait_for_output("started", Duration::from_secs(20))
        .expect("the client starts");

    sandbox.add_host(name, WEB_IP).expect("host");
    let late = sandbox
        .add_pod("late", Ipv4Addr::new(198, 18, 0, 4))
        .expect("pod");
    let url = format!("http://{name}:8080/by-name");
    for pod in [&early, &late] {
        let got = run_client(&sandbox, pod, &["get", &url, "1"]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("ok web got /by-name"),
            "{}: {got:?}",
            pod.name()
        );
    }
    waiting
        .wait_for_output("resolved 198.18.0.2", Duration::from_secs(20))
        .expect("a running program sees the new name");
    let local = run_client(&sandbox, &web, &["get", "http://localhost:8080/here", "1"]);
    assert!(local[0].starts_with("ok web got /here"), "{local:?}");

    // A name given again moves; a name that could smuggle lines in is refused.
    let service_ip = Ipv4Addr::new(198, 19, 0, 20);
    sandbox
        .node()
        .add_service(
            &Service::new("shop/web", service_ip)
                .port(80, [std::net::SocketAddrV4::new(WEB_IP, 8080)]),
        )
        .unwrap();
    sandbox.add_host(name, service_ip).expect("host moved");
    let got = run_client(
        &sandbox,
        &late,
        &["get", &format!("http://{name}/svc"), "1"],
    );
    assert!(
        got[0].starts_with("ok web got /svc from 198.18.0.254"),
        "{got:?}"
    );
    let hosts = std::fs::read_to_string(late.netns().etc_dir().join("hosts")).unwrap();
    assert_eq!(hosts.matches(name).count(), 1, "{hosts}");
    let error = sandbox.add_host("evil\n10.0.0.1 web", WEB_IP).unwrap_err();
    assert!(
        error.to_string().contains("dot-separated labels"),
        "{error}"
    );
}

#[test]
fn a_dropped_sandbox_leaves_no_namespace_no_etc_netns_entry_and_no_process_even_after_a_panic() {
    require_root();
    for panic in [false, true] {
        let sandbox = Sandbox::new().expect("sandbox");
        sandbox.keep_dir_on_panic(false);
        let web = sandbox.add_pod("web", WEB_IP).expect("pod");
        let _app = App::start(&sandbox, &web, "web").expect("app");
        sandbox.add_namespace("loose").expect("namespace");
        sandbox.add_host("web.local", WEB_IP).expect("host");
        sandbox
            .node()
            .add_service(
                &Service::new("web", Ipv4Addr::new(198, 19, 0, 1))
                    .port(80, [std::net::SocketAddrV4::new(WEB_IP, 8080)]),
            )
            .expect("service");
        let names = sandbox.namespaces();
        assert_eq!(names.len(), 3, "{names:?}");
        let pids: Vec<u32> = sandbox.processes().iter().map(|p| p.pid()).collect();
        assert!(!pids.is_empty());
        let dir = sandbox.dir().to_owned();
        if panic {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _owned = sandbox;
                panic!("on purpose");
            }));
            assert!(result.is_err());
        } else {
            drop(sandbox);
        }
        let left: Vec<String> = netns::list()
            .into_iter()
            .filter(|n| names.contains(n))
            .collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        for name in &names {
            let etc = Path::new(ETC_NETNS).join(name);
            assert!(!etc.exists(), "{} left", etc.display());
        }
        for pid in pids {
            assert!(
                !Path::new("/proc").join(pid.to_string()).exists(),
                "pid {pid} runs"
            );
        }
        assert!(!dir.exists(), "{} left", dir.display());
    }
}
