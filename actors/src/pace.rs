//! `Pace`: the rate limit a class sender or a provider obeys, kept either in
//! this process (a plain [`Gcra`]) or shared by every herald instance
//! through [`SharedLimits`] (Redis).
//!
//! The actors ask synchronously — `try_acquire(now, demand)` answers at once
//! with "go" or "wait this long" — while the shared store answers
//! asynchronously. So a shared pace keeps a small *lease*: slots the store
//! reserved for it, each with the moment it conforms, spent locally one per
//! request, never before that moment. While requests wait for more than
//! the lease holds, it keeps one acquire in flight (never more), sized to
//! the demand and sent up to [`LEAD`] before the store's next free slot: a
//! timer that fires late then costs nothing, because the slot was already
//! reserved, where a GCRA asked at the last moment would lose the late
//! time for good.
//!
//! When the store does not answer, the pace falls back to its local limit
//! divided by the number of instances (so the fleet as a whole stays within
//! the limit if every instance is cut off alike), probes the store at most
//! once a second, and returns to the shared limit as soon as a probe is
//! answered. [`SharedStatus`] turns the transitions of every pace in the
//! process into one log line each way, one counter and one gauge.
//!
//! The decisions are in [`Lease`], pure (the caller passes the clock and the
//! store's answers), so they are unit-tested without a runtime or Redis.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::model::Channel;
use crate::ports::{Grant, LimitsUnavailable, SharedLimits};
use crate::rate_limiter::Gcra;

/// How soon to look again while an acquire is in flight (a local Redis
/// answers in well under a millisecond).
pub const POLL: Duration = Duration::from_millis(1);
/// How often a degraded pace asks the store whether it is back.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long past its moment a reserved slot stays usable. The store counted
/// it as used when it reserved it; spending it much later, together with
/// the ones after it, would send a burst the limit never allowed.
pub const LEASE_TTL: Duration = Duration::from_millis(100);
/// A lease covers at most this much of the rate, so a fast limit costs one
/// round trip per batch rather than per message.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How far ahead of its next slot a pace asks the store: the round trip
/// plus the lateness of the actor's timers, with room to spare on a loaded
/// machine. It bounds what a pace can hold unspent when its demand stops.
pub const LEAD: Duration = Duration::from_millis(25);

/// The Redis key of a class's own limit on a channel. Class names are
/// `[a-z0-9_]+` (validated), so keys never collide and carry no personal data.
pub fn class_key(channel: Channel, class: &str) -> Arc<str> {
    format!("herald:rl:{channel}:{class}").into()
}

/// The Redis key of a provider's account-wide limit.
pub fn provider_key(channel: Channel) -> Arc<str> {
    format!("herald:rl:provider:{channel}").into()
}

/// Whether this process's paces use the shared limits, for all of them at
/// once: one log line and one counter increment per transition, however
/// many paces notice it, and the `herald_rate_limit_shared` gauge.
pub struct SharedStatus {
    /// `true` while shared; the gauge is written under this lock so the
    /// two never disagree.
    shared: Mutex<bool>,
    /// `herald_rate_limit_degraded_total`.
    degraded_total: IntCounter,
    /// `herald_rate_limit_shared`: 1 shared, 0 degraded.
    gauge: IntGauge,
}

impl SharedStatus {
    /// Starts shared (gauge 1). The metrics are written here directly rather
    /// than through the metrics actor: they mirror this flag, and a message
    /// lost while that actor restarts would leave the gauge wrong until the
    /// next transition.
    pub fn new(degraded_total: IntCounter, gauge: IntGauge) -> Arc<SharedStatus> {
        gauge.set(1);
        Arc::new(SharedStatus {
            shared: Mutex::new(true),
            degraded_total,
            gauge,
        })
    }

    /// A status whose metrics are registered nowhere (tests).
    #[cfg(test)]
    pub fn detached() -> Arc<SharedStatus> {
        SharedStatus::new(
            IntCounter::new("detached_degraded_total", "unregistered").expect("valid metric"),
            IntGauge::new("detached_shared", "unregistered").expect("valid metric"),
        )
    }

    pub fn is_shared(&self) -> bool {
        *self.lock()
    }

    /// The store did not answer; logs and counts only the first to notice.
    pub fn degraded(&self, why: &LimitsUnavailable) {
        let mut shared = self.lock();
        if *shared {
            *shared = false;
            self.degraded_total.inc();
            self.gauge.set(0);
            warn!(error = %why, "shared rate limits unavailable; each limit divided by the instance count until they are back");
        }
    }

