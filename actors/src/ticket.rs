//! The settle-once handle of one broker delivery.
//!
//! A [`Ticket`] travels with its job through every actor. Whoever decides the
//! outcome settles it: [`Ticket::ack`] once the outcome is durable (provider
//! accepted, or the retry / dead-letter publish confirmed). A ticket dropped
//! unsettled — an actor panicked, was aborted, or a mailbox closed — requeues
//! its delivery, so the broker hands it out again and nothing is lost.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::ports::BrokerError;

/// How long a delivery whose retry or dead letter the broker refused is
/// held before it goes back to its queue (and is tried again): not a tight
/// loop while the broker refuses.
pub const PUBLISH_REFUSED_HOLD: Duration = Duration::from_secs(1);

/// How a delivery is settled with the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is durable: remove the delivery.
    Ack,
    /// Give the delivery back to the broker for redelivery.
    Requeue,
}

/// What the broker edge plugs into a ticket.
pub trait Settle: Send + 'static {
    fn settle(self: Box<Self>, disposition: Disposition);
}

/// A delivery that must be settled exactly once.
pub struct Ticket {
    settle: Option<Box<dyn Settle>>,
    /// Lives exactly as long as the ticket: see [`Ticket::held`].
    alive: Arc<()>,
}

/// Whether a ticket still exists: its delivery is held somewhere in this
/// process (waiting, in a provider call, its outcome on the way to the
/// store), not yet settled or dropped.
#[derive(Clone, Debug)]
pub struct Held(Weak<()>);

impl Held {
    pub fn still(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl Ticket {
    pub fn new(settle: impl Settle) -> Ticket {
        Ticket {
            settle: Some(Box::new(settle)),
            alive: Arc::new(()),
        }
    }

    /// A ticket bound to nothing (for work that did not come from the broker).
    pub fn detached() -> Ticket {
        Ticket {
            settle: None,
            alive: Arc::new(()),
        }
    }

    /// A handle that tells whether this ticket still exists.
    pub fn held(&self) -> Held {
        Held(Arc::downgrade(&self.alive))
    }

    /// The outcome is durable: acknowledge the delivery.
    pub fn ack(mut self) {
        self.finish(Disposition::Ack);
    }

    /// Hand the delivery back to the broker.
    pub fn requeue(mut self) {
        self.finish(Disposition::Requeue);
    }

    /// Settles the delivery by a publish (a retry, or a dead letter) the
    /// broker must take first. Confirmed, the ticket goes to `confirmed`,
    /// which settles it (acks it, or hands it to the record that will).
    /// Refused, `refused` runs, and the ticket is held
    /// [`PUBLISH_REFUSED_HOLD`] and then dropped, so the delivery is
    /// requeued and the work done again rather than lost, and not in a
    /// tight loop while the broker refuses. Runs detached: a restart of the
    /// actor that asked must not cancel a publish the broker may already
    /// have taken.
    pub fn settle_when_published<C, R>(
        self,
        publish: BoxFuture<'static, Result<(), BrokerError>>,
        confirmed: impl FnOnce(Ticket) -> C + Send + 'static,
        refused: impl FnOnce() -> R + Send + 'static,
        span: tracing::Span,
    ) where
        C: Future<Output = ()> + Send + 'static,
        R: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(
            async move {
                match publish.await {
                    Ok(()) => confirmed(self).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "publish refused; returning the delivery to the broker shortly");
                        refused().await;
                        tokio::time::sleep(PUBLISH_REFUSED_HOLD).await;
                        drop(self);
                    }
                }
            }
            .instrument(span),
        );
    }

    fn finish(&mut self, disposition: Disposition) {
        if let Some(settle) = self.settle.take() {
            settle.settle(disposition);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(Disposition::Requeue);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

/// A [`Settle`] that reports to a channel; for tests and in-process work.
impl Settle for tokio::sync::mpsc::UnboundedSender<Disposition> {
    fn settle(self: Box<Self>, disposition: Disposition) {
        let _ = self.send(disposition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_ticket_requeues_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        drop(Ticket::new(tx));
        assert_eq!(rx.try_recv(), Ok(Disposition::Requeue));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_ticket_is_held_until_it_is_settled_or_dropped() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let acked = Ticket::new(tx.clone());
        let held = acked.held();
        assert!(held.still());
        acked.ack();
        assert!(!held.still());
        let dropped = Ticket::new(tx);
        let held = dropped.held();
        drop(dropped);
        assert!(!held.still());
    }

    #[test]
    fn an_acked_ticket_settles_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        Ticket::new(tx).ack();
        assert_eq!(rx.try_recv(), Ok(Disposition::Ack));
        assert!(rx.try_recv().is_err());
    }
}
