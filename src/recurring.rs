//! Recurring events from the config (`[[schedules]]`), as Celery beat
//! published them: a cron pattern in a time zone, a class and an event.
//! Each occurrence is published like any client's event, with the id
//! `<schedule>-<occurrence's Unix seconds>`: several instances publishing
//! the same occurrence publish the same id, and the journal's claim sends it
//! once. Occurrences missed while no instance ran are not made up.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use tracing::{info, warn};

use crate::amqp::publisher::Publisher;
use crate::amqp::topology;
use crate::config::{Config, ScheduleConfig};
use crate::schedule::Clock;

/// How often the clock is read for due occurrences.
pub const POLL: Duration = Duration::from_millis(250);

/// One schedule, parsed (the config was validated).
struct Recurring {
    name: String,
    cron: Cron,
    tz: chrono_tz::Tz,
    class: String,
    priority: u8,
    event: serde_json::Value,
    /// The next occurrence to publish.
    next: Option<DateTime<Utc>>,
}

/// The next occurrence of `cron` in `tz` strictly after `after`.
pub fn next_occurrence(
    cron: &Cron,
    tz: chrono_tz::Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The event published for the occurrence at `at`.
pub fn occurrence_event(
    name: &str,
    event: &serde_json::Value,
    at: DateTime<Utc>,
) -> (String, Vec<u8>) {
    let id = format!("{name}-{}", at.timestamp());
    let mut event = event.clone();
    if let Some(map) = event.as_object_mut() {
        map.insert("id".to_owned(), id.clone().into());
    }
    let body = serde_json::to_vec(&event).expect("a JSON value serialises");
    (id, body)
}

/// Publishes every configured schedule's occurrences as they come.
pub fn spawn(
    config: &Config,
    clock: Arc<dyn Clock>,
    publisher: Publisher,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.schedules.is_empty() {
        return None;
    }
    let now = DateTime::from_timestamp_millis(clock.now_ms()).unwrap_or_default();
    let mut all: Vec<Recurring> = config
        .schedules
        .iter()
        .map(|s: &ScheduleConfig| {
            let cron = s.parsed_cron();
            let tz = s.tz();
            let priority = config
                .classes
                .get(&s.class)
                .map_or(1, |c| topology::amqp_priority(c.priority));
            Recurring {
                next: next_occurrence(&cron, tz, now),
                name: s.name.clone(),
                cron,
                tz,
                class: s.class.clone(),
                priority,
                event: s.event.clone(),
            }
        })
        .collect();
    Some(tokio::spawn(async move {
        loop {
            let now = DateTime::from_timestamp_millis(clock.now_ms()).unwrap_or_default();
            for r in &mut all {
                let Some(at) = r.next.filter(|at| *at <= now) else {
                    continue;
                };
                let (id, body) = occurrence_event(&r.name, &r.event, at);
                match publisher
                    .publish_event(&r.class, &id, &body, r.priority)
                    .await
                {
                    Ok(()) => {
                        info!(schedule = %r.name, event_id = %id, "recurring event published");
                        r.next = next_occurrence(&r.cron, r.tz, at);
                    }
                    // Kept due: the next round tries again.
                    Err(e) => {
                        warn!(schedule = %r.name, error = %e, "recurring event not published yet")
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn occurrences_are_local_times_and_ids_name_them() {
        let cron = Cron::from_str("45 6 * * 1-5").unwrap();
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        // Friday 17 January 2025, 12:00 UTC: next is Monday 06:45 EST.
        let next = next_occurrence(&cron, ny, utc("2025-01-17T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2025-01-20T11:45:00Z"));
        // Strictly after: an occurrence is never published twice.
        assert_eq!(
            next_occurrence(&cron, ny, next).unwrap(),
            utc("2025-01-21T11:45:00Z")
        );
        let (id, body) = occurrence_event("digest", &serde_json::json!({"user_id": "u"}), next);
        assert_eq!(id, format!("digest-{}", next.timestamp()));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["user_id"].as_str()),
            (Some(id.as_str()), Some("u"))
        );
    }
}
