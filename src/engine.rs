//! Starts herald: broker topology, provider clients, the supervised actors,
//! the consumers and the HTTP listener, in that order. Must run inside an
//! actix System (`herald run` makes one; tests use `#[actix_rt::test]`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use herald_actors::backoff;
use herald_actors::class_sender::{ClassParams, ClassRate};
use herald_actors::journal::JournalParams;
use herald_actors::messages::{IsIdle, Release};
use herald_actors::metrics::Metrics;
use herald_actors::model::{Channel, ProviderClient};
use herald_actors::pace::SharedPacing;
use herald_actors::ports::DeliveryLog;
use herald_actors::provider::{LeaseRenewal, ProviderParams};
use herald_actors::registry::Registry;
use herald_actors::supervisor::{ChildSpec, Supervisor, SupervisorParams};
use tracing::info;

use crate::amqp::consumer::ConsumeContext;
use crate::amqp::link::{self, BrokerLink, LinkControl, LinkParams};
use crate::amqp::publisher::{BrokerStats, Publisher};
use crate::amqp::topology::{self, ClassTopology};
use crate::config::{ClassConfig, Config, ProviderMode};
use crate::controls::Controls;
use crate::http::{self, Readiness};
use crate::journal::StoreLog;
use crate::limits::{LimitsError, RedisLimits};
use crate::providers::{ResendClient, ResendParams, SandboxClient, TwilioClient, TwilioParams};
use crate::schedule::{Clock, SystemClock};
use crate::scheduler::Scheduling;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("http listener: {0}")]
    Http(#[from] std::io::Error),
    #[error("provider: {0}")]
    Provider(String),
    #[error("delivery store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("delivery store: opening it panicked")]
    StorePanicked,
    #[error("shared rate limits: {0}")]
    Limits(#[from] LimitsError),
}

/// A running engine.
pub struct Engine {
    /// The config the engine started with (see [`Controls::config`] for
    /// the one in force after reloads).
    pub config: Arc<Config>,
    /// Pause, resume, live rate limits and config reload.
    pub controls: Arc<Controls>,
    /// Where the live actors are (tests use it to inject faults).
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// The HTTP listener's bound address.
    pub http_addr: SocketAddr,
    /// The sandbox clients, in sandbox mode: what would have been sent.
    pub sandbox: HashMap<Channel, Arc<SandboxClient>>,
    /// Publishes with confirms (also for tests and `herald publish`).
    pub publisher: Publisher,
    /// The current broker connection, kept up by the link task.
    pub link: Arc<BrokerLink>,
    /// Stops consuming and closes the connection.
    control: LinkControl,
    supervisor: Addr<Supervisor>,
    /// Deliveries taken from the broker and not yet settled.
    outstanding: Arc<AtomicUsize>,
    /// The delivery store (also for `herald status` and the admin API).
    pub store: Store,
    /// Store health checks and the retention clean-up.
    background: Vec<tokio::task::JoinHandle<()>>,
    http: actix_web::dev::ServerHandle,
}

/// The channels a class sends on: its own, and its fallback.
fn class_channels(c: &ClassConfig) -> Vec<Channel> {
    let mut v = vec![c.channel()];
    v.extend(c.fallback.filter(|f| *f != c.channel()));
    v
}

/// What a claim's lease in the store holds beyond the longest provider
/// call: a call may start this long after the lease began and still end
/// within it.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The lease this process's claims hold on their attempts
/// (`Store::with_call_lease`): its longest provider call, and a margin.
fn call_lease(config: &Config) -> Duration {
    let providers = &config.providers;
    providers.twilio.timeout().max(providers.resend.timeout()) + LEASE_MARGIN
}

/// How long a claimed job may wait for its provider's capacity before its
/// lease is renewed ahead of the call: half the margin, the other half
/// left for the renewal's own round trip.
const RENEW_LEASE_AFTER: Duration = Duration::from_millis(LEASE_MARGIN.as_millis() as u64 / 2);

/// Every class's queues, as the topology declares them.
pub fn class_topology(config: &Config) -> Vec<ClassTopology> {
    config
        .classes
        .iter()
        .map(|(name, c)| ClassTopology {
            class: name.clone(),
            retry_delays_ms: retry_delays_ms(c),
        })
        .collect()
}

/// The nominal delay of each of a class's retries, in ms.
fn retry_delays_ms(c: &ClassConfig) -> Vec<u64> {
    let base = Duration::from_secs_f64(c.base_delay_secs);
    let max = Duration::from_secs_f64(c.max_delay_secs);
    (1..=c.retries)
        .map(|r| backoff::nominal(base, max, r).as_millis().max(1) as u64)
        .collect()
}

/// Ready when the broker is connected and the store answered its last ping.
struct EngineReadiness {
    link: Arc<BrokerLink>,
    store_ok: Arc<AtomicBool>,
}

impl Readiness for EngineReadiness {
    fn check(&self) -> Result<(), String> {
        if !self.link.connected() {
            return Err("broker disconnected".into());
        }
        if !self.store_ok.load(Ordering::SeqCst) {
            return Err("delivery store unreachable".into());
        }
        Ok(())
    }
}

/// With `redis_url`, the shared rate limits every pace in the process uses
/// (one connection). Redis need not be up: if it does not answer now, the
/// engine starts degraded (each limit divided by `limits.instances`), says
/// so once, and the paces return to the shared limits when it answers.
async fn shared_pacing(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<SharedPacing>, EngineError> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    let limits = RedisLimits::new(url)?;
    let status = metrics.shared_limits();
    let instances = config.limits.instances.max(1);
    info!(
        redis = %crate::config::redact_url(url),
        instances,
        "rate limits shared through Redis"
    );
    if let Err(e) = limits.ping().await {
        status.degraded(&e);
    }
    Ok(Some(SharedPacing {
        limits: Arc::new(limits),
        status,
        instances,
    }))
}

/// Pings the store every few seconds for `/readyz`.
fn watch_store(store: Store, ok: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let up = store.ping().await.is_ok();
            if ok.swap(up, Ordering::SeqCst) != up {
                if up {
                    info!("delivery store reachable again");
                } else {
                    tracing::warn!("delivery store unreachable");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// Deletes old records on a schedule (`store.retention_*`).
fn retention(store: Store, cfg: &crate::config::StoreConfig) -> tokio::task::JoinHandle<()> {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let every = Duration::from_secs_f64(cfg.retention_interval_secs);
    let delivered = i64::from(cfg.retention_delivered_days) * DAY_MS;
    let failed = i64::from(cfg.retention_failed_days) * DAY_MS;
    let batch = cfg.retention_batch;
    tokio::spawn(async move {
        loop {
            let now = crate::store::now_ms();
            match store.purge(now - delivered, now - failed, batch).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "retention clean-up"),
                Err(e) => tracing::warn!(error = %e, "retention clean-up failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

impl Engine {
    /// Starts everything; returns once the first broker session is up (it
    /// keeps trying, with backoff, until the broker answers).
    pub async fn start(config: Config) -> Result<Engine, EngineError> {
        Engine::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`start`](Self::start) on another clock (tests move it to 23:00
    /// somewhere to see quiet hours hold an SMS).
    pub async fn start_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        let config = Arc::new(config);
        let metrics = Metrics::new();
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let registry = Registry::new();
        // Opened on the I/O runtime, where its statements run (its sockets
        // and pool tasks belong there).
        let url = config.store.url.clone();
        // How long one of this process's calls may run: its claims' lease
        // in the store.
        let lease = call_lease(&config);
        let store = crate::offload::run(async move { Store::open(&url).await })
            .await
            .ok_or(EngineError::StorePanicked)??
            .with_call_lease(lease);
        let shared = shared_pacing(&config, &metrics).await?;

        let classes = class_topology(&config);
        let link = Arc::new(BrokerLink::with_gauge(metrics.broker_connected.clone()));
        let publisher = Publisher::new(
            link.clone(),
            classes
                .iter()
                .map(|c| (c.class.clone(), c.retry_delays_ms.clone()))
                .collect(),
        );

        let used: BTreeSet<Channel> = config.classes.values().flat_map(class_channels).collect();
        let mut sandbox = HashMap::new();
        let mut specs = Vec::new();
        let mut queues: Vec<String> = classes
            .iter()
            .map(|c| topology::class_queue(&c.class))
            .collect();
        queues.push(topology::DLQ.to_owned());
        let stats = Arc::new(BrokerStats {
            link: link.clone(),
            queues,
        });
        specs.push(ChildSpec::metrics(
            &registry,
            metrics.clone(),
            Some(stats),
            Duration::from_secs_f64(config.amqp.queue_poll_secs),
        ));
        let log: Arc<dyn DeliveryLog> = Arc::new(StoreLog {
            store: store.clone(),
            caps: Arc::new(
                config
                    .classes
                    .iter()
                    .filter_map(|(name, c)| {
                        let cap = c.frequency_cap?;
                        Some((
                            name.clone(),
                            (cap.max, Duration::from_secs_f64(cap.window_secs)),
                        ))
                    })
                    .collect(),
            ),
            timing: metrics.store_duration.clone(),
        });
        specs.push(ChildSpec::journal(
            &registry,
            log.clone(),
            JournalParams::default(),
        ));
        for &channel in &used {
            let lease = LeaseRenewal {
                log: log.clone(),
                after: RENEW_LEASE_AFTER,
            };
            let (client, params) =
                provider_for(&config, channel, &shared, &metrics, lease, &mut sandbox)?;
            specs.push(ChildSpec::provider(&registry, params, client));
        }
        specs.push(ChildSpec::fallback(&registry));
        let broker: Arc<dyn herald_actors::ports::Broker> = Arc::new(publisher.clone());
        let mut rates = BTreeMap::new();
        for (name, c) in &config.classes {
            metrics.declare_class(name, &class_channels(c));
            for channel in class_channels(c) {
                let rate = ClassRate::new(c.rate_per_min(channel));
                rates.insert((channel, name.clone()), rate.clone());
                let params = ClassParams {
                    class: name.as_str().into(),
                    channel,
                    priority: c.priority,
                    rate,
                    retries: c.retries,
                    base_delay: Duration::from_secs_f64(c.base_delay_secs),
                    max_delay: Duration::from_secs_f64(c.max_delay_secs),
                    fallback: c.fallback.filter(|f| *f != channel),
                    shared: shared.clone(),
                    receipts_expected: config.public_url.is_some(),
                };
                specs.push(ChildSpec::class_sender(&registry, params, broker.clone()));
            }
        }
        let supervisor = Supervisor::new(
            specs,
            SupervisorParams {
                heartbeat: Duration::from_millis(config.supervisor.heartbeat_ms),
                ping_timeout: Duration::from_millis(config.supervisor.ping_timeout_ms),
            },
            registry.clone(),
        )
        .start();
        // Let the supervisor start its children before deliveries arrive.
        while registry.journal().is_none()
            || !config.classes.iter().all(|(n, c)| {
                class_channels(c)
                    .iter()
                    .all(|ch| registry.sender(*ch, n).is_some())
            })
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let controls = Controls::new(config.clone(), rates, registry.clone(), metrics.clone());
        let outstanding = Arc::new(AtomicUsize::new(0));
        let scheduling = Scheduling::new(store.clone(), clock.clone(), metrics.clone());
        let ctx = Arc::new(ConsumeContext {
            controls: controls.clone(),
            registry: registry.clone(),
            publisher: publisher.clone(),
            outstanding: outstanding.clone(),
            scheduling: scheduling.clone(),
        });
        let params = LinkParams {
            url: config.amqp.url.clone(),
            heartbeat_secs: config.amqp.heartbeat_secs,
            prefetch: config.amqp.prefetch,
            classes,
        };
        let control = link::start(params, link.clone(), ctx).await;

        let store_ok = Arc::new(AtomicBool::new(true));
        let mut background = vec![
            watch_store(store.clone(), store_ok.clone()),
            retention(store.clone(), &config.store),
            crate::scheduler::spawn(scheduling, publisher.clone()),
        ];
        background.extend(crate::recurring::spawn(&config, clock, publisher.clone()));
        let (http_addr, http) = http::serve(
            &config.http.addr,
            metrics.clone(),
            Arc::new(EngineReadiness {
                link: link.clone(),
                store_ok,
            }),
            crate::api::ApiState {
                store: store.clone(),
                token: config.admin_token.clone(),
                controls: controls.clone(),
                link: link.clone(),
                publisher: publisher.clone(),
                metrics: metrics.clone(),
                guard: Default::default(),
            },
            crate::webhooks::WebhookState {
                store: store.clone(),
                metrics: metrics.clone(),
                public_url: config
                    .public_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                twilio_token: config.providers.twilio.auth_token.clone(),
                svix: config
                    .providers
                    .resend
                    .webhook_secret
                    .as_deref()
                    .and_then(crate::webhooks::signature::SvixSecret::parse),
            },
        )?;
        info!(%http_addr, mode = ?config.providers.mode, classes = config.classes.len(), "herald is running");
        Ok(Engine {
            config,
            controls,
            registry,
            metrics,
            http_addr,
            sandbox,
            publisher,
            link,
            control,
            supervisor,
            outstanding,
            store,
            background,
            http,
        })
    }

    /// Deliveries taken from the broker and not yet settled.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Stops gracefully within `grace`: stops consuming, hands deliveries
    /// still waiting for a rate limit back to the broker, lets open sends
    /// finish and their outcomes settle, then closes the connection
    /// (whatever is still unacked returns to its queue) and stops the
    /// actors. Returns how many deliveries were still open when the grace
    /// period ran out.
    pub async fn stop(self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        self.control.stop_consuming().await;
        for sender in self.registry.senders() {
            sender.do_send(Release);
        }
        while self.outstanding() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.outstanding();
        // Outcome records that carry no delivery (a fallback's, the retry
        // of a publish the broker refused) are committed before the store
        // closes.
        if let Some(journal) = self.registry.journal() {
            while tokio::time::Instant::now() < deadline {
                if journal.send(IsIdle).await.unwrap_or(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Let the last acks reach the broker before the connection closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.http.stop(true).await;
        self.control.close().await;
        self.supervisor.do_send(StopSupervisor);
        for task in &self.background {
            task.abort();
        }
        self.store.close().await;
        if left > 0 {
            tracing::warn!(
                left,
                "grace period over; open deliveries returned to the broker"
            );
        }
        left
    }
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct StopSupervisor;

impl actix::Handler<StopSupervisor> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopSupervisor, ctx: &mut actix::Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

fn provider_for(
    config: &Config,
    channel: Channel,
    shared: &Option<SharedPacing>,
    metrics: &Metrics,
    lease: LeaseRenewal,
    sandbox: &mut HashMap<Channel, Arc<SandboxClient>>,
) -> Result<(Arc<dyn ProviderClient>, ProviderParams), EngineError> {
    let p = &config.providers;
    let params = match channel {
        Channel::Sms => ProviderParams {
            channel,
            max_concurrency: p.twilio.max_concurrency,
            rate_per_sec: p.twilio.rate_per_sec,
            cost_per_unit_usd: p.twilio.cost_per_segment_usd,
            shared: shared.clone(),
            in_flight: metrics.in_flight.with_label_values(&[channel.as_str()]),
            lease: Some(lease),
        },
        Channel::Email => ProviderParams {
            channel,
            max_concurrency: p.resend.max_concurrency,
            rate_per_sec: p.resend.rate_per_sec,
            cost_per_unit_usd: p.resend.cost_per_message_usd,
            shared: shared.clone(),
            in_flight: metrics.in_flight.with_label_values(&[channel.as_str()]),
            lease: Some(lease),
        },
    };
    let client: Arc<dyn ProviderClient> = match (p.mode, channel) {
        (ProviderMode::Sandbox, _) => {
            let c = Arc::new(
                SandboxClient::new(channel, &p.sandbox_outbox)
                    .map_err(|e| EngineError::Provider(e.to_string()))?,
            );
            sandbox.insert(channel, c.clone());
            c
        }
        (ProviderMode::Live, Channel::Sms) => {
            let t = &p.twilio;
            let missing = |what: &str| EngineError::Provider(format!("{what} is not set"));
            Arc::new(
                TwilioClient::new(TwilioParams {
                    base_url: t.base_url.clone(),
                    account_sid: t
                        .account_sid
                        .clone()
                        .ok_or_else(|| missing("TWILIO_ACCOUNT_SID"))?,
                    auth_token: t
                        .auth_token
                        .clone()
                        .ok_or_else(|| missing("TWILIO_AUTH_TOKEN"))?,
                    from: t
                        .from
                        .clone()
                        .ok_or_else(|| missing("TWILIO_PHONE_NUMBER"))?,
                    status_callback: config
                        .public_url
                        .as_ref()
                        .map(|u| format!("{}/webhooks/twilio/status", u.trim_end_matches('/'))),
                    timeout: Duration::from_secs_f64(t.timeout_secs),
                })
                .map_err(|e| EngineError::Provider(e.to_string()))?,
            )
        }
        (ProviderMode::Live, Channel::Email) => {
            let r = &p.resend;
            let missing = |what: &str| EngineError::Provider(format!("{what} is not set"));
            Arc::new(
                ResendClient::new(ResendParams {
                    base_url: r.base_url.clone(),
                    api_key: r.api_key.clone().ok_or_else(|| missing("RESEND_API_KEY"))?,
                    from: r.from.clone().ok_or_else(|| missing("RESEND_FROM"))?,
                    timeout: Duration::from_secs_f64(r.timeout_secs),
                })
                .map_err(|e| EngineError::Provider(e.to_string()))?,
            )
        }
    };
    // Live calls run on the I/O runtime, off the actor thread.
    let client: Arc<dyn ProviderClient> = match p.mode {
        ProviderMode::Live => Arc::new(crate::offload::Offloaded(client)),
        ProviderMode::Sandbox => client,
    };
    Ok((client, params))
}
