//! The real provider clients against the fake provider servers: what goes
//! over the wire, and how every provider answer is classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use herald::fakes::{FakeResend, FakeResponse, FakeTwilio};
use herald::providers::{ResendClient, ResendParams, TwilioClient, TwilioParams};
use herald_actors::model::{Channel, FailureKind, Outbound, ProviderClient, SendError};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-token-secret";
const FROM_PHONE: &str = "+15017122661";
const CALLBACK: &str = "https://herald.example.com/webhooks/twilio/status";
const API_KEY: &str = "re_test_key_secret";
const FROM_EMAIL: &str = "Acme <noreply@acme.example>";
const PHONE: &str = "+15551234567";
const EMAIL: &str = "jane@example.com";

fn twilio_at(base_url: &str, token: &str, timeout: Duration) -> TwilioClient {
    TwilioClient::new(TwilioParams {
        base_url: base_url.to_owned(),
        account_sid: SID.to_owned(),
        auth_token: token.to_owned(),
        from: FROM_PHONE.to_owned(),
        status_callback: Some(CALLBACK.to_owned()),
        timeout,
    })
    .expect("twilio client")
}

fn twilio(fake: &FakeTwilio) -> TwilioClient {
    twilio_at(&fake.base_url(), TOKEN, Duration::from_secs(5))
}

fn resend_at(base_url: &str, key: &str, timeout: Duration) -> ResendClient {
    ResendClient::new(ResendParams {
        base_url: base_url.to_owned(),
        api_key: key.to_owned(),
        from: FROM_EMAIL.to_owned(),
        timeout,
    })
    .expect("resend client")
}

fn resend(fake: &FakeResend) -> ResendClient {
    resend_at(&fake.base_url(), API_KEY, Duration::from_secs(5))
}

fn sms(to: &str) -> Outbound {
    Outbound {
        channel: Channel::Sms,
        idempotency_key: Arc::from("evt-sms-1"),
        to: to.to_owned(),
        to_name: None,
        subject: String::new(),
        body: "Reminder: Electric Bill due 2025-01-15 - $125.50".to_owned(),
    }
}

fn email(to: &str, key: &str) -> Outbound {
    Outbound {
        channel: Channel::Email,
        idempotency_key: Arc::from(key),
        to: to.to_owned(),
        to_name: Some("Jane".to_owned()),
        subject: "Your bill".to_owned(),
        body: "Reminder: Electric Bill due 2025-01-15".to_owned(),
    }
}

/// A `SendError` must never carry the recipient or a secret.
fn assert_clean(err: &SendError, to: &str) {
    let digits: String = to.chars().filter(char::is_ascii_digit).collect();
    let digits = if digits.len() >= 7 {
        digits.as_str()
    } else {
        to
    };
    for needle in [to, digits, TOKEN, API_KEY, "jane@"] {
        assert!(
            !err.detail.contains(needle),
            "detail leaks {needle:?}: {}",
            err.detail
        );
        assert!(
            !err.to_string().contains(needle),
            "display leaks {needle:?}: {err}"
        );
    }
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A server that reads each request and closes the connection without an
/// answer for the first `drop_first` of them, then answers as Resend does
/// (200 with an id). Returns its URL and each request's `Idempotency-Key`
/// (empty when it had none), in order.
fn dropping_server(drop_first: usize) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = keys.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut key, mut length) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "idempotency-key" => key = value.trim().to_owned(),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push(key);
            if n < drop_first {
                continue; // the connection closes unanswered
            }
            let answer = r#"{"id":"4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, keys)
}

// ---------------------------------------------------------------- Twilio

