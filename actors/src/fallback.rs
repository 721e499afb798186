//! `Fallback`: turns a failed SMS into the same content by email and hands it
//! to the (email, class) sender, so the fallback obeys the class's email
//! rate. The delivery's ticket travels along: it is acked only when the
//! email's outcome is durable.

use std::time::Duration;

use actix::prelude::*;
use tracing::info;

use crate::messages::{Deliver, FallBack, Observe};
use crate::model::Channel;
use crate::registry::{send_or_return, Registry};

/// How soon to try again when the email sender is being restarted.
const SENDER_RETRY: Duration = Duration::from_millis(50);

pub struct Fallback {
    /// Where the email class senders are.
    registry: Registry,
}

impl Fallback {
    pub fn new(registry: Registry) -> Fallback {
        Fallback { registry }
    }
}

impl Actor for Fallback {
    type Context = Context<Self>;
}

impl Handler<FallBack> for Fallback {
    type Result = ();

    fn handle(&mut self, msg: FallBack, ctx: &mut Context<Self>) {
        let FallBack {
            mut job,
            ticket,
            reason,
        } = msg;
        let from = job.fallback_from.unwrap_or(job.channel);
        if job.fallback_from.is_none() {
            // First time through: the job becomes a fresh email job.
            info!(event_id = %job.event_id, class = %job.class, reason, "falling back to email");
            self.registry.observe(Observe::Fallback {
                from: job.channel,
                to: Channel::Email,
                class: job.class.clone(),
            });
            job.fallback_from = Some(from);
            job.channel = Channel::Email;
            job.attempt = 0;
        }
        let sender = self.registry.sender(Channel::Email, &job.class);
        if let Err(Deliver { job, ticket }) = send_or_return(sender, Deliver { job, ticket }) {
            // Being restarted: try again shortly, keeping the ticket.
            ctx.notify_later(
                FallBack {
                    job,
                    ticket,
                    reason,
                },
                SENDER_RETRY,
            );
        }
    }
}
