//! `ClassSender`: one per (channel, class). Holds the class's own rate limit
//! for the channel and the deliveries waiting for it, submits to the
//! channel's provider only when the class may send — so an exhausted class
//! never occupies shared capacity or holds up another class — and decides
//! what a provider's answer means: ack, retry through the broker, fall back,
//! or dead-letter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::messages::{
    Claim, Deliver, FallBack, Observe, RateChanged, Record, Release, SendOutcome, Submit,
};
use crate::metrics::Outcome;
use crate::model::{Channel, FailureKind, Job, SendError};
use crate::pace::{self, Pace, SharedPacing};
use crate::ports::{Broker, BrokerError, DeadLetter, KeptJob, OutcomeRecord, RecordOutcome};
use crate::rate_limiter::Gcra;
use crate::registry::{send_or_return, Registry};
use crate::ticket::Ticket;

/// How soon to try the provider again when it is being restarted.
const PROVIDER_RETRY: Duration = Duration::from_millis(50);

/// What a class sender needs to know; no I/O config.
#[derive(Clone, Debug)]
pub struct ClassParams {
    pub class: Arc<str>,
    pub channel: Channel,
    /// 1 is the most urgent; orders the provider's queue.
    pub priority: u8,
    /// Sends per minute on this channel, changed live by operators.
    pub rate: ClassRate,
    /// Broker retries after the first attempt.
    pub retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The channel a failed send falls back to, if the class has one.
    pub fallback: Option<Channel>,
    /// Share the rate with every herald instance (Redis); `None` keeps it
    /// in this process.
    pub shared: Option<SharedPacing>,
    /// Delivery receipts come back (the providers are given a callback
    /// URL): record accepted sends so receipts find them, and keep an
    /// accepted SMS's event for a fallback on `undelivered`.
    pub receipts_expected: bool,
}

/// A class's send limit on one channel, per minute (0: never sends). Shared
/// by the admin API, which changes it, and every incarnation of the class
/// sender, which paces by it: a restarted sender keeps the changed limit.
#[derive(Clone, Debug)]
pub struct ClassRate(Arc<AtomicU32>);

impl ClassRate {
    pub fn new(per_min: u32) -> ClassRate {
        ClassRate(Arc::new(AtomicU32::new(per_min)))
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the limit; the class sender applies it on [`RateChanged`].
    pub fn set(&self, per_min: u32) {
        self.0.store(per_min, Ordering::SeqCst);
    }
}

/// The record of `job`'s attempt with `outcome`, nothing else to do.
fn outcome_record(job: &Job, outcome: RecordOutcome) -> OutcomeRecord {
    OutcomeRecord {
        event_id: job.event_id.clone(),
        class: job.class.clone(),
        user_id: job.user_id.clone(),
        channel: job.channel,
        attempt: job.attempt,
        outcome,
        opt_out: None,
        keep_for_fallback: None,
        track_receipts: false,
    }
}

pub struct ClassSender {
    /// The class and channel served, with their limits and retry policy.
    params: ClassParams,
    /// The class's own pace on this channel (burst 1).
    limiter: Pace,
    /// Deliveries waiting for the limiter (at most the consumer's prefetch).
    waiting: VecDeque<Deliver>,
    /// The timer armed to pump again, and when it fires, if any.
    wake: Option<(Instant, SpawnHandle)>,
    /// Where the provider, fallback and metrics actors are.
    registry: Registry,
    /// Confirmed publishes of retries and dead letters.
    broker: Arc<dyn Broker>,
    /// Every log line of this actor carries its class and channel.
    span: tracing::Span,
}

impl ClassSender {
    pub fn new(params: ClassParams, registry: Registry, broker: Arc<dyn Broker>) -> ClassSender {
        ClassSender {
            span: tracing::info_span!("class_sender", class = %params.class, channel = %params.channel),
            limiter: class_pace(&params),
            params,
            waiting: VecDeque::new(),
            wake: None,
            registry,
            broker,
        }
    }