#[actix_rt::test]
async fn twilio_success_posts_the_exact_form() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let receipt = twilio(&fake).send(sms(PHONE)).await.expect("accepted");

    assert!(receipt.provider_id.starts_with("SM"), "{receipt:?}");
    assert_eq!(receipt.provider_id.len(), 34);
    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, receipt.provider_id);
    assert_eq!(sent[0].to, PHONE);
    assert_eq!(sent[0].body, sms(PHONE).body);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
    assert_eq!(
        req.header("Authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(req.header("user-agent").unwrap().starts_with("herald/"));
    let herald::fakes::RecordedBody::Form(fields) = &req.body else {
        panic!("not a form: {:?}", req.body);
    };
    let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Body", "From", "StatusCallback", "To"]);
    assert_eq!(req.form_value("To"), Some(PHONE));
    assert_eq!(req.form_value("From"), Some(FROM_PHONE));
    assert_eq!(req.form_value("Body"), Some(sms(PHONE).body.as_str()));
    assert_eq!(req.form_value("StatusCallback"), Some(CALLBACK));
}

#[tokio::test]
async fn twilio_without_status_callback_omits_the_field() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let client = TwilioClient::new(TwilioParams {
        base_url: fake.base_url(),
        account_sid: SID.to_owned(),
        auth_token: TOKEN.to_owned(),
        from: FROM_PHONE.to_owned(),
        status_callback: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    client.send(sms(PHONE)).await.unwrap();
    assert_eq!(fake.requests()[0].form_value("StatusCallback"), None);
}

#[tokio::test]
async fn twilio_invalid_number_is_invalid_recipient_and_final() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let to = "+15005550001";
    let err = twilio(&fake).send(sms(to)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidRecipient);
    assert_eq!((err.status, err.code), (Some(400), Some(21211)));
    assert!(!err.is_retriable());
    assert!(err.detail.contains("21211"), "{}", err.detail);
    assert_clean(&err, to);
    assert!(fake.sent().is_empty());
}

#[actix_rt::test]
async fn twilio_unsubscribed_is_final() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let to = "+15005550004";
    let err = twilio(&fake).send(sms(to)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Unsubscribed);
    assert_eq!(err.code, Some(21610));
    assert!(!err.is_retriable());
    assert_clean(&err, to);
}

#[actix_rt::test]
async fn twilio_scripted_codes_are_classified() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.script_for(
        PHONE,
        vec![
            FakeResponse::TwilioError {
                status: 400,
                code: 21614,
            },
            FakeResponse::TwilioError {
                status: 400,
                code: 21608,
            },
            FakeResponse::TwilioError {
                status: 400,
                code: 21635,
            },
            FakeResponse::Status(403),
        ],
    );
    let client = twilio(&fake);
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let err = client.send(sms(PHONE)).await.unwrap_err();
        assert_clean(&err, PHONE);
        kinds.push(err.kind);
    }
    assert_eq!(
        kinds,
        [
            FailureKind::InvalidRecipient,
            FailureKind::Rejected,
            FailureKind::Rejected,
            FailureKind::Unauthorized
        ]
    );
    // The script is used up: back to success.
    client.send(sms(PHONE)).await.unwrap();
    assert_eq!(fake.sent().len(), 1);
}

#[actix_rt::test]
async fn twilio_500_is_a_retriable_provider_error() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.script_for(PHONE, vec![FakeResponse::Status(500)]);
    let client = twilio(&fake);
    let err = client.send(sms(PHONE)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::ProviderError);
    assert_eq!(err.status, Some(500));
    assert!(err.is_retriable());
    assert_clean(&err, PHONE);
    assert!(client.send(sms(PHONE)).await.is_ok());
}

#[tokio::test]
async fn twilio_429_is_throttled_with_retry_after() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.script_for(
        PHONE,
        vec![FakeResponse::TooManyRequests {
            retry_after_secs: 7,
        }],
    );
    let err = twilio(&fake).send(sms(PHONE)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Throttled);
    assert_eq!((err.status, err.code), (Some(429), Some(20429)));
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert!(err.is_retriable());
}

#[actix_rt::test]
async fn twilio_wrong_token_is_unauthorized() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let client = twilio_at(&fake.base_url(), "wrong-token", Duration::from_secs(5));
    let err = client.send(sms(PHONE)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Unauthorized);
    assert_eq!((err.status, err.code), (Some(401), Some(20003)));
    assert!(!err.detail.contains("wrong-token"));
}

#[actix_rt::test]
async fn twilio_slow_answer_is_a_timeout() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.set_latency(Duration::from_secs(3));
    let client = twilio_at(&fake.base_url(), TOKEN, Duration::from_millis(300));
    let started = Instant::now();
    let err = client.send(sms(PHONE)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert!(err.is_retriable());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_clean(&err, PHONE);
}

#[tokio::test]
async fn twilio_connection_refused_is_transport() {
    let client = twilio_at(&closed_port_url(), TOKEN, Duration::from_secs(2));
    let err = client.send(sms(PHONE)).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport, "{err}");
    assert!(err.is_retriable());
    assert_eq!(err.status, None);
    assert!(!err.detail.contains(SID), "{}", err.detail);
    assert_clean(&err, PHONE);
}

#[actix_rt::test]
async fn twilio_error_rate_is_seeded_and_partial() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.set_error_rate(0.5, 42);
    let client = twilio(&fake);
    let mut failures = 0;
    for _ in 0..40 {
        if let Err(e) = client.send(sms(PHONE)).await {
            assert_eq!(e.kind, FailureKind::ProviderError);
            failures += 1;
        }
    }
    assert!((5..35).contains(&failures), "{failures}");
    assert_eq!(fake.sent().len(), 40 - failures);
}

// ---------------------------------------------------------------- Resend

