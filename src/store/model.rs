//! What goes into the store and what comes out: claims, outcome records,
//! the message status and the views behind `herald status` and the admin API.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Milliseconds since the Unix epoch, the unit of every timestamp in the
/// store (portable between SQLite and PostgreSQL, no time zone to get wrong).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// A duration in the store's unit, milliseconds (saturating).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where a message stands. Stored as the snake_case name; see
/// docs/specs/store.md for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Claimed for a provider call that has not reported back yet.
    Sending,
    /// The last attempt failed retriably; a retry travels through the broker.
    Retrying,
    /// A provider accepted it. Final: never moves again.
    Sent,
    /// Handed to the class's fallback channel, whose claim comes next.
    Fallback,
    /// Given up on, with a reason. Final until `Store::release` (DLQ replay).
    DeadLettered,
    /// Not sent on purpose (consent, opt-out). Final.
    Suppressed,
    /// A provider call whose result nobody knows (a timeout after the
    /// request left). Claimable again.
    OutcomeUnknown,
}

impl Status {
    /// Every status, in the order of the lifecycle.
    pub const ALL: [Status; 7] = [
        Status::Sending,
        Status::Retrying,
        Status::Sent,
        Status::Fallback,
        Status::DeadLettered,
        Status::Suppressed,
        Status::OutcomeUnknown,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sending => "sending",
            Status::Retrying => "retrying",
            Status::Sent => "sent",
            Status::Fallback => "fallback",
            Status::DeadLettered => "dead_lettered",
            Status::Suppressed => "suppressed",
            Status::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// True for statuses a claim refuses (`sent`, `dead_lettered`,
    /// `suppressed`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::DeadLettered | Status::Suppressed
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| s.to_owned())
    }
}

/// A request to make one provider call for an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The event's id, its idempotency key.
    pub event_id: String,
    /// The message class (routing key).
    pub class: String,
    /// The user the message is for; kept for per-user cost and erasure.
    pub user_id: String,
    /// `"sms"` or `"email"`: the channel about to be called.
    pub channel: &'static str,
    /// The delivery's attempt number (1 for the first delivery).
    pub attempt: u32,
    /// The channel this claim falls back from, if it is a fallback send.
    pub fallback_from: Option<&'static str>,
    /// The recipient on `channel`, normalised (see
    /// `herald_actors::model::suppression_address`): a claim to a
    /// suppressed address is refused.
    pub address: Option<String>,
    /// The class's frequency cap, if it has one.
    pub cap: Option<FrequencyCap>,
    /// The time of the claim.
    pub now_ms: i64,
}

/// At most `max` messages of a class per user since `since_ms` (sent, or
/// being sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub max: u32,
    pub since_ms: i64,
}

/// What a claim decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Go ahead and send. `previous_unknown`: an earlier claim of this event
    /// was never finished (a crash mid-call); that attempt is now recorded
    /// `outcome_unknown`.
    Send {
        /// An unfinished earlier attempt was closed as `outcome_unknown`.
        previous_unknown: bool,
    },
    /// Already accepted by a provider: do not send again (ack the delivery).
    AlreadySent {
        /// The provider's message id from the accepted send.
        provider_id: Option<String>,
    },
    /// Already finished for good (`dead_lettered` or `suppressed`): do not
    /// send.
    AlreadyFinal {
        /// The final status found.
        status: Status,
    },
    /// The recipient is on the suppression list for this channel: do not
    /// send. Nothing is written; the caller records what it does instead
    /// (`suppressed`, or a fallback).
    Suppressed,
    /// The user already had the class's cap of messages in its window: do
    /// not send. Nothing is written.
    Capped,
    /// Another herald process sharing the store holds an unfinished attempt
    /// of this event whose lease has not run out: its call may still be
    /// running. Do not send now; claim again later. Nothing is written.
    InFlightElsewhere,
}

/// An event as published, kept for a later fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptEvent {
    pub priority: u8,
    pub published_at_ms: Option<i64>,
    pub body: Vec<u8>,
}

/// A provider's report on a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Twilio's `MessageSid`, Resend's `email_id`.
    pub provider_id: String,
    /// The provider's status word (`delivered`, `undelivered`, ...).
    pub status: String,
    /// Its order: a receipt applies only over a lower rank, so late and
    /// repeated callbacks never move a message backwards.
    pub rank: i64,
    /// The provider's error code, if any.
    pub error: Option<String>,
    /// A final failure (`undelivered`, `failed`): an SMS with a kept event
    /// falls back to email.
    pub failed: bool,
    pub now_ms: i64,
}

/// What a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// No message has this provider id.
    Unknown,
    /// The message already had this or a later status.
    Stale,
    /// Applied; `fallback`: the class of an event whose email fallback was
    /// scheduled.
    Applied { fallback: Option<String> },
}

