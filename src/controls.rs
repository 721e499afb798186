//! What operators change on a running engine, from the admin API or
//! SIGHUP: pausing and resuming a class's consumer, a class's rate limit,
//! and the config itself (reload). One place holds the live state, so
//! `/metrics`, the API and the actors always agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use herald_actors::class_sender::ClassRate;
use herald_actors::messages::{RateChanged, Release};
use herald_actors::metrics::Metrics;
use herald_actors::model::Channel;
use herald_actors::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{ClassConfig, Config, ConfigError};

/// A class as the API shows it.
#[derive(Debug, Serialize)]
pub struct ClassView {
    pub name: String,
    pub channel: Channel,
    pub fallback: Option<Channel>,
    pub priority: u8,
    pub paused: bool,
    /// Sends per minute now, per channel the class uses.
    pub rate_limit_per_minute: BTreeMap<Channel, u32>,
    pub queue: String,
}

/// What a reload did.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    /// Settings now in force.
    pub applied: Vec<String>,
    /// Settings that changed in the file but need a restart (a class's
    /// channel, fallback, priority, retries or cap; classes added or
    /// removed). Everything outside `templates`, `quiet_hours` and
    /// `classes` also waits for a restart.
    pub restart_required: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no class named {0:?}")]
    UnknownClass(String),
    #[error("class {class:?} does not send on {channel}")]
    UnknownChannel { class: String, channel: Channel },
    #[error("no config file to reload (herald was started from a config in memory)")]
    NoConfigFile,
    #[error("the new config is invalid; the old one stays in force:\n{0}")]
    Invalid(ConfigError),
}

/// The engine's live, operator-changeable state.
pub struct Controls {
    /// The config in force: what the consumers decode, render and schedule
    /// by. Replaced whole on reload.
    config: RwLock<Arc<Config>>,
    /// Where `reload` reads from.
    path: Mutex<Option<PathBuf>>,
    /// Classes whose consumers are stopped; the broker link watches it.
    paused: watch::Sender<BTreeSet<String>>,
    /// Each class sender's limit, by (channel, class).
    rates: BTreeMap<(Channel, String), ClassRate>,
    registry: Registry,
    metrics: Arc<Metrics>,
}

