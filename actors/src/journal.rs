//! `Journal`: the delivery store on the hot path, batched. Claims (before a
//! provider call) and outcome records (after it) are queued here and written
//! by group commit: one store transaction at a time, and whatever arrives
//! while it runs forms the next batch — one transaction per message at low
//! load, hundreds per transaction under load. Each transaction carries both
//! the waiting records and the waiting claims, records first, so a claim
//! always sees every outcome already reported. Records alone (nothing waits
//! on them but acks) wait up to [`RECORD_LINGER`] for a claim to join them,
//! so under a steady load a message costs one transaction, not two.
//!
//! Two copies of one event in flight at once (a publisher that published
//! twice) must not both go out: the store cannot tell a crashed call from
//! one still running. So the journal keeps the events it has claimed and not
//! yet seen an outcome for; a second claim for one of them is parked until
//! the first outcome is committed, then claimed in turn (and found sent). An
//! outcome that never comes (an actor died with the first copy) frees the
//! event once the first copy's ticket is gone: while it exists, the first
//! copy is still somewhere in this process — its claim unanswered by a
//! failing store, waiting for its provider's capacity however long, in a
//! call, or its outcome on the way here — and a copy let through would be
//! sent beside it. (Another process is kept off by the claim's lease in the
//! store, which the provider renews before a call that waited for it.)
//!
//! A claim's verdict decides the job: `Send` goes on to the provider,
//! `AlreadySent` and `AlreadyFinal` are acked without a second provider
//! call, and `InFlightElsewhere` (another herald process sharing the store
//! may still be sending the event) is held, unacked, and claimed again after
//! [`IN_FLIGHT_RECHECK`]. A record that carries a ticket acks it only once
//! committed. If the store fails, the batch waits and is tried again;
//! tickets stay held, so nothing is acked before it is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::messages::{Claim, IsIdle, Observe, Reclaim, Record, SendOutcome, Submit};
use crate::model::{FailureKind, SendError};
use crate::ports::{ClaimRequest, ClaimVerdict, DeliveryLog, JournalError};
use crate::registry::{send_or_return, Registry};
use crate::ticket::Held;

/// The most records, and the most claims, in one transaction.
const MAX_BATCH: usize = 512;
/// How long to wait before trying a failed batch again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How soon to try the provider again when it is being restarted.
const PROVIDER_RETRY: Duration = Duration::from_millis(50);
/// How long outcome records alone may wait for a claim to share their
/// transaction. Under a steady load one comes well within this, so a
/// message costs one commit instead of two, and no claim (which a send
/// waits on) queues behind a commit of records (which only acks wait on).
/// It delays an ack, never a send.
pub const RECORD_LINGER: Duration = Duration::from_millis(2);
/// How long claims may wait for more claims to share their transaction
/// while the journal is idle. At a steady 2,000 msg/s a commit held ~1.5
/// claims, and the commits, mostly their fixed cost, took ~44 % of the I/O
/// threads; waiting a millisecond cut herald's CPU by a fifth to a quarter
/// and the p99 with it (the cores were less contended), for ~1 ms more at
/// p50. Two milliseconds cut another ~8–11 % of the CPU but raised the p99:
/// 14–42 ms against 12–19 at one, alternated, where half a millisecond and
/// none were worse still (docs/benchmarks.md, 2026-12-06, the seventh to
/// ninth sessions). It delays sends, so it is short, and skipped once
/// [`CLAIM_COMPANY`] claims are queued.
pub const CLAIM_LINGER: Duration = Duration::from_millis(1);
/// Queued claims that commit at once, without lingering.
pub const CLAIM_COMPANY: usize = 16;
/// How soon an event another process is still sending is claimed again.
pub const IN_FLIGHT_RECHECK: Duration = Duration::from_secs(1);
/// How often parked claims are checked for a first copy that is gone.
const PARK_CHECK: Duration = Duration::from_secs(5);

/// The journal's timings.
#[derive(Clone, Copy, Debug)]
pub struct JournalParams {
    /// How long records alone wait for a claim ([`RECORD_LINGER`]).
    pub record_linger: Duration,
    /// How long a few claims wait for more ([`CLAIM_LINGER`]).
    pub claim_linger: Duration,
}

