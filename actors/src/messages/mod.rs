//! Every message herald's actors exchange, in one place.

use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use tokio::time::Instant;

use crate::metrics::Outcome;
use crate::model::{Channel, Job, Receipt, SendError};
use crate::ports::OutcomeRecord;
use crate::ticket::Ticket;

/// An event for a class sender: send it at the class's pace.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    pub job: Job,
    pub ticket: Ticket,
}

/// A job for a provider actor, queued by its class priority.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Submit {
    /// 1 is served first.
    pub priority: u8,
    pub job: Job,
    pub ticket: Ticket,
    /// How many times the provider throttled this job (429) so far.
    pub throttled: u32,
    /// When the lease of its claim in the delivery store began, at the
    /// latest (`None` without a store): the provider renews a lease that
    /// may run out before its call ends.
    pub leased_at: Option<Instant>,
}

/// A job the class's limiter let through: claim it in the journal, then
/// submit it to the provider if the journal says it may go.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Claim(pub Submit);

/// A claimed job whose lease could not be renewed before its call (another
/// process took the event over, or the store did not answer): the journal
/// claims it again rather than let it be sent on a lease it may have lost.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Reclaim(pub Submit);

/// An outcome for the journal. With a ticket, the ticket is acked once the
/// record is committed (the outcome is durable before the broker forgets
/// the delivery).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Record {
    pub record: OutcomeRecord,
    pub ticket: Option<Ticket>,
}

/// A provider's acceptance, with what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub receipt: Receipt,
    /// SMS segments (1 for email).
    pub units: u32,
    pub cost_usd: f64,
}

/// The result of a provider attempt, sent back to the current class sender
/// of the job's (channel, class) — whichever instance is alive now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendOutcome {
    pub job: Job,
    pub ticket: Ticket,
    pub result: Result<Sent, SendError>,
}

/// A failed send to try on another channel.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FallBack {
    pub job: Job,
    pub ticket: Ticket,
    /// Why the original channel failed (a fixed code).
    pub reason: &'static str,
}

/// Something for the metrics actor to count.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Observe {
    Outcome {
        channel: Channel,
        class: Arc<str>,
        outcome: Outcome,
    },
    /// A provider request ended (`error`: how it failed, if it did).
    ProviderCall {
        channel: Channel,
        duration: Duration,
        error: Option<crate::model::FailureKind>,
    },
    Cost {
        channel: Channel,
        class: Arc<str>,
        usd: f64,
    },
    Retry {
        channel: Channel,
        class: Arc<str>,
    },
    Fallback {
        from: Channel,
        to: Channel,
        class: Arc<str>,
    },
    DeadLetter {
        /// A configured class, or `unknown`.
        class: Arc<str>,
        reason: &'static str,
    },
    RateLimited {
        channel: Channel,
        class: Arc<str>,
    },
    Restart {
        actor: &'static str,
    },
    /// A claim found an earlier attempt that never finished (a crash
    /// mid-call): that send's outcome is unknown.
    OutcomeUnknown {
        channel: Channel,
        class: Arc<str>,
    },
    /// A redelivered or republished event the journal says was already sent.
    DuplicateSuppressed {
        channel: Channel,
        class: Arc<str>,
    },
    /// A claim found the event claimed by another herald process whose
    /// call may still be running: the delivery waits and claims again.
    InFlightElsewhere {
        channel: Channel,
        class: Arc<str>,
    },
}

/// The class's [`ClassRate`](crate::class_sender::ClassRate) changed:
/// pace by the new limit from now on.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RateChanged;

/// Shutting down or pausing the class: hand every delivery not yet
/// submitted back to the broker now (sends already open finish normally).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Release;

/// Whether the journal has nothing queued or being written (for shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "bool")]
pub struct IsIdle;

/// Health check from the supervisor: answered at once by a healthy actor.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Ping;

/// Fault injection for supervision tests: makes an actor fail the way real
/// actors do.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Crash {
    /// Panic inside the handler.
    Panic,
    /// Stop answering: block the mailbox forever.
    Freeze,
}
