//! Durability end to end: the delivery store behind the engine, on the real
//! broker, with SQLite and with PostgreSQL.

mod support;

use std::process::Command;
use std::time::Duration;

use herald::engine::Engine;
use herald::fakes::FakeResponse;
use support::*;

/// A fresh PostgreSQL database for one test; dropped after it.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    fn new() -> PgDatabase {
        let name = format!("herald_durability_{}", rand::random::<u32>());
        psql(&format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn the_same_event_published_twice_minutes_apart_is_sent_once() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let body = event("evt-twice", Some("+15551230020"), None);
    publish_raw(&conn, "weekly_checkin", &body).await;
    eventually(20, || w.twilio.sent_count() == 1).await;
    // "Minutes apart": a different engine, nothing kept in memory; only the
    // store remembers.
    engine.stop(Duration::from_secs(5)).await;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    publish_raw(&conn, "weekly_checkin", &body).await;
    let addr = engine.http_addr;
    let series = r#"herald_duplicates_suppressed_total{channel="sms",class="weekly_checkin"}"#;
    assert_eq!(metric_reaching(addr, series, 1.0, 10).await, 1.0);
    assert_eq!(w.twilio.sent_count(), 1, "sent once");
    assert_eq!(w.twilio.request_count(), 1, "the provider was called once");
    engine.stop(Duration::from_secs(5)).await;
}

/// Two herald instances on one PostgreSQL store, the broker handing them the
/// two copies of each event (a publisher that published everything twice)
/// while the first copy's call is still open: each event is sent once. The
/// second copy's claim finds the other instance's attempt unfinished and
/// within its lease, waits, and then finds it sent.
#[actix_rt::test]
async fn two_instances_handed_copies_of_one_event_at_once_send_it_once() {
    const N: usize = 20;
    let db = PgDatabase::new();
    let mut w = World::new();
    w.config.store.url = db.url();
    // Long calls: the copies are in flight on both instances together.
    w.twilio.set_latency(Duration::from_millis(400));
    let a = Engine::start(w.config.clone()).await.unwrap();
    let b = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    // Both consume before anything is published (the broker then hands
    // the copies out in turn).
    queue_reaching(&conn, "herald.weekly_checkin", 20, |(_, consumers)| {
        consumers == 2
    })
    .await;
    let doubled: Vec<Vec<u8>> = sms_events("twin", N)
        .into_iter()
        .flat_map(|body| [body.clone(), body])
        .collect();
    publish_many(&conn, "weekly_checkin", &doubled).await;
    let series = r#"herald_duplicates_suppressed_total{channel="sms",class="weekly_checkin"}"#;
    let both = [a.http_addr, b.http_addr];
    let suppressed = metric_sum_reaching(&both, series, N as f64, 30).await;
    assert_eq!(
        suppressed, N as f64,
        "every second copy found its event sent"
    );
    assert_eq!(w.twilio.sent_count(), N, "each event sent once");
    assert_eq!(
        w.twilio.request_count(),
        N,
        "the provider was called once each"
    );
    // Both instances took copies (else this tested one process): each
    // sent some, or found the other had (which instance wins a pair's
    // claim is a race, so one may send them all).
    let took = |addr| async move {
        metric(
            addr,
            r#"herald_deliveries_total{channel="sms",class="weekly_checkin",outcome="sent"}"#,
        )
        .await
            + metric(addr, series).await
    };
    let (by_a, by_b) = (took(a.http_addr).await, took(b.http_addr).await);
    assert!(by_a > 0.0 && by_b > 0.0, "a took {by_a}, b took {by_b}");
    // And the copies overlapped: some claim found the other instance's
    // call still open and waited for it (else the suppressed copies only
    // came after their sends had finished).
    let waited_series =
        r#"herald_claims_in_flight_elsewhere_total{channel="sms",class="weekly_checkin"}"#;
    let waited = metric_sum_reaching(&both, waited_series, 1.0, 1).await;
    assert!(
        waited >= 1.0,
        "no claim waited for the other instance's call"
    );
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}

