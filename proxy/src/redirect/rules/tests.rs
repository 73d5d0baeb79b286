//! The rule set, table-driven: every exclusion appears, the proxy's traffic is skipped before
//! anything is redirected, only TCP is touched, and IPv6 gets its own loopback and CIDRs.

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: InitArgs,
}

fn rules(flags: &[&str], family: Family) -> Vec<String> {
    let args = Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
        .unwrap()
        .args;
    build(&args, family)
        .rules
        .iter()
        .map(|r| format!("-A {} {}", r.chain, r.spec))
        .collect()
}

fn position(rules: &[String], line: &str) -> usize {
    rules
        .iter()
        .position(|r| r == line)
        .unwrap_or_else(|| panic!("no rule {line:?} in\n{}", rules.join("\n")))
}

#[test]
fn the_default_ipv4_rules_are_exactly_these() {
    let expected = [
        "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15001 -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15006 -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT",
        "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A TRELLIS_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A TRELLIS_OUTPUT -d 127.0.0.0/8 -o lo -j RETURN",
        "-A TRELLIS_OUTPUT -p tcp -j TRELLIS_OUT_REDIRECT",
        "-A TRELLIS_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A PREROUTING -p tcp -j TRELLIS_INBOUND",
        "-A OUTPUT -p tcp -j TRELLIS_OUTPUT",
    ];
    assert_eq!(rules(&[], Family::V4), expected);
}

