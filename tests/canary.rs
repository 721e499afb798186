//! The canary: herald runs as a process at TRACE logging with credentials,
//! phone numbers and email addresses made up for this run alone, through
//! sends, fallbacks, retries, dead letters, opt-outs, bounces and the
//! admin API. None of those strings may appear in its logs, `/metrics`, the
//! API's answers or the dead-letter headers.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use herald::fakes::{callbacks, FakeResend, FakeResponse, FakeTwilio};
use lapin::options::BasicGetOptions;
use support::*;

fn hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rand::random_range(0..16u8)))
        .collect()
}

fn digits(n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rand::random_range(0..10u8)))
        .collect()
}

/// Everything that must never be seen outside the store and the providers.
struct Canaries {
    sid: String,
    token: String,
    resend_key: String,
    admin: String,
    svix: String,
    phones: Vec<String>,
    emails: Vec<String>,
    bad_phone: String,
}

impl Canaries {
    fn new() -> Canaries {
        // Distinct numbers, fixed length so masking keeps only +1555 and
        // the last four digits.
        let phones = (0..6).map(|_| format!("+1555{}", digits(7))).collect();
        let emails = (0..5)
            .map(|i| format!("canary{i}-{}@example.com", hex(10)))
            .collect();
        let svix_key: Vec<u8> = (0..24).map(|_| rand::random()).collect();
        use base64::Engine;
        Canaries {
            sid: format!("AC{}", hex(32)),
            token: hex(32),
            resend_key: format!("re_{}", hex(24)),
            admin: format!("admin-{}", hex(24)),
            svix: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(svix_key)
            ),
            phones,
            emails,
            bad_phone: format!("+0{}", digits(10)),
        }
    }

    /// Each canary as it would appear if leaked, with what it is.
    fn needles(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (self.sid.clone(), "Twilio account SID".to_owned()),
            (self.token.clone(), "Twilio auth token".to_owned()),
            (self.resend_key.clone(), "Resend API key".to_owned()),
            (self.admin.clone(), "admin token".to_owned()),
            (
                self.svix.trim_start_matches("whsec_").to_owned(),
                "Resend webhook secret".to_owned(),
            ),
            // Without its `+`, so a number printed either way is found.
            (
                self.bad_phone.trim_start_matches('+').to_owned(),
                "an invalid phone number".to_owned(),
            ),
        ];
        for p in &self.phones {
            v.push((p.trim_start_matches('+').to_owned(), format!("phone {p}")));
        }
        for e in &self.emails {
            let local = e.split('@').next().unwrap().to_owned();
            v.push((local, format!("email {e}")));
        }
        v
    }
}

/// Every log line is JSON, and every line of herald's about an event names
/// the event's id and class (in its fields or its spans').
fn check_event_lines(logs: &str) {
    let mut about_events = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if !v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("herald"))
        {
            continue;
        }
        let mut scopes = vec![&v["fields"]];
        scopes.extend(v["spans"].as_array().into_iter().flatten());
        let has = |k: &str| scopes.iter().any(|s| !s[k].is_null());
        if has("event_id") {
            about_events += 1;
            assert!(has("class"), "an event's line without its class: {line}");
        }
    }
    assert!(about_events >= 5, "{about_events} lines about events");
}

