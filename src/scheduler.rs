//! Held events ([`crate::schedule`]) live in the delivery store's
//! `scheduled` table, not in memory and not in an open broker delivery.
//! [`defer`] puts one there and acks its delivery once the row is
//! committed; the holds are written by group commit, like the journal's
//! claims (one transaction at a time, and what arrives meanwhile is the
//! next batch), so a class that holds every event it gets costs one
//! transaction per batch, not per event. [`spawn`] is the background task
//! that publishes due events back to their class queue (confirmed) and then
//! deletes them.
//!
//! A crash between the publish and the delete publishes the event again
//! once its lease ends: the journal's claim makes the second copy a no-op.
//! With several instances on one PostgreSQL store, each round leases the
//! due events it takes ([`Store::take_due`]), so two instances never
//! publish the same held event at once.

use std::sync::Arc;
use std::time::Duration;

use herald_actors::metrics::Metrics;
use herald_actors::model::Job;
use herald_actors::ticket::Ticket;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::amqp::publisher::{event_properties, put_progress, Publisher};
use crate::amqp::put_u64;
use crate::amqp::topology::EXCHANGE;
use crate::schedule::{Clock, Hold};
use crate::store::{ScheduledEvent, Store};

/// How often the schedule is read for due events.
pub const POLL: Duration = Duration::from_millis(200);
/// How often `herald_scheduled_events` is counted (a full count of the
/// table, too dear for every round).
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Most events published per round.
const BATCH: u32 = 256;
/// How long due events taken for publishing are kept from other instances
/// (publishing a round takes well under a second).
const LEASE_MS: i64 = 30_000;
/// Most events held in one transaction.
const HOLD_BATCH: usize = 256;
/// How long a delivery that could not be held waits before it goes back to
/// the broker (which would otherwise hand it straight back).
const STORE_DOWN_PAUSE: Duration = Duration::from_secs(1);

/// Set on an event published from the schedule: the time it was due (ms).
/// It has had its local delivery time.
pub const DUE_HEADER: &str = "x-herald-due";

/// What holding events needs.
#[derive(Clone)]
pub struct Scheduling {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The holds waiting for their transaction ([`write_holds`]).
    /// Unbounded, but each entry holds an unacked delivery, so the
    /// consumers' prefetch bounds it.
    holds: mpsc::UnboundedSender<(ScheduledEvent, Ticket)>,
}

impl Scheduling {
    /// Starts the task that writes holds, on the I/O runtime (as the
    /// journal's batches: off the actor thread).
    pub fn new(store: Store, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Scheduling {
        let (holds, queued) = mpsc::unbounded_channel();
        crate::offload::handle().spawn(write_holds(store.clone(), metrics.clone(), queued));
        Scheduling {
            store,
            clock,
            metrics,
            holds,
        }
    }
}

/// Writes the queued holds, a batch per transaction, and acks each one's
/// delivery once its batch is committed. If the store fails, the batch's
/// deliveries go back to the broker after [`STORE_DOWN_PAUSE`].
async fn write_holds(
    store: Store,
    metrics: Arc<Metrics>,
    mut queued: mpsc::UnboundedReceiver<(ScheduledEvent, Ticket)>,
) {
    let mut batch = Vec::with_capacity(HOLD_BATCH);
    while queued.recv_many(&mut batch, HOLD_BATCH).await > 0 {
        let (events, tickets): (Vec<ScheduledEvent>, Vec<Ticket>) = batch.drain(..).unzip();
        match store.schedule(&events).await {
            Ok(()) => {
                for event in &events {
                    metrics
                        .deferred
                        .with_label_values(&[&event.class, &event.reason])
                        .inc();
                    // Per event, so debug: a daily class holds every event
                    // it gets; herald_deferred_total and `herald status` tell.
                    debug!(event_id = %event.event_id, class = %event.class, reason = %event.reason,
                        due_at_ms = event.due_at_ms, "event held until its time");
                }
                tickets.into_iter().for_each(Ticket::ack);
            }
            Err(e) => {
                warn!(events = events.len(), error = %e,
                    "could not hold events in the store; returning them to the broker");
                tokio::time::sleep(STORE_DOWN_PAUSE).await;
                drop(tickets);
            }
        }
    }
}

/// Holds `job` until `hold.until_ms`; acks the delivery once held.
pub fn defer(s: &Scheduling, job: &Job, hold: Hold, ticket: Ticket) {
    let event = ScheduledEvent {
        event_id: job.event_id.to_string(),
        class: job.class.to_string(),
        user_id: job.user_id.to_string(),
        due_at_ms: hold.until_ms,
        reason: hold.reason.as_str().to_owned(),
        channel: job.channel.as_str().to_owned(),
        attempt: job.attempt,
        fallback_from: job.fallback_from.map(|c| c.as_str().to_owned()),
        priority: job.amqp_priority,
        published_at_ms: job.published_at_ms.and_then(|ms| i64::try_from(ms).ok()),
        body: job.raw.to_vec(),
        created_at_ms: s.clock.now_ms(),
    };
    // The writer lives as long as the process's I/O runtime; were it gone,
    // the ticket dropped with the message requeues the delivery.
    let _ = s.holds.send((event, ticket));
}

/// Publishes due events back to their class queues, every [`POLL`].
pub fn spawn(s: Scheduling, publisher: Publisher) -> tokio::task::JoinHandle<()> {
    crate::offload::handle().spawn(async move {
        let mut failing = false;
        let mut counted_at: Option<tokio::time::Instant> = None;
        loop {
            let full = match release_due(&s, &publisher).await {
                Ok(n) => {
                    if std::mem::take(&mut failing) {
                        info!("scheduler publishing again");
                    }
                    n == BATCH as usize
                }
                Err(e) => {
                    // One line per outage, not one per round.
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "scheduler cannot publish due events; trying again every round");
                    }
                    false
                }
            };
            if counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                counted_at = Some(tokio::time::Instant::now());
                if let Ok(n) = s.store.scheduled_count().await {
                    s.metrics
                        .scheduled
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            if !full {
                tokio::time::sleep(POLL).await;
            }
        }
    })
}

