//! GCRA (the generic cell rate algorithm): a rate and a burst, kept as one
//! instant — the theoretical arrival time of the next allowed request.
//! Pure: the caller passes the time, so tests need no clock.

use std::time::Duration;

use tokio::time::Instant;

/// How late an actor's timer may fire: tokio's timers tick in whole
/// milliseconds, and a loaded machine adds more. A limit faster than one
/// request per tick would otherwise lose each tick's unused time for good:
/// with a burst of one, a class sender that is told to wait 6 µs wakes a
/// millisecond later and sends one, so it sends about a thousand a second
/// whatever its limit (`docs/benchmarks.md`, a fifth session).
pub const TIMER_SLACK: Duration = Duration::from_millis(5);

/// A rate limit of `rate` requests per `period`, allowing `burst` at once.
#[derive(Clone, Debug)]
pub struct Gcra {
    /// Time between two requests at the sustained rate.
    emission: Duration,
    /// How far ahead of `now` the TAT may run: `(burst - 1) * emission`.
    tolerance: Duration,
    /// Theoretical arrival time of the next conforming request.
    tat: Option<Instant>,
}

impl Gcra {
    /// `per_period` requests every `period`, at most `burst` back to back.
    /// `per_period` of 0 means nothing is ever allowed.
    pub fn new(per_period: u32, period: Duration, burst: u32) -> Gcra {
        let emission = if per_period == 0 {
            Duration::MAX
        } else {
            period / per_period
        };
        Gcra {
            emission,
            tolerance: emission.saturating_mul(burst.max(1) - 1),
            tat: None,
        }
    }

    /// Requests per minute, with a burst of what the limit allows in
    /// [`TIMER_SLACK`]: one for any limit slower than one request per
    /// slack (12,000 a minute), so a slow limit paces every request.
    pub fn per_minute(n: u32) -> Gcra {
        let period = Duration::from_secs(60);
        let burst = match period.checked_div(n) {
            Some(emission) if !emission.is_zero() => {
                1 + (TIMER_SLACK.as_nanos() / emission.as_nanos()) as u32
            }
            _ => 1,
        };
        Gcra::new(n, period, burst)
    }

    /// Requests per second (fractional allowed) with a burst of one second's
    /// worth.
    pub fn per_second(rate: f64) -> Gcra {
        if rate <= 0.0 || !rate.is_finite() {
            return Gcra::new(0, Duration::from_secs(1), 1);
        }
        let emission = Duration::from_secs_f64(1.0 / rate);
        let burst = rate.floor().max(1.0) as u32;
        Gcra {
            emission,
            tolerance: emission.saturating_mul(burst - 1),
            tat: None,
        }
    }

    /// The time between two requests at the sustained rate.
    pub fn emission(&self) -> Duration {
        self.emission
    }

    /// How far ahead of the sustained rate requests may run (the burst,
    /// as time): `(burst - 1) * emission`.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// The same limit shared out among `n` instances: each gets `1/n` of
    /// the rate, and a burst over the same stretch of time (so `1/n` of it,
    /// never below one request). Starts with every slot free.
    pub fn divided(&self, n: u32) -> Gcra {
        Gcra {
            emission: self.emission.saturating_mul(n.max(1)),
            tolerance: self.tolerance,
            tat: None,
        }
    }