/// A claim that waits for its provider longer than its lease: another
/// instance, handed a copy of the event meanwhile, finds the lease over and
/// sends it. The first instance must not send it too when its turn comes:
/// it renews the lease before the call, finds the event taken over, claims
/// it again and finds it sent.
#[actix_rt::test]
async fn an_event_taken_over_while_it_waited_for_the_provider_is_not_sent_again() {
    let db = PgDatabase::new();
    let mut w = World::new();
    w.config.store.url = db.url();
    // One-second calls: a lease of 6 s (the longest call and a margin).
    w.config.providers.twilio.timeout_secs = 1.0;
    w.config.providers.resend.timeout_secs = 1.0;
    // `a` serves only weekly_checkin and calls Twilio once every 10 s, so
    // its second event waits 10 s for the provider, past its lease; `b`
    // serves only critical_financial, at full speed.
    let mut a_config = w.config.clone();
    a_config.classes.remove("critical_financial");
    a_config.providers.twilio.rate_per_sec = 0.1;
    let mut b_config = w.config.clone();
    b_config.classes.remove("weekly_checkin");
    let a = Engine::start(a_config).await.unwrap();
    let b = Engine::start(b_config).await.unwrap();
    let conn = w.vhost.connect().await;
    let phone = Some("+15551230024");
    publish_raw(&conn, "weekly_checkin", &event("first", phone, None)).await;
    publish_raw(&conn, "weekly_checkin", &event("waiter", phone, None)).await;
    eventually(10, || w.twilio.sent_count() == 1).await;
    // Claimed by `a` at once, "waiter" has waited past its 6 s lease when
    // a copy reaches `b`, which sends it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    publish_raw(&conn, "critical_financial", &event("waiter", phone, None)).await;
    let ours = |m: &herald::fakes::SentMessage| m.body.contains("ref waiter");
    eventually(10, || w.twilio.sent().iter().any(ours)).await;
    // `a`'s turn comes 10 s after its first send: its renewal finds the
    // attempt closed, and the claim after it finds the event sent.
    let series = r#"herald_duplicates_suppressed_total{channel="sms",class="weekly_checkin"}"#;
    assert_eq!(metric_reaching(a.http_addr, series, 1.0, 15).await, 1.0);
    let waiter = w.twilio.sent().iter().filter(|m| ours(m)).count();
    assert_eq!(waiter, 1, "sent once, by b");
    assert_eq!(w.twilio.sent_count(), 2);
    let unknown = r#"herald_outcome_unknown_total{channel="sms",class="critical_financial"}"#;
    assert_eq!(metric(b.http_addr, unknown).await, 1.0);
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}

