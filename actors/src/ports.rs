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
    /// The recipient as the suppression list keys it.
    pub address: Option<String>,
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
            address: job.suppression_address(),
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
    /// The recipient is on the suppression list for this channel.
    Suppressed,
    /// The user already had the class's cap of messages in its window.
    Capped,
    /// Another process sharing the store is still within its lease on an
    /// unfinished attempt of this event: its call may be running. Claim it
    /// again later; do not send now.
    InFlightElsewhere,
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
    /// Not sent: the recipient opted out (`reason`: `suppressed`, or
    /// `unsubscribed` when the provider said so).
    Suppressed {
        reason: &'static str,
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
    /// The provider said this address (normalised) opted out on the
    /// record's channel: put it on the suppression list.
    pub opt_out: Option<String>,
    /// Keep the event for a fallback should a receipt say undelivered.
    pub keep_for_fallback: Option<KeptJob>,
    /// Receipts will come for this accepted send: make it findable by its
    /// provider id.
    pub track_receipts: bool,
}

/// An accepted SMS's event, as published, kept for a later fallback.
#[derive(Clone, Debug)]
pub struct KeptJob {
    pub priority: u8,
    pub published_at_ms: Option<u64>,
    pub raw: Arc<[u8]>,
}

/// The delivery store, as the journal actor uses it.
pub trait DeliveryLog: Send + Sync + 'static {
    /// Applies `records`, then `claims`, in one transaction (so a claim sees
    /// every outcome recorded before it), and returns one verdict per claim,
    /// in order. On error nothing of either is applied.
    fn commit(
        &self,
        records: Vec<OutcomeRecord>,
        claims: Vec<ClaimRequest>,
    ) -> BoxFuture<'static, Result<Vec<ClaimVerdict>, JournalError>>;

    /// Renews, from now, the lease of this process's open attempt of
    /// `event_id`, taken by a claim whose verdict was `Send`. `false`: that
    /// attempt is no longer open and this process's (another process found
    /// its lease run out and took the event over), so it must not be sent
    /// on it.
    fn renew(&self, event_id: Arc<str>) -> BoxFuture<'static, Result<bool, JournalError>>;
}

/// Slots a shared rate limit handed out. Durations count from when the
/// store answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Slots reserved (0..=`want`): the first may be used after `starts_in`,
    /// each next one `emission` after the one before.
    pub granted: u32,
    /// How long until the first granted slot conforms (zero: now).
    pub starts_in: Duration,
    /// How long until another acquire would be granted a slot.
    pub ask_after: Duration,
}

/// The shared rate-limit store did not answer (connection error, timeout).
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared rate limits unavailable: {0}")]
pub struct LimitsUnavailable(pub String);

/// Rate-limit state shared by every herald instance (Redis in production).
/// A limit is a GCRA keyed by name: requests are `emission` apart at the
/// sustained rate, and may run up to `tolerance` ahead of it.
pub trait SharedLimits: Send + Sync + 'static {
    /// Reserves up to `want` slots of the limit `key` that conform within
    /// `lead` from now (a caller asking ahead of its next slot keeps its
    /// place in the schedule however late its timers fire). Resolves within
    /// the implementation's own timeout: a store that does not answer in
    /// time is `LimitsUnavailable`, never a hang.
    fn acquire(
        &self,
        key: Arc<str>,
        emission: Duration,
        tolerance: Duration,
        want: u32,
        lead: Duration,
    ) -> BoxFuture<'static, Result<Grant, LimitsUnavailable>>;
}