    /// Submits waiting deliveries while the class's limiter allows. True
    /// if some are left waiting for the limit; false if none are, or if
    /// they wait for a restarting journal or provider instead.
    fn pump(&mut self, ctx: &mut Context<Self>) -> bool {
        while !self.waiting.is_empty() {
            if let Err(wait) = self.limiter.try_acquire(Instant::now(), self.waiting.len()) {
                self.wake_after(wait, ctx);
                return true;
            }
            let Deliver { job, ticket } = self.waiting.pop_front().expect("not empty");
            let submit = Submit {
                priority: self.params.priority,
                job,
                ticket,
                throttled: 0,
                leased_at: None,
            };
            if let Err(submit) = self.submit(submit) {
                // The journal or provider is restarting; the slot we took is
                // lost, which only errs on the slow side.
                self.waiting.push_front(Deliver {
                    job: submit.job,
                    ticket: submit.ticket,
                });
                self.wake_after(PROVIDER_RETRY, ctx);
                return false;
            }
        }
        false
    }

    /// Through the journal's claim when there is a delivery store, straight
    /// to the provider otherwise. The error hands the submission back (with
    /// its ticket) to keep; it is moved, never copied, so its size is moot.
    #[allow(clippy::result_large_err)]
    fn submit(&self, submit: Submit) -> Result<(), Submit> {
        match self.registry.journal() {
            Some(journal) => send_or_return(Some(journal), Claim(submit)).map_err(|Claim(s)| s),
            None => send_or_return(self.registry.provider(self.params.channel), submit),
        }
    }

    /// Tells the journal what became of an attempt. With a ticket, the
    /// journal acks it once the record is committed.
    fn send_record(&self, record: OutcomeRecord, ticket: Option<Ticket>, ctx: &mut Context<Self>) {
        if let Some(record) = offer_record(&self.registry, Record { record, ticket }) {
            // Restarting: keep the record (and its ticket) and try again.
            ctx.notify_later(record, PROVIDER_RETRY);
        }
    }

