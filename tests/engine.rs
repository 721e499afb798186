//! The engine end to end: the real RabbitMQ (a vhost per test), herald's
//! real topology, and local fake Twilio and Resend servers.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald::engine::Engine;
use herald::fakes::FakeResponse;
use herald_actors::messages::Crash;
use herald_actors::model::Channel;
use support::*;

#[actix_rt::test]
async fn one_event_per_default_class_reaches_the_right_provider_rendered() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let classes: Vec<(String, Channel)> = w
        .config
        .classes
        .iter()
        .map(|(n, c)| (n.clone(), c.channel()))
        .collect();
    assert_eq!(classes.len(), 8);
    for (class, _) in &classes {
        let id = format!("evt-{class}");
        publish_raw(
            &conn,
            class,
            &event(&id, Some("+15551230001"), Some("jane@example.com")),
        )
        .await;
    }
    let sms = classes.iter().filter(|(_, ch)| *ch == Channel::Sms).count();
    eventually(20, || {
        w.twilio.sent_count() == sms && w.resend.sent_count() == 8 - sms
    })
    .await;
    let twilio = w.twilio.sent();
    let resend = w.resend.sent();
    for (class, channel) in &classes {
        let id = format!("evt-{class}");
        let body = format!("Hello Jane, ref {id}");
        match channel {
            Channel::Sms => {
                let m = twilio
                    .iter()
                    .find(|m| m.body == body)
                    .unwrap_or_else(|| panic!("{class}: no SMS"));
                assert_eq!(m.to, "+15551230001");
            }
            Channel::Email => {
                let m = resend
                    .iter()
                    .find(|m| m.body == body)
                    .unwrap_or_else(|| panic!("{class}: no email"));
                assert_eq!(m.subject.as_deref(), Some(format!("About {id}").as_str()));
                assert!(m.to.contains("jane@example.com"), "{}", m.to);
            }
        }
    }
    // Resend got each event id as its Idempotency-Key.
    let keys: HashSet<String> = w
        .resend
        .requests()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    for (class, channel) in &classes {
        if *channel == Channel::Email {
            assert!(keys.contains(&format!("evt-{class}")), "{class}");
        }
    }
    let sent = metric_reaching(
        engine.http_addr,
        r#"herald_deliveries_total{channel="sms",class="payment_reminder",outcome="sent"}"#,
        1.0,
        10,
    )
    .await;
    assert_eq!(sent, 1.0);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_sms_refused_with_21211_goes_out_as_email_once() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    // The fake answers Twilio's magic invalid number with 21211.
    publish_raw(
        &conn,
        "payment_reminder",
        &event("evt-21211", Some("+15005550001"), Some("jane@example.com")),
    )
    .await;
    eventually(20, || w.resend.sent_count() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.resend.sent_count(), 1, "exactly one fallback email");
    assert_eq!(w.twilio.request_count(), 1, "21211 is never retried");
    assert_eq!(w.twilio.sent_count(), 0);
    assert_eq!(w.resend.sent()[0].body, "Hello Jane, ref evt-21211");
    let fallbacks = metric_reaching(
        engine.http_addr,
        r#"herald_fallbacks_total{class="payment_reminder",from="sms",to="email"}"#,
        1.0,
        10,
    )
    .await;
    assert_eq!(fallbacks, 1.0);
    // A letter would reach the queue a moment after its outcome.
    assert!(dlq_reaching(&conn, 1, 1).await.is_empty());
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_500_then_201_sms_is_retried_through_the_broker_and_sent_once() {
    let w = World::new();
    w.twilio
        .script_for("+15551230003", vec![FakeResponse::Status(500)]);
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-500", Some("+15551230003"), None),
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.twilio.request_count(), 2);
    assert_eq!(w.twilio.sent_count(), 1);
    let retries = metric_reaching(
        engine.http_addr,
        r#"herald_retries_total{channel="sms",class="weekly_checkin"}"#,
        1.0,
        10,
    )
    .await;
    assert_eq!(retries, 1.0);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn retries_spent_on_a_class_without_fallback_dead_letter_with_a_reason() {
    let w = World::new();
    w.twilio.script_for(
        "+15551230004",
        vec![
            FakeResponse::Status(503),
            FakeResponse::Status(503),
            FakeResponse::Status(503),
        ],
    );
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    // weekly_checkin: 2 retries, so 3 attempts, then the DLQ.
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-503", Some("+15551230004"), None),
    )
    .await;
    let dead = r#"herald_dead_letters_total{class="weekly_checkin",reason="retries_exhausted"}"#;
    let addr = engine.http_addr;
    assert_eq!(metric_reaching(addr, dead, 1.0, 10).await, 1.0);
    let letters = dlq_reaching(&conn, 1, 10).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, "retries_exhausted");
    assert_eq!(letters[0].class, "weekly_checkin");
    assert_eq!(w.twilio.request_count(), 3);
    assert!(
        !letters[0].headers.contains("15551230004"),
        "no phone in headers: {}",
        letters[0].headers
    );
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn every_bad_input_is_dead_lettered_once_with_its_reason_and_the_engine_keeps_serving() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let good = |id: &str| {
        serde_json::from_slice::<serde_json::Value>(&event(
            id,
            Some("+15551230005"),
            Some("jane@example.com"),
        ))
        .unwrap()
    };
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut no_id = good("x");
    no_id.as_object_mut().unwrap().remove("id");
    let mut no_phone = good("evt-nophone");
    no_phone["to"] = serde_json::json!({"name": "Jane"});
    let mut bad_phone = good("evt-badphone");
    bad_phone["to"]["phone"] = "555-0100-77".into();
    let mut no_value = good("evt-noval");
    no_value["template"] = "Pay {amount_due}".into();
    let mut huge = good("evt-huge");
    huge["data"]["pad"] = "x".repeat(300 * 1024).into();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("weekly_checkin", b"{not json".to_vec(), "malformed_json"),
        (
            "weekly_checkin",
            vec![0xff, 0xfe, b'{', b'}'],
            "invalid_utf8",
        ),
        ("no_such_class", json(good("evt-unknown")), "unknown_class"),
        ("weekly_checkin", json(no_id), "missing_id"),
        ("weekly_checkin", json(no_phone), "missing_recipient"),
        ("weekly_checkin", json(bad_phone), "invalid_phone"),
        ("weekly_checkin", json(huge), "body_too_large"),
        ("weekly_checkin", json(no_value), "missing_placeholder"),
    ];
    for (class, body, _) in &cases {
        publish_raw(&conn, class, body).await;
    }
    // The engine keeps serving.
    publish_raw(&conn, "weekly_checkin", &json(good("evt-after"))).await;
    eventually(20, || w.twilio.sent_count() == 1).await;
    let mut letters = dlq_reaching(&conn, cases.len(), 10).await;
    // Once each: nothing loops back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    letters.extend(drain_dlq(&conn).await);
    let mut got: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    let mut want: Vec<&str> = cases.iter().map(|(_, _, r)| *r).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for l in &letters {
        assert!(!l.detail.is_empty(), "{l:?}");
        assert!(
            !l.headers.contains("555-0100-77"),
            "phone leaked into headers: {}",
            l.headers
        );
        let expected_class = if l.reason == "unknown_class" {
            "no_such_class"
        } else {
            "weekly_checkin"
        };
        assert_eq!(l.class, expected_class);
    }
    let unknown = metric_reaching(
        engine.http_addr,
        r#"herald_dead_letters_total{class="unknown",reason="unknown_class"}"#,
        1.0,
        10,
    )
    .await;
    assert_eq!(unknown, 1.0);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn herald_proposes_its_small_frame_and_the_broker_takes_it() {
    let w = World::new();
    let conn = herald::amqp::connect(&w.vhost.url(), 10).await.unwrap();
    // RabbitMQ offers 128 KiB; herald's smaller proposal wins. The 300 KiB
    // event of the bad-input test crosses such a connection in many frames.
    assert_eq!(conn.configuration().frame_max(), herald::amqp::FRAME_MAX);
    const { assert!(herald::amqp::FRAME_MAX < 128 * 1024) };
    let _ = conn.close(200, "done".into()).await;
}

