//! `Supervisor`: starts every actor from a factory, checks each on a
//! heartbeat, and restarts the ones that died (a panic, or they stopped) or
//! stopped answering (a ping not answered within the timeout).
//!
//! actix's own `Supervisor` restarts only actors that stop themselves and does
//! not catch panics. Here each actor's context runs as its own task, so a
//! panic ends only that task, and a stuck actor can be aborted. Whatever the
//! dead actor held is dropped with it: the tickets inside requeue their
//! deliveries, and the broker hands them to the fresh actor. Results of sends
//! still open at the provider are handed to the fresh actor (see the
//! registry), so a restart neither loses nor repeats a send.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::task::JoinHandle;
use futures_util::FutureExt;
use tracing::{info, warn};

use crate::class_sender::{ClassParams, ClassSender};
use crate::fallback::Fallback;
use crate::journal::{Journal, JournalParams};
use crate::messages::{Crash, Observe, Ping};
use crate::metrics::Metrics;
use crate::metrics_actor::MetricsActor;
use crate::model::ProviderClient;
use crate::ports::{Broker, DeliveryLog, QueueStats};
use crate::provider::{Provider, ProviderParams};
use crate::registry::Registry;

/// A running child: how to ping it and how to kill it.
pub struct Started {
    pub ping: Recipient<Ping>,
    pub handle: JoinHandle<()>,
}

/// Starts `actor` on its own task so it can be watched and aborted.
pub fn start_watched<A>(actor: A) -> (Addr<A>, Started)
where
    A: Actor<Context = Context<A>> + Handler<Ping>,
{
    let ctx = Context::new();
    let addr = ctx.address();
    let handle = actix_rt::spawn(ctx.into_future(actor));
    let started = Started {
        ping: addr.clone().recipient(),
        handle,
    };
    (addr, started)
}

/// Makes a fresh actor, registers its address and returns it started.
pub type Factory = Box<dyn Fn() -> Started>;

/// One supervised actor.
pub struct ChildSpec {
    /// Unique, for logs: `class_sender:sms:payment_reminder`.
    pub name: String,
    /// The `actor` label of `herald_actor_restarts_total` (a fixed set).
    pub kind: &'static str,
    pub factory: Factory,
}

impl ChildSpec {
    pub fn metrics(
        registry: &Registry,
        metrics: Arc<Metrics>,
        stats: Option<Arc<dyn QueueStats>>,
        poll_every: Duration,
    ) -> ChildSpec {
        let registry = registry.clone();
        ChildSpec {
            name: "metrics".into(),
            kind: "metrics",
            factory: Box::new(move || {
                let (addr, started) = start_watched(MetricsActor::new(
                    metrics.clone(),
                    stats.clone(),
                    poll_every,
                ));
                registry.set_metrics(addr);
                started
            }),
        }
    }

    pub fn provider(
        registry: &Registry,
        params: ProviderParams,
        client: Arc<dyn ProviderClient>,
    ) -> ChildSpec {
        let registry = registry.clone();
        let channel = params.channel;
        ChildSpec {
            name: format!("provider:{channel}"),
            kind: match channel {
                crate::model::Channel::Sms => "sms_provider",
                crate::model::Channel::Email => "email_provider",
            },
            factory: Box::new(move || {
                let (addr, started) = start_watched(Provider::new(
                    params.clone(),
                    client.clone(),
                    registry.clone(),
                ));
                registry.set_provider(channel, addr);
                started
            }),
        }
    }

    /// The journal, with its timings.
    pub fn journal(
        registry: &Registry,
        log: Arc<dyn DeliveryLog>,
        params: JournalParams,
    ) -> ChildSpec {
        let registry = registry.clone();
        ChildSpec {
            name: "journal".into(),
            kind: "journal",
            factory: Box::new(move || {
                let (addr, started) =
                    start_watched(Journal::new(log.clone(), registry.clone(), params));
                registry.set_journal(addr);
                started
            }),
        }
    }

    pub fn fallback(registry: &Registry) -> ChildSpec {
        let registry = registry.clone();
        ChildSpec {
            name: "fallback".into(),
            kind: "fallback",
            factory: Box::new(move || {
                let (addr, started) = start_watched(Fallback::new(registry.clone()));
                registry.set_fallback(addr);
                started
            }),
        }
    }

