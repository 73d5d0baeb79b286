//! `trellis-proxy init` against a real kernel: in network namespaces of their own, these tests
//! install the rules with [`redirect::run`], read them back with `iptables-save`, run it twice,
//! clean up, and send real TCP connections to see where they land.
//!
//! The namespaces come from `trellis_sandbox` (a sandbox's namespaces not plugged into its
//! node, linked with a veth pair where a peer is needed), so they are deleted even when a test
//! fails.
//!
//! They need root: each calls `require_root()` first and fails without it. Leave them out on
//! purpose with `cargo nextest run --profile unprivileged` (CONTRIBUTING.md). CI runs them.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use clap::Parser;
use trellis_proxy::redirect::{
    self, InitArgs,
    rules::{self, Family},
};
use trellis_sandbox::{Cmd, Netns, Sandbox, http::python, require_root};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: InitArgs,
}

/// A sandbox with one namespace of its own (`lo` only), where the rules are installed.
fn sandbox_and_namespace() -> (Sandbox, Arc<Netns>) {
    let sandbox = Sandbox::new().expect("sandbox");
    let ns = sandbox.add_namespace("pod").expect("namespace");
    (sandbox, ns)
}

/// Runs `program ARGS` inside `ns`; its standard output, or the error naming the command.
fn exec(ns: &Netns, program: &str, args: &[&str]) -> trellis_sandbox::Result<String> {
    ns.exec_ok(&Cmd::new(program).args(args))
}

/// `InitArgs` for `flags`, with iptables run inside `ns`.
fn init_args(ns: &Netns, flags: &[&str]) -> InitArgs {
    let prefix = format!("ip netns exec {}", ns.name());
    let all = ["init", "--command-prefix", &prefix]
        .into_iter()
        .chain(flags.iter().copied());
    Cli::try_parse_from(all).expect("test flags parse").args
}

/// Every rule of ours in `save` (`iptables-save -t nat` output), by chain, in order.
fn ours_by_chain(lines: impl IntoIterator<Item = String>) -> BTreeMap<String, Vec<String>> {
    let mut by_chain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain.starts_with("TRELLIS_") || spec.contains("-j TRELLIS_") {
                by_chain
                    .entry(chain.to_owned())
                    .or_default()
                    .push(spec.to_owned());
            }
        }
    }
    by_chain
}

/// The `nat` table of `ns`, without the `#` lines (they carry dates).
fn nat_table(ns: &Netns, family: Family) -> String {
    let save = match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    };
    let text = exec(ns, save, &["-t", "nat"]).expect("iptables-save runs");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn installed(ns: &Netns, family: Family) -> BTreeMap<String, Vec<String>> {
    ours_by_chain(nat_table(ns, family).lines().map(str::to_owned))
}

fn built(args: &InitArgs, family: Family) -> BTreeMap<String, Vec<String>> {
    let rules = rules::build(args, family).rules;
    ours_by_chain(rules.iter().map(|r| format!("-A {} {}", r.chain, r.spec)))
}

#[test]
fn init_installs_exactly_the_built_rules_for_both_families() {
    require_root();
    let (_sandbox, ns) = sandbox_and_namespace();
    let args = init_args(
        &ns,
        &[
            "--ipv6",
            "on",
            "--exclude-inbound-ports",
            "22",
            "--exclude-outbound-ports",
            "5432,6379",
            "--exclude-outbound-cidrs",
            "198.18.0.0/15,2001:db8::/32",
        ],
    );
    redirect::run(&args).unwrap();
    for family in [Family::V4, Family::V6] {
        let installed = installed(&ns, family);
        assert_eq!(
            installed,
            built(&args, family),
            "{family:?}:\n{}",
            nat_table(&ns, family)
        );
        assert_eq!(installed["PREROUTING"], ["-p tcp -j TRELLIS_INBOUND"]);
        assert_eq!(installed["OUTPUT"], ["-p tcp -j TRELLIS_OUTPUT"]);
    }
}

#[test]
fn running_init_twice_leaves_one_set_of_rules() {
    require_root();
    let (_sandbox, ns) = sandbox_and_namespace();
    let args = init_args(&ns, &["--exclude-outbound-ports", "5432"]);
    redirect::run(&args).unwrap();
    let once = (nat_table(&ns, Family::V4), nat_table(&ns, Family::V6));
    redirect::run(&args).unwrap();
    let twice = (nat_table(&ns, Family::V4), nat_table(&ns, Family::V6));
    assert_eq!(once, twice);

    // Run again with other flags: the new rules replace the old ones, still one jump each.
    let changed = init_args(
        &ns,
        &["--exclude-outbound-ports", "6379", "--proxy-uid", "2000"],
    );
    redirect::run(&changed).unwrap();
    assert_eq!(installed(&ns, Family::V4), built(&changed, Family::V4));
    assert!(!nat_table(&ns, Family::V4).contains("5432"));
}

