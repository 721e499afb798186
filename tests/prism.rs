//! The real clients against Stoplight Prism mocking the providers' official
//! OpenAPI specs (`../shared/contracts/`), with `--errors`: any request that
//! breaks the spec is answered 422 instead of the mock response. A success
//! here means Prism found nothing wrong with what herald sends.
//!
//! Needs `prism` on PATH (`npm install -g @stoplight/prism-cli`; CI installs
//! it). Without it these tests fail: they do not skip.
//! `HERALD_CONTRACTS_DIR` overrides where the specs are.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use herald::providers::{ResendClient, ResendParams, TwilioClient, TwilioParams};
use herald_actors::model::{Channel, FailureKind, Outbound, ProviderClient};

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "prism-auth-token";
const FROM_PHONE: &str = "+15017122661";
const API_KEY: &str = "re_prism_test";
/// How long Prism may take to load a spec (the Twilio one is 1.8 MB).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A `prism mock` child process; killed on drop.
struct Prism {
    child: Child,
    /// `http://127.0.0.1:PORT`, from Prism's startup log.
    base_url: String,
}

impl Prism {
    fn mock(spec_file: &str) -> Prism {
        let spec = contracts_dir().join(spec_file);
        assert!(
            spec.is_file(),
            "contract spec {} not found (set HERALD_CONTRACTS_DIR)",
            spec.display()
        );
        let mut child = Command::new("prism")
            .args(["mock", "-h", "127.0.0.1", "-p", "0", "--errors"])
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prism` ({e}): these contract tests need Stoplight Prism on PATH; \
                     install it with `npm install -g @stoplight/prism-cli`"
                )
            });

        // Both pipes are drained for the child's whole life (a full pipe
        // would stall Prism); lines go to a channel until the port is known.
        let (tx, rx) = mpsc::channel::<String>();
        forward_lines(child.stdout.take().expect("stdout"), tx.clone());
        forward_lines(child.stderr.take().expect("stderr"), tx);

        let mut log = Vec::new();
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        let base_url = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = listening_url(&line) {
                        break url;
                    }
                    log.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "prism did not report its port for {} (exit: {status:?}); log:\n{}",
                        spec.display(),
                        log.join("\n")
                    );
                }
            }
        };
        Prism { child, base_url }
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            // After the port is found nobody listens: keep draining anyway.
            let _ = tx.send(line);
        }
    });
}

/// `http://127.0.0.1:NNNNN` out of `… Prism is listening on http://127.0.0.1:NNNNN`.
fn listening_url(line: &str) -> Option<String> {
    let rest = line.split("Prism is listening on ").nth(1)?;
    let url: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ":/.".contains(*c))
        .collect();
    url.starts_with("http://")
        .then(|| url.trim_end_matches('/').to_owned())
}

fn contracts_dir() -> PathBuf {
    match std::env::var_os("HERALD_CONTRACTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/contracts"),
    }
}

fn twilio_client(base_url: &str, account_sid: &str) -> TwilioClient {
    TwilioClient::new(TwilioParams {
        base_url: base_url.to_owned(),
        account_sid: account_sid.to_owned(),
        auth_token: AUTH_TOKEN.to_owned(),
        from: FROM_PHONE.to_owned(),
        status_callback: Some("https://herald.example.com/webhooks/twilio/status".to_owned()),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn sms(to: &str, body: &str) -> Outbound {
    Outbound {
        channel: Channel::Sms,
        idempotency_key: Arc::from("evt-prism-sms"),
        to: to.to_owned(),
        to_name: None,
        subject: String::new(),
        body: body.to_owned(),
    }
}

fn email(key: &str, to_name: Option<&str>) -> Outbound {
    Outbound {
        channel: Channel::Email,
        idempotency_key: Arc::from(key),
        to: "delivered@resend.dev".to_owned(),
        to_name: to_name.map(str::to_owned),
        subject: "Your bill".to_owned(),
        body: "Reminder: Electric Bill due 2025-01-15 - $125.50".to_owned(),
    }
}

#[actix_rt::test]
async fn twilio_client_requests_match_the_official_spec() {
    let prism = Prism::mock("twilio_api_v2010.json");
    let client = twilio_client(&prism.base_url, ACCOUNT_SID);

    for body in [
        "Reminder: Electric Bill due 2025-01-15 - $125.50",
        "Paid 👍 — thanks!",
    ] {
        let receipt = client
            .send(sms("+15558675310", body))
            .await
            .unwrap_or_else(|e| panic!("prism refused herald's Twilio request: {e} ({e:?})"));
        assert!(receipt.provider_id.starts_with("SM"), "{receipt:?}");
    }

    // Prism does validate: a request without `To` is a 422 …
    let raw = reqwest::Client::new()
        .post(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            prism.base_url
        ))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[("From", FROM_PHONE), ("Body", "no recipient")])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 422, "{:?}", raw.text().await);

    // … and so is an account SID that breaks `^AC[0-9a-fA-F]{32}$`, which
    // herald's client reports as a final rejection.
    let err = twilio_client(&prism.base_url, "BADSID")
        .send(sms("+15558675310", "hello"))
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert_eq!(err.kind, FailureKind::Rejected);
}

#[actix_rt::test]
async fn resend_client_requests_match_the_official_spec() {
    let prism = Prism::mock("resend.yaml");
    let client = ResendClient::new(ResendParams {
        base_url: prism.base_url.clone(),
        api_key: API_KEY.to_owned(),
        from: "Acme <onboarding@resend.dev>".to_owned(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();

    for (key, name) in [("evt-prism-1", None), ("evt-prism-2", Some("Jane Doe"))] {
        let receipt = client
            .send(email(key, name))
            .await
            .unwrap_or_else(|e| panic!("prism refused herald's Resend request: {e} ({e:?})"));
        assert!(!receipt.provider_id.is_empty());
    }

    // Prism does validate: a send without `from` is a 422.
    let raw = reqwest::Client::new()
        .post(format!("{}/emails", prism.base_url))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({
            "to": ["delivered@resend.dev"],
            "subject": "no sender",
            "text": "hello",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 422, "{:?}", raw.text().await);

    // An Idempotency-Key over the spec's 256 characters is refused too.
    let long_key = "k".repeat(300);
    let err = client.send(email(&long_key, None)).await.unwrap_err();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert_eq!(err.kind, FailureKind::Rejected);
}

#[test]
fn parses_prisms_listening_line() {
    assert_eq!(
        listening_url(
            "[9:28:10 PM] › [CLI] ▶  start     Prism is listening on http://127.0.0.1:42501"
        ),
        Some("http://127.0.0.1:42501".to_owned())
    );
    assert_eq!(listening_url("[CLI] … awaiting Starting Prism…"), None);
}
