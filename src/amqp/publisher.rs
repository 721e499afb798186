//! The confirmed publisher: retries into delay queues, dead letters into
//! `herald.dlq`, and events into `herald` (for `herald publish`). Every
//! publish is mandatory and waits for the broker's confirm, so "published"
//! means "stored by the broker".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::model::Job;
use herald_actors::ports::{Broker, BrokerError, DeadLetter, QueueStats};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Connection};

use super::link::BrokerLink;
use super::topology::{self, DLQ, EXCHANGE};
use super::{put_str, put_u64};

/// Headers herald reads and writes.
pub mod headers {
    pub const ATTEMPT: &str = "x-herald-attempt";
    pub const CHANNEL: &str = "x-herald-channel";
    pub const FALLBACK_FROM: &str = "x-herald-fallback-from";
    pub const LAST_ERROR: &str = "x-herald-last-error";
    pub const REASON: &str = "x-herald-reason";
    pub const CLASS: &str = "x-herald-class";
    pub const DETAIL: &str = "x-herald-detail";
    pub const ATTEMPTS: &str = "x-herald-attempts";
}

/// Publishes with confirms on the link's current confirm channel.
#[derive(Clone)]
pub struct Publisher {
    /// The current connection and its confirm channel.
    link: Arc<BrokerLink>,
    /// Per class, the nominal delay of each retry (index 0 = first retry).
    retry_delays_ms: Arc<HashMap<String, Vec<u64>>>,
}

impl Publisher {
    pub fn new(link: Arc<BrokerLink>, retry_delays_ms: HashMap<String, Vec<u64>>) -> Publisher {
        Publisher {
            link,
            retry_delays_ms: Arc::new(retry_delays_ms),
        }
    }

    /// A publisher over one fixed connection (the CLI's one-shot commands).
    pub async fn open(conn: Arc<Connection>) -> lapin::Result<Publisher> {
        Ok(Publisher::new(
            BrokerLink::fixed(conn).await?,
            HashMap::new(),
        ))
    }

    /// Publishes and waits for the confirm; a returned (unroutable) or
    /// nacked message is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let channel = self
            .link
            .publish_channel()
            .ok_or_else(|| BrokerError("not connected to the broker".into()))?;
        let confirm = channel
            .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await
            .map_err(|e| BrokerError(e.to_string()))?
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError(format!(
                "no queue is bound for {routing_key:?}"
            ))),
            Confirmation::Nack(_) => Err(BrokerError("the broker nacked the publish".into())),
            Confirmation::NotRequested => Err(BrokerError("publisher confirms are off".into())),
        }
    }

    /// Publishes an event the way a client should: to `herald` with the class
    /// as routing key, persistent, with a priority and a timestamp.
    pub async fn publish_event(
        &self,
        class: &str,
        event_id: &str,
        body: &[u8],
        priority: u8,
    ) -> Result<(), BrokerError> {
        let props = event_properties(event_id, priority, Some(now_ms()));
        self.publish(EXCHANGE, class, body, props).await
    }

    fn retry_queue(&self, class: &str, retry: u32) -> Option<(String, u64)> {
        let delays = self.retry_delays_ms.get(class)?;
        let i = (retry.max(1) as usize - 1).min(delays.len().checked_sub(1)?);
        Some((topology::delay_queue(class, delays[i]), delays[i]))
    }
}

/// An event's properties wherever herald publishes it: persistent JSON,
/// its priority and id, and when it was first published (seconds).
pub fn event_properties(
    event_id: &str,
    priority: u8,
    published_at_ms: Option<u64>,
) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_priority(priority)
        .with_content_type("application/json".into())
        .with_message_id(event_id.into());
    match published_at_ms {
        Some(ms) => props.with_timestamp(ms / 1000),
        None => props,
    }
}

/// Where a job stands, for the consumer that takes it again: its attempt,
/// its channel and the channel it fell back from.
pub fn put_progress(h: &mut FieldTable, attempt: u32, channel: &str, fallback_from: Option<&str>) {
    put_u64(h, headers::ATTEMPT, u64::from(attempt));
    put_str(h, headers::CHANNEL, channel);
    if let Some(from) = fallback_from {
        put_str(h, headers::FALLBACK_FROM, from);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker for Publisher {
    fn retry(
        &self,
        job: &Job,
        delay: Duration,
        reason: &'static str,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let this = self.clone();
        let retry = job.attempt + 1;
        let Some((queue, nominal_ms)) = self.retry_queue(&job.class, retry) else {
            let class = job.class.to_string();
            return async move { Err(BrokerError(format!("class {class} has no delay queues"))) }
                .boxed();
        };
        let mut h = FieldTable::default();
        let from = job.fallback_from.map(|c| c.as_str());
        put_progress(&mut h, retry, job.channel.as_str(), from);
        put_str(&mut h, headers::LAST_ERROR, reason);
        let expiration = (delay.as_millis() as u64).min(nominal_ms).to_string();
        let props = event_properties(&job.event_id, job.amqp_priority, job.published_at_ms)
            .with_expiration(expiration.as_str().into())
            .with_headers(h);
        let body = job.raw.clone();
        async move { this.publish("", &queue, &body, props).await }.boxed()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<(), BrokerError>> {
        let this = self.clone();
        let mut h = FieldTable::default();
        put_str(&mut h, headers::REASON, letter.reason);
        put_str(&mut h, headers::CLASS, &letter.class);
        put_str(&mut h, headers::DETAIL, &letter.detail);
        put_u64(&mut h, headers::ATTEMPTS, u64::from(letter.attempts));
        if let Some(ch) = letter.channel {
            put_str(&mut h, headers::CHANNEL, ch.as_str());
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(letter.priority)
            .with_content_type("application/json".into())
            .with_timestamp(now_ms() / 1000)
            .with_headers(h);
        async move { this.publish("", DLQ, &letter.raw, props).await }.boxed()
    }
}

/// Queue depths by passive declares on a short-lived channel.
pub struct BrokerStats {
    pub link: Arc<BrokerLink>,
    /// The queues to report.
    pub queues: Vec<String>,
}

impl QueueStats for BrokerStats {
    fn depths(&self) -> BoxFuture<'static, Vec<(String, u64)>> {
        let conn = self.link.connection();
        let queues = self.queues.clone();
        async move {
            let Some(conn) = conn else {
                return Vec::new();
            };
            let Ok(ch) = conn.create_channel().await else {
                return Vec::new();
            };
            let mut out = Vec::with_capacity(queues.len());
            for q in queues {
                let opts = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                match ch
                    .queue_declare(q.as_str().into(), opts, FieldTable::default())
                    .await
                {
                    Ok(info) => out.push((q, u64::from(info.message_count()))),
                    // A missing queue closes the channel: stop here.
                    Err(_) => break,
                }
            }
            let _ = ch.close(200, "done".into()).await;
            out
        }
        .boxed()
    }
}