impl Default for JournalParams {
    fn default() -> JournalParams {
        JournalParams {
            record_linger: RECORD_LINGER,
            claim_linger: CLAIM_LINGER,
        }
    }
}

pub struct Journal {
    /// The store.
    log: Arc<dyn DeliveryLog>,
    /// Where the providers and metrics are.
    registry: Registry,
    /// Records waiting for the next transaction.
    records: VecDeque<Record>,
    /// Its timings.
    params: JournalParams,
    /// When the oldest of `records` began to wait.
    records_since: Option<Instant>,
    /// The earliest end of a linger a timer is armed for.
    linger_until: Option<Instant>,
    /// Claims waiting for the next transaction.
    claims: VecDeque<Submit>,
    /// Claimed jobs whose provider was restarting.
    unsent: Vec<Submit>,
    /// Jobs another process is still sending, to be claimed again after
    /// [`IN_FLIGHT_RECHECK`]; their deliveries stay held meanwhile.
    elsewhere: Vec<Submit>,
    /// A transaction is running.
    busy: bool,
    /// A retry timer is armed.
    retry_armed: bool,
    /// Events claimed (or being claimed) whose outcome is not committed yet.
    active: HashMap<Arc<str>, Active>,
    /// Second copies of active events, waiting their turn.
    parked: HashMap<Arc<str>, VecDeque<Submit>>,
    /// The staleness check is armed.
    park_check_armed: bool,
}

/// An event in flight in this process.
#[derive(Clone, Debug)]
struct Active {
    /// When its claim was queued.
    queued: Instant,
    /// Whether the claimed copy's delivery is still held in this process.
    held: Held,
}

impl Active {
    /// `submit`'s claim, queued now.
    fn of(submit: &Submit) -> Active {
        Active {
            queued: Instant::now(),
            held: submit.ticket.held(),
        }
    }
}

impl Journal {
    pub fn new(log: Arc<dyn DeliveryLog>, registry: Registry, params: JournalParams) -> Journal {
        Journal {
            log,
            registry,
            records: VecDeque::new(),
            params,
            records_since: None,
            linger_until: None,
            claims: VecDeque::new(),
            unsent: Vec::new(),
            elsewhere: Vec::new(),
            busy: false,
            retry_armed: false,
            active: HashMap::new(),
            parked: HashMap::new(),
            park_check_armed: false,
        }
    }

    /// Queues a claim, or parks it behind an active copy of its event.
    fn enqueue_claim(&mut self, submit: Submit, ctx: &mut Context<Self>) {
        let id = submit.job.event_id.clone();
        if self.active.contains_key(&id) {
            self.parked.entry(id).or_default().push_back(submit);
            self.arm_park_check(ctx);
            return;
        }
        self.admit(submit);
    }

    /// Queues a claim as its event's copy in flight here.
    fn admit(&mut self, submit: Submit) {
        self.active
            .insert(submit.job.event_id.clone(), Active::of(&submit));
        self.claims.push_back(submit);
    }

    /// The event's outcome is known: let its next parked copy be claimed.
    fn done(&mut self, id: &Arc<str>, ctx: &mut Context<Self>) {
        self.active.remove(id);
        if let Some(queue) = self.parked.get_mut(id) {
            let next = queue.pop_front();
            if queue.is_empty() {
                self.parked.remove(id);
            }
            if let Some(next) = next {
                self.enqueue_claim(next, ctx);
            }
        }
    }

    fn arm_park_check(&mut self, ctx: &mut Context<Self>) {
        if self.park_check_armed {
            return;
        }
        self.park_check_armed = true;
        ctx.run_later(PARK_CHECK, |act, ctx| {
            act.park_check_armed = false;
            let stale: Vec<Arc<str>> = act
                .parked
                .keys()
                .filter(|id| act.active.get(*id).is_none_or(|a| !a.held.still()))
                .cloned()
                .collect();
            for id in stale {
                warn!(event_id = %id, "a claimed event's delivery is gone without an outcome; letting its next copy through");
                act.done(&id, ctx);
            }
            if !act.parked.is_empty() {
                act.arm_park_check(ctx);
            }
            act.flush(ctx);
        });
    }