    /// The store answered again.
    pub fn recovered(&self) {
        let mut shared = self.lock();
        if !*shared {
            *shared = true;
            self.gauge.set(1);
            info!("shared rate limits back");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for SharedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStatus")
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// What a pace needs to share its limit: the store, the process-wide
/// status, and how many instances share (for the degraded fallback).
#[derive(Clone)]
pub struct SharedPacing {
    pub limits: Arc<dyn SharedLimits>,
    pub status: Arc<SharedStatus>,
    /// herald instances sharing the limits (`limits.instances`); ≥ 1.
    pub instances: u32,
}

impl fmt::Debug for SharedPacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPacing")
            .field("status", &self.status)
            .field("instances", &self.instances)
            .finish()
    }
}

/// A rate limit as the actors use it.
pub struct Pace {
    mode: Mode,
}

enum Mode {
    /// No shared store: exactly the in-process limiter.
    Local(Gcra),
    /// Boxed: the shared state is large and the local case should stay small.
    Shared(Box<Shared>),
}

struct Shared {
    /// The limit's key in the store.
    key: Arc<str>,
    store: Arc<dyn SharedLimits>,
    status: Arc<SharedStatus>,
    /// The decisions.
    lease: Lease,
    /// Where the acquire in flight leaves its answer.
    inbox: Arc<Mutex<Option<Result<Grant, LimitsUnavailable>>>>,
}

impl Pace {
    /// `limit` alone, or shared under `key` when `shared` is given. A limit
    /// that never allows anything (rate 0) stays local: there is nothing to
    /// share.
    pub fn new(limit: Gcra, key: Arc<str>, shared: Option<&SharedPacing>) -> Pace {
        let Some(s) = shared.filter(|_| limit.emission() != Duration::MAX) else {
            return Pace {
                mode: Mode::Local(limit),
            };
        };
        let mut lease = Lease::new(&limit, s.instances);
        if !s.status.is_shared() {
            // Known to be down (at start, or an actor restarted meanwhile):
            // pace locally from the first request, probing at once.
            lease.mode = LeaseMode::Degraded {
                next_probe: Instant::now(),
            };
        }
        Pace {
            mode: Mode::Shared(Box::new(Shared {
                key,
                store: s.limits.clone(),
                status: s.status.clone(),
                lease,
                inbox: Arc::new(Mutex::new(None)),
            })),
        }
    }

    /// Takes one slot if one is free at `now`; otherwise says how long to
    /// wait before looking again. `demand` is how many requests are waiting
    /// (it sizes the next acquire from the shared store).
    pub fn try_acquire(&mut self, now: Instant, demand: usize) -> Result<(), Duration> {
        match &mut self.mode {
            Mode::Local(gcra) => gcra.try_acquire(now),
            Mode::Shared(s) => s.try_acquire(now, demand),
        }
    }

    /// Whether the limit is shared right now (`false` for a local pace and
    /// while degraded).
    #[cfg(test)]
    pub fn is_shared(&self) -> bool {
        match &self.mode {
            Mode::Local(_) => false,
            Mode::Shared(s) => s.lease.mode == LeaseMode::Shared,
        }
    }
}

impl Shared {
    fn try_acquire(&mut self, now: Instant, demand: usize) -> Result<(), Duration> {
        let answer = self
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(answer) = answer {
            let error = answer.as_ref().err().cloned();
            match self.lease.answer(now, answer) {
                Change::None => {}
                Change::Degraded => {
                    let why = error.expect("degraded on an error");
                    self.status.degraded(&why);
                }
                Change::Recovered => self.status.recovered(),
            }
        }
        let step = self.lease.step(now, demand, self.status.is_shared());
        if let Some(want) = step.ask {
            let ask = self.store.acquire(
                self.key.clone(),
                self.lease.emission,
                self.lease.tolerance,
                want,
                LEAD,
            );
            let inbox = self.inbox.clone();
            tokio::spawn(async move {
                let answer = ask.await;
                *inbox.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer);
            });
        }
        step.verdict
    }
}

/// Whether a lease is served by the store or by its local fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseMode {
    Shared,
    /// The store did not answer; pace by the divided limit, and probe the
    /// store again from `next_probe` on.
    Degraded {
        next_probe: Instant,
    },
}