fn event_to(id: &str, phone: Option<&str>, email: Option<&str>) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_slice(&event(id, phone, email)).unwrap();
    body["user_id"] = "canary-user".into();
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn no_secret_or_address_leaks_into_logs_metrics_api_answers_or_dead_letter_headers() {
    let c = Canaries::new();
    let dir = tempfile::tempdir().unwrap();
    let vhost = Vhost::new();
    let twilio = FakeTwilio::start(&c.sid, &c.token).unwrap();
    let resend = FakeResend::start(&c.resend_key).unwrap();
    let [p_ok, p_21211, p_503, p_stop, p_api, p_ok2] = [0, 1, 2, 3, 4, 5].map(|i| &c.phones[i]);
    let [e_ok, e_fallback, e_422, e_bounce, e_stop] = [0, 1, 2, 3, 4].map(|i| &c.emails[i]);
    twilio.script_for(
        p_21211,
        vec![FakeResponse::TwilioError {
            status: 400,
            code: 21211,
        }],
    );
    twilio.script_for(p_503, vec![FakeResponse::Status(503); 3]);
    resend.script_for(
        e_422,
        vec![FakeResponse::ResendError {
            status: 422,
            name: "validation_error".into(),
        }],
    );

    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        herald::bench::rewrite_config(
            None,
            &[
                (
                    "base_delay_secs",
                    "base_delay_secs = 0.2\nmax_delay_secs = 0.5",
                ),
                ("retries = ", "retries = 2"),
                ("enabled = true", "enabled = false"),
            ],
        ),
    )
    .unwrap();
    let addr = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let public_url = format!("http://{addr}");
    let log_path = dir.path().join("herald.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let store_url = format!("sqlite://{}/herald.db", dir.path().display());
    let mut child = herald::bench::HeraldChild {
        exe: env!("CARGO_BIN_EXE_herald").as_ref(),
        config: &config,
        dir: dir.path(),
        amqp_url: &vhost.url(),
        addr: &addr,
        store_url: &store_url,
        twilio: &twilio,
        resend: &resend,
    }
    .command()
    .env("TWILIO_ACCOUNT_SID", &c.sid)
    .env("TWILIO_AUTH_TOKEN", &c.token)
    .env("RESEND_API_KEY", &c.resend_key)
    .env("RESEND_WEBHOOK_SECRET", &c.svix)
    .env("HERALD_ADMIN_TOKEN", &c.admin)
    .env("HERALD_PUBLIC_URL", &public_url)
    .env("RUST_LOG", "trace")
    .env("HERALD_LOG_FORMAT", "json")
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    herald::bench::wait_ready(&addr, &mut child).await.unwrap();
    let http = reqwest::Client::new();
    let conn = vhost.connect().await;

    // Opt-outs first: a STOP reply and a bounce.
    let stop = callbacks::twilio_inbound(
        &public_url,
        "/webhooks/twilio/inbound",
        &c.token,
        p_stop,
        "STOP",
        "SM_canary_stop",
    );
    let bounce = callbacks::resend_event(
        &c.svix,
        "msg_canary_bounce",
        chrono::Utc::now().timestamp(),
        &serde_json::json!({
            "type": "email.bounced",
            "created_at": "2026-11-24T10:00:00.000Z",
            "data": {"email_id": "re_canary", "to": [e_bounce], "subject": "x"}
        }),
    );
    for (path, signed) in [
        ("/webhooks/twilio/inbound", &stop),
        ("/webhooks/resend", &bounce),
    ] {
        let mut req = http
            .post(format!("{public_url}{path}"))
            .body(signed.body.clone());
        for (k, v) in &signed.headers {
            req = req.header(*k, v);
        }
        assert_eq!(req.send().await.unwrap().status(), 200, "{path}");
    }

    // Traffic: sent, fallback, retries into the DLQ, a bad number, a
    // refused email, an opted-out number, a bounced address.
    let sends: Vec<(&str, &str, Vec<u8>)> = vec![
        ("weekly_checkin", "c-ok", event_to("c-ok", Some(p_ok), None)),
        (
            "payment_reminder",
            "c-fallback",
            event_to("c-fallback", Some(p_21211), Some(e_fallback)),
        ),
        (
            "weekly_checkin",
            "c-503",
            event_to("c-503", Some(p_503), None),
        ),
        (
            "weekly_checkin",
            "c-bad",
            event_to("c-bad", Some(&c.bad_phone), None),
        ),
        (
            "monthly_report",
            "c-email",
            event_to("c-email", None, Some(e_ok)),
        ),
        (
            "monthly_report",
            "c-422",
            event_to("c-422", None, Some(e_422)),
        ),
        (
            "payment_reminder",
            "c-stop",
            event_to("c-stop", Some(p_stop), Some(e_stop)),
        ),
        (
            "monthly_report",
            "c-bounce",
            event_to("c-bounce", None, Some(e_bounce)),
        ),
        (
            "weekly_checkin",
            "c-ok2",
            event_to("c-ok2", Some(p_ok2), None),
        ),
    ];
    for (class, _, body) in &sends {
        publish_raw(&conn, class, body).await;
    }
    // c-ok, c-ok2 by SMS; c-fallback, c-email, c-stop by email.
    eventually(30, || twilio.sent_count() == 2 && resend.sent_count() == 3).await;

    // The admin API, asked about all of it.
    let api = |path: String| {
        let get = http
            .get(format!("{public_url}{path}"))
            .bearer_auth(&c.admin);
        async move { get.send().await.unwrap().text().await.unwrap() }
    };
    let add = http
        .post(format!("{public_url}/api/suppressions"))
        .bearer_auth(&c.admin)
        .json(&serde_json::json!({"channel": "sms", "address": p_api, "reason": "asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 200);
    let added = add.text().await.unwrap();
    // Wait for the DLQ: c-503 after its retries, c-bad, c-422.
    let mut dlq_listing = String::new();
    for _ in 0..100 {
        dlq_listing = api("/api/dlq".into()).await;
        if serde_json::from_str::<Vec<serde_json::Value>>(&dlq_listing).map_or(0, |v| v.len()) == 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answers = vec![added, dlq_listing.clone()];
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&dlq_listing)
            .unwrap()
            .len(),
        3,
        "{dlq_listing}"
    );
    for path in [
        "/api/suppressions".to_owned(),
        format!(
            "/api/suppressions/audit?address={}&channel=sms",
            p_api.replace('+', "%2B")
        ),
        format!(
            "/api/suppressions/audit?address={}&channel=sms",
            p_stop.replace('+', "%2B")
        ),
        format!("/api/suppressions/audit?address={e_bounce}&channel=email"),
        "/api/failures?limit=50".to_owned(),
        "/api/classes".to_owned(),
        "/api/users/canary-user/cost".to_owned(),
        "/api/openapi.json".to_owned(),
    ] {
        answers.push(api(path).await);
    }
    for (_, id, _) in &sends {
        answers.push(api(format!("/api/messages/{id}")).await);
    }
    let metrics = metrics_text(&addr).await;

    // Every dead letter's headers, read from the broker.
    let ch = conn.create_channel().await.unwrap();
    let mut headers = Vec::new();
    while let Some(m) = ch
        .basic_get("herald.dlq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        headers.push(format!("{:?}", m.delivery.properties.headers()));
    }
    assert_eq!(headers.len(), 3, "{headers:?}");

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().count() > 1000 && logs.contains(r#""level":"TRACE""#),
        "the run logged at TRACE ({} lines)",
        logs.lines().count()
    );
    check_event_lines(&logs);

    let places = [
        ("logs", logs.as_str()),
        ("/metrics", metrics.as_str()),
        ("API answers", &answers.join("\n")),
        ("DLQ headers", &headers.join("\n")),
    ];
    let mut leaks = Vec::new();
    for (needle, what) in c.needles() {
        for (place, text) in &places {
            if let Some(at) = text.find(&needle) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                let to = (at + needle.len() + 80).min(text.len());
                let to = (to..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap();
                leaks.push(format!("{what} in {place}: …{}…", &text[from..to]));
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}
