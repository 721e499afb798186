//! `Provider`: one per channel. Owns the channel's client and its shared
//! capacity — how many requests may be open at once and the account-wide
//! rate — and serves the classes' submissions in class-priority order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::messages::{Observe, Reclaim, SendOutcome, Sent, Submit};
use crate::model::{Channel, FailureKind, Outbound, ProviderClient, SendError};
use crate::pace::{self, Pace, SharedPacing};
use crate::ports::DeliveryLog;
use crate::rate_limiter::Gcra;
use crate::registry::{send_or_return, Registry};
use crate::segments;

/// How often a provider throttles (429) one job before the job is handed
/// back to its class for a broker retry.
const MAX_THROTTLES: u32 = 5;
/// The pause after a 429 that names no `Retry-After`.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// How soon to try again to hand an outcome to a class sender being restarted.
const REDELIVER_AFTER: Duration = Duration::from_millis(50);

/// Renewing a claim's lease in the delivery store before a call that
/// waited for this provider's capacity long enough for the lease to run
/// out before the call could end.
#[derive(Clone)]
pub struct LeaseRenewal {
    pub log: Arc<dyn DeliveryLog>,
    /// A job whose lease began this long ago (or longer) has it renewed
    /// first: the lease less the longest call, less a margin for the
    /// renewal itself.
    pub after: Duration,
}

impl std::fmt::Debug for LeaseRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRenewal")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// What a provider actor needs to know; no I/O config.
#[derive(Clone, Debug)]
pub struct ProviderParams {
    pub channel: Channel,
    /// Requests open at once.
    pub max_concurrency: u32,
    /// Account-wide requests per second (0 or less: unlimited).
    pub rate_per_sec: f64,
    /// USD per SMS segment, or per email.
    pub cost_per_unit_usd: f64,
    /// Share the account-wide rate with every herald instance (Redis);
    /// `None` keeps it in this process.
    pub shared: Option<SharedPacing>,
    /// `herald_inflight_deliveries{channel}`: requests open now.
    pub in_flight: prometheus::IntGauge,
    /// With a delivery store: renew the leases of claims that waited.
    pub lease: Option<LeaseRenewal>,
}

/// One open request on the in-flight gauge, for as long as it lives: a
/// request dropped with a dying actor leaves the gauge as surely as one
/// that is answered.
struct OpenRequest(prometheus::IntGauge);

