//! Consumers: one per class queue (and one for `herald.unrouted`). Each
//! decodes its deliveries, dead-letters what cannot be delivered, and hands
//! the rest, with a [`Ticket`], to the class sender of the job's channel.
//! Acks and requeues go back on the channel that delivered, from one settle
//! task per consumer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_actors::messages::{Deliver, Observe};
use herald_actors::model::Channel;
use herald_actors::ports::{Broker, DeadLetter};
use herald_actors::registry::{send_or_return, Registry};
use herald_actors::ticket::{Disposition, Settle, Ticket};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::Connection;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::publisher::{headers, Publisher};
use super::{header_str, header_u64};
use crate::config::Config;
use crate::event::{self, Envelope, Rejection};

/// How long to wait between looks for a class sender being restarted.
const SENDER_WAIT: Duration = Duration::from_millis(25);
/// The metric label for events whose class is not configured.
pub const UNKNOWN_CLASS: &str = "unknown";

/// What every consumer shares.
pub struct ConsumeContext {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub publisher: Publisher,
    /// Deliveries handed out and not yet settled (for graceful shutdown).
    pub outstanding: Arc<AtomicUsize>,
}

/// A running consumer: enough to cancel it and to know when it ended.
#[derive(Clone)]
pub struct Running {
    pub channel: lapin::Channel,
    pub tag: String,
    /// Notified once when the consumer's stream ends.
    pub done: Arc<tokio::sync::Notify>,
}

/// Which queue a consumer reads.
#[derive(Clone, Debug)]
pub enum Source {
    /// `herald.<class>`: events and retries of one class.
    Class(String),
    /// `herald.unrouted`: events whose routing key names no class.
    Unrouted,
}

impl Source {
    fn queue(&self) -> String {
        match self {
            Source::Class(c) => super::topology::class_queue(c),
            Source::Unrouted => super::topology::UNROUTED_QUEUE.to_owned(),
        }
    }
}

struct LapinSettle {
    acker: Acker,
    tx: mpsc::UnboundedSender<(Acker, Disposition)>,
    outstanding: Arc<AtomicUsize>,
}

impl Settle for LapinSettle {
    fn settle(self: Box<Self>, disposition: Disposition) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        let _ = self.tx.send((self.acker, disposition));
    }
}

/// Starts consuming `source`, until the consumer is cancelled or its
/// channel dies.
pub async fn start(
    conn: &Connection,
    source: Source,
    prefetch: u16,
    ctx: Arc<ConsumeContext>,
) -> lapin::Result<Running> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = source.queue();
    let tag = format!("herald-{}-{:08x}", queue, rand::random::<u32>());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(Acker, Disposition)>();
    tokio::spawn(async move {
        while let Some((acker, disposition)) = rx.recv().await {
            let res = match disposition {
                Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
                Disposition::Requeue => {
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await
                }
            };
            if let Err(e) = res {
                warn!(error = %e, "could not settle a delivery; the broker will redeliver it");
            }
        }
    });
    info!(queue, prefetch, "consuming");
    let done = Arc::new(tokio::sync::Notify::new());
    let running = Running {
        channel,
        tag,
        done: done.clone(),
    };
    tokio::spawn(async move {
        while let Some(next) = consumer.next().await {
            match next {
                Ok(delivery) => handle(&ctx, &source, delivery, &tx).await,
                Err(e) => {
                    warn!(queue, error = %e, "consumer failed");
                    break;
                }
            }
        }
        info!(queue, "consumer ended");
        done.notify_one();
    });
    Ok(running)
}

async fn handle(
    ctx: &ConsumeContext,
    source: &Source,
    delivery: Delivery,
    tx: &mpsc::UnboundedSender<(Acker, Disposition)>,
) {
    let Delivery {
        routing_key,
        properties,
        data,
        acker,
        ..
    } = delivery;
    ctx.outstanding.fetch_add(1, Ordering::SeqCst);
    let ticket = Ticket::new(LapinSettle {
        acker,
        tx: tx.clone(),
        outstanding: ctx.outstanding.clone(),
    });
    let h = properties.headers().as_ref();
    let class = match source {
        Source::Class(c) => c.clone(),
        Source::Unrouted => routing_key.as_str().to_owned(),
    };
    let envelope = Envelope {
        class,
        attempt: header_u64(h, headers::ATTEMPT).unwrap_or(0) as u32,
        channel: header_str(h, headers::CHANNEL).and_then(Channel::parse),
        fallback_from: header_str(h, headers::FALLBACK_FROM).and_then(Channel::parse),
        priority: properties.priority().unwrap_or(0),
        published_at_ms: properties.timestamp().map(|s| s * 1000),
    };
    let decoded = match source {
        Source::Unrouted => Err(Rejection {
            reason: "unknown_class",
            detail: format!("no class named {:?} is configured", envelope.class),
        }),
        Source::Class(_) => event::decode(&ctx.config, &envelope, &data),
    };
    let job = match decoded {
        Ok(job) if ctx.registry.serves(job.channel, &job.class) => {
            if let (Some(from), None) = (job.fallback_from, envelope.fallback_from) {
                // No address on the class's own channel: straight to fallback.
                ctx.registry.observe(Observe::Fallback {
                    from,
                    to: job.channel,
                    class: job.class.clone(),
                });
            }
            job
        }
        Ok(job) => {
            let detail = format!("class {} does not send by {}", job.class, job.channel);
            return reject(
                ctx,
                envelope,
                data,
                Rejection {
                    reason: "no_channel",
                    detail,
                },
                ticket,
            );
        }
        Err(rejection) => return reject(ctx, envelope, data, rejection, ticket),
    };
    let mut msg = Deliver { job, ticket };
    loop {
        let sender = ctx.registry.sender(msg.job.channel, &msg.job.class);
        match send_or_return(sender, msg) {
            Ok(()) => return,
            // The class sender is being restarted: wait for it, holding the
            // delivery (prefetch bounds how many wait like this).
            Err(back) => {
                msg = back;
                tokio::time::sleep(SENDER_WAIT).await;
            }
        }
    }
}

/// Dead-letters an event that cannot be delivered: one log line, one metric,
/// and an ack once the dead letter is confirmed.
fn reject(
    ctx: &ConsumeContext,
    env: Envelope,
    body: Vec<u8>,
    rejection: Rejection,
    ticket: Ticket,
) {
    let label = if ctx.config.classes.contains_key(&env.class) {
        env.class.clone()
    } else {
        UNKNOWN_CLASS.to_owned()
    };
    let span = tracing::warn_span!("dead_letter", class = %label, reason = rejection.reason);
    span.in_scope(|| warn!(detail = %rejection.detail, "event rejected"));
    ctx.registry.observe(Observe::DeadLetter {
        class: label.into(),
        reason: rejection.reason,
    });
    let letter = DeadLetter {
        class: env.class,
        reason: rejection.reason,
        detail: rejection.detail,
        channel: None,
        attempts: env.attempt,
        priority: env.priority,
        raw: body.into(),
    };
    ticket.ack_when_confirmed(ctx.publisher.dead_letter(letter), span);
}