/// What an answer from the store changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    None,
    /// Shared → degraded.
    Degraded,
    /// Degraded → shared.
    Recovered,
}

/// One decision: the verdict for the request, and whether to ask the store
/// for slots (and how many).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    verdict: Result<(), Duration>,
    ask: Option<u32>,
}

/// The pure part of a shared pace: lease accounting and mode transitions,
/// given the clock and the store's answers.
struct Lease {
    /// The limit's emission interval, as sent to the store.
    emission: Duration,
    /// The limit's tolerance, as sent to the store.
    tolerance: Duration,
    /// Most slots one acquire asks for ([`BATCH_WINDOW`] of the rate).
    max_want: u32,
    /// The local limit divided by the instance count: the fallback.
    degraded: Gcra,
    mode: LeaseMode,
    /// When each reserved, unspent slot conforms, earliest first.
    slots: VecDeque<Instant>,
    /// The store said an acquire before this would be granted nothing
    /// (`None`: it has not said anything yet).
    ask_at: Option<Instant>,
    /// An acquire is in flight.
    asking: bool,
    /// When the acquire in flight was sent.
    asked_at: Instant,
    /// This degraded spell may still probe before `next_probe`, once,
    /// because another pace reached the store.
    early_probe: bool,
}

impl Lease {
    fn new(limit: &Gcra, instances: u32) -> Lease {
        let emission = limit.emission();
        let per_batch = BATCH_WINDOW.as_nanos() / emission.as_nanos().max(1);
        let max_want = u32::try_from(per_batch).unwrap_or(u32::MAX).max(1);
        Lease {
            emission,
            tolerance: limit.tolerance(),
            max_want,
            degraded: limit.divided(instances),
            mode: LeaseMode::Shared,
            slots: VecDeque::with_capacity(max_want as usize),
            ask_at: None,
            asking: false,
            asked_at: Instant::now(),
            early_probe: true,
        }
    }

    /// Takes the store's answer to the acquire in flight.
    fn answer(&mut self, now: Instant, answer: Result<Grant, LimitsUnavailable>) -> Change {
        self.asking = false;
        match answer {
            Ok(grant) => {
                let change = match self.mode {
                    LeaseMode::Shared => Change::None,
                    LeaseMode::Degraded { .. } => Change::Recovered,
                };
                self.mode = LeaseMode::Shared;
                // Slots count from now, after the store answered, so they
                // are spent late rather than early; the next acquire counts
                // from when this one was sent, before the store answered, so
                // it goes early rather than late. Neither way does the
                // lateness of the answer itself cost a slot.
                let first = now + grant.starts_in;
                self.slots
                    .extend((0..grant.granted).map(|i| first + self.emission * i));
                self.ask_at = Some(self.asked_at + grant.ask_after);
                change
            }
            Err(_) => {
                self.slots.clear();
                // Only a transition reports: a failed probe of a pace already
                // degraded may land just after another pace found the store
                // back, and must not count the same outage twice.
                let change = match self.mode {
                    LeaseMode::Shared => {
                        self.early_probe = true;
                        Change::Degraded
                    }
                    LeaseMode::Degraded { .. } => Change::None,
                };
                self.mode = LeaseMode::Degraded {
                    next_probe: now + PROBE_EVERY,
                };
                change
            }
        }
    }

    /// Decides one request. `others_shared`: the process-wide status says
    /// some pace reached the store lately (a degraded pace then probes at
    /// once instead of waiting out its probe interval).
    fn step(&mut self, now: Instant, demand: usize, others_shared: bool) -> Step {
        match self.mode {
            LeaseMode::Shared => self.step_shared(now, demand),
            LeaseMode::Degraded { next_probe } => {
                let due = now >= next_probe || (others_shared && self.early_probe);
                let ask = (!self.asking && due).then(|| {
                    self.asking = true;
                    self.asked_at = now;
                    self.early_probe = false;
                    // A probe: one slot, used if it comes back.
                    1
                });
                Step {
                    verdict: self.degraded.try_acquire(now),
                    ask,
                }
            }
        }
    }

