//! Time: quiet hours, `send_at` and local-time delivery, end to end on the
//! real broker and store, with herald's clock moved by the test (an
//! [`OffsetClock`]) and herald restarted while events wait.

mod support;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use herald::engine::Engine;
use herald::schedule::OffsetClock;
use support::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An event for a recipient in `timezone`.
fn event_in(id: &str, phone: Option<&str>, email: Option<&str>, timezone: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&event(id, phone, email)).unwrap();
    v["to"]["timezone"] = timezone.into();
    serde_json::to_vec(&v).unwrap()
}

const ADMIN: &str = "admin-secret";

/// `GET /api/messages/{id}`, which must answer 200.
async fn event_view(engine: &Engine, id: &str) -> serde_json::Value {
    let path = format!("/api/messages/{id}");
    Api::new(engine, ADMIN).ok("GET", &path, None).await
}

/// Waits until the store holds `id` and returns its due time and reason.
async fn held(engine: &Engine, id: &str) -> (DateTime<Utc>, String) {
    for _ in 0..100 {
        if let Some(e) = engine.store.scheduled(id).await.unwrap().first() {
            return (
                DateTime::from_timestamp_millis(e.due_at_ms).unwrap(),
                e.reason.clone(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} was never held");
}

#[actix_rt::test]
async fn an_sms_at_23_00_waits_for_08_00_through_a_restart_and_critical_goes_at_once() {
    let mut w = World::new();
    w.config.quiet_hours.enabled = true;
    let clock = Arc::new(OffsetClock::default());
    // 23:00 on Tuesday 14 January 2025 in New York (UTC-5).
    clock.set(utc("2025-01-15T04:00:00Z"));
    let engine = Engine::start_with_clock(w.config.clone(), clock.clone())
        .await
        .unwrap();
    let conn = w.vhost.connect().await;
    let ny = "America/New_York";
    publish_raw(
        &conn,
        "weekly_checkin",
        &event_in("quiet-1", Some("+15550000001"), None, ny),
    )
    .await;
    publish_raw(
        &conn,
        "critical_financial",
        &event_in("crit-1", Some("+15550000002"), None, ny),
    )
    .await;
    // A number in London at 04:00 there, no time zone given: its country's.
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("quiet-uk", Some("+447700900123"), None),
    )
    .await;
    eventually(10, || w.twilio.sent_count() == 1).await;
    assert_eq!(
        w.twilio.sent()[0].to,
        "+15550000002",
        "critical_financial is exempt"
    );
    assert_eq!(
        held(&engine, "quiet-1").await,
        (utc("2025-01-15T13:00:00Z"), "quiet_hours".to_owned()),
        "08:00 in New York"
    );
    assert_eq!(
        held(&engine, "quiet-uk").await,
        (utc("2025-01-15T08:00:00Z"), "quiet_hours".to_owned()),
        "08:00 in London"
    );
    let deferred = metric_reaching(
        engine.http_addr,
        r#"herald_deferred_total{class="weekly_checkin",reason="quiet_hours"}"#,
        2.0,
        10,
    )
    .await;
    assert_eq!(deferred, 2.0);
    engine.stop(Duration::from_secs(5)).await;

    // Restarted just before 08:00 in New York (London opened meanwhile).
    clock.set(utc("2025-01-15T12:59:57Z"));
    let engine = Engine::start_with_clock(w.config.clone(), clock.clone())
        .await
        .unwrap();
    eventually(10, || w.twilio.sent_count() == 2).await;
    assert_eq!(w.twilio.sent()[1].to, "+447700900123");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.twilio.sent_count(), 2, "not before 08:00 in New York");
    clock.set(utc("2025-01-15T13:00:00Z"));
    eventually(5, || w.twilio.sent_count() == 3).await;
    assert_eq!(w.twilio.sent()[2].to, "+15550000001");
    // The scheduler deletes the row once the broker confirms the publish,
    // which can be after the consumer has already sent it.
    let mut left = engine.store.scheduled("quiet-1").await.unwrap();
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = engine.store.scheduled("quiet-1").await.unwrap();
    }
    assert!(left.is_empty(), "released, so no longer held");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.twilio.sent_count(), 3, "each sent once");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn send_at_survives_a_restart_and_goes_out_within_a_second_of_its_time() {
    let mut w = World::new();
    w.config.admin_token = Some(ADMIN.to_owned());
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let at = Utc::now() + chrono::Duration::seconds(4);
    let mut v: serde_json::Value =
        serde_json::from_slice(&event("later-1", Some("+15550000003"), None)).unwrap();
    v["send_at"] = at.to_rfc3339().into();
    publish_raw(&conn, "weekly_checkin", &serde_json::to_vec(&v).unwrap()).await;
    let (due, reason) = held(&engine, "later-1").await;
    assert_eq!(
        (due.timestamp_millis(), reason.as_str()),
        (at.timestamp_millis(), "send_at")
    );
    // Both views show the waiting event, though it has no delivery record.
    let api = event_view(&engine, "later-1").await;
    assert_eq!(api["status"], "held", "{api}");
    assert_eq!(api["class"], "weekly_checkin", "{api}");
    assert_eq!(api["held"][0]["reason"], "send_at", "{api}");
    assert_eq!(api["held"][0]["due_at_ms"], at.timestamp_millis(), "{api}");
    assert_eq!(status_json(&w.config.store.url, "later-1"), api);
    engine.stop(Duration::from_secs(5)).await;
    assert_eq!(w.twilio.request_count(), 0);

    let engine = Engine::start(w.config.clone()).await.unwrap();
    eventually(15, || w.twilio.sent_count() == 1).await;
    let received = w.twilio.requests()[0].received_at;
    let received_ms = received.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let late = received_ms - at.timestamp_millis();
    assert!((0..1000).contains(&late), "sent {late} ms after send_at");
    let mut api = event_view(&engine, "later-1").await;
    for _ in 0..50 {
        if api["status"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        api = event_view(&engine, "later-1").await;
    }
    assert_eq!(api["status"], "sent", "{api}");
    assert_eq!(api["held"], serde_json::json!([]), "{api}");
    assert_eq!(api["attempt_log"].as_array().unwrap().len(), 1, "{api}");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_daily_class_sends_at_06_45_on_a_tuesday_and_08_30_on_a_saturday_in_three_zones() {
    let mut w = World::new();
    let class = w.class_mut("career_insights");
    class.deliver_at_local = Some("06:45".to_owned());
    class.deliver_at_local_weekend = Some("08:30".to_owned());
    let clock = Arc::new(OffsetClock::default());
    let zones = ["America/New_York", "Europe/Berlin", "Asia/Tokyo"];
    let rounds = [
        // Monday 13 January 2025, 20:00 UTC: Tuesday 06:45 local (Tokyo is
        // already Tuesday 05:00).
        (
            "2025-01-13T20:00:00Z",
            [
                "2025-01-14T11:45:00Z",
                "2025-01-14T05:45:00Z",
                "2025-01-13T21:45:00Z",
            ],
        ),
        // Friday 17 January, 12:00 UTC: Saturday 08:30 local.
        (
            "2025-01-17T12:00:00Z",
            [
                "2025-01-18T13:30:00Z",
                "2025-01-18T07:30:00Z",
                "2025-01-17T23:30:00Z",
            ],
        ),
    ];
    let mut sent = 0;
    for (round, (now, due)) in rounds.iter().enumerate() {
        clock.set(utc(now));
        let engine = Engine::start_with_clock(w.config.clone(), clock.clone())
            .await
            .unwrap();
        let conn = w.vhost.connect().await;
        for (zone, want) in zones.iter().zip(due) {
            let id = format!("daily-{round}-{zone}");
            let email = format!("user{round}@example.com");
            publish_raw(
                &conn,
                "career_insights",
                &event_in(&id, None, Some(&email), zone),
            )
            .await;
            assert_eq!(
                held(&engine, &id).await,
                (utc(want), "local_time".to_owned()),
                "{zone}"
            );
        }
        // Each goes out when its own morning comes, not before.
        let mut order: Vec<&str> = due.to_vec();
        order.sort_unstable();
        for at in order {
            let before = utc(at) - chrono::Duration::seconds(2);
            clock.set(before);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(w.resend.sent_count(), sent, "nothing before {at}");
            clock.set(utc(at));
            sent += 1;
            eventually(5, || w.resend.sent_count() == sent).await;
        }
        engine.stop(Duration::from_secs(5)).await;
    }
    assert_eq!(w.resend.sent_count(), 6);
}

#[actix_rt::test]
async fn a_recurring_schedule_publishes_each_occurrence_once_across_two_instances() {
    let mut w = World::new();
    w.config.schedules = vec![herald::config::ScheduleConfig {
        name: "morning_digest".to_owned(),
        cron: "30 7 * * *".to_owned(),
        timezone: "Europe/Berlin".to_owned(),
        class: "career_insights".to_owned(),
        event: serde_json::json!({
            "user_id": "ops",
            "to": {"email": "ops@example.com", "name": "Ops"},
            "template": "Good morning {name}",
        }),
    }];
    w.config.validate().expect("a valid schedule");
    let clock = Arc::new(OffsetClock::default());
    // 07:29:58 in Berlin (CET, UTC+1).
    clock.set(utc("2025-01-15T06:29:58Z"));
    let a = Engine::start_with_clock(w.config.clone(), clock.clone())
        .await
        .unwrap();
    let b = Engine::start_with_clock(w.config.clone(), clock.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.resend.sent_count(), 0, "not before 07:30");
    eventually(10, || w.resend.sent_count() == 1).await;
    // Both published it: the second copy was taken as a duplicate.
    let duplicates =
        r#"herald_duplicates_suppressed_total{channel="email",class="career_insights"}"#;
    let taken = metric_sum_reaching(&[a.http_addr, b.http_addr], duplicates, 1.0, 5).await;
    assert_eq!(taken, 1.0, "the other instance's copy");
    assert_eq!(
        w.resend.sent_count(),
        1,
        "both instances published it; sent once"
    );
    assert_eq!(w.resend.sent()[0].body, "Good morning Ops");
    let id = format!("morning_digest-{}", utc("2025-01-15T06:30:00Z").timestamp());
    let mut view = a.store.message(&id).await.unwrap();
    for _ in 0..100 {
        if view.as_ref().is_some_and(|v| v.status.as_str() == "sent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = a.store.message(&id).await.unwrap();
    }
    let view = view.expect("recorded under its id");
    assert_eq!(view.status.as_str(), "sent");
    // The next day's occurrence.
    clock.set(utc("2025-01-16T06:29:59Z"));
    eventually(10, || w.resend.sent_count() == 2).await;
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}
