//! The delivery store behind the actors' journal port: maps the actors'
//! claims and outcome records onto [`Store`] batches, run on the I/O
//! runtime ([`crate::offload`]).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::ports::{
    ClaimRequest, ClaimVerdict, DeliveryLog, JournalError, OutcomeRecord, RecordOutcome,
};

use herald_actors::model::Channel;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{
    self, Claim, ClaimOutcome, FrequencyCap, KeptEvent, Outcome, Record, Store, SuppressionAction,
    SuppressionChange,
};

/// Who reported an opt-out on a channel, for the audit log.
fn provider_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "twilio",
        Channel::Email => "resend",
    }
}

/// [`DeliveryLog`] over the delivery store.
pub struct StoreLog {
    pub store: Store,
    /// Per class: most messages per user, and the rolling window.
    pub caps: Arc<HashMap<String, (u32, Duration)>>,
    /// `herald_store_duration_seconds{op}`.
    pub timing: prometheus::HistogramVec,
}

/// The store numbers attempts from 1; a job counts attempts already made.
fn attempt_no(attempt: u32) -> u32 {
    attempt + 1
}

impl DeliveryLog for StoreLog {
    fn commit(
        &self,
        records: Vec<OutcomeRecord>,
        claims: Vec<ClaimRequest>,
    ) -> BoxFuture<'static, Result<Vec<ClaimVerdict>, JournalError>> {
        let store = self.store.clone();
        let caps = self.caps.clone();
        offloaded(self.timing.with_label_values(&["commit"]), async move {
            // Built here, on the I/O runtime, not on the journal's thread.
            let now = store::now_ms();
            let records = records_of(records, now);
            let claims = claims_of(claims, &caps, now);
            let outcomes = store
                .commit(&records, &claims)
                .await
                .map_err(|e| JournalError(e.to_string()))?;
            Ok(outcomes
                .into_iter()
                .map(|o| match o {
                    ClaimOutcome::Send { previous_unknown } => {
                        ClaimVerdict::Send { previous_unknown }
                    }
                    ClaimOutcome::AlreadySent { .. } => ClaimVerdict::AlreadySent,
                    ClaimOutcome::AlreadyFinal { .. } => ClaimVerdict::AlreadyFinal,
                    ClaimOutcome::Suppressed => ClaimVerdict::Suppressed,
                    ClaimOutcome::Capped => ClaimVerdict::Capped,
                    ClaimOutcome::InFlightElsewhere => ClaimVerdict::InFlightElsewhere,
                })
                .collect())
        })
    }

    fn renew(&self, event_id: Arc<str>) -> BoxFuture<'static, Result<bool, JournalError>> {
        let store = self.store.clone();
        offloaded(self.timing.with_label_values(&["renew"]), async move {
            store
                .renew_lease(&event_id)
                .await
                .map_err(|e| JournalError(e.to_string()))
        })
    }
}

/// The store's rows for the journal's claims, at `now`.
fn claims_of(
    claims: Vec<ClaimRequest>,
    caps: &HashMap<String, (u32, Duration)>,
    now: i64,
) -> Vec<Claim> {
    claims
        .into_iter()
        .map(|c| Claim {
            event_id: c.event_id.to_string(),
            class: c.class.to_string(),
            user_id: c.user_id.to_string(),
            channel: c.channel.as_str(),
            attempt: attempt_no(c.attempt),
            fallback_from: c.fallback_from.map(|f| f.as_str()),
            address: c.address,
            cap: caps
                .get(c.class.as_ref())
                .map(|(max, window)| FrequencyCap {
                    max: *max,
                    since_ms: now - store::millis(*window),
                }),
            now_ms: now,
        })
        .collect()
}

/// The store's rows for the journal's outcome records, at `now`.
fn records_of(records: Vec<OutcomeRecord>, now: i64) -> Vec<Record> {
    records
        .into_iter()
        .map(|r| Record {
            event_id: r.event_id.to_string(),
            class: r.class.to_string(),
            user_id: r.user_id.to_string(),
            channel: r.channel.as_str(),
            attempt: attempt_no(r.attempt),
            outcome: match r.outcome {
                RecordOutcome::Sent {
                    provider_id,
                    cost_usd,
                    units,
                } => Outcome::Sent {
                    provider_id: Some(provider_id).filter(|p| !p.is_empty()),
                    cost_usd,
                    segments: units,
                },
                RecordOutcome::Retry { error } => Outcome::Retry { error },
                RecordOutcome::Fallback { error } => Outcome::Fallback { error },
                RecordOutcome::DeadLetter { reason, error } => Outcome::DeadLetter {
                    reason: reason.to_owned(),
                    error: Some(error),
                },
                RecordOutcome::Suppressed { reason } => Outcome::Suppressed {
                    reason: reason.to_owned(),
                },
            },
            opt_out: r.opt_out.map(|address| SuppressionChange {
                address,
                channel: r.channel.as_str(),
                action: SuppressionAction::Suppress,
                actor: provider_name(r.channel).to_owned(),
                source: "send_error".to_owned(),
                reason: Some("the provider reported the recipient opted out".to_owned()),
                now_ms: now,
            }),
            keep_for_fallback: r.keep_for_fallback.map(|k| KeptEvent {
                priority: k.priority,
                published_at_ms: k.published_at_ms.and_then(|ms| i64::try_from(ms).ok()),
                body: k.raw.to_vec(),
            }),
            track_receipts: r.track_receipts,
            now_ms: now,
        })
        .collect()
}

/// Runs a store batch on the I/O runtime, timed into `timer`; a panic there
/// is a failed batch (the journal holds it and tries again).
fn offloaded<T: Send + 'static>(
    timer: prometheus::Histogram,
    batch: impl std::future::Future<Output = Result<T, JournalError>> + Send + 'static,
) -> BoxFuture<'static, Result<T, JournalError>> {
    async move {
        let started = std::time::Instant::now();
        let result = crate::offload::run(batch)
            .await
            .unwrap_or_else(|| Err(JournalError("the store batch panicked".into())));
        timer.observe(started.elapsed().as_secs_f64());
        result
    }
    .boxed()
}
