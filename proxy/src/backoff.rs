//! The one retry delay of every reconnect loop in the proxy (certificate renewal, discovery):
//! capped exponential backoff with ±25 % jitter, so proxies restarted together do not retry
//! together.

use std::time::Duration;

/// The first delay.
pub const MIN: Duration = Duration::from_millis(250);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(30);

/// The delay before retry number `failures` (1 for the first retry): `MIN · 2^(failures-1)`,
/// capped at `MAX`, then scaled by a random factor in [0.75, 1.25).
pub fn delay(failures: u32) -> Duration {
    let exp = MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    exp.min(MAX).mul_f64(0.75 + 0.5 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_minimum_up_to_the_cap_with_jitter() {
        for _ in 0..100 {
            let first = delay(1);
            assert!(
                first >= MIN.mul_f64(0.75) && first < MIN.mul_f64(1.25),
                "{first:?}"
            );
            let third = delay(3);
            assert!(third >= (MIN * 4).mul_f64(0.75) && third < (MIN * 4).mul_f64(1.25));
            let late = delay(50);
            assert!(
                late >= MAX.mul_f64(0.75) && late < MAX.mul_f64(1.25),
                "{late:?}"
            );
        }
    }
}
