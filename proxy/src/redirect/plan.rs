//! The `iptables-restore --noflush` transactions, as pure functions of what is installed
//! ([`SavedNat`]) and what should be ([`NatRules`]). One transaction per family, applied
//! atomically by `iptables-restore`, so a pod never has half a rule set.
//!
//! Idempotence comes from two facts of `iptables-restore --noflush`: declaring a chain
//! (`:NAME - [0:0]`) creates it or, if it exists, flushes it; and `-D` deletes the exact rule
//! it names. So an install deletes every existing jump into our chains, redeclares our chains,
//! drops chains of ours that the new rule set no longer has, and adds the rules and one jump
//! each from `PREROUTING` and `OUTPUT`: the same result whether run once or ten times.

use std::fmt::Write as _;

use super::{
    rules::{CHAINS, NatRules},
    saved::SavedNat,
};

/// The transaction that makes `saved` hold exactly `rules`. With an empty `saved` it is the
/// rule set itself, which is what `--dry-run` prints.
pub fn install(saved: &SavedNat, rules: &NatRules) -> String {
    let mut text = String::from("*nat\n");
    let jumps = saved.jumps_to_ours();
    if !jumps.is_empty() {
        text.push_str("# Remove the jumps of the rules installed before.\n");
        for jump in jumps {
            let _ = writeln!(text, "-D {} {}", jump.chain, jump.spec);
        }
    }
    text.push_str("# Our chains, created or emptied.\n");
    for chain in CHAINS {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    let stale: Vec<&str> = saved
        .our_chains()
        .into_iter()
        .filter(|chain| !CHAINS.contains(chain))
        .collect();
    if !stale.is_empty() {
        text.push_str("# Chains of ours this version no longer uses.\n");
        remove_chains(&mut text, &stale);
    }
    let _ = writeln!(text, "# {} interception rules.", rules.family.name());
    for rule in &rules.rules {
        let _ = writeln!(text, "-A {} {}", rule.chain, rule.spec);
    }
    text.push_str("COMMIT\n");
    text
}

/// The transaction that removes every jump into our chains and every chain of ours, and
/// nothing else; `None` when nothing of ours is installed.
pub fn cleanup(saved: &SavedNat) -> Option<String> {
    if !saved.has_ours() {
        return None;
    }
    let mut text = String::from("*nat\n");
    for jump in saved.jumps_to_ours() {
        let _ = writeln!(text, "-D {} {}", jump.chain, jump.spec);
    }
    remove_chains(&mut text, &saved.our_chains());
    text.push_str("COMMIT\n");
    Some(text)
}

/// Flushes every chain first, then deletes them: a chain cannot be deleted while another
/// still jumps to it.
fn remove_chains(text: &mut String, chains: &[&str]) {
    for chain in chains {
        let _ = writeln!(text, "-F {chain}");
    }
    for chain in chains {
        let _ = writeln!(text, "-X {chain}");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::redirect::{
        config::InitArgs,
        rules::{Family, build},
    };

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn default_rules() -> NatRules {
        build(&Cli::parse_from(["init"]).args, Family::V4)
    }

    const INSTALLED_WITH_STALE_CHAIN: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TRELLIS_INBOUND - [0:0]
:TRELLIS_OLD - [0:0]
-A PREROUTING -p tcp -j TRELLIS_INBOUND
-A PREROUTING -p tcp -j TRELLIS_INBOUND
-A OUTPUT -p tcp -j TRELLIS_OLD
-A OUTPUT -p udp -j RETURN
-A TRELLIS_INBOUND -j TRELLIS_OLD
COMMIT
";

    #[test]
    fn a_fresh_install_is_the_rule_set_and_nothing_more() {
        let text = install(&SavedNat::default(), &default_rules());
        assert!(!text.contains("-D "), "{text}");
        assert!(!text.contains("-X "), "{text}");
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        assert_eq!(text.matches("-A PREROUTING ").count(), 1, "{text}");
        assert_eq!(text.matches("-A OUTPUT ").count(), 1, "{text}");
    }

    #[test]
    fn a_reinstall_deletes_every_old_jump_and_stale_chain_before_adding_one_jump_each() {
        let text = install(
            &SavedNat::parse(INSTALLED_WITH_STALE_CHAIN),
            &default_rules(),
        );
        let lines: Vec<&str> = text.lines().collect();
        let position = |line: &str| {
            lines
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("no line {line:?} in\n{text}"))
        };
        assert_eq!(
            text.matches("-D PREROUTING -p tcp -j TRELLIS_INBOUND\n")
                .count(),
            2
        );
        assert!(text.contains("-D OUTPUT -p tcp -j TRELLIS_OLD\n"));
        assert!(!text.contains("-D OUTPUT -p udp"), "not ours: {text}");
        // TRELLIS_INBOUND (still jumping to TRELLIS_OLD) is emptied before TRELLIS_OLD goes.
        assert!(position(":TRELLIS_INBOUND - [0:0]") < position("-X TRELLIS_OLD"));
        assert!(position("-F TRELLIS_OLD") < position("-X TRELLIS_OLD"));
        assert!(position("-X TRELLIS_OLD") < position("-A PREROUTING -p tcp -j TRELLIS_INBOUND"));
        assert!(
            !text.contains("-X TRELLIS_INBOUND"),
            "current chains are kept: {text}"
        );
    }

    #[test]
    fn cleanup_removes_our_jumps_and_chains_and_nothing_else() {
        let text = cleanup(&SavedNat::parse(INSTALLED_WITH_STALE_CHAIN)).expect("ours installed");
        let expected = "\
*nat
-D PREROUTING -p tcp -j TRELLIS_INBOUND
-D PREROUTING -p tcp -j TRELLIS_INBOUND
-D OUTPUT -p tcp -j TRELLIS_OLD
-F TRELLIS_INBOUND
-F TRELLIS_OLD
-X TRELLIS_INBOUND
-X TRELLIS_OLD
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn cleanup_of_a_clean_table_does_nothing() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n";
        assert_eq!(cleanup(&SavedNat::parse(clean)), None);
    }
}