#[actix_rt::test]
async fn resend_success_posts_the_exact_json() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let receipt = resend(&fake)
        .send(email(EMAIL, "evt-1"))
        .await
        .expect("accepted");

    assert_eq!(receipt.provider_id.len(), 36, "{receipt:?}");
    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, receipt.provider_id);
    assert_eq!(sent[0].to, "Jane <jane@example.com>");
    assert_eq!(sent[0].subject.as_deref(), Some("Your bill"));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/emails")
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(req.header("idempotency-key"), Some("evt-1"));
    assert_eq!(
        req.json(),
        Some(&serde_json::json!({
            "from": FROM_EMAIL,
            "to": ["Jane <jane@example.com>"],
            "subject": "Your bill",
            "text": "Reminder: Electric Bill due 2025-01-15",
        }))
    );
}

#[tokio::test]
async fn resend_same_key_twice_sends_once() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let client = resend(&fake);
    let first = client.send(email(EMAIL, "evt-dup")).await.unwrap();
    let second = client.send(email(EMAIL, "evt-dup")).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(fake.sent().len(), 1);
}

#[actix_rt::test]
async fn resend_same_key_other_payload_is_rejected() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let client = resend(&fake);
    client.send(email(EMAIL, "evt-x")).await.unwrap();
    let mut changed = email(EMAIL, "evt-x");
    changed.body.push_str(" (changed)");
    let err = client.send(changed).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Rejected);
    assert_eq!(err.status, Some(409));
    assert!(
        err.detail.contains("invalid_idempotent_request"),
        "{}",
        err.detail
    );
    assert!(!err.is_retriable());
    assert_clean(&err, EMAIL);
    assert_eq!(fake.sent().len(), 1);
}

#[actix_rt::test]
async fn resend_concurrent_same_key_is_throttled() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.set_latency(Duration::from_millis(400));
    let client = resend(&fake);
    let a = client.send(email(EMAIL, "evt-c"));
    let b = async {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        client.send(email(EMAIL, "evt-c")).await
    };
    let (a, b) = futures_util::future::join(a, b).await;
    assert!(a.is_ok(), "{a:?}");
    let err = b.unwrap_err();
    assert_eq!(err.kind, FailureKind::Throttled);
    assert_eq!(err.status, Some(409));
    assert!(err.detail.contains("concurrent_idempotent_requests"));
    assert_eq!(fake.sent().len(), 1);
}

#[actix_rt::test]
async fn resend_retry_after_an_error_succeeds_with_the_same_key() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.script_for(EMAIL, vec![FakeResponse::Status(500)]);
    let client = resend(&fake);
    let err = client.send(email(EMAIL, "evt-r")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::ProviderError);
    assert_eq!(err.status, Some(500));
    assert!(err.is_retriable());
    assert_clean(&err, EMAIL);
    client.send(email(EMAIL, "evt-r")).await.unwrap();
    assert_eq!(fake.sent().len(), 1);
}

#[tokio::test]
async fn resend_429_is_throttled_with_retry_after() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.script_for(
        EMAIL,
        vec![FakeResponse::TooManyRequests {
            retry_after_secs: 4,
        }],
    );
    let err = resend(&fake).send(email(EMAIL, "evt-t")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Throttled);
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(4)));
    assert!(err.is_retriable());
}

#[actix_rt::test]
async fn resend_invalid_address_is_invalid_recipient() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let to = "jane.example.com";
    let err = resend(&fake).send(email(to, "evt-i")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidRecipient, "{err}");
    assert_eq!(err.status, Some(422));
    assert!(!err.is_retriable());
    assert_clean(&err, to);
}

#[actix_rt::test]
async fn resend_scripted_errors_are_classified() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.script_for(
        EMAIL,
        vec![
            FakeResponse::ResendError {
                status: 403,
                name: "invalid_api_key".into(),
            },
            FakeResponse::ResendError {
                status: 422,
                name: "validation_error".into(),
            },
            FakeResponse::ResendError {
                status: 503,
                name: "service_unavailable".into(),
            },
        ],
    );
    let client = resend(&fake);
    let mut kinds = Vec::new();
    for i in 0..3 {
        let err = client
            .send(email(EMAIL, &format!("evt-s{i}")))
            .await
            .unwrap_err();
        assert_clean(&err, EMAIL);
        kinds.push(err.kind);
    }
    assert_eq!(
        kinds,
        [
            FailureKind::Unauthorized,
            FailureKind::Rejected,
            FailureKind::ProviderError
        ]
    );
}

#[tokio::test]
async fn resend_wrong_key_is_unauthorized() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let client = resend_at(&fake.base_url(), "re_wrong_key", Duration::from_secs(5));
    let err = client.send(email(EMAIL, "evt-k")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Unauthorized);
    assert_eq!(err.status, Some(403));
    assert!(!err.detail.contains("re_wrong_key"));
}