/// One round: publishes what is due; returns how many were published.
async fn release_due(s: &Scheduling, publisher: &Publisher) -> Result<usize, String> {
    let due = s
        .store
        .take_due(s.clock.now_ms(), LEASE_MS, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut published = Vec::with_capacity(due.len());
    let mut failed = None;
    for event in due {
        match publisher
            .publish(EXCHANGE, &event.class, &event.body, properties(&event))
            .await
        {
            Ok(()) => published.push(event),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let n = published.len();
    s.store
        .unschedule(&published)
        .await
        .map_err(|e| e.to_string())?;
    match failed {
        Some(e) => Err(format!("publish failed after {n}: {e}")),
        None => Ok(n),
    }
}

/// The event's properties as first published, plus where it stands.
fn properties(e: &ScheduledEvent) -> BasicProperties {
    let mut h = FieldTable::default();
    put_u64(&mut h, DUE_HEADER, u64::try_from(e.due_at_ms).unwrap_or(0));
    if e.attempt > 0 || e.fallback_from.is_some() {
        put_progress(&mut h, e.attempt, &e.channel, e.fallback_from.as_deref());
    }
    let published_at_ms = e.published_at_ms.map(|ms| u64::try_from(ms).unwrap_or(0));
    event_properties(&e.event_id, e.priority, published_at_ms).with_headers(h)
}

#[cfg(test)]
mod tests {
    use herald_actors::ticket::Disposition;

    use super::*;

    fn held(i: usize) -> ScheduledEvent {
        ScheduledEvent {
            event_id: format!("e{i}"),
            class: "weekly_digest".to_owned(),
            user_id: format!("u{i}"),
            due_at_ms: 1_000 + i as i64,
            reason: "local_time".to_owned(),
            channel: "email".to_owned(),
            attempt: 0,
            fallback_from: None,
            priority: 1,
            published_at_ms: None,
            body: b"{}".to_vec(),
            created_at_ms: 1,
        }
    }

    /// Queues `n` holds, closes the queue and runs the writer to its end;
    /// returns how each delivery was settled.
    async fn write(store: &Store, metrics: &Arc<Metrics>, n: usize) -> Vec<Disposition> {
        let (queue, queued) = mpsc::unbounded_channel();
        let (settle, mut settled) = mpsc::unbounded_channel();
        for i in 0..n {
            queue.send((held(i), Ticket::new(settle.clone()))).unwrap();
        }
        drop((queue, settle));
        write_holds(store.clone(), metrics.clone(), queued).await;
        let mut out = Vec::new();
        while let Some(d) = settled.recv().await {
            out.push(d);
        }
        out
    }

    #[tokio::test]
    async fn holds_are_acked_once_stored_in_batches_and_requeued_when_the_store_fails() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let metrics = Metrics::new();
        // More than one batch.
        let n = HOLD_BATCH + 44;
        let settled = write(&store, &metrics, n).await;
        assert_eq!(settled, vec![Disposition::Ack; n]);
        assert_eq!(store.scheduled_count().await.unwrap(), n as u64);
        let deferred = metrics
            .deferred
            .with_label_values(&["weekly_digest", "local_time"])
            .get();
        assert_eq!(deferred, n as u64);

        store.close().await;
        let settled = write(&store, &metrics, 3).await;
        assert_eq!(settled, vec![Disposition::Requeue; 3]);
    }
}