    /// Queues an outcome record (or puts a failed batch's back in front).
    fn push_record(&mut self, record: Record, front: bool) {
        self.records_since.get_or_insert_with(Instant::now);
        if front {
            self.records.push_front(record);
        } else {
            self.records.push_back(record);
        }
    }

    /// Whether the next transaction should wait a little for company, and
    /// if so makes sure a timer ends the wait: a few claims for more
    /// claims, records alone for a claim.
    fn linger(&mut self, ctx: &mut Context<Self>) -> bool {
        let (since, linger) = if !self.claims.is_empty() {
            if self.claims.len() >= CLAIM_COMPANY {
                return false;
            }
            // The oldest claim's wait began when it was queued (`active`).
            let oldest = self.claims.front().map(|s| &s.job.event_id);
            let since = oldest.and_then(|id| self.active.get(id)).map(|a| a.queued);
            (since, self.params.claim_linger)
        } else {
            if self.records.len() >= MAX_BATCH {
                return false;
            }
            (self.records_since, self.params.record_linger)
        };
        let waited = since.map_or(linger, |t| t.elapsed());
        let Some(left) = linger.checked_sub(waited).filter(|d| !d.is_zero()) else {
            return false;
        };
        // Records may be lingering long when a claim comes to linger
        // briefly: each end gets its timer unless an earlier one is armed.
        let until = Instant::now() + left;
        if self.linger_until.is_none_or(|armed| armed > until) {
            self.linger_until = Some(until);
            ctx.run_later(left, move |act, ctx| {
                if act.linger_until == Some(until) {
                    act.linger_until = None;
                }
                act.flush(ctx);
            });
        }
        true
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.retry_armed || (self.records.is_empty() && self.claims.is_empty()) {
            return;
        }
        if self.linger(ctx) {
            return;
        }
        let n = self.records.len().min(MAX_BATCH);
        let records: Vec<Record> = self.records.drain(..n).collect();
        if self.records.is_empty() {
            self.records_since = None;
        }
        let n = self.claims.len().min(MAX_BATCH);
        let claims: Vec<Submit> = self.claims.drain(..n).collect();
        let rows = records.iter().map(|r| r.record.clone()).collect();
        let reqs = claims
            .iter()
            .map(|s| ClaimRequest::for_job(&s.job))
            .collect();
        self.busy = true;
        let asked = Instant::now();
        ctx.spawn(
            self.log
                .commit(rows, reqs)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.busy = false;
                    match res {
                        Ok(verdicts) => {
                            for r in records {
                                let id = r.record.event_id.clone();
                                if let Some(t) = r.ticket {
                                    t.ack();
                                }
                                act.done(&id, ctx);
                            }
                            if verdicts.len() == claims.len() {
                                for (submit, verdict) in claims.into_iter().zip(verdicts) {
                                    act.decide(submit, verdict, asked, ctx);
                                }
                            } else {
                                let e = JournalError(format!(
                                    "{} verdicts for {} claims",
                                    verdicts.len(),
                                    claims.len()
                                ));
                                act.failed(e, ctx, |act| act.requeue_claims(claims));
                            }
                        }
                        Err(e) => act.failed(e, ctx, |act| {
                            for r in records.into_iter().rev() {
                                act.push_record(r, true);
                            }
                            act.requeue_claims(claims);
                        }),
                    }
                    act.flush(ctx);
                }),
        );
    }

    /// Puts claims back in front of the queue (a failed batch's).
    fn requeue_claims(&mut self, batch: Vec<Submit>) {
        for s in batch.into_iter().rev() {
            self.claims.push_front(s);
        }
    }

    fn failed(
        &mut self,
        e: JournalError,
        ctx: &mut Context<Self>,
        put_back: impl FnOnce(&mut Self),
    ) {
        warn!(error = %e, "journal write failed; holding the batch and trying again");
        put_back(self);
        self.retry_armed = true;
        ctx.run_later(RETRY_AFTER, |act, ctx| {
            act.retry_armed = false;
            act.flush(ctx);
        });
    }

    /// Acts on a claim's verdict; `asked` is when its transaction began, so
    /// no later than the start of the lease a `Send` holds in the store.
    fn decide(
        &mut self,
        mut submit: Submit,
        verdict: ClaimVerdict,
        asked: Instant,
        ctx: &mut Context<Self>,
    ) {
        let job = &submit.job;
        match verdict {
            ClaimVerdict::Send { previous_unknown } => {
                if previous_unknown {
                    warn!(event_id = %job.event_id, class = %job.class, channel = %job.channel,
                        "an earlier attempt never finished; its outcome is unknown");
                    self.registry.observe(Observe::OutcomeUnknown {
                        channel: job.channel,
                        class: job.class.clone(),
                    });
                }
                submit.leased_at = Some(asked);
                self.submit(submit, ctx);
            }
            ClaimVerdict::Suppressed | ClaimVerdict::Capped => {
                // The class sender decides, as for a provider's opt-out:
                // fall back or record it suppressed. The event stays in
                // flight here until that record commits.
                let error = if verdict == ClaimVerdict::Capped {
                    SendError::new(
                        FailureKind::FrequencyCap,
                        "the user had the class's most messages in its window",
                    )
                } else {
                    SendError::new(
                        FailureKind::Suppressed,
                        "recipient is on the suppression list",
                    )
                };
                let outcome = SendOutcome {
                    job: submit.job,
                    ticket: submit.ticket,
                    result: Err(error),
                };
                let sender = self
                    .registry
                    .sender(outcome.job.channel, &outcome.job.class);
                if let Err(outcome) = send_or_return(sender, outcome) {
                    // Restarting: the broker delivers it again.
                    let id = outcome.job.event_id.clone();
                    outcome.ticket.requeue();
                    self.done(&id, ctx);
                }
            }
            ClaimVerdict::InFlightElsewhere => {
                info!(event_id = %job.event_id, class = %job.class,
                    "another herald process is sending this event; claiming it again shortly");
                self.registry.observe(Observe::InFlightElsewhere {
                    channel: job.channel,
                    class: job.class.clone(),
                });
                if self.elsewhere.is_empty() {
                    ctx.run_later(IN_FLIGHT_RECHECK, |act, ctx| {
                        // Still active here, so straight back in the queue.
                        act.claims.extend(std::mem::take(&mut act.elsewhere));
                        act.flush(ctx);
                    });
                }
                self.elsewhere.push(submit);
            }
            ClaimVerdict::AlreadySent | ClaimVerdict::AlreadyFinal => {
                info!(event_id = %job.event_id, class = %job.class, ?verdict, "already handled; not sending again");
                self.registry.observe(Observe::DuplicateSuppressed {
                    channel: job.channel,
                    class: job.class.clone(),
                });
                let id = job.event_id.clone();
                submit.ticket.ack();
                self.done(&id, ctx);
            }
        }
    }

    fn submit(&mut self, submit: Submit, ctx: &mut Context<Self>) {
        let provider = self.registry.provider(submit.job.channel);
        if let Err(submit) = send_or_return(provider, submit) {
            if self.unsent.is_empty() {
                ctx.run_later(PROVIDER_RETRY, |act, ctx| {
                    for s in std::mem::take(&mut act.unsent) {
                        act.submit(s, ctx);
                    }
                });
            }
            self.unsent.push(submit);
        }
    }
}

impl Actor for Journal {
    type Context = Context<Self>;
}

impl Handler<Claim> for Journal {
    type Result = ();

    fn handle(&mut self, Claim(submit): Claim, ctx: &mut Context<Self>) {
        self.enqueue_claim(submit, ctx);
        self.flush(ctx);
    }
}

impl Handler<Reclaim> for Journal {
    type Result = ();

    /// A claimed job whose lease the provider could not renew: claim it
    /// again, still in flight here (so no parked copy passes it).
    fn handle(&mut self, Reclaim(submit): Reclaim, ctx: &mut Context<Self>) {
        self.admit(submit);
        self.flush(ctx);
    }
}

impl Handler<Record> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) {
        self.push_record(msg, false);
        self.flush(ctx);
    }
}

impl Handler<IsIdle> for Journal {
    type Result = bool;

    fn handle(&mut self, _: IsIdle, _: &mut Context<Self>) -> bool {
        !self.busy && self.records.is_empty() && self.claims.is_empty()
    }
}
