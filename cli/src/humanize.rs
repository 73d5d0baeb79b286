//! Durations as people read them in a terminal: the two largest units (`3d 4h`, `23h 59m`).

/// A duration in its two largest units: `3d 4h`, `23h 59m`, `4m 10s`, `12s`.
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        for (secs, want) in [
            (12, "12s"),
            (250, "4m 10s"),
            (86_399, "23h 59m"),
            (3 * 86_400 + 4 * 3600 + 5, "3d 4h"),
        ] {
            assert_eq!(short_duration(secs), want);
        }
    }
}
