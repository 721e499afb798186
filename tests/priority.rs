//! Priority under backlog: with a large backlog of low-priority events on a
//! shared provider capacity, newly published critical events overtake it.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use herald::engine::Engine;
use lapin::BasicProperties;
use support::*;

#[actix_rt::test]
async fn critical_events_overtake_a_backlog_of_20000_low_priority_ones() {
    let mut w = World::new();
    // The shared provider limit is the bottleneck, not the classes': the
    // classes could send 10,000 a second each, Twilio takes 200, so jobs
    // wait at the provider and its order decides.
    for class in ["milestone_reminder", "critical_financial"] {
        w.class_mut(class).rate_limit.sms = 600_000;
    }
    w.config.providers.twilio.rate_per_sec = 200.0;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let publish = |class: &'static str, id: String| {
        let ch = ch.clone();
        async move {
            let body = event(&id, Some("+15551230030"), None);
            ch.basic_publish(
                "herald".into(),
                class.into(),
                Default::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_priority(3),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    // 20,000 low-priority SMS (milestone_reminder is priority 4).
    for chunk in (0..20_000).collect::<Vec<_>>().chunks(1000) {
        join_all(
            chunk
                .iter()
                .map(|i| publish("milestone_reminder", format!("low-{i}"))),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.twilio.sent_count() < 200 {
        assert!(Instant::now() < deadline, "the backlog is not flowing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Then 100 critical ones (priority 1).
    let before = w.twilio.sent_count();
    join_all((0..100).map(|i| publish("critical_financial", format!("crit-{i}")))).await;
    let crit = || {
        w.twilio
            .sent()
            .iter()
            .filter(|m| m.body.contains("ref crit-"))
            .count()
    };
    eventually(30, || crit() == 100).await;
    let sent = w.twilio.sent();
    let last_crit = sent
        .iter()
        .rposition(|m| m.body.contains("ref crit-"))
        .unwrap();
    let low_meanwhile = sent[before..=last_crit]
        .iter()
        .filter(|m| m.body.contains("ref low-"))
        .count();
    eprintln!("low-priority sends while the 100 critical went out: {low_meanwhile}");
    // The bar is 1,000; served in arrival order, the low class's
    // jobs already waiting at the provider (up to its prefetch) would go
    // first and the two classes would then share it. Overtaking leaves
    // only the calls already open (16) and a few that start in between.
    assert!(
        low_meanwhile < 50,
        "{low_meanwhile} low-priority sends went before the last critical one"
    );
    assert!(
        sent.len() < 20_100,
        "the backlog was still there when the critical events went"
    );
    engine.stop(Duration::from_secs(5)).await;
}
