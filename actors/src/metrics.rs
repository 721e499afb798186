//! The Prometheus families SPEC.md names, in one registry per engine.
//! Label values come from fixed sets (channels, configured classes, outcome
//! and reason codes, actor kinds): never an address, user id or event id.

use std::sync::Arc;

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use crate::model::Channel;
use crate::pace::SharedStatus;

/// What became of one provider attempt (`outcome` label of
/// `herald_deliveries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message.
    Sent,
    /// A retriable failure; another attempt is scheduled through the broker.
    Retry,
    /// A failure handed to the fallback channel.
    Fallback,
    /// A failure that ended in the dead-letter queue.
    DeadLetter,
    /// Not sent: the recipient opted out on this channel.
    Suppressed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retry => "retry",
            Outcome::Fallback => "fallback",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Suppressed => "suppressed",
        }
    }
}

/// herald's metric families.
pub struct Metrics {
    /// Where every family is registered; `/metrics` gathers it.
    pub registry: Registry,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub cost_usd: CounterVec,
    pub queue_messages: IntGaugeVec,
    pub fallbacks: IntCounterVec,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub actor_restarts: IntCounterVec,
    pub outcome_unknown: IntCounterVec,
    pub duplicates_suppressed: IntCounterVec,
    pub in_flight_elsewhere: IntCounterVec,
    pub webhooks: IntCounterVec,
    pub deferred: IntCounterVec,
    pub scheduled: prometheus::IntGauge,
    pub provider_errors: IntCounterVec,
    pub in_flight: IntGaugeVec,
    pub broker_connected: IntGauge,
    pub store_duration: HistogramVec,
    pub class_paused: IntGaugeVec,
    pub rate_limit_per_minute: IntGaugeVec,
    pub admin_auth_failures: IntCounter,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let m = Metrics {
            deliveries: IntCounterVec::new(
                Opts::new("herald_deliveries_total", "Provider attempts by outcome."),
                &["channel", "class", "outcome"],
            )
            .expect("valid metric"),
            delivery_duration: HistogramVec::new(
                HistogramOpts::new(
                    "herald_delivery_duration_seconds",
                    "Time a provider took to answer a send request.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["channel"],
            )
            .expect("valid metric"),
            cost_usd: CounterVec::new(
                Opts::new(
                    "herald_cost_usd_total",
                    "What accepted sends cost, in US dollars.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            queue_messages: IntGaugeVec::new(
                Opts::new(
                    "herald_queue_messages",
                    "Messages ready in each herald queue.",
                ),
                &["queue"],
            )
            .expect("valid metric"),
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "herald_fallbacks_total",
                    "Failed sends handed to another channel.",
                ),
                &["from", "to", "class"],
            )
            .expect("valid metric"),
            retries: IntCounterVec::new(
                Opts::new(
                    "herald_retries_total",
                    "Retries scheduled through the broker.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "herald_dead_letters_total",
                    "Events dead-lettered, by reason.",
                ),
                &["class", "reason"],
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "herald_rate_limited_total",
                    "Events that had to wait for their class's rate limit.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            actor_restarts: IntCounterVec::new(
                Opts::new(
                    "herald_actor_restarts_total",
                    "Actors the supervisor restarted after they died or stopped answering.",
                ),
                &["actor"],
            )
            .expect("valid metric"),
            outcome_unknown: IntCounterVec::new(
                Opts::new(
                    "herald_outcome_unknown_total",
                    "Attempts cut off mid-call (a crash) whose outcome is unknown; each was sent again.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            duplicates_suppressed: IntCounterVec::new(
                Opts::new(
                    "herald_duplicates_suppressed_total",
                    "Redelivered or republished events not sent again because they already were.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            in_flight_elsewhere: IntCounterVec::new(
                Opts::new(
                    "herald_claims_in_flight_elsewhere_total",
                    "Claims that found the event's call still open in another herald process; each waits and claims again.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            webhooks: IntCounterVec::new(
                Opts::new(
                    "herald_webhooks_total",
                    "Provider webhook requests, by provider and result (applied, ignored, replayed, unknown_id, out_of_order, bad_signature, stale, malformed, unconfigured, store_error).",
                ),
                &["provider", "result"],
            )
            .expect("valid metric"),
            deferred: IntCounterVec::new(
                Opts::new(
                    "herald_deferred_total",
                    "Events held in the schedule until their time, by reason (send_at, local_time, quiet_hours).",
                ),
                &["class", "reason"],
            )
            .expect("valid metric"),
            scheduled: prometheus::IntGauge::new(
                "herald_scheduled_events",
                "Events held in the schedule now (the scheduler's backlog).",
            )
            .expect("valid metric"),
            provider_errors: IntCounterVec::new(
                Opts::new(
                    "herald_provider_errors_total",
                    "Provider requests that failed, by channel and kind (invalid_recipient, unsubscribed, rejected, unauthorized, throttled, provider_error, timeout, transport).",
                ),
                &["channel", "kind"],
            )
            .expect("valid metric"),
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "herald_inflight_deliveries",
                    "Provider requests open now.",
                ),
                &["channel"],
            )
            .expect("valid metric"),
            broker_connected: IntGauge::new(
                "herald_broker_connected",
                "1 while herald holds a connection to RabbitMQ, 0 while it reconnects.",
            )
            .expect("valid metric"),
            store_duration: HistogramVec::new(
                HistogramOpts::new(
                    "herald_store_duration_seconds",
                    "Time one delivery-store transaction of the journal took (op commit: a batch of outcome records, then a batch of claims).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
            class_paused: IntGaugeVec::new(
                Opts::new(
                    "herald_class_paused",
                    "1 while a class is paused (its consumer stopped by an operator), else 0.",
                ),
                &["class"],
            )
            .expect("valid metric"),
            rate_limit_per_minute: IntGaugeVec::new(
                Opts::new(
                    "herald_rate_limit_per_minute",
                    "Each class's current send limit per channel (0: none); changes live with the admin API or a reload.",
                ),
                &["channel", "class"],
            )
            .expect("valid metric"),
            admin_auth_failures: IntCounter::new(
                "herald_admin_auth_failures_total",
                "Admin API requests refused for a wrong bearer token (requests with none are refused uncounted).",
            )
            .expect("valid metric"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "herald_build_info",
                    "Always 1; the labels say which herald is running.",
                ),
                &["version"],
            )
            .expect("valid metric"),
            registry,
        };
        for c in [
            Box::new(m.deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.delivery_duration.clone()),
            Box::new(m.cost_usd.clone()),
            Box::new(m.queue_messages.clone()),
            Box::new(m.fallbacks.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.actor_restarts.clone()),
            Box::new(m.outcome_unknown.clone()),
            Box::new(m.duplicates_suppressed.clone()),
            Box::new(m.in_flight_elsewhere.clone()),
            Box::new(m.webhooks.clone()),
            Box::new(m.deferred.clone()),
            Box::new(m.scheduled.clone()),
            Box::new(m.provider_errors.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.broker_connected.clone()),
            Box::new(m.store_duration.clone()),
            Box::new(m.class_paused.clone()),
            Box::new(m.rate_limit_per_minute.clone()),
            Box::new(m.admin_auth_failures.clone()),
            Box::new(m.build_info.clone()),
        ] {
            m.registry.register(c).expect("metric registered once");
        }
        Arc::new(m)
    }

    /// Creates the zero-valued series for a class, so dashboards and alerts
    /// see them before the first event.
    pub fn declare_class(&self, class: &str, channels: &[Channel]) {
        self.class_paused.with_label_values(&[class]);
        for ch in channels {
            for outcome in [
                Outcome::Sent,
                Outcome::Retry,
                Outcome::Fallback,
                Outcome::DeadLetter,
                Outcome::Suppressed,
            ] {
                self.deliveries
                    .with_label_values(&[ch.as_str(), class, outcome.label()]);
            }
            self.retries.with_label_values(&[ch.as_str(), class]);
            self.rate_limited.with_label_values(&[ch.as_str(), class]);
            self.cost_usd.with_label_values(&[ch.as_str(), class]);
            self.outcome_unknown
                .with_label_values(&[ch.as_str(), class]);
            self.duplicates_suppressed
                .with_label_values(&[ch.as_str(), class]);
            self.in_flight_elsewhere
                .with_label_values(&[ch.as_str(), class]);
        }
    }

    /// Registers `herald_rate_limit_degraded_total` (transitions from the
    /// shared limits to the local fallback) and `herald_rate_limit_shared`
    /// (1 while the limits are shared, 0 while degraded), and returns the
    /// status they mirror. Only an engine with Redis calls this (once):
    /// without Redis both families are absent, since "not degraded" and
    /// "not shared" would both mislead.
    pub fn shared_limits(&self) -> Arc<SharedStatus> {
        let degraded = IntCounter::new(
            "herald_rate_limit_degraded_total",
            "Times the shared (Redis) rate limits became unreachable and each limit fell back to its local share.",
        )
        .expect("valid metric");
        let shared = IntGauge::new(
            "herald_rate_limit_shared",
            "1 while rate limits are shared through Redis, 0 while each instance keeps its local share.",
        )
        .expect("valid metric");
        self.registry
            .register(Box::new(degraded.clone()))
            .expect("shared limits registered once");
        self.registry
            .register(Box::new(shared.clone()))
            .expect("shared limits registered once");
        SharedStatus::new(degraded, shared)
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::LimitsUnavailable;

    #[test]
    fn shared_limit_families_exist_only_with_redis() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(!text.contains("herald_rate_limit_shared"), "{text}");
        assert!(!text.contains("herald_rate_limit_degraded_total"), "{text}");
        let status = m.shared_limits();
        let text = m.encode();
        assert!(text.contains("herald_rate_limit_shared 1"), "{text}");
        assert!(
            text.contains("herald_rate_limit_degraded_total 0"),
            "{text}"
        );
        status.degraded(&LimitsUnavailable("down".into()));
        status.degraded(&LimitsUnavailable("still down".into()));
        let text = m.encode();
        assert!(text.contains("herald_rate_limit_shared 0"), "{text}");
        assert!(
            text.contains("herald_rate_limit_degraded_total 1"),
            "{text}"
        );
        status.recovered();
        assert!(m.encode().contains("herald_rate_limit_shared 1"));
    }
}