    /// Pumps again after `after`, or sooner if a wake-up is already armed
    /// for sooner. A later one is replaced: a pace that got faster (a new
    /// rate limit) is never held back by the slower one's timer.
    fn wake_after(&mut self, after: Duration, ctx: &mut Context<Self>) {
        // A limit of 0 waits "forever": look again hourly instead (and keep
        // the arithmetic below from overflowing).
        let after = after.min(Duration::from_secs(3600));
        let at = Instant::now() + after;
        if let Some((armed_at, handle)) = self.wake {
            if armed_at <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(after, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some((at, handle));
    }

    fn observe_outcome(&self, outcome: Outcome) {
        self.registry.observe(Observe::Outcome {
            channel: self.params.channel,
            class: self.params.class.clone(),
            outcome,
        });
    }

    fn on_failure(&mut self, job: Job, ticket: Ticket, error: SendError, ctx: &mut Context<Self>) {
        let p = &self.params;
        let span = tracing::info_span!(parent: &self.span, "failure", event_id = %job.event_id);
        let _enter = span.enter();
        if error.is_retriable() && job.attempt < p.retries {
            let retry = job.attempt + 1;
            let mut delay = backoff::jittered(p.base_delay, p.max_delay, retry, &mut rand::rng());
            if let Some(after) = error.retry_after {
                delay = delay
                    .max(after)
                    .min(backoff::nominal(p.base_delay, p.max_delay, retry));
            }
            info!(%error, retry, ?delay, "send failed; retrying later");
            self.observe_outcome(Outcome::Retry);
            self.registry.observe(Observe::Retry {
                channel: p.channel,
                class: p.class.clone(),
            });
            let publish = self.broker.retry(&job, delay, error.kind.label());
            let retry = outcome_record(
                &job,
                RecordOutcome::Retry {
                    error: error.to_string(),
                },
            );
            let (published, refused) = ((retry.clone(), vec![]), (retry, vec![]));
            self.record_when_published(publish, published, refused, ticket, span.clone());
            return;
        }
        let reason = if error.is_retriable() {
            "retries_exhausted"
        } else {
            error.kind.label()
        };
        // The provider says the recipient opted out: on the list it goes.
        let opt_out = (error.kind == FailureKind::Unsubscribed)
            .then(|| job.suppression_address())
            .flatten();
        // A frequency cap is the user's, whatever the channel: no fallback.
        let email_ok = job.to_email.is_some() && error.kind != FailureKind::FrequencyCap;
        if let Some(to) = p
            .fallback
            .filter(|_| job.fallback_from.is_none() && email_ok)
        {
            info!(%error, to = %to, "send failed; falling back");
            self.observe_outcome(Outcome::Fallback);
            let outcome = RecordOutcome::Fallback {
                error: error.to_string(),
            };
            let record = OutcomeRecord {
                opt_out,
                ..outcome_record(&job, outcome)
            };
            self.send_record(record, None, ctx);
            let msg = FallBack {
                job,
                ticket,
                reason,
            };
            // The fallback actor is never gone for long; if it is, the
            // ticket requeues the delivery.
            if let Some(fb) = self.registry.fallback() {
                fb.do_send(msg);
            }
            return;
        }
        if error.kind.is_opt_out() {
            info!(%error, "recipient opted out; not sending");
            self.observe_outcome(Outcome::Suppressed);
            let outcome = RecordOutcome::Suppressed {
                reason: error.kind.label(),
            };
            let record = OutcomeRecord {
                opt_out,
                ..outcome_record(&job, outcome)
            };
            self.send_record(record, Some(ticket), ctx);
            return;
        }
        warn!(%error, reason, "send failed; dead-lettering");
        let outcome = |outcome| Observe::Outcome {
            channel: p.channel,
            class: p.class.clone(),
            outcome,
        };
        let dead_seen = vec![
            outcome(Outcome::DeadLetter),
            Observe::DeadLetter {
                class: p.class.clone(),
                reason,
            },
        ];
        let again_seen = vec![outcome(Outcome::Retry)];
        let dead = outcome_record(
            &job,
            RecordOutcome::DeadLetter {
                reason,
                error: error.to_string(),
            },
        );
        let again = outcome_record(
            &job,
            RecordOutcome::Retry {
                error: error.to_string(),
            },
        );
        let letter = DeadLetter {
            class: p.class.to_string(),
            reason,
            detail: error.to_string(),
            channel: Some(p.channel),
            attempts: job.attempt + 1,
            priority: job.amqp_priority,
            raw: job.raw.clone(),
        };
        let publish = self.broker.dead_letter(letter);
        // Final only once the broker has the letter. Recording
        // `dead_lettered` before lost the event when the broker refused it:
        // the delivery went back, and its next copy was claimed, found
        // final and acked. Refused, the attempt counts as one to retry.
        let (published, refused) = ((dead, dead_seen), (again, again_seen));
        self.record_when_published(publish, published, refused, ticket, span.clone());
    }

    /// Records the outcome of a delivery that a publish settles (a retry,
    /// a dead letter), and counts what is given with it: `published` once
    /// the broker confirmed the publish, with the ticket, so the delivery is
    /// acked only when both are durable; if the broker refused it,
    /// `refused`, and the delivery goes back to its queue to be tried again
    /// ([`Ticket::settle_when_published`]).
    fn record_when_published(
        &self,
        publish: BoxFuture<'static, Result<(), BrokerError>>,
        published: (OutcomeRecord, Vec<Observe>),
        refused: (OutcomeRecord, Vec<Observe>),
        ticket: Ticket,
        span: tracing::Span,
    ) {
        let (registry, again) = (self.registry.clone(), self.registry.clone());
        ticket.settle_when_published(
            publish,
            move |ticket| async move { record_detached(&registry, published, Some(ticket)).await },
            move || async move { record_detached(&again, refused, None).await },
            span,
        );
    }
}

/// Hands `msg` to the journal, which acks its ticket once the record is
/// committed; with no journal (no store), acks it at once. Gives it back if
/// the journal is restarting.
fn offer_record(registry: &Registry, msg: Record) -> Option<Record> {
    let Some(journal) = registry.journal() else {
        if let Some(t) = msg.ticket {
            t.ack();
        }
        return None;
    };
    send_or_return(Some(journal), msg).err()
}

/// Counts `seen`, then [`offer_record`]s `record` from outside the actor,
/// waiting out a journal restart.
async fn record_detached(
    registry: &Registry,
    (record, seen): (OutcomeRecord, Vec<Observe>),
    ticket: Option<Ticket>,
) {
    for o in seen {
        registry.observe(o);
    }
    let mut msg = Record { record, ticket };
    loop {
        match offer_record(registry, msg) {
            None => return,
            Some(back) => {
                msg = back;
                tokio::time::sleep(PROVIDER_RETRY).await;
            }
        }
    }
}

impl Actor for ClassSender {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        debug!(class = %self.params.class, channel = %self.params.channel, "class sender started");
    }
}

impl Handler<Deliver> for ClassSender {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.waiting.push_back(msg);
        if self.pump(ctx) {
            self.registry.observe(Observe::RateLimited {
                channel: self.params.channel,
                class: self.params.class.clone(),
            });
        }
    }
}

impl Handler<SendOutcome> for ClassSender {
    type Result = ();