impl OpenRequest {
    fn new(gauge: &prometheus::IntGauge) -> OpenRequest {
        gauge.inc();
        OpenRequest(gauge.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Provider {
    /// The channel, capacity and prices this actor serves with.
    params: ProviderParams,
    /// The provider's client (Twilio, Resend, sandbox or a test double).
    client: Arc<dyn ProviderClient>,
    /// The account-wide rate, shared by every class (and, with Redis, by
    /// every instance).
    limiter: Option<Pace>,
    /// Waiting submissions, by class priority: the lowest number goes first.
    waiting: BTreeMap<u8, VecDeque<Submit>>,
    /// Requests open now.
    in_flight: u32,

    /// No request before this instant (set by a 429).
    paused_until: Option<Instant>,
    /// A timer to drain again is armed.
    wake_armed: bool,
    /// Outcomes whose class sender was restarting when they came back.
    undelivered: Vec<SendOutcome>,
    /// Where the class senders are.
    registry: Registry,
    /// Every log line of this actor carries its channel.
    span: tracing::Span,
}

impl Provider {
    pub fn new(
        params: ProviderParams,
        client: Arc<dyn ProviderClient>,
        registry: Registry,
    ) -> Provider {
        let limiter = (params.rate_per_sec > 0.0).then(|| {
            Pace::new(
                Gcra::per_second(params.rate_per_sec),
                pace::provider_key(params.channel),
                params.shared.as_ref(),
            )
        });
        Provider {
            span: tracing::info_span!("provider", channel = %params.channel),
            params,
            client,
            limiter,
            waiting: BTreeMap::new(),
            in_flight: 0,
            paused_until: None,
            wake_armed: false,
            undelivered: Vec::new(),
            registry,
        }
    }

    /// Starts as many waiting jobs as capacity, rate and pause allow.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < self.params.max_concurrency {
            if self.waiting.values().all(VecDeque::is_empty) {
                return;
            }
            let now = Instant::now();
            if let Some(until) = self.paused_until.filter(|u| *u > now) {
                self.wake_at(until - now, ctx);
                return;
            }
            if let Some(limiter) = &mut self.limiter {
                // As many as are waiting and could start now.
                let waiting: usize = self.waiting.values().map(VecDeque::len).sum();
                let room = (self.params.max_concurrency - self.in_flight) as usize;
                if let Err(wait) = limiter.try_acquire(now, waiting.min(room)) {
                    self.wake_at(wait, ctx);
                    return;
                }
            }
            let submit = self
                .waiting
                .values_mut()
                .find_map(VecDeque::pop_front)
                .expect("a non-empty queue");
            self.start(submit, ctx);
        }
    }

    fn wake_at(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if self.wake_armed {
            return;
        }
        self.wake_armed = true;
        ctx.run_later(after, |act, ctx| {
            act.wake_armed = false;
            act.drain(ctx);
        });
    }

    fn start(&mut self, submit: Submit, ctx: &mut Context<Self>) {
        let Some(outbound) = Outbound::from_job(&submit.job) else {
            let err = SendError::new(FailureKind::InvalidRecipient, "no address for the channel");
            self.report(submit, Err(err), ctx);
            return;
        };
        self.in_flight += 1;
        let open = OpenRequest::new(&self.params.in_flight);
        let renewal = self.params.lease.as_ref().filter(|lease| {
            submit
                .leased_at
                .is_some_and(|at| at.elapsed() >= lease.after)
        });
        let Some(renewal) = renewal else {
            self.call(submit, outbound, open, ctx);
            return;
        };
        // The slot and the rate's token stay taken: the call follows at once.
        let asked = Instant::now();
        ctx.spawn(
            renewal
                .log
                .renew(submit.job.event_id.clone())
                .into_actor(self)
                .map(move |renewed, act, ctx| {
                    let _span = act.span.clone().entered();
                    match renewed {
                        Ok(true) => {
                            let mut submit = submit;
                            submit.leased_at = Some(asked);
                            act.call(submit, outbound, open, ctx);
                            return;
                        }
                        Ok(false) => info!(event_id = %submit.job.event_id,
                            "another herald process took this event over while it waited; claiming it again"),
                        Err(e) => warn!(event_id = %submit.job.event_id, error = %e,
                            "could not renew a waiting claim's lease; claiming it again"),
                    }
                    act.close(open);
                    // Without a journal (restarting) the ticket drops and the
                    // broker delivers the event again.
                    let _ = send_or_return(act.registry.journal(), Reclaim(submit));
                    act.drain(ctx);
                }),
        );
    }

    /// Calls the provider for a job that holds a slot (`open`).
    fn call(
        &mut self,
        submit: Submit,
        outbound: Outbound,
        open: OpenRequest,
        ctx: &mut Context<Self>,
    ) {
        let started = Instant::now();
        let channel = self.params.channel;
        ctx.spawn(
            self.client
                .send(outbound)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.close(open);
                    act.registry.observe(Observe::ProviderCall {
                        channel,
                        duration: started.elapsed(),
                        error: result.as_ref().err().map(|e| e.kind),
                    });
                    let result = result.map(|receipt| act.price(&submit, receipt));
                    act.finish(submit, result, ctx);
                    act.drain(ctx);
                }),
        );
    }

    /// A job that held a slot (`open`) no longer does.
    fn close(&mut self, open: OpenRequest) {
        self.in_flight -= 1;
        drop(open);
    }

    fn price(&self, submit: &Submit, receipt: crate::model::Receipt) -> Sent {
        let units = match self.params.channel {
            Channel::Sms => segments::segments(&submit.job.body),
            Channel::Email => 1,
        };
        Sent {
            receipt,
            units,
            cost_usd: units as f64 * self.params.cost_per_unit_usd,
        }
    }

    fn finish(
        &mut self,
        mut submit: Submit,
        result: Result<Sent, SendError>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = &result {
            if e.kind == FailureKind::Throttled {
                // The account is over its limit: everything waits, not just this job.
                let pause = e.retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
                self.paused_until = Some(Instant::now() + pause);
                if submit.throttled < MAX_THROTTLES {
                    submit.throttled += 1;
                    let _span = self.span.clone().entered();
                    debug!(?pause, "provider throttled; pausing");
                    self.waiting
                        .entry(submit.priority)
                        .or_default()
                        .push_front(submit);
                    return;
                }
            }
        }
        self.report(submit, result, ctx);
    }

    /// Hands the outcome to the job's current class sender.
    fn report(&mut self, submit: Submit, result: Result<Sent, SendError>, ctx: &mut Context<Self>) {
        let outcome = SendOutcome {
            job: submit.job,
            ticket: submit.ticket,
            result,
        };
        self.hand_back(outcome, ctx);
    }

    fn hand_back(&mut self, outcome: SendOutcome, ctx: &mut Context<Self>) {
        let addr = self
            .registry
            .sender(outcome.job.channel, &outcome.job.class);
        if let Err(outcome) = send_or_return(addr, outcome) {
            // The class sender is being restarted: keep the outcome (and its
            // ticket) until it is back, so the send is neither lost nor repeated.
            if self.undelivered.is_empty() {
                ctx.run_later(REDELIVER_AFTER, |act, ctx| {
                    for o in std::mem::take(&mut act.undelivered) {
                        act.hand_back(o, ctx);
                    }
                });
            }
            self.undelivered.push(outcome);
        }
    }
}

impl Actor for Provider {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        debug!(channel = %self.params.channel, "provider started");
    }
}

impl Handler<Submit> for Provider {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.waiting.entry(msg.priority).or_default().push_back(msg);
        self.drain(ctx);
    }
}
