//! Test doubles shared by the actor tests: a recording provider, a broker
//! that confirms everything, and a small world of supervised actors.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::class_sender::ClassParams;
use herald_actors::journal::JournalParams;
use herald_actors::metrics::Metrics;
use herald_actors::model::{Channel, Job, Outbound, ProviderClient, Receipt, SendError};
use herald_actors::ports::{Broker, BrokerError, DeadLetter, DeliveryLog};
use herald_actors::provider::ProviderParams;
use herald_actors::registry::Registry;
use herald_actors::supervisor::{ChildSpec, Supervisor, SupervisorParams};

/// Records sends; each takes `latency`.
pub struct Recorder {
    pub sent: Mutex<Vec<(String, tokio::time::Instant)>>,
    pub latency: Duration,
}

impl Recorder {
    /// The ids sent, in order.
    pub fn sent_ids(&self) -> Vec<String> {
        let sent = self.sent.lock().unwrap();
        sent.iter().map(|(id, _)| id.clone()).collect()
    }
}

pub struct RecorderClient(pub Arc<Recorder>);

impl ProviderClient for RecorderClient {
    fn send(&self, msg: Outbound) -> BoxFuture<'static, Result<Receipt, SendError>> {
        let me = self.0.clone();
        async move {
            tokio::time::sleep(me.latency).await;
            me.sent
                .lock()
                .unwrap()
                .push((msg.idempotency_key.to_string(), tokio::time::Instant::now()));
            Ok(Receipt {
                provider_id: "SM1".into(),
            })
        }
        .boxed()
    }
}

pub struct NoBroker;

impl Broker for NoBroker {
    fn retry(
        &self,
        _: &Job,
        _: Duration,
        _: &'static str,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }
    fn dead_letter(&self, _: DeadLetter) -> BoxFuture<'static, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }
}

pub fn job(id: &str, class: &str) -> Job {
    Job {
        send_at_ms: None,
        timezone: None,
        event_id: id.into(),
        user_id: "u".into(),
        class: class.into(),
        channel: Channel::Sms,
        to_phone: Some("+15551234567".into()),
        to_email: None,
        to_name: None,
        body: "hello".into(),
        subject: String::new(),
        attempt: 0,
        fallback_from: None,
        amqp_priority: 5,
        raw: Arc::from(&b"{}"[..]),
        published_at_ms: None,
    }
}

pub fn class(name: &str, priority: u8, rate_per_min: u32) -> ClassParams {
    ClassParams {
        class: name.into(),
        channel: Channel::Sms,
        priority,
        rate: herald_actors::class_sender::ClassRate::new(rate_per_min),
        retries: 2,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(10),
        fallback: None,
        shared: None,
        receipts_expected: false,
    }
}

pub struct World {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub recorder: Arc<Recorder>,
}

pub fn start(classes: Vec<ClassParams>, latency: Duration) -> World {
    start_with(classes, latency, 4)
}

pub fn start_with(classes: Vec<ClassParams>, latency: Duration, max_concurrency: u32) -> World {
    start_full(classes, latency, max_concurrency, None)
}

/// With a journal over `log` when given.
pub fn start_full(
    classes: Vec<ClassParams>,
    latency: Duration,
    max_concurrency: u32,
    log: Option<Arc<dyn DeliveryLog>>,
) -> World {
    start_with_journal(
        classes,
        latency,
        max_concurrency,
        log,
        JournalParams::default(),
    )
}

/// [`start_full`] with the journal's timings given.
pub fn start_with_journal(
    classes: Vec<ClassParams>,
    latency: Duration,
    max_concurrency: u32,
    log: Option<Arc<dyn DeliveryLog>>,
    params: JournalParams,
) -> World {
    start_world(classes, latency, max_concurrency, log, params, |_| {})
}

/// [`start_with_journal`] with the provider's parameters changed by
/// `provider`.
pub fn start_world(
    classes: Vec<ClassParams>,
    latency: Duration,
    max_concurrency: u32,
    log: Option<Arc<dyn DeliveryLog>>,
    params: JournalParams,
    provider: impl FnOnce(&mut ProviderParams),
) -> World {
    let registry = Registry::new();
    let metrics = Metrics::new();
    let mut provider_params = ProviderParams {
        channel: Channel::Sms,
        max_concurrency,
        rate_per_sec: 0.0,
        cost_per_unit_usd: 0.0075,
        shared: None,
        in_flight: metrics.in_flight.with_label_values(&["sms"]),
        lease: None,
    };
    provider(&mut provider_params);
    let recorder = Arc::new(Recorder {
        sent: Mutex::new(Vec::new()),
        latency,
    });
    let mut specs = vec![
        ChildSpec::metrics(&registry, metrics.clone(), None, Duration::from_secs(60)),
        ChildSpec::provider(
            &registry,
            provider_params,
            Arc::new(RecorderClient(recorder.clone())),
        ),
        ChildSpec::fallback(&registry),
    ];
    if let Some(log) = log {
        specs.push(ChildSpec::journal(&registry, log, params));
    }
    for c in classes {
        specs.push(ChildSpec::class_sender(&registry, c, Arc::new(NoBroker)));
    }
    Supervisor::new(
        specs,
        SupervisorParams {
            heartbeat: Duration::from_millis(50),
            ping_timeout: Duration::from_millis(200),
        },
        registry.clone(),
    )
    .start();
    World {
        registry,
        metrics,
        recorder,
    }
}

pub async fn wait_for(what: impl Fn() -> bool) {
    for _ in 0..400 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached in time");
}