async fn status_shows_sent_fallback_and_dead_letter(mut w: World) {
    w.twilio.script_for(
        "+15551230022",
        vec![
            FakeResponse::Status(503),
            FakeResponse::Status(503),
            FakeResponse::Status(503),
        ],
    );
    w.config.admin_token = Some("admin-secret".into());
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-delivered", Some("+15551230021"), None),
    )
    .await;
    publish_raw(
        &conn,
        "payment_reminder",
        &event(
            "evt-fallback",
            Some("+15005550001"),
            Some("jane@example.com"),
        ),
    )
    .await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-dead", Some("+15551230022"), None),
    )
    .await;

    let store = engine.store.clone();
    let finished = |id: &'static str, status: &'static str| {
        let store = store.clone();
        async move {
            for _ in 0..300 {
                if let Some(v) = store.message(id).await.unwrap() {
                    if v.status.as_str() == status {
                        return v;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "{id} never reached {status}: {:?}",
                store.message(id).await.unwrap()
            );
        }
    };
    let delivered = finished("evt-delivered", "sent").await;
    assert_eq!(delivered.channel, "sms");
    assert_eq!(delivered.attempts, 1);
    assert!(delivered.provider_id.as_deref().unwrap().starts_with("SM"));
    assert!(
        (delivered.cost_usd - 0.0075).abs() < 1e-9,
        "{}",
        delivered.cost_usd
    );

    let fallback = finished("evt-fallback", "sent").await;
    assert_eq!(fallback.channel, "email");
    assert_eq!(fallback.attempts, 2, "{fallback:?}");
    let outcomes: Vec<_> = fallback
        .attempt_log
        .iter()
        .map(|a| (a.channel.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        vec![("sms", Some("fallback")), ("email", Some("sent"))]
    );

    let dead = finished("evt-dead", "dead_lettered").await;
    assert_eq!(dead.attempts, 3, "{dead:?}");
    assert_eq!(dead.reason.as_deref(), Some("retries_exhausted"));
    assert!(dead.attempt_log.iter().all(|a| a.finished_at_ms.is_some()));

    // `herald status` prints the same records.
    for (id, status, attempts) in [
        ("evt-delivered", "sent", 1),
        ("evt-fallback", "sent", 2),
        ("evt-dead", "dead_lettered", 3),
    ] {
        let view = status_json(&w.config.store.url, id);
        assert_eq!(view["status"], status, "{view}");
        assert_eq!(
            view["attempt_log"].as_array().unwrap().len(),
            attempts,
            "{view}"
        );
    }
    let missing = herald_status(&w.config.store.url, "no-such-event");
    assert_eq!(missing.status.code(), Some(1));

    // The admin API shows it too, only with the token.
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/messages/evt-dead", engine.http_addr);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = client
        .get(&url)
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let view: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(view["status"], "dead_lettered");
    let today = chrono::Utc::now().format("%Y-%m-%d");
    let cost: serde_json::Value = client
        .get(format!(
            "http://{}/api/users/user_1/cost?date={today}",
            engine.http_addr
        ))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cost["messages"], 2, "{cost}");
    let usd = cost["cost_usd"].as_f64().unwrap();
    assert!((usd - (0.0075 + 0.0001)).abs() < 1e-9, "{cost}");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn status_shows_a_delivered_sms_a_fallback_email_and_a_dead_letter_on_sqlite() {
    status_shows_sent_fallback_and_dead_letter(World::new()).await;
}

#[actix_rt::test]
async fn status_shows_a_delivered_sms_a_fallback_email_and_a_dead_letter_on_postgres() {
    let db = PgDatabase::new();
    let mut w = World::new();
    w.config.store.url = db.url();
    status_shows_sent_fallback_and_dead_letter(w).await;
}

/// The DLQ takes nothing: the broker nacks every publish to it.
fn refuse_dead_letters(vhost: &str) {
    let full = r#"{"max-length":0,"overflow":"reject-publish"}"#;
    rabbitmqctl(&[
        "set_policy",
        "-p",
        vhost,
        "--apply-to",
        "queues",
        "dlq-full",
        "^herald\\.dlq$",
        full,
    ]);
}

fn accept_dead_letters(vhost: &str) {
    rabbitmqctl(&["clear_policy", "-p", vhost, "dlq-full"]);
}

/// A dead letter the broker refuses does not end its event. Recording the
/// event `dead_lettered` before the broker had the letter lost it: the
/// delivery went back, its next copy was claimed, found final and acked,
/// and the event was neither sent nor in the DLQ. Now the attempt counts as
/// one to retry until the letter is confirmed.
#[actix_rt::test]
async fn a_dead_letter_the_broker_refuses_is_tried_again_not_lost() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let vhost = w.vhost.name.as_str();
    refuse_dead_letters(vhost);
    // Twilio refuses the number for good (21211): a dead letter at once.
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-refused-letter", Some("+15005550001"), None),
    )
    .await;
    // Refused by Twilio, the letter refused by the broker, and tried again.
    eventually(30, || w.twilio.request_count() >= 2).await;
    accept_dead_letters(vhost);
    let letters = dlq_reaching(&conn, 1, 30).await;
    assert_eq!(letters.len(), 1, "the event reached the DLQ once");
    assert_eq!(letters[0].reason, "invalid_recipient");
    let store = engine.store.clone();
    let mut view = None;
    for _ in 0..100 {
        view = store.message("evt-refused-letter").await.unwrap();
        if view
            .as_ref()
            .is_some_and(|v| v.status.as_str() == "dead_lettered")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = view.expect("a record of the event");
    assert_eq!(view.status.as_str(), "dead_lettered");
    let outcomes: Vec<_> = view
        .attempt_log
        .iter()
        .map(|a| a.outcome.as_deref().unwrap_or("open"))
        .collect();
    assert_eq!(outcomes.first(), Some(&"retry"), "{outcomes:?}");
    assert_eq!(outcomes.last(), Some(&"dead_letter"), "{outcomes:?}");
    // Settled: acked, and not tried again.
    let calls = w.twilio.request_count();
    queue_reaching(&conn, "herald.weekly_checkin", 10, |(messages, _)| {
        messages == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        w.twilio.request_count(),
        calls,
        "no call after the letter landed"
    );
    assert!(drain_dlq(&conn).await.is_empty(), "one letter only");
    assert_eq!(w.twilio.sent_count(), 0);
    // Counted once, when the broker took the letter.
    let counted = r#"herald_dead_letters_total{class="weekly_checkin",reason="invalid_recipient"}"#;
    assert_eq!(metric(engine.http_addr, counted).await, 1.0);
    engine.stop(Duration::from_secs(5)).await;
}

/// The same for an event rejected on arrival (malformed JSON): held and
/// given back while the broker refuses its letter, counted only once the
/// broker takes it, and dead-lettered once.
#[actix_rt::test]
async fn a_rejected_event_whose_letter_is_refused_is_held_and_counted_once() {
    let w = World::new();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    let vhost = w.vhost.name.as_str();
    refuse_dead_letters(vhost);
    publish_raw(&conn, "weekly_checkin", b"{not json").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counted = r#"herald_dead_letters_total{class="weekly_checkin",reason="malformed_json"}"#;
    assert_eq!(
        metric(engine.http_addr, counted).await,
        0.0,
        "not counted while the broker refuses the letter"
    );
    assert!(drain_dlq(&conn).await.is_empty());
    accept_dead_letters(vhost);
    let letters = dlq_reaching(&conn, 1, 30).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "malformed_json");
    assert_eq!(
        metric_reaching(engine.http_addr, counted, 1.0, 10).await,
        1.0
    );
    queue_reaching(&conn, "herald.weekly_checkin", 10, |(messages, _)| {
        messages == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(drain_dlq(&conn).await.is_empty(), "one letter only");
    assert_eq!(metric(engine.http_addr, counted).await, 1.0);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_replayed_dead_letter_is_sent() {
    let w = World::new();
    w.twilio.script_for(
        "+15551230040",
        vec![
            FakeResponse::Status(503),
            FakeResponse::Status(503),
            FakeResponse::Status(503),
        ],
    );
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("evt-replay", Some("+15551230040"), None),
    )
    .await;
    let store = engine.store.clone();
    let mut dead = false;
    for _ in 0..300 {
        let v = store.message("evt-replay").await.unwrap();
        dead = v.is_some_and(|v| v.status.as_str() == "dead_lettered");
        if dead {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead, "evt-replay was never recorded dead-lettered");
    // The record can commit before the letter reaches the queue.
    queue_reaching(&conn, "herald.dlq", 10, |(messages, _)| messages == 1).await;
    assert_eq!(w.twilio.sent_count(), 0);
    // The provider works again; the operator replays the class's dead letters.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dlq", "replay", "--class", "weekly_checkin"])
        .env("HERALD_AMQP_URL", w.vhost.url())
        .env("HERALD_STORE_URL", &w.config.store.url)
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 1");
    eventually(20, || w.twilio.sent_count() == 1).await;
    let mut status = String::new();
    for _ in 0..100 {
        status = store
            .message("evt-replay")
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str()
            .to_owned();
        if status == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "sent");
    engine.stop(Duration::from_secs(5)).await;
}
