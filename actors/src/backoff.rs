//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// The nominal (un-jittered) delay before retry number `retry` (1-based):
/// `base * 2^(retry-1)`, capped at `max`.
pub fn nominal(base: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    base.saturating_mul(factor).min(max)
}

/// The delay to use: uniformly in `[nominal/2, nominal]` ("equal jitter"),
/// so retries spread out but never come sooner than half the nominal delay
/// nor later than it (the delay queue for that retry caps at the nominal).
pub fn jittered(base: Duration, max: Duration, retry: u32, rng: &mut impl Rng) -> Duration {
    let d = nominal(base, max, retry);
    let half = d / 2;
    let spread = (d - half).as_micros() as u64;
    half + Duration::from_micros(if spread == 0 {
        0
    } else {
        rng.random_range(0..=spread)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_each_retry_up_to_the_cap() {
        let base = Duration::from_secs(60);
        let max = Duration::from_secs(200);
        assert_eq!(nominal(base, max, 1), Duration::from_secs(60));
        assert_eq!(nominal(base, max, 2), Duration::from_secs(120));
        assert_eq!(nominal(base, max, 3), Duration::from_secs(200));
        assert_eq!(nominal(base, max, 40), Duration::from_secs(200));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_half_and_full(base_ms in 1u64..1_000_000, retry in 1u32..10, seed in any::<u64>()) {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_secs(86_400);
            let d = jittered(base, max, retry, &mut rng);
            let n = nominal(base, max, retry);
            prop_assert!(d <= n);
            prop_assert!(d >= n / 2);
        }
    }
}