#[actix_rt::test]
async fn resend_slow_answer_is_a_timeout() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.set_latency(Duration::from_secs(3));
    let client = resend_at(&fake.base_url(), API_KEY, Duration::from_millis(300));
    let err = client.send(email(EMAIL, "evt-slow")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert_clean(&err, EMAIL);
}

/// After a timeout the outcome is unknown; a retry with the same key must
/// end in one delivered email, never two.
#[actix_rt::test]
async fn resend_retry_after_a_timeout_delivers_once() {
    let fake = FakeResend::start(API_KEY).unwrap();
    fake.set_latency(Duration::from_millis(800));
    let impatient = resend_at(&fake.base_url(), API_KEY, Duration::from_millis(200));
    let err = impatient
        .send(email(EMAIL, "evt-unknown"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout);
    actix_rt::time::sleep(Duration::from_millis(1000)).await;
    fake.set_latency(Duration::ZERO);
    resend(&fake)
        .send(email(EMAIL, "evt-unknown"))
        .await
        .unwrap();
    assert_eq!(fake.sent_count(), 1);
}

#[tokio::test]
async fn resend_connection_refused_is_transport() {
    let client = resend_at(&closed_port_url(), API_KEY, Duration::from_secs(2));
    let err = client.send(email(EMAIL, "evt-down")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport, "{err}");
    assert_clean(&err, EMAIL);
}

#[tokio::test]
async fn resend_asks_again_with_the_same_key_when_the_connection_drops_mid_request() {
    let (url, keys) = dropping_server(1);
    let client = resend_at(&url, API_KEY, Duration::from_secs(5));
    let receipt = client.send(email(EMAIL, "evt-drop")).await.unwrap();
    assert_eq!(receipt.provider_id, "4ef9a417-02e9-4d39-ad75-9611e0fcc33c");
    assert_eq!(*keys.lock().unwrap(), ["evt-drop", "evt-drop"]);
}

#[tokio::test]
async fn resend_asks_again_only_once_and_twilio_never() {
    let (url, keys) = dropping_server(usize::MAX);
    let err = resend_at(&url, API_KEY, Duration::from_secs(5))
        .send(email(EMAIL, "evt-drop"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport, "{err}");
    assert_clean(&err, EMAIL);
    assert_eq!(keys.lock().unwrap().len(), 2);
    // An SMS has no idempotency key: asked again, it could go out twice.
    let (url, keys) = dropping_server(usize::MAX);
    let err = twilio_at(&url, TOKEN, Duration::from_secs(5))
        .send(sms(PHONE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport, "{err}");
    assert_eq!(keys.lock().unwrap().len(), 1);
}

/// resend-rs's own limiter allows a burst of 9, then one request per 1.1 s;
/// herald bypasses it, so 40 sends take well under a second, not ~35 s.
#[actix_rt::test]
async fn resend_is_not_slowed_by_the_crates_rate_limiter() {
    let fake = FakeResend::start(API_KEY).unwrap();
    let client = resend(&fake);
    let started = Instant::now();
    for i in 0..40 {
        client
            .send(email(EMAIL, &format!("evt-fast-{i}")))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.sent_count(), 40);
}

// ---------------------------------------------------------------- fakes

#[tokio::test]
async fn a_stopped_fake_refuses_connections() {
    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    let base = fake.base_url();
    fake.stop();
    let err = twilio_at(&base, TOKEN, Duration::from_secs(2))
        .send(sms(PHONE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport, "{err}");
}

#[test]
fn fakes_start_outside_any_runtime() {
    let twilio = FakeTwilio::start(SID, TOKEN).unwrap();
    let resend = FakeResend::start(API_KEY).unwrap();
    assert!(twilio.base_url().starts_with("http://127.0.0.1:"));
    assert_ne!(twilio.base_url(), resend.base_url());
}

/// The fakes are also benchmark targets: a burst of concurrent sends must
/// go through quickly and be counted exactly.
#[actix_rt::test]
async fn fakes_take_a_concurrent_burst() {
    use futures_util::stream::{self, StreamExt};

    let fake = FakeTwilio::start(SID, TOKEN).unwrap();
    fake.set_record_requests(false);
    let client = twilio(&fake);
    let n = 2000;
    let started = Instant::now();
    let ok = stream::iter(0..n)
        .map(|_| client.send(sms(PHONE)))
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    let elapsed = started.elapsed();
    eprintln!(
        "{n} sends in {elapsed:?} ({:.0}/s)",
        n as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(ok, n);
    assert_eq!(fake.sent_count(), n);
    assert_eq!(fake.request_count(), 0);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}
