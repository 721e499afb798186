//! Where actors find each other. The supervisor writes the current address
//! of every actor it (re)starts; everyone else looks addresses up at the
//! moment they send, so a restarted actor is found without anyone holding a
//! stale address.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix::Addr;

use crate::class_sender::ClassSender;
use crate::fallback::Fallback;
use crate::journal::Journal;
use crate::messages::Observe;
use crate::metrics_actor::MetricsActor;
use crate::model::Channel;
use crate::provider::Provider;

#[derive(Default)]
struct Inner {
    senders: HashMap<Channel, HashMap<Arc<str>, Addr<ClassSender>>>,
    providers: HashMap<Channel, Addr<Provider>>,
    fallback: Option<Addr<Fallback>>,
    metrics: Option<Addr<MetricsActor>>,
    journal: Option<Addr<Journal>>,
}

/// A shared, cheaply cloned directory of live actor addresses.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The class sender of `(channel, class)`, if it is running.
    pub fn sender(&self, channel: Channel, class: &str) -> Option<Addr<ClassSender>> {
        self.read()
            .senders
            .get(&channel)
            .and_then(|m| m.get(class))
            .cloned()
    }

    pub fn set_sender(&self, channel: Channel, class: Arc<str>, addr: Addr<ClassSender>) {
        self.write()
            .senders
            .entry(channel)
            .or_default()
            .insert(class, addr);
    }

    /// Whether a class sender is configured for `(channel, class)`, alive or
    /// being restarted.
    pub fn serves(&self, channel: Channel, class: &str) -> bool {
        self.read()
            .senders
            .get(&channel)
            .is_some_and(|m| m.contains_key(class))
    }

    /// Every class sender registered now.
    pub fn senders(&self) -> Vec<Addr<ClassSender>> {
        self.read()
            .senders
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    pub fn provider(&self, channel: Channel) -> Option<Addr<Provider>> {
        self.read().providers.get(&channel).cloned()
    }

    pub fn set_provider(&self, channel: Channel, addr: Addr<Provider>) {
        self.write().providers.insert(channel, addr);
    }

    pub fn fallback(&self) -> Option<Addr<Fallback>> {
        self.read().fallback.clone()
    }

    pub fn set_fallback(&self, addr: Addr<Fallback>) {
        self.write().fallback = Some(addr);
    }

    /// The journal, if the engine has a delivery store. `Some` but closed
    /// while it is being restarted.
    pub fn journal(&self) -> Option<Addr<Journal>> {
        self.read().journal.clone()
    }

    pub fn set_journal(&self, addr: Addr<Journal>) {
        self.write().journal = Some(addr);
    }

    /// The metrics actor, if it is running.
    pub fn metrics(&self) -> Option<Addr<MetricsActor>> {
        self.read().metrics.clone()
    }

    pub fn set_metrics(&self, addr: Addr<MetricsActor>) {
        self.write().metrics = Some(addr);
    }

    /// Counts something; a no-op while the metrics actor is restarting.
    pub fn observe(&self, what: Observe) {
        if let Some(m) = &self.read().metrics {
            m.do_send(what);
        }
    }
}

/// Sends `msg` to `addr` unless there is no live actor there, in which case
/// the message (and the ticket inside it) comes back to the caller to keep
/// and try again once the supervisor has restarted the actor.
pub fn send_or_return<A, M>(addr: Option<Addr<A>>, msg: M) -> Result<(), M>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    let Some(addr) = addr else {
        return Err(msg);
    };
    match addr.try_send(msg) {
        Ok(()) => Ok(()),
        // A full mailbox is a live actor: queue past the soft capacity.
        Err(actix::prelude::SendError::Full(msg)) => {
            addr.do_send(msg);
            Ok(())
        }
        Err(actix::prelude::SendError::Closed(msg)) => Err(msg),
    }
}
