//! Parsing `trellis-proxy init` flags: defaults from docs/design.md, typed lists, and errors that
//! name the flag and the bad value.

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: InitArgs,
}

fn parse(flags: &[&str]) -> Result<InitArgs, String> {
    Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
        .map(|cli| cli.args)
        .map_err(|e| e.to_string())
}

fn ports(list: &[u16]) -> PortList {
    PortList(list.iter().map(|p| Port::try_from(*p).unwrap()).collect())
}

#[test]
fn defaults_match_the_design() {
    let args = parse(&[]).unwrap();
    assert_eq!((args.proxy_uid, args.proxy_gid), (1337, 1337));
    assert_eq!(args.inbound_port.get(), 15006);
    assert_eq!(args.outbound_port.get(), 15001);
    assert_eq!(args.tunnel_port.get(), 15008);
    assert_eq!(
        args.proxy_ports,
        ports(&[15000, 15001, 15006, 15008, 15020])
    );
    assert_eq!(args.exclude_inbound_ports, PortList::default());
    assert_eq!(args.exclude_outbound_ports, PortList::default());
    assert_eq!(args.exclude_outbound_cidrs, CidrList::default());
    assert_eq!(args.ipv6, Ipv6Mode::Auto);
    assert_eq!(args.iptables, PathBuf::from("iptables"));
    assert_eq!(args.ip6tables, PathBuf::from("ip6tables"));
    assert!(!args.dry_run && !args.cleanup);
    assert!(args.command_prefix.is_empty());
}

#[test]
fn the_injectors_flags_parse() {
    // What trellis-injector passes (injector/src/containers.rs).
    let args = parse(&[
        "--proxy-uid",
        "1337",
        "--proxy-gid",
        "1337",
        "--exclude-inbound-ports",
        "22,9100",
        "--exclude-outbound-ports",
        "5432, 6379",
        "--exclude-outbound-cidrs",
        "10.96.0.0/12,fd00::/8,198.18.0.7",
    ])
    .unwrap();
    assert_eq!(args.exclude_inbound_ports, ports(&[22, 9100]));
    assert_eq!(args.exclude_outbound_ports, ports(&[5432, 6379]));
    assert_eq!(
        args.exclude_outbound_cidrs.to_string(),
        "10.96.0.0/12,fd00::/8,198.18.0.7/32"
    );
}

#[test]
fn an_empty_list_is_no_exclusion() {
    let args = parse(&[
        "--exclude-inbound-ports",
        "",
        "--exclude-outbound-cidrs",
        " ",
    ])
    .unwrap();
    assert!(args.exclude_inbound_ports.0.is_empty());
    assert!(args.exclude_outbound_cidrs.0.is_empty());
}

#[test]
fn bad_values_are_refused_naming_the_flag_and_the_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--exclude-inbound-ports", "22,abc"],
            "--exclude-inbound-ports",
            "\"abc\"",
        ),
        (
            &["--exclude-inbound-ports", "0"],
            "--exclude-inbound-ports",
            "\"0\"",
        ),
        (
            &["--exclude-outbound-ports", "70000"],
            "--exclude-outbound-ports",
            "\"70000\"",
        ),
        (
            &["--exclude-outbound-ports", "80,,443"],
            "--exclude-outbound-ports",
            "80,,443",
        ),
        (
            &["--exclude-outbound-ports", "80,"],
            "--exclude-outbound-ports",
            "80,",
        ),
        (
            &["--exclude-outbound-cidrs", "10.0.0.0/33"],
            "--exclude-outbound-cidrs",
            "10.0.0.0/33",
        ),
        (
            &["--exclude-outbound-cidrs", "fd00::/129"],
            "--exclude-outbound-cidrs",
            "fd00::/129",
        ),
        (
            &["--exclude-outbound-cidrs", "10.0.0.0/x"],
            "--exclude-outbound-cidrs",
            "10.0.0.0/x",
        ),
        (
            &["--exclude-outbound-cidrs", "10.0.0/8"],
            "--exclude-outbound-cidrs",
            "10.0.0/8",
        ),
        (
            &["--exclude-outbound-cidrs", "example.com"],
            "--exclude-outbound-cidrs",
            "example.com",
        ),
        (&["--inbound-port", "0"], "--inbound-port", "0"),
        (&["--outbound-port=-1"], "--outbound-port", "-1"),
        (&["--tunnel-port", "65536"], "--tunnel-port", "65536"),
        (&["--proxy-ports", "15000,http"], "--proxy-ports", "http"),
        (&["--proxy-uid", "root"], "--proxy-uid", "root"),
        (&["--ipv6", "maybe"], "--ipv6", "maybe"),
    ];
    for (flags, flag, value) in cases {
        let error = parse(flags).expect_err(&format!("{flags:?} should be refused"));
        assert!(
            error.contains(flag),
            "{flags:?}: error does not name {flag}: {error}"
        );
        assert!(
            error.contains(value),
            "{flags:?}: error does not name {value}: {error}"
        );
    }
}

#[test]
fn cidrs_are_stored_as_networks() {
    let cases = [
        ("10.96.0.0/12", "10.96.0.0/12"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("198.18.0.99", "198.18.0.99/32"),
        ("fd00::1/8", "fd00::/8"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("::/0", "::/0"),
    ];
    for (given, network) in cases {
        assert_eq!(
            given.parse::<Cidr>().unwrap().to_string(),
            network,
            "{given}"
        );
    }
    assert!("fd00::/8".parse::<Cidr>().unwrap().is_ipv6());
    assert_eq!("fd00::/8".parse::<Cidr>().unwrap().prefix(), 8);
}

#[test]
fn the_ipv6_mode_and_commands_can_be_chosen() {
    let args = parse(&[
        "--ipv6",
        "off",
        "--iptables",
        "/usr/sbin/iptables-legacy",
        "--ip6tables",
        "ip6tables-nft",
        "--command-prefix",
        "ip netns exec trellis-t-1",
    ])
    .unwrap();
    assert_eq!(args.ipv6, Ipv6Mode::Off);
    assert_eq!(args.iptables, PathBuf::from("/usr/sbin/iptables-legacy"));
    assert_eq!(args.ip6tables, PathBuf::from("ip6tables-nft"));
    assert_eq!(args.command_prefix, ["ip", "netns", "exec", "trellis-t-1"]);
}

#[test]
fn the_test_only_command_prefix_is_hidden_from_help() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    assert!(!help.contains("command-prefix"), "{help}");
    assert!(help.contains("TRELLIS_EXCLUDE_OUTBOUND_CIDRS"), "{help}");
}