#[actix_rt::test]
async fn a_class_sender_that_panics_holding_deliveries_is_restarted_and_every_delivery_is_sent() {
    let mut w = World::new();
    // Two a second: most deliveries are waiting in the actor when it dies.
    w.class_mut("weekly_checkin").rate_limit.sms = 120;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    for i in 0..6 {
        publish_raw(
            &conn,
            "weekly_checkin",
            &event(&format!("evt-crash-{i}"), Some("+15551230006"), None),
        )
        .await;
    }
    eventually(10, || w.twilio.sent_count() >= 1).await;
    let before = w.twilio.sent_count();
    assert!(
        before < 6,
        "the actor must still hold deliveries when it dies"
    );
    engine
        .registry
        .sender(Channel::Sms, "weekly_checkin")
        .unwrap()
        .do_send(Crash::Panic);
    eventually(30, || w.twilio.sent_count() == 6).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bodies: Vec<String> = w.twilio.sent().into_iter().map(|m| m.body).collect();
    let unique: HashSet<&String> = bodies.iter().collect();
    assert_eq!(bodies.len(), 6, "no send lost or repeated: {bodies:?}");
    assert_eq!(unique.len(), 6);
    let restarts = metric(
        engine.http_addr,
        r#"herald_actor_restarts_total{actor="class_sender"}"#,
    )
    .await;
    assert!(restarts >= 1.0, "restarts {restarts}");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_class_flooded_past_its_limit_does_not_slow_another_class() {
    let mut w = World::new();
    w.class_mut("weekly_checkin").rate_limit.sms = 6; // one per 10 s
    w.class_mut("milestone_reminder").rate_limit.sms = 600; // ten per second
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    for i in 0..40 {
        publish_raw(
            &conn,
            "weekly_checkin",
            &event(&format!("evt-flood-{i}"), Some("+15551230007"), None),
        )
        .await;
    }
    for i in 0..20 {
        publish_raw(
            &conn,
            "milestone_reminder",
            &event(&format!("evt-pace-{i}"), Some("+15551230008"), None),
        )
        .await;
    }
    let started = tokio::time::Instant::now();
    let paced = || {
        w.twilio
            .sent()
            .iter()
            .filter(|m| m.body.contains("evt-pace-"))
            .count()
    };
    eventually(15, || paced() == 20).await;
    let took = started.elapsed();
    let flooded = w
        .twilio
        .sent()
        .iter()
        .filter(|m| m.body.contains("evt-flood-"))
        .count();
    // 20 at ten a second is ~2 s; the flooded class sent at most its burst
    // plus one per 10 s meanwhile.
    assert!(
        flooded <= 1 + (took.as_secs() as usize / 10) + 1,
        "flooded class sent {flooded} in {took:?}"
    );
    let limited = metric(
        engine.http_addr,
        r#"herald_rate_limited_total{channel="sms",class="weekly_checkin"}"#,
    )
    .await;
    assert!(limited >= 30.0, "rate limited {limited}");
    engine.stop(Duration::from_secs(5)).await;
}

/// Closes every connection to `vhost` from the broker side, as a broker
/// restart or a network cut would.
fn close_connections(vhost: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "pid",
            "vhost",
            "--no-table-headers",
        ])
        .output()
        .unwrap();
    let mut closed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut cols = line.split('\t');
        let (Some(pid), Some(v)) = (cols.next(), cols.next()) else {
            continue;
        };
        if v.trim() == vhost {
            let ok = std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid.trim(),
                    "test: simulated broker failure",
                ])
                .status()
                .unwrap()
                .success();
            closed += usize::from(ok);
        }
    }
    closed
}

