//! `Journal`: the delivery store on the hot path, batched. Claims (before a
//! provider call) and outcome records (after it) are queued here and written
//! by group commit: one store transaction at a time, and whatever arrives
//! while it runs forms the next batch — one transaction per message at low
//! load, hundreds per transaction under load. Records go before claims, so a
//! claim always sees every outcome already reported.
//!
//! A claim's verdict decides the job: `Send` goes on to the provider,
//! `AlreadySent` and `AlreadyFinal` are acked without a second provider
//! call. A record that carries a ticket acks it only once committed. If the
//! store fails, the batch waits and is tried again; tickets stay held, so
//! nothing is acked before it is durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::messages::{Claim, Observe, Record, Submit};
use crate::ports::{ClaimRequest, ClaimVerdict, DeliveryLog, JournalError};
use crate::registry::{send_or_return, Registry};

/// The largest batch in one transaction.
const MAX_BATCH: usize = 512;
/// How long to wait before trying a failed batch again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How soon to try the provider again when it is being restarted.
const PROVIDER_RETRY: Duration = Duration::from_millis(50);

pub struct Journal {
    /// The store.
    log: Arc<dyn DeliveryLog>,
    /// Where the providers and metrics are.
    registry: Registry,
    /// Records waiting for the next transaction.
    records: VecDeque<Record>,
    /// Claims waiting for the next transaction.
    claims: VecDeque<Submit>,
    /// Claimed jobs whose provider was restarting.
    unsent: Vec<Submit>,
    /// A transaction is running.
    busy: bool,
    /// A retry timer is armed.
    retry_armed: bool,
}

impl Journal {
    pub fn new(log: Arc<dyn DeliveryLog>, registry: Registry) -> Journal {
        Journal {
            log,
            registry,
            records: VecDeque::new(),
            claims: VecDeque::new(),
            unsent: Vec::new(),
            busy: false,
            retry_armed: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.retry_armed {
            return;
        }
        if !self.records.is_empty() {
            let n = self.records.len().min(MAX_BATCH);
            let batch: Vec<Record> = self.records.drain(..n).collect();
            let rows = batch.iter().map(|r| r.record.clone()).collect();
            self.busy = true;
            ctx.spawn(
                self.log
                    .record(rows)
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        act.busy = false;
                        match res {
                            Ok(()) => {
                                for r in batch {
                                    if let Some(t) = r.ticket {
                                        t.ack();
                                    }
                                }
                            }
                            Err(e) => act.failed(e, ctx, |act| {
                                for r in batch.into_iter().rev() {
                                    act.records.push_front(r);
                                }
                            }),
                        }
                        act.flush(ctx);
                    }),
            );
        } else if !self.claims.is_empty() {
            let n = self.claims.len().min(MAX_BATCH);
            let batch: Vec<Submit> = self.claims.drain(..n).collect();
            let reqs = batch
                .iter()
                .map(|s| ClaimRequest::for_job(&s.job))
                .collect();
            self.busy = true;
            ctx.spawn(
                self.log
                    .claim(reqs)
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        act.busy = false;
                        match res {
                            Ok(verdicts) if verdicts.len() == batch.len() => {
                                for (submit, verdict) in batch.into_iter().zip(verdicts) {
                                    act.decide(submit, verdict, ctx);
                                }
                            }
                            Ok(v) => act.failed(
                                JournalError(format!(
                                    "{} verdicts for {} claims",
                                    v.len(),
                                    batch.len()
                                )),
                                ctx,
                                |act| act.requeue_claims(batch),
                            ),
                            Err(e) => act.failed(e, ctx, |act| act.requeue_claims(batch)),
                        }
                        act.flush(ctx);
                    }),
            );
        }
    }

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

    fn decide(&mut self, submit: Submit, verdict: ClaimVerdict, ctx: &mut Context<Self>) {
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
                self.submit(submit, ctx);
            }
            ClaimVerdict::AlreadySent | ClaimVerdict::AlreadyFinal => {
                info!(event_id = %job.event_id, class = %job.class, ?verdict, "already handled; not sending again");
                self.registry.observe(Observe::DuplicateSuppressed {
                    channel: job.channel,
                    class: job.class.clone(),
                });
                submit.ticket.ack();
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
        self.claims.push_back(submit);
        self.flush(ctx);
    }
}

impl Handler<Record> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) {
        self.records.push_back(msg);
        self.flush(ctx);
    }
}
