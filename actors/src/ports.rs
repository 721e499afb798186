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
