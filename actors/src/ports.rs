//! What the actors need from the edges, as traits the `herald` crate
//! implements over lapin (and tests implement in memory).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::model::{Channel, Job};

/// A broker publish did not get a positive publisher confirm.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker publish failed: {0}")]
pub struct BrokerError(pub String);

/// A dead letter: the original message and why it could not be delivered.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The message class, when known (`x-herald-class`; the routing key
    /// otherwise).
    pub class: String,
    /// A fixed reason code (`x-herald-reason`), also a metric label.
    pub reason: &'static str,
    /// A PII-free human explanation (`x-herald-detail`).
    pub detail: String,
    /// The channel of the last attempt, if any was made.
    pub channel: Option<Channel>,
    /// Provider attempts made.
    pub attempts: u32,
    /// The AMQP priority of the original message.
    pub priority: u8,
    /// The original body, unchanged, so it can be replayed.
    pub raw: Arc<[u8]>,
}

/// Confirmed publishes the actors ask for. Each future resolves once the
/// broker confirmed the message (or failed to).
pub trait Broker: Send + Sync + 'static {
    /// Publishes `job` for another attempt after `delay`, through the broker's
    /// delay queue for the job's class and retry number `job.attempt + 1`.
    fn retry(
        &self,
        job: &Job,
        delay: Duration,
        reason: &'static str,
    ) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// Publishes a dead letter to `herald.dlq`.
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// Queue depths, for the `herald_queue_messages` gauge.
pub trait QueueStats: Send + Sync + 'static {
    /// `(queue name, ready messages)` for every herald queue it can see.
    fn depths(&self) -> BoxFuture<'static, Vec<(String, u64)>>;
}

/// A journal could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("delivery journal: {0}")]
pub struct JournalError(pub String);

/// A claim: "this event is about to be sent on this channel".
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub event_id: Arc<str>,
    pub class: Arc<str>,
    pub user_id: Arc<str>,
    pub channel: Channel,
    pub attempt: u32,
    pub fallback_from: Option<Channel>,
}

impl ClaimRequest {
    pub fn for_job(job: &Job) -> ClaimRequest {
        ClaimRequest {
            event_id: job.event_id.clone(),
            class: job.class.clone(),
            user_id: job.user_id.clone(),
            channel: job.channel,
            attempt: job.attempt,
            fallback_from: job.fallback_from,
        }
    }
}

/// What the journal says about a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimVerdict {
    /// Send it. `previous_unknown`: an earlier attempt was claimed and never
    /// finished (a crash mid-call); it is now recorded `outcome_unknown`.
    Send { previous_unknown: bool },
    /// A provider already accepted this event: do not send it again.
    AlreadySent,
    /// The event already ended for good (dead-lettered, suppressed).
    AlreadyFinal,
}

/// What became of an attempt, for the journal.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordOutcome {
    Sent {
        provider_id: String,
        cost_usd: f64,
        units: u32,
    },
    Retry {
        error: String,
    },
    Fallback {
        error: String,
    },
    DeadLetter {
        reason: &'static str,
        error: String,
    },
}

/// One outcome to record.
#[derive(Clone, Debug)]
pub struct OutcomeRecord {
    pub event_id: Arc<str>,
    pub class: Arc<str>,
    pub user_id: Arc<str>,
    pub channel: Channel,
    pub attempt: u32,
    pub outcome: RecordOutcome,
}

/// The delivery store, as the journal actor uses it. Each call is one
/// transaction for the whole batch.
pub trait DeliveryLog: Send + Sync + 'static {
    fn claim(
        &self,
        claims: Vec<ClaimRequest>,
    ) -> BoxFuture<'static, Result<Vec<ClaimVerdict>, JournalError>>;
    fn record(&self, records: Vec<OutcomeRecord>) -> BoxFuture<'static, Result<(), JournalError>>;
}