/// An event held until a time, exactly as it will be published again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledEvent {
    pub event_id: String,
    pub class: String,
    pub user_id: String,
    /// When to publish it again (ms since the epoch).
    pub due_at_ms: i64,
    /// `send_at`, `local_time` or `quiet_hours`.
    pub reason: String,
    /// The channel of the attempt it waits for (`x-herald-channel`).
    pub channel: String,
    /// Provider attempts already made (`x-herald-attempt`).
    pub attempt: u32,
    /// `x-herald-fallback-from`.
    pub fallback_from: Option<String>,
    /// The AMQP priority it was published with.
    pub priority: u8,
    /// The original publish time (ms), if it had one.
    pub published_at_ms: Option<i64>,
    /// The event body as published.
    #[serde(skip)]
    pub body: Vec<u8>,
    pub created_at_ms: i64,
}

/// Adding an address to the suppression list, or taking it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionAction {
    Suppress,
    Allow,
}

impl SuppressionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionAction::Suppress => "suppress",
            SuppressionAction::Allow => "allow",
        }
    }
}

/// One change to the suppression list, audited as it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionChange {
    /// Normalised address (E.164 phone, lower-cased email).
    pub address: String,
    /// `"sms"` or `"email"`.
    pub channel: &'static str,
    pub action: SuppressionAction,
    /// Who: `twilio`, `resend`, `admin`, `herald`.
    pub actor: String,
    /// What: `inbound_stop`, `inbound_start`, `twilio_21610`,
    /// `email.bounced`, `email.complained`, `api`.
    pub source: String,
    /// Free text from the operator or the provider's keyword; no secrets.
    pub reason: Option<String>,
    pub now_ms: i64,
}

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuppressionView {
    pub address: String,
    pub channel: String,
    pub source: String,
    pub reason: Option<String>,
    pub created_at: i64,
}

/// One entry of the suppression audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditView {
    pub address: String,
    pub channel: String,
    pub action: String,
    pub actor: String,
    pub source: String,
    pub reason: Option<String>,
    pub at: i64,
}

/// The outcome of one attempt (or of an event that never reached a
/// provider, such as a decode dead letter).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event's id.
    pub event_id: String,
    /// The class; used only if the event was never claimed (the row is
    /// created from the record), otherwise the stored one stays.
    pub class: String,
    /// The user id; used like `class`. Empty when the event had none.
    pub user_id: String,
    /// The channel of the attempt this record closes.
    pub channel: &'static str,
    /// The attempt number given to the matching claim.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// An address the provider said has opted out (Twilio 21610), added to
    /// the suppression list in the same transaction.
    pub opt_out: Option<SuppressionChange>,
    /// For an accepted SMS of a class with an email fallback: the event,
    /// kept until a receipt says it was delivered or not.
    pub keep_for_fallback: Option<KeptEvent>,
    /// Receipts can come for this accepted send: make it findable by its
    /// provider id.
    pub track_receipts: bool,
    /// The time of the outcome.
    pub now_ms: i64,
}

/// What happened to an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The provider accepted the message.
    Sent {
        /// The provider's message id (Twilio SID, Resend id).
        provider_id: Option<String>,
        /// What the send cost.
        cost_usd: f64,
        /// SMS segments (1 for email).
        segments: u32,
    },
    /// Failed retriably; a retry has been scheduled through the broker.
    Retry {
        /// The PII-free error detail.
        error: String,
    },
    /// Failed on this channel; handed to the fallback channel.
    Fallback {
        /// The PII-free error detail.
        error: String,
    },
    /// Given up: dead-lettered with a reason.
    DeadLetter {
        /// The fixed reason code (`x-herald-reason`).
        reason: String,
        /// The PII-free error detail, if any.
        error: Option<String>,
    },
    /// Not sent on purpose (consent, opt-out, quiet-hours policy).
    Suppressed {
        /// The fixed reason code.
        reason: String,
    },
    /// The call's result is unknown (for example a timeout after the
    /// request was sent).
    Unknown {
        /// The PII-free error detail.
        error: String,
    },
}

impl Outcome {
    /// The message status this outcome moves to.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Sent { .. } => Status::Sent,
            Outcome::Retry { .. } => Status::Retrying,
            Outcome::Fallback { .. } => Status::Fallback,
            Outcome::DeadLetter { .. } => Status::DeadLettered,
            Outcome::Suppressed { .. } => Status::Suppressed,
            Outcome::Unknown { .. } => Status::OutcomeUnknown,
        }
    }

    /// The attempt outcome stored in `attempts.outcome`.
    pub fn attempt_outcome(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Retry { .. } => "retry",
            Outcome::Fallback { .. } => "fallback",
            Outcome::DeadLetter { .. } => "dead_letter",
            Outcome::Suppressed { .. } => "suppressed",
            Outcome::Unknown { .. } => "outcome_unknown",
        }
    }

    /// The error detail to store, if any.
    pub(crate) fn error(&self) -> Option<&str> {
        match self {
            Outcome::Retry { error } | Outcome::Fallback { error } | Outcome::Unknown { error } => {
                Some(error)
            }
            Outcome::DeadLetter { error, .. } => error.as_deref(),
            Outcome::Sent { .. } | Outcome::Suppressed { .. } => None,
        }
    }

    /// The reason code to store, if any.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Outcome::DeadLetter { reason, .. } | Outcome::Suppressed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// One event's delivery record, as `herald status` and