#[test]
fn cleanup_removes_every_trellis_chain_and_jump_and_nothing_else() {
    require_root();
    let (_sandbox, ns) = sandbox_and_namespace();
    // Someone else's rules, before and after ours.
    exec(&ns, "iptables", &["-t", "nat", "-N", "OTHER_MESH"]).unwrap();
    exec(
        &ns,
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "OTHER_MESH"],
    )
    .unwrap();
    let before = nat_table(&ns, Family::V4);
    redirect::run(&init_args(&ns, &[])).unwrap();
    exec(
        &ns,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "9",
            "-j",
            "RETURN",
        ],
    )
    .unwrap();
    let with_ours = nat_table(&ns, Family::V4);
    assert!(with_ours.contains("TRELLIS_"));

    // A dry run shows the removal but changes nothing.
    redirect::run(&init_args(&ns, &["--cleanup", "--dry-run"])).unwrap();
    assert_eq!(nat_table(&ns, Family::V4), with_ours);

    redirect::run(&init_args(&ns, &["--cleanup"])).unwrap();
    for family in [Family::V4, Family::V6] {
        let after = nat_table(&ns, family);
        assert!(!after.contains("TRELLIS"), "{family:?}:\n{after}");
    }
    let after = nat_table(&ns, Family::V4);
    assert!(after.contains("-A OUTPUT -p udp -j OTHER_MESH"), "{after}");
    assert!(
        after.contains("-A PREROUTING -p tcp -m tcp --dport 9 -j RETURN"),
        "{after}"
    );
    assert_eq!(
        after.replace("-A PREROUTING -p tcp -m tcp --dport 9 -j RETURN\n", ""),
        before
    );

    // Cleaning a clean table is not an error.
    redirect::run(&init_args(&ns, &["--cleanup"])).unwrap();
}

#[test]
fn a_failing_iptables_is_reported_with_its_command() {
    require_root();
    let (_sandbox, ns) = sandbox_and_namespace();
    let args = init_args(
        &ns,
        &["--iptables", "/nonexistent/iptables", "--ipv6", "off"],
    );
    let error = redirect::run(&args).unwrap_err().to_string();
    assert!(
        error.contains("/nonexistent/iptables-save -t nat"),
        "{error}"
    );
}

/// Listens on `label:addr:port` (TCP) or `udp:label:addr:port`; answers each connection or
/// datagram with `<label> <original destination>` (SO_ORIGINAL_DST, so a redirected
/// connection shows where it was headed) and prints `ready` once every socket is bound.
const LISTENER: &str = r#"
import selectors, socket, struct, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    parts = spec.split(":")
    udp = parts[0] == "udp"
    label, addr, port = parts[1:] if udp else parts
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    if not udp:
        s.listen(16)
    sel.register(s, selectors.EVENT_READ, (label, udp))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        label, udp = key.data
        if udp:
            _, peer = key.fileobj.recvfrom(512)
            key.fileobj.sendto(label.encode(), peer)
            continue
        conn, _ = key.fileobj.accept()
        try:
            raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
            port, = struct.unpack("!H", raw[2:4])
            dst = "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)
        except OSError:
            dst = "%s:%d" % conn.getsockname()
        conn.sendall(("%s %s\n" % (label, dst)).encode())
        conn.close()
"#;

/// `tcp|udp addr port`: prints the listener's answer, or `ERROR <why>` within 5 s.
const CLIENT: &str = r#"
import socket, sys
proto, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"hi", (addr, port))
        print(s.recv(512).decode().strip())
    else:
        s = socket.create_connection((addr, port), timeout=5)
        print(s.makefile().readline().strip())
except OSError as e:
    print("ERROR %s" % e)
"#;

/// Who opens a connection: `setpriv` arguments, empty for root.
const ROOT: &[&str] = &[];
const PROXY: &[&str] = &[
    "setpriv",
    "--reuid",
    "1337",
    "--regid",
    "1337",
    "--clear-groups",
];
const PROXY_USER_ONLY: &[&str] = &[
    "setpriv",
    "--reuid",
    "1337",
    "--regid",
    "1000",
    "--clear-groups",
];
const PROXY_GROUP_ONLY: &[&str] = &[
    "setpriv",
    "--reuid",
    "1000",
    "--regid",
    "1337",
    "--clear-groups",
];

/// Connects from `ns` as `user` over `proto` to `addr:port`; the listener's answer.
fn connect(ns: &Netns, user: &[&str], proto: &str, addr: &str, port: u16) -> String {
    let port = port.to_string();
    let client = [python(), "-c", CLIENT, proto, addr, &port];
    let mut command = user.iter().chain(&client);
    let program = command.next().expect("a command has a program");
    exec(ns, program, &command.copied().collect::<Vec<_>>())
        .expect("the client runs")
        .trim()
        .to_owned()
}

