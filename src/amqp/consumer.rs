//! Consumers: one per class queue (and one for `herald.unrouted`). Each
//! decodes its deliveries, dead-letters what cannot be delivered, and hands
//! the rest, with a [`Ticket`], to the class sender of the job's channel.
//! Acks and requeues go back on the channel that delivered, from one settle
//! task per consumer, which coalesces runs of acks into one multiple-ack
//! ([`super::acks`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use lapin::Connection;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::acks::{AckWindow, Frame};
use super::publisher::{headers, Publisher};
use super::{header_str, header_u64};
use crate::controls::Controls;
use crate::event::{self, Envelope, Rejection};
use crate::schedule;
use crate::scheduler::{self, Scheduling, DUE_HEADER};

/// How long to wait between looks for a class sender being restarted.
const SENDER_WAIT: Duration = Duration::from_millis(25);
/// How long acks may wait behind one slow delivery before they are sent one
/// by one.
const STRAGGLER_WAIT: Duration = Duration::from_millis(20);
/// The most settlements taken from the queue at once.
const SETTLE_BATCH: usize = 1024;
/// The metric label for events whose class is not configured.
pub const UNKNOWN_CLASS: &str = "unknown";

/// What every consumer shares.
pub struct ConsumeContext {
    /// The config in force (replaced on reload) and the paused classes.
    pub controls: Arc<Controls>,
    pub registry: Registry,
    pub publisher: Publisher,
    /// Deliveries handed out and not yet settled (for graceful shutdown).
    pub outstanding: Arc<AtomicUsize>,
    /// Where events that must wait are held.
    pub scheduling: Scheduling,
}

/// A running consumer: enough to cancel it and to know when it ended.
#[derive(Clone)]
pub struct Running {
    pub channel: lapin::Channel,
    pub tag: String,
    /// Notified once when the consumer's stream ends.
    pub done: Arc<tokio::sync::Notify>,
    /// Set before a cancel that leaves the connection up (a paused class):
    /// the channel is closed once what it took is settled. (At shutdown
    /// `LinkControl::close` closes the channels.)
    pub retired: Arc<AtomicBool>,
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

/// A settlement on its way to the consumer's settle task.
type Settled = (u64, Disposition);

struct LapinSettle {
    tag: u64,
    tx: mpsc::UnboundedSender<Settled>,
    outstanding: Arc<AtomicUsize>,
}

impl Settle for LapinSettle {
    fn settle(self: Box<Self>, disposition: Disposition) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        let _ = self.tx.send((self.tag, disposition));
    }
}

/// Settles the channel's deliveries with the broker: each wake-up takes
/// every settlement queued, and sends requeues alone and runs of acks as one
/// multiple-ack.
async fn settle_task(
    channel: lapin::Channel,
    mut rx: mpsc::UnboundedReceiver<Settled>,
    retired: Arc<AtomicBool>,
) {
    let mut window = AckWindow::new();
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    let mut frames = Vec::new();
    // When held acks go one by one: STRAGGLER_WAIT after they were first
    // held, however busy the channel is meanwhile.
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        flush_at = match (window.has_stragglers(), flush_at) {
            (false, _) => None,
            (true, None) => Some(tokio::time::Instant::now() + STRAGGLER_WAIT),
            (true, at) => at,
        };
        let got = if let Some(at) = flush_at {
            match tokio::time::timeout_at(at, rx.recv_many(&mut batch, SETTLE_BATCH)).await {
                Ok(n) => n,
                Err(_) => {
                    window.flush_stragglers(&mut frames);
                    send_frames(&channel, &mut frames).await;
                    flush_at = None;
                    continue;
                }
            }
        } else {
            rx.recv_many(&mut batch, SETTLE_BATCH).await
        };
        if got == 0 {
            break;
        }
        for (tag, disposition) in batch.drain(..) {
            window.settle(tag, disposition, &mut frames);
        }
        window.advance(&mut frames);
        send_frames(&channel, &mut frames).await;
    }
    // Every ticket is gone: whatever is still held is sent one by one.
    window.flush_stragglers(&mut frames);
    send_frames(&channel, &mut frames).await;
    // The consumer was retired (its class paused) and all it took is
    // settled: the channel has nothing left to do.
    if retired.load(Ordering::SeqCst) && channel.status().connected() {
        let _ = channel.close(200, "consumer done".into()).await;
    }
}

async fn send_frames(channel: &lapin::Channel, frames: &mut Vec<Frame>) {
    for frame in frames.drain(..) {
        let res = match frame {
            Frame::Ack { tag, multiple } => {
                channel.basic_ack(tag, BasicAckOptions { multiple }).await
            }
            Frame::Requeue { tag } => {
                channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        },
                    )
                    .await
            }
        };
        if let Err(e) = res {
            warn!(error = %e, "could not settle deliveries; the broker will redeliver them");
        }
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
    let (tx, rx) = mpsc::unbounded_channel::<Settled>();
    let retired = Arc::new(AtomicBool::new(false));
    tokio::spawn(settle_task(channel.clone(), rx, retired.clone()));
    info!(queue, prefetch, "consuming");
    let done = Arc::new(tokio::sync::Notify::new());
    let running = Running {
        channel,
        tag,
        done: done.clone(),
        retired,
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
    tx: &mpsc::UnboundedSender<Settled>,
) {
    let Delivery {
        delivery_tag,
        routing_key,
        properties,
        data,
        ..
    } = delivery;
    ctx.outstanding.fetch_add(1, Ordering::SeqCst);
    let ticket = Ticket::new(LapinSettle {
        tag: delivery_tag,
        tx: tx.clone(),
        outstanding: ctx.outstanding.clone(),
    });
    let config = ctx.controls.config();
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
        released: header_u64(h, DUE_HEADER).is_some(),
    };
    let decoded = match source {
        Source::Unrouted => Err(Rejection {
            reason: "unknown_class",
            detail: format!("no class named {:?} is configured", envelope.class),
        }),
        Source::Class(_) => event::decode(&config, &envelope, &data),
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
    let s = &ctx.scheduling;
    if let Some(hold) = schedule::hold(&config, &job, envelope.released, s.clock.now_ms()) {
        return scheduler::defer(s, &job, hold, ticket);
    }
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

/// Just the id of an event body that may be invalid otherwise.
#[derive(serde::Deserialize)]
struct EventId {
    id: String,
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
    let label = if ctx.controls.config().classes.contains_key(&env.class) {
        env.class.clone()
    } else {
        UNKNOWN_CLASS.to_owned()
    };
    // The id, when the body has one to read: every line about an event
    // names it.
    let event_id = serde_json::from_slice::<EventId>(&body)
        .ok()
        .map(|e| e.id.chars().take(128).collect::<String>())
        .unwrap_or_default();
    let span =
        tracing::warn_span!("dead_letter", %event_id, class = %label, reason = rejection.reason);
    span.in_scope(|| warn!(detail = %rejection.detail, "event rejected"));
    let (registry, reason) = (ctx.registry.clone(), rejection.reason);
    let letter = DeadLetter {
        class: env.class,
        reason: rejection.reason,
        detail: rejection.detail,
        channel: None,
        attempts: env.attempt,
        priority: env.priority,
        raw: body.into(),
    };
    ticket.settle_when_published(
        ctx.publisher.dead_letter(letter),
        move |ticket| async move {
            // Counted once the broker has the letter, as the class senders
            // count theirs: a refused one comes back and is counted when it
            // goes.
            registry.observe(Observe::DeadLetter {
                class: label.into(),
                reason,
            });
            ticket.ack();
        },
        || std::future::ready(()),
        span,
    );
}
