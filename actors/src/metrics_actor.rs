//! `MetricsActor`: the one writer of herald's metrics. Counts what the other
//! actors observe (deliveries, cost, retries, fallbacks, dead letters, rate
//! limiting, restarts) and polls the broker for queue depths.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::messages::Observe;
use crate::metrics::Metrics;
use crate::ports::QueueStats;

pub struct MetricsActor {
    /// The families `/metrics` exposes.
    metrics: Arc<Metrics>,
    /// Queue depths from the broker, if polling is wanted.
    stats: Option<Arc<dyn QueueStats>>,
    /// How often to poll queue depths.
    poll_every: Duration,
}

impl MetricsActor {
    pub fn new(
        metrics: Arc<Metrics>,
        stats: Option<Arc<dyn QueueStats>>,
        poll_every: Duration,
    ) -> MetricsActor {
        MetricsActor {
            metrics,
            stats,
            poll_every,
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some(stats) = self.stats.clone() else {
            return;
        };
        ctx.spawn(stats.depths().into_actor(self).map(|depths, act, _| {
            for (queue, n) in depths {
                act.metrics
                    .queue_messages
                    .with_label_values(&[queue.as_str()])
                    .set(n as i64);
            }
        }));
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.poll(ctx);
        ctx.run_interval(self.poll_every, |act, ctx| act.poll(ctx));
    }
}

impl Handler<Observe> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: Observe, _: &mut Context<Self>) {
        let m = &self.metrics;
        match msg {
            Observe::Outcome {
                channel,
                class,
                outcome,
            } => m
                .deliveries
                .with_label_values(&[channel.as_str(), &class, outcome.label()])
                .inc(),
            Observe::ProviderCall {
                channel,
                duration,
                error,
            } => {
                m.delivery_duration
                    .with_label_values(&[channel.as_str()])
                    .observe(duration.as_secs_f64());
                if let Some(kind) = error {
                    m.provider_errors
                        .with_label_values(&[channel.as_str(), kind.label()])
                        .inc();
                }
            }
            Observe::Cost {
                channel,
                class,
                usd,
            } => m
                .cost_usd
                .with_label_values(&[channel.as_str(), &class])
                .inc_by(usd),
            Observe::Retry { channel, class } => m
                .retries
                .with_label_values(&[channel.as_str(), &class])
                .inc(),
            Observe::Fallback { from, to, class } => m
                .fallbacks
                .with_label_values(&[from.as_str(), to.as_str(), &class])
                .inc(),
            Observe::DeadLetter { class, reason } => {
                m.dead_letters.with_label_values(&[&class, reason]).inc()
            }
            Observe::RateLimited { channel, class } => m
                .rate_limited
                .with_label_values(&[channel.as_str(), &class])
                .inc(),
            Observe::Restart { actor } => m.actor_restarts.with_label_values(&[actor]).inc(),
            Observe::OutcomeUnknown { channel, class } => m
                .outcome_unknown
                .with_label_values(&[channel.as_str(), &class])
                .inc(),
            Observe::DuplicateSuppressed { channel, class } => m
                .duplicates_suppressed
                .with_label_values(&[channel.as_str(), &class])
                .inc(),
            Observe::InFlightElsewhere { channel, class } => m
                .in_flight_elsewhere
                .with_label_values(&[channel.as_str(), &class])
                .inc(),
        }
    }
}