    fn handle(&mut self, msg: SendOutcome, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let SendOutcome {
            job,
            ticket,
            result,
        } = msg;
        match result {
            Ok(sent) => {
                debug!(event_id = %job.event_id, provider_id = %sent.receipt.provider_id, "sent");
                self.observe_outcome(Outcome::Sent);
                self.registry.observe(Observe::Cost {
                    channel: self.params.channel,
                    class: self.params.class.clone(),
                    usd: sent.cost_usd,
                });
                let outcome = RecordOutcome::Sent {
                    provider_id: sent.receipt.provider_id,
                    cost_usd: sent.cost_usd,
                    units: sent.units,
                };
                // An SMS may still come back undelivered: keep the event for
                // its email fallback until the receipt says.
                let keep = self.params.receipts_expected
                    && self.params.fallback == Some(Channel::Email)
                    && job.channel == Channel::Sms
                    && job.fallback_from.is_none()
                    && job.to_email.is_some();
                let record = OutcomeRecord {
                    track_receipts: self.params.receipts_expected,
                    keep_for_fallback: keep.then(|| KeptJob {
                        priority: job.amqp_priority,
                        published_at_ms: job.published_at_ms,
                        raw: job.raw.clone(),
                    }),
                    ..outcome_record(&job, outcome)
                };
                self.send_record(record, Some(ticket), ctx);
            }
            Err(e) => self.on_failure(job, ticket, e, ctx),
        }
    }
}

impl Handler<Record> for ClassSender {
    type Result = ();

    /// A record that could not reach the journal (restarting) comes back
    /// here to be sent again.
    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) {
        if let Some(record) = offer_record(&self.registry, msg) {
            ctx.notify_later(record, PROVIDER_RETRY);
        }
    }
}

/// The pace `params` asks for now.
fn class_pace(params: &ClassParams) -> Pace {
    Pace::new(
        Gcra::per_minute(params.rate.get()),
        pace::class_key(params.channel, &params.class),
        params.shared.as_ref(),
    )
}

impl Handler<RateChanged> for ClassSender {
    type Result = ();

    /// Paces by the class's new limit from now on. The new pace starts
    /// empty: the first waiting delivery may go at once, and none is
    /// held longer than the new limit asks.
    fn handle(&mut self, _: RateChanged, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        info!(per_min = self.params.rate.get(), "rate limit changed");
        self.limiter = class_pace(&self.params);
        self.pump(ctx);
    }
}

impl Handler<Release> for ClassSender {
    type Result = ();

    fn handle(&mut self, _: Release, _: &mut Context<Self>) {
        let n = self.waiting.len();
        for Deliver { ticket, .. } in self.waiting.drain(..) {
            ticket.requeue();
        }
        if n > 0 {
            let _span = self.span.clone().entered();
            info!(returned = n, "returned waiting deliveries to the broker");
        }
    }
}