#[test]
fn every_exclusion_appears_as_a_return_before_the_redirect() {
    // (flags, family, rule that must come before the chain's redirect jump)
    let cases: &[(&[&str], Family, &str)] = &[
        (
            &["--exclude-inbound-ports", "22,9100"],
            Family::V4,
            "-A TRELLIS_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        ),
        (
            &["--exclude-inbound-ports", "22,9100"],
            Family::V4,
            "-A TRELLIS_INBOUND -p tcp -m tcp --dport 9100 -j RETURN",
        ),
        (
            &["--exclude-inbound-ports", "22"],
            Family::V6,
            "-A TRELLIS_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        ),
        (
            &["--exclude-outbound-ports", "5432,6379"],
            Family::V4,
            "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        ),
        (
            &["--exclude-outbound-ports", "5432,6379"],
            Family::V6,
            "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
        ),
        (
            &["--exclude-outbound-cidrs", "10.96.0.0/12,fd00::/8"],
            Family::V4,
            "-A TRELLIS_OUTPUT -d 10.96.0.0/12 -j RETURN",
        ),
        (
            &["--exclude-outbound-cidrs", "10.96.0.0/12,fd00::/8"],
            Family::V6,
            "-A TRELLIS_OUTPUT -d fd00::/8 -j RETURN",
        ),
        (
            &["--proxy-ports", "15000,15090"],
            Family::V4,
            "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        ),
        (
            &["--proxy-uid", "2000"],
            Family::V4,
            "-A TRELLIS_OUTPUT -m owner --uid-owner 2000 -j RETURN",
        ),
        (
            &["--proxy-gid", "3000"],
            Family::V6,
            "-A TRELLIS_OUTPUT -m owner --gid-owner 3000 -j RETURN",
        ),
    ];
    for (flags, family, line) in cases {
        let rules = rules(flags, *family);
        let (chain, redirect) = if line.starts_with("-A TRELLIS_INBOUND") {
            (INBOUND, IN_REDIRECT)
        } else {
            (OUTPUT, OUT_REDIRECT)
        };
        let jump = format!("-A {chain} -p tcp -j {redirect}");
        assert!(
            position(&rules, line) < position(&rules, &jump),
            "{flags:?}: {line} after {jump}"
        );
    }
}

#[test]
fn the_proxys_own_traffic_is_skipped_before_anything_else_in_output() {
    for family in [Family::V4, Family::V6] {
        let rules = rules(&["--exclude-outbound-ports", "5432"], family);
        let output: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("-A TRELLIS_OUTPUT "))
            .collect();
        assert_eq!(
            output[0], "-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "{family:?}"
        );
        assert_eq!(
            output[1], "-A TRELLIS_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "{family:?}"
        );
        assert_eq!(
            output.last().map(|s| s.as_str()),
            Some("-A TRELLIS_OUTPUT -p tcp -j TRELLIS_OUT_REDIRECT"),
            "{family:?}: the redirect is the last word"
        );
    }
}

#[test]
fn the_tunnel_and_listener_ports_are_never_redirected_inbound_whatever_proxy_ports_says() {
    let rules = rules(
        &[
            "--proxy-ports",
            "15000",
            "--tunnel-port",
            "16008",
            "--inbound-port",
            "16006",
            "--outbound-port",
            "16001",
        ],
        Family::V4,
    );
    for port in [15000, 16001, 16006, 16008] {
        position(
            &rules,
            &format!("-A TRELLIS_INBOUND -p tcp -m tcp --dport {port} -j RETURN"),
        );
    }
    position(
        &rules,
        "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
    );
    position(
        &rules,
        "-A TRELLIS_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
    );
}

#[test]
fn each_port_is_listed_once() {
    let rules = rules(
        &[
            "--exclude-inbound-ports",
            "15008,22,22",
            "--exclude-outbound-ports",
            "80,80",
        ],
        Family::V4,
    );
    let count = |line: &str| rules.iter().filter(|r| *r == line).count();
    assert_eq!(
        count("-A TRELLIS_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"),
        1
    );
    assert_eq!(
        count("-A TRELLIS_INBOUND -p tcp -m tcp --dport 22 -j RETURN"),
        1
    );
    assert_eq!(
        count("-A TRELLIS_OUTPUT -p tcp -m tcp --dport 80 -j RETURN"),
        1
    );
}

#[test]
fn cidrs_go_only_to_their_own_family() {
    let flags = ["--exclude-outbound-cidrs", "10.96.0.0/12,fd00::/8"];
    let v4 = rules(&flags, Family::V4);
    let v6 = rules(&flags, Family::V6);
    assert!(!v4.iter().any(|r| r.contains("fd00::")), "{v4:?}");
    assert!(!v6.iter().any(|r| r.contains("10.96.0.0")), "{v6:?}");
}

#[test]
fn ipv6_skips_its_own_loopback() {
    let v6 = rules(&[], Family::V6);
    position(&v6, "-A TRELLIS_OUTPUT -d ::1/128 -o lo -j RETURN");
    assert!(!v6.iter().any(|r| r.contains("127.0.0.0")), "{v6:?}");
    // Otherwise the same rules as IPv4.
    let v4 = rules(&[], Family::V4);
    assert_eq!(v4.len(), v6.len());
}

#[test]
fn loopback_is_skipped_by_destination_not_by_interface_alone() {
    // A bare `-o lo -j RETURN` would let the application reach its own pod IP (routed over
    // lo) without the proxy.
    for family in [Family::V4, Family::V6] {
        let rules = rules(&[], family);
        assert!(
            !rules
                .iter()
                .any(|r| r.ends_with(" -o lo -j RETURN") && !r.contains(" -d ")),
            "{rules:?}"
        );
    }
}

#[test]
fn only_tcp_enters_our_chains() {
    for family in [Family::V4, Family::V6] {
        let rules = rules(&["--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8"], family);
        let jumps: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("-A PREROUTING ") || r.starts_with("-A OUTPUT "))
            .collect();
        assert_eq!(
            jumps,
            [
                "-A PREROUTING -p tcp -j TRELLIS_INBOUND",
                "-A OUTPUT -p tcp -j TRELLIS_OUTPUT"
            ]
        );
        for redirect in rules.iter().filter(|r| r.contains("REDIRECT --to-ports")) {
            assert!(redirect.contains(" -p tcp "), "{redirect}");
        }
        assert!(!rules.iter().any(|r| r.contains("udp")), "{rules:?}");
    }
}

#[test]
fn every_rule_is_in_one_of_our_chains_or_is_one_of_the_two_jumps() {
    for rule in build(&Cli::parse_from(["init"]).args, Family::V4).rules {
        assert!(
            CHAINS.contains(&rule.chain) || ["PREROUTING", "OUTPUT"].contains(&rule.chain),
            "{rule:?}"
        );
        assert!(
            rule.chain == "PREROUTING"
                || rule.chain == "OUTPUT"
                || rule.chain.starts_with(CHAIN_PREFIX)
        );
    }
}