    fn step_shared(&mut self, now: Instant, demand: usize) -> Step {
        while self.slots.front().is_some_and(|at| *at + LEASE_TTL <= now) {
            self.slots.pop_front();
        }
        let spent = self.slots.front().is_some_and(|at| *at <= now);
        if spent {
            self.slots.pop_front();
        }
        // Requests still waiting after this one, or this one among them.
        let waiting = if spent {
            demand.saturating_sub(1)
        } else {
            demand.max(1)
        };
        let short = waiting.saturating_sub(self.slots.len());
        let may_ask = self.ask_at.is_none_or(|at| now >= at);
        let ask = (short > 0 && !self.asking && may_ask).then(|| {
            self.asking = true;
            self.asked_at = now;
            u32::try_from(short).unwrap_or(u32::MAX).min(self.max_want)
        });
        if spent {
            return Step {
                verdict: Ok(()),
                ask,
            };
        }
        // Look again at the next reserved slot, at the moment an acquire
        // may go, or shortly if one is in flight with nothing reserved.
        let next_ask = self
            .ask_at
            .filter(|_| short > 0 && !self.asking)
            .map(|at| at - now);
        let wait = match (self.slots.front(), next_ask) {
            (Some(at), Some(ask)) => (*at - now).min(ask),
            (Some(at), None) => *at - now,
            (None, Some(ask)) => ask,
            (None, None) => POLL,
        };
        Step {
            verdict: Err(wait),
            ask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn grant(
        granted: u32,
        starts_in: Duration,
        ask_after: Duration,
    ) -> Result<Grant, LimitsUnavailable> {
        Ok(Grant {
            granted,
            starts_in,
            ask_after,
        })
    }

    fn down() -> Result<Grant, LimitsUnavailable> {
        Err(LimitsUnavailable("connection refused".into()))
    }

    #[test]
    fn keys_name_channel_and_class_only() {
        assert_eq!(
            &*class_key(Channel::Sms, "payment_reminder"),
            "herald:rl:sms:payment_reminder"
        );
        assert_eq!(&*provider_key(Channel::Email), "herald:rl:provider:email");
    }

    #[test]
    fn batches_follow_demand_and_the_rate() {
        // 600/min: one slot per 100 ms, so one at a time.
        let lease = Lease::new(&Gcra::per_minute(600), 1);
        assert_eq!(lease.max_want, 1);
        assert_eq!(lease.tolerance, Duration::ZERO, "burst 1: no slack");
        // 1000/s with a one-second burst: 50 ms of it per batch.
        let mut lease = Lease::new(&Gcra::per_second(1000.0), 1);
        assert_eq!(lease.max_want, 50);
        let now = Instant::now();
        assert_eq!(lease.step(now, 7, true).ask, Some(7));
        let mut lease = Lease::new(&Gcra::per_second(1000.0), 1);
        assert_eq!(lease.step(now, 5000, true).ask, Some(50));
        let mut lease = Lease::new(&Gcra::per_second(1000.0), 1);
        assert_eq!(lease.step(now, 0, true).ask, Some(1));
    }

    #[test]
    fn spends_each_slot_at_its_moment_then_waits_as_told() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_second(100.0), 1);
        let first = lease.step(t0, 3, true);
        assert_eq!(first.verdict, Err(POLL));
        assert_eq!(first.ask, Some(3));
        // In flight: no second acquire.
        assert_eq!(
            lease.step(t0 + MS, 3, true),
            Step {
                verdict: Err(POLL),
                ask: None
            }
        );
        // Two slots, 10 ms apart; the next acquire may go 30 ms on.
        let granted = grant(2, Duration::ZERO, 30 * MS);
        assert_eq!(lease.answer(t0 + MS, granted), Change::None);
        assert_eq!(lease.step(t0 + MS, 3, true).verdict, Ok(()));
        assert_eq!(
            lease.step(t0 + MS, 2, true),
            Step {
                verdict: Err(10 * MS),
                ask: None
            },
            "the second slot is not due yet"
        );
        assert_eq!(lease.step(t0 + 11 * MS, 2, true).verdict, Ok(()));
        assert_eq!(
            lease.step(t0 + 12 * MS, 1, true),
            Step {
                verdict: Err(18 * MS),
                ask: None
            },
            "30 ms from when the acquire was sent"
        );
        let again = lease.step(t0 + 30 * MS, 1, true);
        assert_eq!(again.ask, Some(1));
    }