#[actix_rt::test]
async fn herald_reconnects_and_redeclares_its_topology_by_itself() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-before", Some("+15551230009"), None),
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 1).await;
    assert_eq!(engine.link.sessions(), 1);

    // A class queue deleted under herald: its consumer is cancelled; herald
    // starts a new session and declares the queue again.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete("herald.weekly_checkin".into(), Default::default())
        .await
        .unwrap();
    eventually(20, || {
        engine.link.sessions() >= 2 && engine.link.connected()
    })
    .await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-redeclared", Some("+15551230009"), None),
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 2).await;

    // The connection closed by the broker: herald reconnects without a restart.
    // (This closes the test's own connection too: it opens a new one.)
    assert!(close_connections(&w.vhost.name) >= 1);
    let conn = w.vhost.connect().await;
    let sessions = engine.link.sessions();
    eventually(30, || {
        engine.link.sessions() > sessions && engine.link.connected()
    })
    .await;
    let ready = reqwest::get(format!("http://{}/readyz", engine.http_addr))
        .await
        .unwrap();
    assert!(ready.status().is_success());
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-after", Some("+15551230009"), None),
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 3).await;
    let bodies: Vec<String> = w.twilio.sent().into_iter().map(|m| m.body).collect();
    assert!(
        bodies.iter().any(|b| b.ends_with("evt-after")),
        "{bodies:?}"
    );
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_graceful_stop_mid_flight_loses_nothing_and_returns_the_rest() {
    let mut w = World::new();
    w.twilio.set_latency(Duration::from_millis(300));
    w.class_mut("weekly_checkin").rate_limit.sms = 600; // ten a second
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    for i in 0..30 {
        publish_raw(
            &conn,
            "weekly_checkin",
            &event(&format!("evt-stop-{i}"), Some("+15551230010"), None),
        )
        .await;
    }
    eventually(20, || w.twilio.sent_count() >= 2).await;
    let left = engine.stop(Duration::from_secs(10)).await;
    assert_eq!(left, 0, "every open send finished within the grace period");
    let sent_before = w.twilio.sent_count();
    assert!(sent_before < 30, "stopped mid-flight");
    // What was not sent is back in the queue: a new engine sends it all.
    let engine = Engine::start(w.config.clone()).await.unwrap();
    eventually(30, || w.twilio.sent_count() >= 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<String> = w.twilio.sent().into_iter().map(|m| m.body).collect();
    let unique: HashSet<&String> = bodies.iter().collect();
    assert_eq!(unique.len(), 30, "none lost");
    assert_eq!(bodies.len(), 30, "none sent twice: {bodies:?}");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn sms_cost_counts_segments_as_twilio_bills_them() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let with_text = |id: &str, text: String| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&event(id, Some("+15550001111"), None)).unwrap();
        v["template"] = text.into();
        serde_json::to_vec(&v).unwrap()
    };
    // 200 GSM-7 characters: two parts of 153. 71 characters with an emoji:
    // UCS-2, 72 UTF-16 units, two parts of 67.
    let gsm = "a".repeat(200);
    let emoji = format!("{}👍", "b".repeat(70));
    assert_eq!(emoji.chars().count(), 71);
    publish_raw(&conn, "weekly_checkin", &with_text("cost-gsm", gsm)).await;
    publish_raw(&conn, "weekly_checkin", &with_text("cost-emoji", emoji)).await;
    eventually(20, || w.twilio.sent_count() == 2).await;
    let series = r#"herald_cost_usd_total{channel="sms",class="weekly_checkin"}"#;
    let cost = metric_reaching(engine.http_addr, series, 0.0299, 5).await;
    assert!((cost - 4.0 * 0.0075).abs() < 1e-9, "cost {cost}");
    for id in ["cost-gsm", "cost-emoji"] {
        let mut view = None;
        for _ in 0..50 {
            view = engine.store.message(id).await.unwrap();
            if view.as_ref().is_some_and(|v| v.status.as_str() == "sent") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let view = view.expect("recorded");
        assert_eq!(view.status.as_str(), "sent", "{id}");
        assert_eq!(view.segments, 2, "{id}");
        assert!(
            (view.cost_usd - 0.015).abs() < 1e-9,
            "{id}: {}",
            view.cost_usd
        );
    }
    engine.stop(Duration::from_secs(5)).await;
}