/// `GET /api/messages/{id}` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    /// The event's id.
    pub event_id: String,
    /// The message class.
    pub class: String,
    /// The user id (empty if the event had none).
    pub user_id: String,
    /// The latest channel tried.
    pub channel: String,
    /// Where the message stands.
    pub status: Status,
    /// Number of provider attempts (rows in `attempt_log`).
    pub attempts: u32,
    /// The provider's id of the accepted send.
    pub provider_id: Option<String>,
    /// Cost of the accepted send.
    pub cost_usd: f64,
    /// SMS segments of the accepted send.
    pub segments: u32,
    /// Reason code of a dead letter or suppression.
    pub reason: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// The channel the latest claim fell back from.
    pub fallback_from: Option<String>,
    /// When the event was first seen.
    pub created_at_ms: i64,
    /// When the record last changed.
    pub updated_at_ms: i64,
    /// When it reached `sent`, `dead_lettered`, `suppressed` or
    /// `outcome_unknown`.
    pub finished_at_ms: Option<i64>,
    /// The provider's latest report on the accepted send (`delivered`,
    /// `undelivered`, ...), if any.
    pub delivery: Option<String>,
    /// The provider's error code with that report.
    pub delivery_error: Option<String>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<AttemptView>,
}

/// What `herald status` and `GET /api/messages/{id}` show of one event:
/// its delivery record, with the entries it has waiting for a time
/// (`send_at`, local-time delivery, quiet hours) in `held`. An event that
/// has only waited so far has no delivery record yet; it shows the status
/// `held` with its class, user, channel and attempts taken from its entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventView {
    Recorded {
        #[serde(flatten)]
        record: Box<MessageView>,
        held: Vec<ScheduledEvent>,
    },
    Held {
        event_id: String,
        class: String,
        user_id: String,
        channel: String,
        status: Waiting,
        attempts: u32,
        held: Vec<ScheduledEvent>,
    },
}

/// The status of an event that has only waited so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    Held,
}

impl EventView {
    /// The view of an event's record and held entries; `None` if it has
    /// neither.
    pub fn of(record: Option<MessageView>, held: Vec<ScheduledEvent>) -> Option<EventView> {
        match (record, held.first()) {
            (Some(record), _) => Some(EventView::Recorded {
                record: Box::new(record),
                held,
            }),
            (None, Some(first)) => Some(EventView::Held {
                event_id: first.event_id.clone(),
                class: first.class.clone(),
                user_id: first.user_id.clone(),
                channel: first.channel.clone(),
                status: Waiting::Held,
                attempts: first.attempt,
                held,
            }),
            (None, None) => None,
        }
    }
}

/// One provider attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    /// The delivery's attempt number given by the claim.
    pub attempt: u32,
    /// The channel called.
    pub channel: String,
    /// When the claim was made.
    pub started_at_ms: i64,
    /// When the outcome was recorded; `None` while the call is open.
    pub finished_at_ms: Option<i64>,
    /// `sent`, `retry`, `fallback`, `dead_letter`, `suppressed` or
    /// `outcome_unknown`; `None` while open.
    pub outcome: Option<String>,
    /// The PII-free error detail.
    pub error: Option<String>,
    /// The provider's message id, if accepted.
    pub provider_id: Option<String>,
    /// The cost, if accepted.
    pub cost_usd: Option<f64>,
}

/// A user's sent messages and their cost in a time window (a day).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserCost {
    /// The user.
    pub user_id: String,
    /// Window start, inclusive.
    pub from_ms: i64,
    /// Window end, exclusive.
    pub to_ms: i64,
    /// Messages sent in the window, all channels.
    pub messages: u64,
    /// Their total cost.
    pub cost_usd: f64,
    /// Per channel, sorted by channel name; channels without sends are left
    /// out.
    pub channels: Vec<ChannelCost>,
}

/// One class's sends on one channel over a window, and their cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCost {
    pub class: String,
    #[serde(flatten)]
    pub cost: ChannelCost,
}

/// One channel's share of a [`UserCost`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelCost {
    /// `sms` or `email`.
    pub channel: String,
    /// Messages sent.
    pub messages: u64,
    /// Their cost.
    pub cost_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert!("delivered".parse::<Status>().is_err());
    }

    #[test]
    fn only_sent_dead_lettered_and_suppressed_are_final() {
        let finals: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [Status::Sent, Status::DeadLettered, Status::Suppressed]
        );
    }

    #[test]
    fn outcomes_map_to_statuses_and_attempt_outcomes() {
        let dead = Outcome::DeadLetter {
            reason: "permanent_failure".into(),
            error: Some("twilio 21211".into()),
        };
        assert_eq!(dead.status(), Status::DeadLettered);
        assert_eq!(dead.attempt_outcome(), "dead_letter");
        assert_eq!(dead.reason(), Some("permanent_failure"));
        assert_eq!(dead.error(), Some("twilio 21211"));
        let unknown = Outcome::Unknown {
            error: "timeout".into(),
        };
        assert_eq!(unknown.status(), Status::OutcomeUnknown);
        assert_eq!(unknown.attempt_outcome(), "outcome_unknown");
        assert_eq!(unknown.reason(), None);
    }
}