impl Controls {
    pub fn new(
        config: Arc<Config>,
        rates: BTreeMap<(Channel, String), ClassRate>,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> Arc<Controls> {
        for ((channel, class), rate) in &rates {
            metrics
                .rate_limit_per_minute
                .with_label_values(&[channel.as_str(), class])
                .set(i64::from(rate.get()));
        }
        Arc::new(Controls {
            config: RwLock::new(config),
            path: Mutex::new(None),
            paused: watch::channel(BTreeSet::new()).0,
            rates,
            registry,
            metrics,
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lets [`reload`](Self::reload) read `path`.
    pub fn reload_from(&self, path: PathBuf) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// The paused classes, watched by the broker link.
    pub fn watch_paused(&self) -> watch::Receiver<BTreeSet<String>> {
        self.paused.subscribe()
    }

    fn known(&self, class: &str) -> Result<(), ControlError> {
        if self.config().classes.contains_key(class) {
            Ok(())
        } else {
            Err(ControlError::UnknownClass(class.to_owned()))
        }
    }

    /// Stops the class's consumer (the broker link watches the paused
    /// set): nothing more is taken from its queue, and once the consumer is
    /// cancelled the deliveries waiting for its rate limit go back to the
    /// queue ([`release`](Self::release)). Sends already with a provider
    /// finish. Returns whether it was running.
    pub fn pause(&self, class: &str) -> Result<bool, ControlError> {
        self.known(class)?;
        let changed = self.paused.send_if_modified(|p| p.insert(class.to_owned()));
        if changed {
            self.metrics.class_paused.with_label_values(&[class]).set(1);
            info!(class, "class paused");
        }
        Ok(changed)
    }

    /// Hands the class's waiting deliveries back to the broker. The broker
    /// link calls it once the paused class's consumer is cancelled: before
    /// that, the broker could deliver them straight back to it.
    pub fn release(&self, class: &str) {
        for ((channel, c), _) in self.rates.iter().filter(|((_, c), _)| c == class) {
            if let Some(sender) = self.registry.sender(*channel, c) {
                sender.do_send(Release);
            }
        }
    }

    /// Starts the class's consumer again. Returns whether it was paused.
    pub fn resume(&self, class: &str) -> Result<bool, ControlError> {
        self.known(class)?;
        let changed = self.paused.send_if_modified(|p| p.remove(class));
        if changed {
            self.metrics.class_paused.with_label_values(&[class]).set(0);
            info!(class, "class resumed");
        }
        Ok(changed)
    }

    /// Changes a class's limit on `channel` (on every channel it uses when
    /// `None`), effective at once and kept across actor restarts (not
    /// across a process restart: the config file is the lasting setting).
    pub fn set_rate(
        &self,
        class: &str,
        channel: Option<Channel>,
        per_min: u32,
    ) -> Result<(), ControlError> {
        self.known(class)?;
        let mut any = false;
        for ((ch, c), rate) in &self.rates {
            if c != class || channel.is_some_and(|want| want != *ch) {
                continue;
            }
            any = true;
            self.apply_rate(*ch, c, rate, per_min);
        }
        match channel {
            Some(channel) if !any => Err(ControlError::UnknownChannel {
                class: class.to_owned(),
                channel,
            }),
            _ => Ok(()),
        }
    }

    fn apply_rate(&self, channel: Channel, class: &str, rate: &ClassRate, per_min: u32) {
        if rate.get() == per_min {
            return;
        }
        rate.set(per_min);
        self.metrics
            .rate_limit_per_minute
            .with_label_values(&[channel.as_str(), class])
            .set(i64::from(per_min));
        if let Some(sender) = self.registry.sender(channel, class) {
            sender.do_send(RateChanged);
        }
        info!(class, %channel, per_min, "class rate limit changed");
    }

    /// Every class, with its live state.
    pub fn classes(&self) -> Vec<ClassView> {
        let config = self.config();
        let paused = self.paused.borrow().clone();
        config
            .classes
            .iter()
            .map(|(name, c)| ClassView {
                name: name.clone(),
                channel: c.channel(),
                fallback: c.fallback,
                priority: c.priority,
                paused: paused.contains(name),
                rate_limit_per_minute: self
                    .rates
                    .iter()
                    .filter(|((_, n), _)| n == name)
                    .map(|((ch, _), r)| (*ch, r.get()))
                    .collect(),
                queue: crate::amqp::topology::class_queue(name),
            })
            .collect()
    }

    /// Reads the config file again. An invalid file changes nothing. A
    /// valid one replaces templates, quiet hours and each class's rate
    /// limits, subject, template, local delivery times and quiet-hours
    /// exemption at once; what the running actors and connections were
    /// built from waits for a restart, and the answer says which.
    pub fn reload(&self) -> Result<Reloaded, ControlError> {
        let path = self
            .path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ControlError::NoConfigFile)?;
        let new = Config::load(&path).map_err(|e| {
            warn!(problems = e.problems.len(), "config reload refused");
            ControlError::Invalid(e)
        })?;
        let old = self.config();
        let (live, reloaded) = merge_live(&old, &new);
        live.validate().map_err(ControlError::Invalid)?;
        // Only limits the file changed: a live change made through the API
        // stands against a reload that did not touch that limit.
        for ((channel, class), rate) in &self.rates {
            if let (Some(was), Some(now)) = (old.classes.get(class), live.classes.get(class)) {
                let per_min = now.rate_per_min(*channel);
                if was.rate_per_min(*channel) != per_min {
                    self.apply_rate(*channel, class, rate, per_min);
                }
            }
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        info!(
            restart_required = reloaded.restart_required.len(),
            "config reloaded"
        );
        Ok(reloaded)
    }
}

/// Whether two versions of a class agree on what shapes its actors and
/// queues (a change there needs a restart).
fn same_structure(a: &ClassConfig, b: &ClassConfig) -> bool {
    a.priority == b.priority
        && a.channel == b.channel
        && a.fallback == b.fallback
        && a.retries == b.retries
        && a.base_delay_secs == b.base_delay_secs
        && a.max_delay_secs == b.max_delay_secs
        && a.frequency_cap == b.frequency_cap
}

/// `old` with what can change live taken from `new`.
fn merge_live(old: &Config, new: &Config) -> (Config, Reloaded) {
    let mut live = old.clone();
    // New templates win; old ones stay for classes kept until a restart.
    live.templates.extend(new.templates.clone());
    live.quiet_hours = new.quiet_hours.clone();
    let mut restart_required = Vec::new();
    for (name, c) in live.classes.iter_mut() {
        let Some(n) = new.classes.get(name) else {
            restart_required.push(format!("classes.{name} (removed)"));
            continue;
        };
        c.rate_limit = n.rate_limit;
        c.subject = n.subject.clone();
        c.template = n.template.clone();
        c.deliver_at_local = n.deliver_at_local.clone();
        c.deliver_at_local_weekend = n.deliver_at_local_weekend.clone();
        c.quiet_hours_exempt = n.quiet_hours_exempt;
        if !same_structure(c, n) {
            restart_required.push(format!("classes.{name}"));
        }
    }
    for name in new.classes.keys().filter(|n| !old.classes.contains_key(*n)) {
        restart_required.push(format!("classes.{name} (added)"));
    }
    let applied = [
        "templates",
        "quiet_hours",
        "classes.*.rate_limit",
        "classes.*.subject",
        "classes.*.template",
        "classes.*.deliver_at_local",
        "classes.*.deliver_at_local_weekend",
        "classes.*.quiet_hours_exempt",
    ]
    .map(str::to_owned)
    .to_vec();
    (
        live,
        Reloaded {
            applied,
            restart_required,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_live_settings_and_names_what_needs_a_restart() {
        let old = Config::shipped();
        let mut new = old.clone();
        new.classes
            .get_mut("weekly_checkin")
            .unwrap()
            .rate_limit
            .sms = 7;
        new.classes.get_mut("payment_reminder").unwrap().retries += 1;
        let removed = new.classes.keys().next().unwrap().clone();
        new.classes.remove(&removed);
        let (live, r) = merge_live(&old, &new);
        assert_eq!(live.classes["weekly_checkin"].rate_limit.sms, 7);
        assert_eq!(
            live.classes["payment_reminder"].retries, old.classes["payment_reminder"].retries,
            "retries shape the delay queues: not changed live"
        );
        assert!(live.classes.contains_key(&removed), "kept until a restart");
        assert_eq!(
            r.restart_required,
            vec![
                format!("classes.{removed} (removed)"),
                "classes.payment_reminder".to_owned()
            ]
        );
    }
}