    /// Takes one slot if one is free at `now`; otherwise says how long to
    /// wait before one will be.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if self.emission == Duration::MAX {
            return Err(Duration::from_secs(3600));
        }
        let tat = self.tat.unwrap_or(now).max(now);
        let allow_at = tat.checked_sub(self.tolerance).unwrap_or(now);
        if allow_at > now {
            return Err(allow_at - now);
        }
        self.tat = Some(tat + self.emission);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allows_the_rate_and_no_more() {
        let start = Instant::now();
        let mut g = Gcra::per_minute(60);
        assert!(g.try_acquire(start).is_ok());
        let wait = g.try_acquire(start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(g.try_acquire(start + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_fast_limit_is_not_capped_by_the_timers_tick() {
        // A class sender takes what conforms, and when told to wait asks
        // again when its timer fires: a millisecond later at the earliest.
        let sent_in_a_second = |per_minute: u32| {
            let mut g = Gcra::per_minute(per_minute);
            let start = Instant::now();
            let mut now = start;
            let mut sent = 0u32;
            while now < start + Duration::from_secs(1) {
                while g.try_acquire(now).is_ok() {
                    sent += 1;
                }
                now += Duration::from_millis(1);
            }
            sent
        };
        // 100,000 a second: with a burst of one it sent 1,000.
        let fast = sent_in_a_second(6_000_000);
        assert!((99_000..=100_600).contains(&fast), "{fast}");
        // 1,000 a second, one a millisecond.
        assert_eq!(sent_in_a_second(60_000), 1_000 + 5);
        // A slow limit keeps a burst of one: exactly its rate.
        assert_eq!(sent_in_a_second(600), 10);
        assert_eq!(Gcra::per_minute(600).tolerance(), Duration::ZERO);
    }

    #[test]
    fn burst_is_allowed_at_once() {
        let start = Instant::now();
        let mut g = Gcra::new(10, Duration::from_secs(1), 5);
        for _ in 0..5 {
            assert!(g.try_acquire(start).is_ok());
        }
        assert!(g.try_acquire(start).is_err());
    }

    #[test]
    fn divided_keeps_a_share_of_the_rate_and_the_burst() {
        let start = Instant::now();
        let mut g = Gcra::per_minute(600).divided(3);
        assert_eq!(g.emission(), Duration::from_millis(300));
        assert_eq!(g.tolerance(), Duration::ZERO);
        assert!(g.try_acquire(start).is_ok());
        assert_eq!(g.try_acquire(start), Err(Duration::from_millis(300)));

        // 60/s with a one-second burst: 20/s each, still a one-second burst.
        let mut g = Gcra::per_second(60.0).divided(3);
        let admitted = (0..100).filter(|_| g.try_acquire(start).is_ok()).count();
        assert_eq!(admitted, 20);
        assert_eq!(Gcra::per_minute(0).divided(4).emission(), Duration::MAX);
    }

    #[test]
    fn zero_rate_allows_nothing() {
        let mut g = Gcra::per_minute(0);
        assert!(g.try_acquire(Instant::now()).is_err());
    }

    proptest! {
        /// Over any window, a limiter of `rate`/s with burst `b` admits at
        /// most `b + rate * window` requests, however they are timed.
        #[test]
        fn never_admits_more_than_rate_plus_burst(
            rate in 1u32..200,
            burst in 1u32..20,
            steps in proptest::collection::vec(0u64..50_000, 1..400),
        ) {
            let start = Instant::now();
            let mut g = Gcra::new(rate, Duration::from_secs(1), burst);
            let mut now = start;
            let mut admitted = 0u64;
            for step in steps {
                now += Duration::from_micros(step);
                if g.try_acquire(now).is_ok() {
                    admitted += 1;
                }
            }
            let window = (now - start).as_secs_f64();
            let bound = burst as f64 + rate as f64 * window;
            prop_assert!(admitted as f64 <= bound + 1e-9, "admitted {admitted} > {bound}");
        }

        /// A caller that waits exactly as told is always admitted next.
        #[test]
        fn waiting_as_told_is_enough(rate in 1u32..1000, burst in 1u32..10, n in 1usize..100) {
            let mut now = Instant::now();
            let mut g = Gcra::new(rate, Duration::from_secs(1), burst);
            for _ in 0..n {
                match g.try_acquire(now) {
                    Ok(()) => {}
                    Err(wait) => {
                        now += wait;
                        prop_assert!(g.try_acquire(now).is_ok());
                    }
                }
            }
        }
    }
}