    pub fn class_sender(
        registry: &Registry,
        params: ClassParams,
        broker: Arc<dyn Broker>,
    ) -> ChildSpec {
        let registry = registry.clone();
        ChildSpec {
            name: format!("class_sender:{}:{}", params.channel, params.class),
            kind: "class_sender",
            factory: Box::new(move || {
                let (addr, started) = start_watched(ClassSender::new(
                    params.clone(),
                    registry.clone(),
                    broker.clone(),
                ));
                registry.set_sender(params.channel, params.class.clone(), addr);
                started
            }),
        }
    }
}

struct Child {
    spec: ChildSpec,
    running: Started,
    /// Bumped at every restart, so a late ping answer from a previous
    /// instance is ignored.
    generation: u64,
    /// A ping is out and not yet answered.
    pinging: bool,
}

/// Heartbeat and ping timeout.
#[derive(Clone, Copy, Debug)]
pub struct SupervisorParams {
    pub heartbeat: Duration,
    pub ping_timeout: Duration,
}

pub struct Supervisor {
    /// Specs not started yet (taken in `started`).
    specs: Vec<ChildSpec>,
    /// Every running child, in start order.
    children: Vec<Child>,
    params: SupervisorParams,
    /// To count restarts.
    registry: Registry,
}

impl Supervisor {
    /// Children start in the order given: metrics first, then providers,
    /// fallback and class senders.
    pub fn new(specs: Vec<ChildSpec>, params: SupervisorParams, registry: Registry) -> Supervisor {
        Supervisor {
            specs,
            children: Vec::new(),
            params,
            registry,
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        for i in 0..self.children.len() {
            let child = &mut self.children[i];
            if child.running.handle.is_finished() {
                let why = match (&mut child.running.handle).now_or_never() {
                    Some(Err(e)) if e.is_panic() => "panicked",
                    _ => "stopped",
                };
                self.restart(i, why);
                continue;
            }
            if child.pinging {
                continue;
            }
            child.pinging = true;
            let generation = child.generation;
            let ping = child.running.ping.send(Ping);
            let timeout = self.params.ping_timeout;
            ctx.spawn(
                async move { tokio::time::timeout(timeout, ping).await }
                    .into_actor(self)
                    .map(move |answer, act, _| {
                        let Some(child) = act.children.get_mut(i) else {
                            return;
                        };
                        if child.generation != generation {
                            return;
                        }
                        child.pinging = false;
                        match answer {
                            Ok(Ok(())) => {}
                            // Closed mailbox: the task is ending; the next
                            // heartbeat sees it finished.
                            Ok(Err(_)) => {}
                            Err(_) => act.restart(i, "stopped answering"),
                        }
                    }),
            );
        }
    }

    fn restart(&mut self, i: usize, why: &str) {
        let child = &mut self.children[i];
        child.running.handle.abort();
        warn!(actor = %child.spec.name, why, "restarting actor");
        child.running = (child.spec.factory)();
        child.generation += 1;
        child.pinging = false;
        // Counted after the factory registered the fresh actor: a restart
        // of the metrics actor itself is counted by its successor.
        self.registry.observe(Observe::Restart {
            actor: child.spec.kind,
        });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for spec in std::mem::take(&mut self.specs) {
            let running = (spec.factory)();
            self.children.push(Child {
                spec,
                running,
                generation: 0,
                pinging: false,
            });
        }
        info!(children = self.children.len(), "supervisor started");
        ctx.run_interval(self.params.heartbeat, |act, ctx| act.check(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for child in &self.children {
            child.running.handle.abort();
        }
        info!("supervisor stopped; all actors aborted");
    }
}

/// Every supervised actor answers pings and takes fault injection the same way.
macro_rules! supervised {
    ($($actor:ty),+) => {$(
        impl Handler<Ping> for $actor {
            type Result = ();

            fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
        }

        impl Handler<Crash> for $actor {
            type Result = ();

            fn handle(&mut self, crash: Crash, ctx: &mut Context<Self>) {
                crash_now(crash, self, ctx);
            }
        }
    )+};
}

supervised!(ClassSender, Provider, Fallback, MetricsActor, Journal);

/// Fails the way a test asked: panics, or blocks the mailbox forever.
fn crash_now<A: Actor<Context = Context<A>>>(crash: Crash, act: &mut A, ctx: &mut Context<A>) {
    match crash {
        Crash::Panic => panic!("crash requested (fault injection)"),
        Crash::Freeze => {
            warn!("freezing (fault injection)");
            ctx.wait(futures_util::future::pending::<()>().into_actor(act));
        }
    }
}
