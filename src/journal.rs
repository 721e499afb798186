//! The delivery store behind the actors' journal port: maps the actors'
//! claims and outcome records onto [`Store`] batches.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::ports::{
    ClaimRequest, ClaimVerdict, DeliveryLog, JournalError, OutcomeRecord, RecordOutcome,
};

use crate::store::{self, Claim, ClaimOutcome, Outcome, Record, Store};

/// [`DeliveryLog`] over the delivery store.
pub struct StoreLog(pub Store);

/// The store numbers attempts from 1; a job counts attempts already made.
fn attempt_no(attempt: u32) -> u32 {
    attempt + 1
}

impl DeliveryLog for StoreLog {
    fn claim(
        &self,
        claims: Vec<ClaimRequest>,
    ) -> BoxFuture<'static, Result<Vec<ClaimVerdict>, JournalError>> {
        let store = self.0.clone();
        async move {
            let now = store::now_ms();
            let rows: Vec<Claim> = claims
                .iter()
                .map(|c| Claim {
                    event_id: c.event_id.to_string(),
                    class: c.class.to_string(),
                    user_id: c.user_id.to_string(),
                    channel: c.channel.as_str(),
                    attempt: attempt_no(c.attempt),
                    fallback_from: c.fallback_from.map(|f| f.as_str()),
                    now_ms: now,
                })
                .collect();
            let outcomes = store
                .claim(&rows)
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
                })
                .collect())
        }
        .boxed()
    }

    fn record(&self, records: Vec<OutcomeRecord>) -> BoxFuture<'static, Result<(), JournalError>> {
        let store = self.0.clone();
        async move {
            let now = store::now_ms();
            let rows: Vec<Record> = records
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
                    },
                    now_ms: now,
                })
                .collect();
            store
                .record(&rows)
                .await
                .map_err(|e| JournalError(e.to_string()))
        }
        .boxed()
    }
}