/// A pod (198.18.0.1) with listeners standing in for the proxy and the application, linked
/// to a peer (198.18.0.99) with listeners standing in for a remote server; the sandbox they
/// live in comes first.
fn pod_and_peer() -> trellis_sandbox::Result<(Sandbox, Arc<Netns>, Arc<Netns>)> {
    let sandbox = Sandbox::new()?;
    let pod = sandbox.add_namespace("pod")?;
    let peer = sandbox.add_namespace("peer")?;
    pod.veth_to(
        &peer,
        ("eth0", Ipv4Addr::new(198, 18, 0, 1)),
        ("eth0", Ipv4Addr::new(198, 18, 0, 99)),
    )?;
    let listeners = [
        (
            &pod,
            vec![
                "outbound:127.0.0.1:15001",
                "inbound:0.0.0.0:15006",
                "tunnel:0.0.0.0:15008",
                "app:0.0.0.0:8080",
                "app-ssh:0.0.0.0:2222",
            ],
        ),
        (
            &peer,
            vec![
                "remote:198.18.0.99:80",
                "remote-db:198.18.0.99:5432",
                "udp:remote-dns:198.18.0.99:53",
            ],
        ),
    ];
    for (ns, specs) in listeners {
        let listener = ns.spawn(&Cmd::new(python()).args(["-c", LISTENER]).args(specs))?;
        listener.wait_for_output("ready", Duration::from_secs(10))?;
    }
    Ok((sandbox, pod, peer))
}

/// Where a connection is opened from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Pod,
    Peer,
}
use Side::{Peer, Pod};

/// (from, as whom, protocol, address, port, the answer expected).
type Case<'a> = (Side, &'a [&'a str], &'a str, &'a str, u16, &'a str);

#[test]
fn tcp_lands_on_the_proxy_unless_it_is_the_proxys_own_or_excluded() {
    require_root();
    let (_sandbox, pod, peer) = pod_and_peer().unwrap();
    redirect::run(&init_args(
        &pod,
        &[
            "--exclude-inbound-ports",
            "2222",
            "--exclude-outbound-ports",
            "5432",
        ],
    ))
    .unwrap();

    #[rustfmt::skip]
    let cases: &[Case] = &[
        // Outbound TCP goes to 15001, which still learns where it was headed.
        (Pod, ROOT, "tcp", "198.18.0.99", 80, "outbound 198.18.0.99:80"),
        // The proxy's own connections (by UID, by GID, or both) go where they are addressed.
        (Pod, PROXY, "tcp", "198.18.0.99", 80, "remote 198.18.0.99:80"),
        (Pod, PROXY_USER_ONLY, "tcp", "198.18.0.99", 80, "remote 198.18.0.99:80"),
        (Pod, PROXY_GROUP_ONLY, "tcp", "198.18.0.99", 80, "remote 198.18.0.99:80"),
        // Excluded outbound port.
        (Pod, ROOT, "tcp", "198.18.0.99", 5432, "remote-db 198.18.0.99:5432"),
        // UDP (DNS) is never touched.
        (Pod, ROOT, "udp", "198.18.0.99", 53, "remote-dns"),
        // Loopback is left alone.
        (Pod, ROOT, "tcp", "127.0.0.1", 8080, "app 127.0.0.1:8080"),
        // The pod's own IP (routed over lo) goes through the proxy like any destination...
        (Pod, ROOT, "tcp", "198.18.0.1", 8080, "outbound 198.18.0.1:8080"),
        // ...and the proxy handing a connection to the application reaches it.
        (Pod, PROXY, "tcp", "198.18.0.1", 8080, "app 198.18.0.1:8080"),
        // Inbound TCP goes to 15006, which learns the application port.
        (Peer, ROOT, "tcp", "198.18.0.1", 8080, "inbound 198.18.0.1:8080"),
        // The tunnel port and excluded inbound ports are reached directly.
        (Peer, ROOT, "tcp", "198.18.0.1", 15008, "tunnel 198.18.0.1:15008"),
        (Peer, ROOT, "tcp", "198.18.0.1", 2222, "app-ssh 198.18.0.1:2222"),
    ];
    for (from, user, proto, addr, port, expected) in cases {
        let ns = match from {
            Pod => &pod,
            Peer => &peer,
        };
        assert_eq!(
            connect(ns, user, proto, addr, *port),
            *expected,
            "{proto} {addr}:{port} from the {from:?} as {user:?}"
        );
    }

    // Excluding the peer's network (re-running init) lets root's connection through too.
    redirect::run(&init_args(
        &pod,
        &["--exclude-outbound-cidrs", "198.18.0.96/29"],
    ))
    .unwrap();
    assert_eq!(
        connect(&pod, ROOT, "tcp", "198.18.0.99", 80),
        "remote 198.18.0.99:80"
    );
    assert_eq!(
        connect(&pod, ROOT, "tcp", "198.18.0.1", 8080),
        "outbound 198.18.0.1:8080"
    );

    // After cleanup nothing is redirected.
    redirect::run(&init_args(&pod, &["--cleanup"])).unwrap();
    assert_eq!(
        connect(&pod, ROOT, "tcp", "198.18.0.1", 8080),
        "app 198.18.0.1:8080"
    );
    assert_eq!(
        connect(&peer, ROOT, "tcp", "198.18.0.1", 8080),
        "app 198.18.0.1:8080"
    );
}
