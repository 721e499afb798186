//! Consent end to end: signed provider webhooks (as Twilio and Svix sign
//! them) change the suppression list, and the engine — real RabbitMQ, real
//! store, fake providers — never calls a provider for a suppressed
//! recipient.

mod support;

use std::time::Duration;

use herald::engine::Engine;
use herald::fakes::callbacks::{self, Signed, TEST_SVIX_SECRET};
use herald::fakes::TWILIO_TOKEN;
use support::*;

const PUBLIC_URL: &str = "https://herald.example.com";
const ADMIN: &str = "admin-test-token";
const INBOUND: &str = "/webhooks/twilio/inbound";

struct Herald {
    engine: Engine,
    http: reqwest::Client,
}

impl Herald {
    async fn start(w: &mut World) -> Herald {
        w.config.public_url = Some(PUBLIC_URL.to_owned());
        w.config.admin_token = Some(ADMIN.to_owned());
        w.config.providers.resend.webhook_secret = Some(TEST_SVIX_SECRET.to_owned());
        w.class_mut("weekly_checkin").rate_limit.sms = 60_000;
        let engine = Engine::start(w.config.clone()).await.unwrap();
        Herald {
            engine,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.engine.http_addr)
    }

    async fn post(&self, path: &str, signed: &Signed) -> u16 {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", signed.content_type)
            .body(signed.body.clone());
        for (name, value) in &signed.headers {
            req = req.header(*name, value);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// An inbound SMS from `from`, signed as Twilio signs it.
    async fn reply(&self, from: &str, text: &str, sid: &str) -> u16 {
        let signed = callbacks::twilio_inbound(PUBLIC_URL, INBOUND, TWILIO_TOKEN, from, text, sid);
        self.post(INBOUND, &signed).await
    }

    /// The suppression list as the store holds it (the API masks
    /// addresses; the test needs them whole).
    async fn suppressed(&self) -> Vec<(String, String)> {
        let list = self.engine.store.suppressions(1000).await.unwrap();
        let masked = self.api("/api/suppressions").await;
        assert_eq!(masked.as_array().unwrap().len(), list.len());
        for s in &list {
            assert!(
                !masked.to_string().contains(&s.address),
                "the API masks addresses: {masked}"
            );
        }
        list.into_iter().map(|s| (s.channel, s.address)).collect()
    }

    /// `GET` an admin API path, as JSON.
    async fn api(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(self.engine.http_addr, series).await
    }

    /// Waits (up to `secs`) for `series` to reach `want`; returns its value
    /// then, for the caller to assert exactly.
    async fn metric_reaching(&self, series: &str, want: f64, secs: u64) -> f64 {
        metric_reaching(self.engine.http_addr, series, want, secs).await
    }
}

fn sms(id: &str, phone: &str) -> Vec<u8> {
    event(id, Some(phone), None)
}

#[actix_rt::test]
async fn stop_suppresses_at_once_start_re_enables_and_a_tampered_signature_changes_nothing() {
    let mut w = World::new();
    let h = Herald::start(&mut w).await;

    // Every opt-out word, in any case and with space around, suppresses
    // the number it came from; the list has it when the webhook answers.
    let variants = [
        "STOP",
        "stop",
        " Stop ",
        "STOPALL",
        "unsubscribe",
        "End",
        "QUIT",
        "revoke",
        "OptOut",
        "cancel",
    ];
    for (n, word) in variants.iter().enumerate() {
        let from = format!("+1555010{n:04}");
        assert_eq!(h.reply(&from, word, &format!("SMstop{n}")).await, 200);
        let list = h.suppressed().await;
        assert!(
            list.contains(&("sms".to_owned(), from.clone())),
            "{word:?}: {list:?}"
        );
    }
    // Any other reply changes nothing.
    assert_eq!(h.reply("+15550200000", "thanks!", "SMother").await, 200);
    assert_eq!(h.suppressed().await.len(), variants.len());

    // 1,000 SMS queued to a stopped number: not one provider request.
    let stopped = "+15550100000";
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|i| sms(&format!("stopped-{i}"), stopped))
        .collect();
    publish_many(&w.vhost.connect().await, "weekly_checkin", &bodies).await;
    let series =
        r#"herald_deliveries_total{channel="sms",class="weekly_checkin",outcome="suppressed"}"#;
    assert_eq!(h.metric_reaching(series, 1000.0, 60).await, 1000.0);
    assert_eq!(
        w.twilio.request_count(),
        0,
        "no request for a stopped number"
    );
    let status = record_where(&h, "stopped-7", |r| r["status"] == "suppressed").await;
    assert_eq!(status["status"], "suppressed", "{status}");
    let conn = w.vhost.connect().await;
    // A letter would reach the queue a moment after its outcome.
    assert!(
        dlq_reaching(&conn, 1, 1).await.is_empty(),
        "opt-outs are not dead letters"
    );

    // START: that number gets messages again.
    assert_eq!(h.reply(stopped, "start", "SMstart").await, 200);
    publish_many(
        &w.vhost.connect().await,
        "weekly_checkin",
        &[sms("after-start", stopped)],
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 1).await;

    // A STOP whose body was changed after signing: 403, counted, and the
    // number is still sent to.
    let tampered = callbacks::twilio_inbound(
        PUBLIC_URL,
        INBOUND,
        TWILIO_TOKEN,
        "+15550300000",
        "hello",
        "SMtampered",
    );
    let body = String::from_utf8(tampered.body.clone())
        .unwrap()
        .replace("hello", "STOP");
    assert_eq!(h.post(INBOUND, &tampered.with_body(body)).await, 403);
    let unsigned = Signed {
        headers: Vec::new(),
        ..callbacks::twilio_inbound(
            PUBLIC_URL,
            INBOUND,
            TWILIO_TOKEN,
            "+15550300000",
            "STOP",
            "SMx",
        )
    };
    assert_eq!(h.post(INBOUND, &unsigned).await, 403);
    let bad = r#"herald_webhooks_total{provider="twilio",result="bad_signature"}"#;
    assert_eq!(h.metric(bad).await, 2.0);
    publish_many(
        &w.vhost.connect().await,
        "weekly_checkin",
        &[sms("not-stopped", "+15550300000")],
    )
    .await;
    eventually(20, || w.twilio.sent_count() == 2).await;

    // The audit log tells who changed what, and why.
    let audit = h
        .api("/api/suppressions/audit?channel=sms&address=%2B15550100000")
        .await;
    let log: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["actor"].as_str().unwrap(),
                a["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        log,
        [("suppress", "twilio", "STOP"), ("allow", "twilio", "START")]
    );
    h.engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn bounces_and_21610_suppress_and_an_sms_falls_back_only_to_an_allowed_email() {
    let mut w = World::new();
    let h = Herald::start(&mut w).await;
    let now = chrono::Utc::now().timestamp();
    let bounced = serde_json::json!({
        "type": "email.bounced",
        "created_at": "2026-11-24T10:00:00.000Z",
        "data": {"email_id": "re_1", "to": ["Bounced@Example.com"], "subject": "x"}
    });
    let signed = callbacks::resend_event(TEST_SVIX_SECRET, "msg_bounce", now, &bounced);
    assert_eq!(h.post("/webhooks/resend", &signed).await, 200);
    // Svix redelivers: processed once (the operator's removal stands).
    let removal = h
        .http
        .delete(h.url("/api/suppressions"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"channel": "email", "address": "bounced@example.com", "reason": "fixed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(removal.status().as_u16(), 200);
    assert_eq!(h.post("/webhooks/resend", &signed).await, 200);
    assert!(h.suppressed().await.is_empty(), "a replay changes nothing");
    let replayed = r#"herald_webhooks_total{provider="resend",result="replayed"}"#;
    assert_eq!(h.metric(replayed).await, 1.0);
    // A complaint, then the same event tampered with, and one too old.
    let complained = serde_json::json!({
        "type": "email.complained",
        "data": {"email_id": "re_2", "to": ["jane@example.com"]}
    });
    let signed = callbacks::resend_event(TEST_SVIX_SECRET, "msg_complaint", now, &complained);
    assert_eq!(h.post("/webhooks/resend", &signed).await, 200);
    let other =
        serde_json::json!({"type": "email.complained", "data": {"to": ["kim@example.com"]}});
    let tampered = signed
        .clone()
        .with_body(serde_json::to_vec(&other).unwrap());
    assert_eq!(h.post("/webhooks/resend", &tampered).await, 403);
    let stale = callbacks::resend_event(TEST_SVIX_SECRET, "msg_old", now - 600, &other);
    assert_eq!(h.post("/webhooks/resend", &stale).await, 403);
    assert_eq!(
        h.suppressed().await,
        [("email".to_owned(), "jane@example.com".to_owned())]
    );

    // Twilio says 21610 for its magic number: suppressed, listed, and the
    // next SMS to it never reaches Twilio. No email on the event: nothing
    // to fall back to.
    let unsubscribed = "+15005550004";
    publish_many(
        &w.vhost.connect().await,
        "payment_reminder",
        &[sms("u-1", unsubscribed)],
    )
    .await;
    eventually(20, || w.twilio.request_count() == 1).await;
    let listed = ("sms".to_owned(), unsubscribed.to_owned());
    for _ in 0..100 {
        if h.suppressed().await.contains(&listed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.suppressed().await.contains(&listed));
    publish_many(
        &w.vhost.connect().await,
        "payment_reminder",
        &[sms("u-2", unsubscribed)],
    )
    .await;
    let series =
        r#"herald_deliveries_total{channel="sms",class="payment_reminder",outcome="suppressed"}"#;
    assert_eq!(h.metric_reaching(series, 2.0, 10).await, 2.0);
    assert_eq!(
        w.twilio.request_count(),
        1,
        "the second never reached Twilio"
    );

    // An SMS to a stopped number falls back to an allowed email once, and
    // not to a suppressed one.
    assert_eq!(h.reply("+15550400000", "STOP", "SMfb").await, 200);
    let both = |id: &str, email: &str| event(id, Some("+15550400000"), Some(email));
    publish_many(
        &w.vhost.connect().await,
        "payment_reminder",
        &[
            both("fb-allowed", "kim@example.com"),
            both("fb-blocked", "JANE@example.com"),
        ],
    )
    .await;
    eventually(20, || w.resend.sent_count() == 1).await;
    let email_suppressed =
        r#"herald_deliveries_total{channel="email",class="payment_reminder",outcome="suppressed"}"#;
    assert_eq!(h.metric_reaching(email_suppressed, 1.0, 10).await, 1.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.resend.sent_count(), 1);
    assert_eq!(w.resend.sent()[0].to, "Jane <kim@example.com>");
    assert_eq!(w.twilio.request_count(), 1, "no SMS to the stopped number");
    h.engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_frequency_cap_suppresses_what_is_over_it_per_user() {
    let mut w = World::new();
    w.class_mut("weekly_checkin").frequency_cap = Some(herald::config::FrequencyCapConfig {
        max: 2,
        window_secs: 3600.0,
    });
    let h = Herald::start(&mut w).await;
    let for_user = |id: &str, user: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&sms(id, "+15550500000")).unwrap();
        v["user_id"] = user.into();
        serde_json::to_vec(&v).unwrap()
    };
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| for_user(&format!("cap-a-{i}"), "user_a"))
        .chain([for_user("cap-b-0", "user_b")])
        .collect();
    publish_many(&w.vhost.connect().await, "weekly_checkin", &bodies).await;
    let series =
        r#"herald_deliveries_total{channel="sms",class="weekly_checkin",outcome="suppressed"}"#;
    assert_eq!(h.metric_reaching(series, 3.0, 10).await, 3.0);
    eventually(10, || w.twilio.sent_count() >= 3).await;
    assert_eq!(w.twilio.sent_count(), 3, "two for user_a, one for user_b");
    let capped = record_where(&h, "cap-a-4", |r| r["status"] == "suppressed").await;
    assert_eq!(
        (capped["status"].as_str(), capped["reason"].as_str()),
        (Some("suppressed"), Some("frequency_cap")),
        "{capped}"
    );
    h.engine.stop(Duration::from_secs(5)).await;
}

/// One message's record through the admin API.
async fn record_of(h: &Herald, id: &str) -> serde_json::Value {
    h.api(&format!("/api/messages/{id}")).await
}

/// One message's record once `what` holds of it, or as it is after 5 s: an
/// outcome is counted when it is decided, and its record lands with the
/// journal's next commit, a moment later.
async fn record_where(
    h: &Herald,
    id: &str,
    what: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..100 {
        let record = record_of(h, id).await;
        if what(&record) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record_of(h, id).await
}

#[actix_rt::test]
async fn shuffled_status_callbacks_end_at_the_true_status_and_undelivered_falls_back_once() {
    let mut w = World::new();
    let h = Herald::start(&mut w).await;
    let ids = ["r-1", "r-2", "r-3"];
    let bodies: Vec<Vec<u8>> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let email = format!("r{n}@example.com");
            event(id, Some(&format!("+1555060000{n}")), Some(&email))
        })
        .collect();
    publish_many(&w.vhost.connect().await, "payment_reminder", &bodies).await;
    eventually(20, || w.twilio.sent_count() == 3).await;
    // Each event's SID, once its record holds it (a receipt can only find
    // a message the store knows).
    let mut sids = Vec::new();
    for id in ids {
        let sent = w.twilio.sent();
        let sid = sent
            .iter()
            .find(|m| m.body.ends_with(&format!("ref {id}")))
            .unwrap()
            .id
            .clone();
        let record = record_where(&h, id, |r| r["provider_id"] == sid.as_str()).await;
        assert_eq!(record["provider_id"], sid.as_str(), "{record}");
        sids.push(sid);
    }
    let path = "/webhooks/twilio/status";
    let status = |n: usize, status: &str, code: Option<&str>| {
        callbacks::twilio_status(PUBLIC_URL, path, TWILIO_TOKEN, &sids[n], status, code)
    };
    // Every callback each message gets, some twice, in an order Twilio's
    // retries and parallel requests could produce.
    let mut callbacks = vec![
        (0, status(0, "queued", None)),
        (0, status(0, "sending", None)),
        (0, status(0, "sent", None)),
        (0, status(0, "sent", None)),
        (0, status(0, "delivered", None)),
        (1, status(1, "queued", None)),
        (1, status(1, "sent", None)),
        (1, status(1, "undelivered", Some("30003"))),
        (1, status(1, "undelivered", Some("30003"))),
        (2, status(2, "delivered", None)),
        (2, status(2, "sent", None)),
        (2, status(2, "queued", None)),
    ];
    // A fixed shuffle (xorshift), so a failure can be replayed.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..callbacks.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        callbacks.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    for (_, signed) in &callbacks {
        assert_eq!(h.post(path, signed).await, 200);
    }
    let unknown = callbacks::twilio_status(
        PUBLIC_URL,
        path,
        TWILIO_TOKEN,
        "SMunknown",
        "delivered",
        None,
    );
    assert_eq!(
        h.post(path, &unknown).await,
        200,
        "unknown ids are answered 200"
    );
    assert_eq!(
        h.metric(r#"herald_webhooks_total{provider="twilio",result="unknown_id"}"#)
            .await,
        1.0
    );

    for (n, want) in [(0, "delivered"), (2, "delivered")] {
        let r = record_of(&h, ids[n]).await;
        assert_eq!(
            (r["status"].as_str(), r["delivery"].as_str()),
            (Some("sent"), Some(want)),
            "{r}"
        );
    }
    // The undelivered SMS goes out as email, once, however many
    // undelivered callbacks came.
    eventually(20, || w.resend.sent_count() == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.resend.sent_count(), 1);
    assert_eq!(w.resend.sent()[0].to, "Jane <r1@example.com>");
    assert_eq!(
        h.metric(r#"herald_fallbacks_total{class="payment_reminder",from="sms",to="email"}"#)
            .await,
        1.0,
        "a receipt's fallback is counted as a fallback"
    );
    let r = record_where(&h, "r-2", |r| r["channel"] == "email").await;
    assert_eq!(
        (
            r["status"].as_str(),
            r["channel"].as_str(),
            r["fallback_from"].as_str()
        ),
        (Some("sent"), Some("email"), Some("sms")),
        "{r}"
    );
    // Resend's receipts for the fallback email, the later first.
    let email_id = w.resend.sent()[0].id.clone();
    let now = chrono::Utc::now().timestamp();
    for (n, kind) in ["email.delivered", "email.sent"].iter().enumerate() {
        let ev = serde_json::json!({"type": kind, "data": {"email_id": email_id, "to": ["r1@example.com"]}});
        let signed = callbacks::resend_event(TEST_SVIX_SECRET, &format!("msg_r{n}"), now, &ev);
        assert_eq!(h.post("/webhooks/resend", &signed).await, 200);
    }
    assert_eq!(record_of(&h, "r-2").await["delivery"], "delivered");
    // A late undelivered for the SMS changes nothing now.
    assert_eq!(h.post(path, &status(1, "failed", Some("30005"))).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.resend.sent_count(), 1);
    assert_eq!(w.twilio.sent_count(), 3);
    h.engine.stop(Duration::from_secs(5)).await;
}
