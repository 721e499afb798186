//! herald's broker topology (SPEC.md "Broker topology"), declared at start
//! and idempotently:
//!
//! - exchange `herald` (topic, durable), with alternate exchange
//!   `herald.unrouted`, so an event published with a routing key that names no
//!   class lands in queue `herald.unrouted` and is dead-lettered with reason
//!   `unknown_class` instead of being dropped by the broker;
//! - per class: queue `herald.<class>` (durable, `x-max-priority`, dead-letter
//!   exchange `herald.dlx`) bound to `herald` with the class as routing key;
//! - per class and retry delay: queue `herald.<class>.delay.<ms>` with
//!   `x-message-ttl` = the delay, dead-lettering back to `herald.<class>`
//!   through the default exchange. The delay is in the name, so changing a
//!   class's base delay declares new queues instead of failing on the old
//!   ones' arguments;
//! - exchange `herald.dlx` (fanout) and queue `herald.dlq`: dead letters.
//!   herald publishes its dead letters itself, with confirms and reason
//!   headers; the DLX only catches what the broker itself dead-letters.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

pub const EXCHANGE: &str = "herald";
pub const UNROUTED_EXCHANGE: &str = "herald.unrouted";
pub const UNROUTED_QUEUE: &str = "herald.unrouted";
pub const DLX: &str = "herald.dlx";
pub const DLQ: &str = "herald.dlq";
/// `x-max-priority` of the class queues: small, as RabbitMQ advises.
pub const MAX_PRIORITY: u8 = 10;

/// `herald.<class>`.
pub fn class_queue(class: &str) -> String {
    format!("{EXCHANGE}.{class}")
}

/// The class whose queue `queue` is (the inverse of [`class_queue`]); `None`
/// for every other queue (delay queues, `herald.dlq`, `herald.unrouted`).
pub fn class_of_queue(queue: &str) -> Option<&str> {
    let class = queue.strip_prefix(EXCHANGE)?.strip_prefix('.')?;
    (!class.is_empty() && !class.contains('.') && queue != DLQ && queue != UNROUTED_QUEUE)
        .then_some(class)
}

/// `herald.<class>.delay.<ms>`.
pub fn delay_queue(class: &str, delay_ms: u64) -> String {
    format!("{EXCHANGE}.{class}.delay.{delay_ms}")
}

/// The AMQP priority a client should publish a class's events with: class
/// priority 1 (most urgent) is AMQP priority 10.
pub fn amqp_priority(class_priority: u8) -> u8 {
    MAX_PRIORITY
        .saturating_add(1)
        .saturating_sub(class_priority)
        .clamp(1, MAX_PRIORITY)
}

/// One class's queues: its name and the nominal delays of its retries.
pub struct ClassTopology {
    pub class: String,
    pub retry_delays_ms: Vec<u64>,
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares everything. Safe to run again (and by several instances).
pub async fn declare(ch: &Channel, classes: &[ClassTopology]) -> lapin::Result<()> {
    ch.exchange_declare(
        UNROUTED_EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        UNROUTED_QUEUE.into(),
        durable_queue(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        UNROUTED_QUEUE.into(),
        UNROUTED_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_exchange(),
        table(&[(
            "alternate-exchange",
            AMQPValue::LongString(UNROUTED_EXCHANGE.into()),
        )]),
    )
    .await?;
    ch.exchange_declare(
        DLX.into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(DLQ.into(), durable_queue(), FieldTable::default())
        .await?;
    ch.queue_bind(
        DLQ.into(),
        DLX.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for c in classes {
        let queue = class_queue(&c.class);
        ch.queue_declare(
            queue.as_str().into(),
            durable_queue(),
            table(&[
                ("x-max-priority", AMQPValue::ShortShortUInt(MAX_PRIORITY)),
                ("x-dead-letter-exchange", AMQPValue::LongString(DLX.into())),
            ]),
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            c.class.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for &ms in &c.retry_delays_ms {
            ch.queue_declare(
                delay_queue(&c.class, ms).as_str().into(),
                durable_queue(),
                table(&[
                    ("x-message-ttl", AMQPValue::LongLongInt(ms as i64)),
                    ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                    (
                        "x-dead-letter-routing-key",
                        AMQPValue::LongString(queue.as_str().into()),
                    ),
                ]),
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_queue_names_its_class_and_no_other_queue_does() {
        assert_eq!(class_of_queue(&class_queue("otp")), Some("otp"));
        for other in [
            DLQ,
            UNROUTED_QUEUE,
            "herald.otp.delay.1000",
            "herald.",
            "other.otp",
        ] {
            assert_eq!(class_of_queue(other), None, "{other}");
        }
    }

    #[test]
    fn names_and_priorities() {
        assert_eq!(class_queue("payment_reminder"), "herald.payment_reminder");
        assert_eq!(
            delay_queue("payment_reminder", 300_000),
            "herald.payment_reminder.delay.300000"
        );
        assert_eq!(amqp_priority(1), 10);
        assert_eq!(amqp_priority(8), 3);
        assert_eq!(amqp_priority(10), 1);
        assert_eq!(amqp_priority(0), 10);
    }
}
