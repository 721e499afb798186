//! The domain values every actor passes around: channels, jobs, provider
//! receipts and the classified errors providers answer with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A delivery channel. Each has its own provider actor and one class sender
/// per class that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Email];

    /// The label used in metrics, headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "sms" => Some(Channel::Sms),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, validated and rendered for one channel: everything a provider
/// needs, plus what the engine needs to retry, fall back or dead-letter it.
#[derive(Clone, Debug)]
pub struct Job {
    /// The publisher's idempotency key (`id` in the event).
    pub event_id: Arc<str>,
    /// The publisher's user id; never a metric label.
    pub user_id: Arc<str>,
    /// The message class (the routing key).
    pub class: Arc<str>,
    /// The channel this attempt goes out on.
    pub channel: Channel,
    /// E.164 phone number, if the event has one.
    pub to_phone: Option<String>,
    /// Email address, if the event has one.
    pub to_email: Option<String>,
    /// Display name for email.
    pub to_name: Option<String>,
    /// The rendered text body.
    pub body: String,
    /// The rendered email subject (a class default when the event has none).
    pub subject: String,
    /// How many provider attempts this event has already had on this channel.
    pub attempt: u32,
    /// Set when this job is a fallback from another channel.
    pub fallback_from: Option<Channel>,
    /// The AMQP priority the event was published with.
    pub amqp_priority: u8,
    /// The message body exactly as published, for retries and dead letters.
    pub raw: Arc<[u8]>,
    /// When the event was published (AMQP timestamp, ms since the epoch), if set.
    pub published_at_ms: Option<u64>,
    /// `send_at` (ms since the epoch): not to be sent before.
    pub send_at_ms: Option<i64>,
    /// The recipient's IANA time zone (`to.timezone`), validated.
    pub timezone: Option<Arc<str>>,
}

impl Job {
    /// The address this job is sent to on its channel.
    pub fn recipient(&self) -> Option<&str> {
        match self.channel {
            Channel::Sms => self.to_phone.as_deref(),
            Channel::Email => self.to_email.as_deref(),
        }
    }

    /// The recipient as the suppression list keys it.
    pub fn suppression_address(&self) -> Option<String> {
        self.recipient()
            .map(|a| suppression_address(self.channel, a))
    }
}

/// An address as the suppression list keys it: a phone number as given
/// (events carry E.164, and so do Twilio's webhooks), an email address
/// trimmed and lower-cased (providers report it in any case).
pub fn suppression_address(channel: Channel, address: &str) -> String {
    match channel {
        Channel::Sms => address.trim().to_owned(),
        Channel::Email => address.trim().to_lowercase(),
    }
}

/// What a provider client is asked to send: one message to one address.
#[derive(Clone, Debug, PartialEq)]
pub struct Outbound {
    pub channel: Channel,
    /// Event id; sent to Resend as `Idempotency-Key`.
    pub idempotency_key: Arc<str>,
    /// Phone (E.164) for SMS, address for email.
    pub to: String,
    /// Display name for email (`Jane <jane@example.com>`).
    pub to_name: Option<String>,
    /// Email subject; empty for SMS.
    pub subject: String,
    /// Text body.
    pub body: String,
}

impl Outbound {
    /// Builds the outbound message for a job; `None` if the job has no
    /// address for its channel.
    pub fn from_job(job: &Job) -> Option<Outbound> {
        Some(Outbound {
            channel: job.channel,
            idempotency_key: job.event_id.clone(),
            to: job.recipient()?.to_owned(),
            to_name: job.to_name.clone(),
            subject: if job.channel == Channel::Email {
                job.subject.clone()
            } else {
                String::new()
            },
            body: job.body.clone(),
        })
    }
}

/// A provider's acceptance of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message (`SM…` for Twilio, a UUID for Resend).
    pub provider_id: String,
}

/// Why a provider did not accept a message. Small and fixed: each kind has a
/// metric label and knows whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The address is not valid for the channel (Twilio 21211, 21614; Resend 422).
    InvalidRecipient,
    /// The recipient opted out (Twilio 21610).
    Unsubscribed,
    /// The recipient is on herald's suppression list for the channel: the
    /// provider was not called.
    Suppressed,
    /// The user already had the class's cap of messages in its window: the
    /// provider was not called.
    FrequencyCap,
    /// Any other permanent refusal (Twilio 21608, 21635, 4xx; Resend 4xx).
    Rejected,
    /// Credentials refused (401/403).
    Unauthorized,
    /// 429 / Twilio 20429 / Resend concurrent idempotent request: not processed.
    Throttled,
    /// 5xx: the provider failed; retry later.
    ProviderError,
    /// No answer in time: the message may or may not have gone out.
    Timeout,
    /// Could not reach the provider (connect, DNS, reset before a response).
    Transport,
}

impl FailureKind {
    /// Whether a later attempt can succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            FailureKind::Throttled
                | FailureKind::ProviderError
                | FailureKind::Timeout
                | FailureKind::Transport
        )
    }

    /// Whether the recipient must not be sent to on this channel: the
    /// event ends `suppressed` (or falls back), never dead-lettered.
    pub fn is_opt_out(self) -> bool {
        matches!(
            self,
            FailureKind::Unsubscribed | FailureKind::Suppressed | FailureKind::FrequencyCap
        )
    }

    /// What an HTTP status alone says, when the provider gave no code that
    /// says more.
    pub fn from_http_status(status: u16) -> FailureKind {
        match status {
            401 | 403 => FailureKind::Unauthorized,
            429 => FailureKind::Throttled,
            // 408 from a proxy: the request did not complete; retry.
            408 => FailureKind::ProviderError,
            400..=499 => FailureKind::Rejected,
            _ => FailureKind::ProviderError,
        }
    }

    /// The fixed label used in metrics and `x-herald-reason`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::InvalidRecipient => "invalid_recipient",
            FailureKind::Unsubscribed => "unsubscribed",
            FailureKind::Suppressed => "suppressed",
            FailureKind::FrequencyCap => "frequency_cap",
            FailureKind::Rejected => "rejected",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Throttled => "throttled",
            FailureKind::ProviderError => "provider_error",
            FailureKind::Timeout => "timeout",
            FailureKind::Transport => "transport",
        }
    }
}

/// A classified provider failure. `detail` never holds a phone number, an
/// email address or a secret: clients build it from codes and statuses, or
/// scrub provider text with [`crate::mask::scrub`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{} ({})", kind.label(), detail)]
pub struct SendError {
    pub kind: FailureKind,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The provider's error code (Twilio's `code`), when given.
    pub code: Option<i64>,
    /// Human-readable, PII-free description.
    pub detail: String,
    /// The provider's `Retry-After`, when given.
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        SendError {
            kind,
            status: None,
            code: None,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.kind.is_retriable()
    }
}

/// A client for one provider. Implemented in the `herald` crate (Twilio,
/// Resend, sandbox) and by test doubles; the provider actor owns one.
pub trait ProviderClient: Send + Sync + 'static {
    /// Sends one message. The future must finish within the client's own
    /// timeout (a `Timeout` error), so the actor never waits forever.
    fn send(
        &self,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<Receipt, SendError>>;
}