    #[test]
    fn asks_ahead_while_a_reserved_slot_is_still_to_come() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_second(100.0), 1);
        lease.step(t0, 5, true);
        lease.answer(t0, grant(1, 10 * MS, Duration::ZERO));
        let step = lease.step(t0, 5, true);
        assert_eq!(step.verdict, Err(10 * MS));
        assert_eq!(step.ask, Some(4), "the four requests beyond the slot held");
        // Demand the lease covers asks for nothing.
        let mut lease = Lease::new(&Gcra::per_second(100.0), 1);
        lease.step(t0, 1, true);
        lease.answer(t0, grant(1, 10 * MS, Duration::ZERO));
        assert_eq!(lease.step(t0, 1, true).ask, None);
    }

    #[test]
    fn a_grant_of_nothing_waits_for_the_next_slot() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_minute(60), 1);
        lease.step(t0, 1, true);
        lease.answer(t0, grant(0, Duration::ZERO, 700 * MS));
        assert_eq!(lease.step(t0 + 200 * MS, 1, true).verdict, Err(500 * MS));
    }

    #[test]
    fn unspent_slots_lapse() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_second(1000.0), 1);
        lease.step(t0, 10, true);
        lease.answer(t0, grant(10, Duration::ZERO, 10 * MS));
        assert_eq!(lease.step(t0, 1, true).verdict, Ok(()));
        // Long after: the nine left would all be due at once.
        let late = lease.step(t0 + LEASE_TTL + 9 * MS, 1, true);
        assert_eq!(late.verdict, Err(POLL));
        assert_eq!(late.ask, Some(1), "asks afresh instead");
    }

    #[test]
    fn store_down_degrades_to_the_divided_limit_and_probes_once_a_second() {
        let t0 = Instant::now();
        // 600/min over 3 instances: 200/min each, one per 300 ms.
        let mut lease = Lease::new(&Gcra::per_minute(600), 3);
        lease.step(t0, 1, true);
        assert_eq!(lease.answer(t0, down()), Change::Degraded);
        let (mut sent, mut probes) = (0, 0);
        let mut changes = Vec::new();
        let mut now = t0;
        // Ten seconds of constant demand, looked at every millisecond.
        while now < t0 + Duration::from_secs(10) {
            let step = lease.step(now, 1, false);
            if step.verdict.is_ok() {
                sent += 1;
            }
            if step.ask.is_some() {
                probes += 1;
                assert_eq!(step.ask, Some(1), "a probe asks for one slot");
                changes.push(lease.answer(now, down()));
            }
            now += MS;
        }
        assert_eq!(sent, 34, "one per 300 ms from t0");
        assert_eq!(probes, 9, "one a second after the first failure");
        assert!(changes.iter().all(|c| *c == Change::None), "one outage");
    }

    #[test]
    fn an_answered_probe_returns_to_the_shared_limit() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_minute(600), 2);
        lease.step(t0, 1, true);
        lease.answer(t0, down());
        // Before the probe interval: local pace only.
        let step = lease.step(t0 + 500 * MS, 1, false);
        assert_eq!((step.verdict, step.ask), (Ok(()), None));
        let probe = lease.step(t0 + PROBE_EVERY, 1, false);
        assert_eq!(probe.ask, Some(1));
        assert_eq!(
            lease.answer(t0 + PROBE_EVERY, grant(1, Duration::ZERO, 100 * MS)),
            Change::Recovered
        );
        assert_eq!(lease.mode, LeaseMode::Shared);
        assert_eq!(lease.step(t0 + PROBE_EVERY, 1, true).verdict, Ok(()));
    }

    #[test]
    fn a_degraded_pace_probes_at_once_when_another_reached_the_store() {
        let t0 = Instant::now();
        let mut lease = Lease::new(&Gcra::per_minute(600), 2);
        lease.step(t0, 1, true);
        assert_eq!(lease.answer(t0, down()), Change::Degraded);
        assert_eq!(lease.step(t0 + MS, 1, false).ask, None);
        assert_eq!(lease.step(t0 + 2 * MS, 1, true).ask, Some(1));
        // That early probe failed: a failed probe is no new outage, and the
        // next one waits for the interval even if others say shared.
        assert_eq!(lease.answer(t0 + 3 * MS, down()), Change::None);
        assert_eq!(lease.step(t0 + 4 * MS, 1, true).ask, None);
        assert_eq!(lease.step(t0 + 3 * MS + PROBE_EVERY, 1, true).ask, Some(1));
    }

    /// The store's answers as a test drives them.
    #[derive(Clone, Debug)]
    enum Event {
        Step {
            after_us: u64,
            demand: usize,
        },
        Answer {
            granted: u32,
            starts_ms: u64,
            ask_ms: u64,
        },
        Fail,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0u64..20_000, 0usize..100)
                .prop_map(|(after_us, demand)| Event::Step { after_us, demand }),
            2 => (0u32..60, 0u64..50, 0u64..200).prop_map(|(granted, starts_ms, ask_ms)| {
                Event::Answer { granted, starts_ms, ask_ms }
            }),
            1 => Just(Event::Fail),
        ]
    }

    proptest! {
        /// Whatever the store answers and whenever the actor looks: never
        /// two acquires in flight, never more than `max_want` asked, and
        /// while shared never more requests let through than the store
        /// granted, nor any before its slot's moment.
        #[test]
        fn lease_accounting(events in proptest::collection::vec(event(), 1..400)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut lease = Lease::new(&Gcra::per_second(400.0), 2);
            let mut in_flight: Option<u32> = None;
            let (mut granted, mut spent_shared) = (0u64, 0u64);
            // Every slot granted, by the moment it conforms.
            let mut moments: Vec<Instant> = Vec::new();
            for e in events {
                match e {
                    Event::Step { after_us, demand } => {
                        now += Duration::from_micros(after_us);
                        let shared = lease.mode == LeaseMode::Shared;
                        let step = lease.step(now, demand, false);
                        if let Some(want) = step.ask {
                            prop_assert!(in_flight.is_none(), "a second acquire in flight");
                            prop_assert!((1..=lease.max_want).contains(&want));
                            in_flight = Some(want);
                        }
                        if shared && step.verdict.is_ok() {
                            spent_shared += 1;
                            let due = moments.iter().filter(|at| **at <= now).count() as u64;
                            prop_assert!(spent_shared <= due, "a slot spent before its moment");
                        }
                        if let Err(wait) = step.verdict {
                            prop_assert!(wait > Duration::ZERO);
                        }
                    }
                    Event::Answer { granted: g, starts_ms, ask_ms } => {
                        if let Some(want) = in_flight.take() {
                            let g = g.min(want);
                            granted += u64::from(g);
                            let starts_in = Duration::from_millis(starts_ms);
                            moments.extend((0..g).map(|i| now + starts_in + lease.emission * i));
                            let ask_after = Duration::from_millis(ask_ms);
                            lease.answer(now, grant(g, starts_in, ask_after));
                        }
                    }
                    Event::Fail => {
                        if in_flight.take().is_some() {
                            lease.answer(now, down());
                        }
                    }
                }
                prop_assert!(spent_shared <= granted, "spent {spent_shared} > granted {granted}");
            }
        }
    }

    /// An in-process GCRA with the Lua script's arithmetic, on a clock the
    /// test moves; or a store that is down.
    struct MemoryLimits {
        clock: Arc<Mutex<Instant>>,
        tat: Mutex<std::collections::HashMap<Arc<str>, Instant>>,
        up: std::sync::atomic::AtomicBool,
    }

    impl MemoryLimits {
        /// A store that is up, on `clock`.
        fn on(clock: &Arc<Mutex<Instant>>) -> Arc<MemoryLimits> {
            Arc::new(MemoryLimits {
                clock: clock.clone(),
                tat: Mutex::new(Default::default()),
                up: true.into(),
            })
        }
    }

    impl SharedLimits for MemoryLimits {
        fn acquire(
            &self,
            key: Arc<str>,
            emission: Duration,
            tolerance: Duration,
            want: u32,
            lead: Duration,
        ) -> BoxFuture<'static, Result<Grant, LimitsUnavailable>> {
            if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(async { down() });
            }
            let now = *self.clock.lock().unwrap();
            let mut tats = self.tat.lock().unwrap();
            let tat = tats.get(&key).copied().unwrap_or(now).max(now);
            let ahead = (tat - now).as_nanos() as i128;
            let slack = (lead + tolerance).as_nanos() as i128;
            let k = ((slack - ahead).div_euclid(emission.as_nanos() as i128) + 1)
                .clamp(0, i128::from(want)) as u32;
            let since = |at: Instant, back: Duration| {
                at.checked_sub(back)
                    .unwrap_or(now)
                    .saturating_duration_since(now)
            };
            let starts_in = since(tat, tolerance);
            let tat = tat + emission * k;
            tats.insert(key, tat);
            let ask_after = since(tat, tolerance + lead);
            Box::pin(async move {
                Ok(Grant {
                    granted: k,
                    starts_in,
                    ask_after,
                })
            })
        }
    }

    /// Lets spawned acquires finish (they resolve at once).
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    /// Every pace looks every millisecond for `len` from `now` (moved on),
    /// with `demand` waiting, on the store's clock; returns the sends let
    /// through.
    async fn drive(
        paces: &mut [Pace],
        clock: &Mutex<Instant>,
        now: &mut Instant,
        len: Duration,
        demand: usize,
    ) -> usize {
        let (end, mut sent) = (*now + len, 0);
        while *now < end {
            *clock.lock().unwrap() = *now;
            for p in paces.iter_mut() {
                if p.try_acquire(*now, demand).is_ok() {
                    sent += 1;
                }
            }
            settle().await;
            *now += MS;
        }
        sent
    }

    #[tokio::test]
    async fn three_paces_share_one_limit_and_report_an_outage_once() {
        let t0 = Instant::now();
        let clock = Arc::new(Mutex::new(t0));
        let store = MemoryLimits::on(&clock);
        let status = SharedStatus::detached();
        let pacing = SharedPacing {
            limits: store.clone(),
            status: status.clone(),
            instances: 3,
        };
        let key = class_key(Channel::Sms, "c");
        let mut paces: Vec<Pace> = (0..3)
            .map(|_| Pace::new(Gcra::per_minute(600), key.clone(), Some(&pacing)))
            .collect();
        // Ten seconds, every pace looking every millisecond.
        let mut now = t0;
        let sent = drive(&mut paces, &clock, &mut now, Duration::from_secs(10), 10).await;
        // 600/min is 100 in 10 s.
        assert_eq!(sent, 100);
        assert!(paces.iter().all(Pace::is_shared));

        // The store goes away: every pace degrades, the status once.
        store.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let sent = drive(&mut paces, &clock, &mut now, Duration::from_secs(3), 10).await;
        assert!(paces.iter().all(|p| !p.is_shared()));
        assert!(!status.is_shared());
        assert_eq!(status.degraded_total.get(), 1);
        assert_eq!(status.gauge.get(), 0);
        // 200/min each for 3 s: 10 each (a slot at 0 ms, then every 300 ms).
        assert!(sent <= 3 * 11, "sent {sent}");
        assert!(sent > 0);

        // Back: each pace's next probe finds it.
        store.up.store(true, std::sync::atomic::Ordering::SeqCst);
        drive(&mut paces, &clock, &mut now, PROBE_EVERY + 10 * MS, 1).await;
        assert!(paces.iter().all(Pace::is_shared));
        assert!(status.is_shared());
        assert_eq!(status.gauge.get(), 1);
        assert_eq!(status.degraded_total.get(), 1);
    }

    /// Every look at the pace comes 0–20 ms after the moment it asked for,
    /// as on a loaded machine: with slots reserved ahead, the lateness costs
    /// none of them. (Asked at the last moment, a GCRA loses the late time
    /// for good: about 15 % of 60/s here.)
    #[tokio::test]
    async fn late_timers_cost_no_slots() {
        let t0 = Instant::now();
        let clock = Arc::new(Mutex::new(t0));
        let store = MemoryLimits::on(&clock);
        let pacing = SharedPacing {
            limits: store,
            status: SharedStatus::detached(),
            instances: 1,
        };
        let key = class_key(Channel::Sms, "c");
        let mut pace = Pace::new(Gcra::per_minute(3600), key, Some(&pacing));
        let (mut now, mut sent, mut seed) = (t0, 0, 0x2545_f491_4f6c_dd1d_u64);
        while now < t0 + Duration::from_secs(60) {
            *clock.lock().unwrap() = now;
            let wait = match pace.try_acquire(now, 100) {
                Ok(()) => {
                    sent += 1;
                    Duration::ZERO
                }
                Err(wait) => wait,
            };
            settle().await;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += wait + Duration::from_micros(seed % 20_000);
        }
        assert!((3590..=3601).contains(&sent), "sent {sent} of 3600");
    }

    #[test]
    fn without_a_store_a_pace_is_the_plain_limiter() {
        let t0 = Instant::now();
        let mut pace = Pace::new(Gcra::per_minute(60), class_key(Channel::Sms, "c"), None);
        assert_eq!(pace.try_acquire(t0, 5), Ok(()));
        assert_eq!(pace.try_acquire(t0, 5), Err(Duration::from_secs(1)));
        assert!(!pace.is_shared());
    }
}
