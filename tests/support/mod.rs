//! Shared by the integration tests: a RabbitMQ vhost of their own (so tests
//! run in parallel against the real broker with herald's real queue names),
//! the fake providers, a config pointing at both, and small waiting helpers.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald::config::Config;
use herald::fakes::{FakeResend, FakeTwilio};
use lapin::options::BasicGetOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub use herald::fakes::{RESEND_KEY, TWILIO_SID, TWILIO_TOKEN};

/// A vhost that exists for one test and is deleted after it.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new() -> Vhost {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "herald-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("connect to the test vhost")
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// Runs `rabbitmqctl -q` (it must succeed); returns what it printed.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (RabbitMQ must be installed)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fake providers, a vhost, and a live-mode config pointing at them, with
/// short retry delays and generous rates so tests run in seconds.
pub struct World {
    /// Holds the SQLite delivery store.
    pub dir: tempfile::TempDir,
    pub vhost: Vhost,
    pub twilio: FakeTwilio,
    pub resend: FakeResend,
    pub config: Config,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let vhost = Vhost::new();
        let twilio = FakeTwilio::start(TWILIO_SID, TWILIO_TOKEN).expect("fake twilio");
        let resend = FakeResend::start(RESEND_KEY).expect("fake resend");
        let env = |k: &str| -> Option<String> {
            Some(match k {
                "HERALD_AMQP_URL" => vhost.url(),
                "HERALD_HTTP_ADDR" => "127.0.0.1:0".into(),
                "HERALD_PROVIDER_MODE" => "live".into(),
                "TWILIO_ACCOUNT_SID" => TWILIO_SID.into(),
                "TWILIO_AUTH_TOKEN" => TWILIO_TOKEN.into(),
                "TWILIO_PHONE_NUMBER" => "+15005550006".into(),
                "TWILIO_BASE_URL" => twilio.base_url(),
                "RESEND_API_KEY" => RESEND_KEY.into(),
                "RESEND_FROM" => "Herald <herald@example.com>".into(),
                "RESEND_BASE_URL" => resend.base_url(),
                _ => return None,
            })
        };
        let mut config =
            Config::from_toml_str(herald::config::SHIPPED_CONFIG, &env).expect("test config");
        for class in config.classes.values_mut() {
            class.base_delay_secs = 0.2;
            class.max_delay_secs = 1.0;
            class.rate_limit.sms = 6000;
            class.rate_limit.email = 6000;
        }
        config.providers.resend.rate_per_sec = 1000.0;
        // Tests of quiet hours turn them on with a clock they control.
        config.quiet_hours.enabled = false;
        config.supervisor.heartbeat_ms = 100;
        config.supervisor.ping_timeout_ms = 1000;
        config.amqp.queue_poll_secs = 0.5;
        config.store.url = format!("sqlite://{}/herald.db", dir.path().display());
        config.providers.sandbox_outbox = dir.path().join("outbox.jsonl").display().to_string();
        World {
            dir,
            vhost,
            twilio,
            resend,
            config,
        }
    }
}

impl World {
    /// One class's config, to adjust before starting the engine.
    pub fn class_mut(&mut self, name: &str) -> &mut herald::config::ClassConfig {
        self.config.classes.get_mut(name).expect("a shipped class")
    }
}

/// An event body with a unique marker in its text.
pub fn event(id: &str, phone: Option<&str>, email: Option<&str>) -> Vec<u8> {
    let mut to = serde_json::Map::new();
    if let Some(p) = phone {
        to.insert("phone".into(), p.into());
    }
    if let Some(e) = email {
        to.insert("email".into(), e.into());
    }
    to.insert("name".into(), "Jane".into());
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "user_id": "user_1",
        "to": to,
        "template": "Hello {name}, ref {ref}",
        "subject": "About {ref}",
        "data": {"ref": id},
    }))
    .unwrap()
}

/// Publishes raw bytes to the `herald` exchange with a routing key.
pub async fn publish_raw(conn: &Connection, routing_key: &str, body: &[u8]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "herald".into(),
        routing_key.into(),
        Default::default(),
        body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(5),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = ch.close(200, "done".into()).await;
}

/// `n` SMS events `{prefix}-{i}`, each to its own number.
pub fn sms_events(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            event(
                &format!("{prefix}-{i}"),
                Some(&format!("+1555{:07}", 1_000_000 + i)),
                None,
            )
        })
        .collect()
}

/// Publishes every body on one confirm channel, then awaits the confirms
/// (fast enough for thousands).
pub async fn publish_many(conn: &Connection, class: &str, bodies: &[Vec<u8>]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut confirms = Vec::with_capacity(bodies.len());
    for body in bodies {
        confirms.push(
            ch.basic_publish(
                "herald".into(),
                class.into(),
                Default::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let _ = ch.close(200, "done".into()).await;
}

/// A dead letter as read back from `herald.dlq`.
#[derive(Debug, Clone)]
pub struct Letter {
    pub reason: String,
    pub class: String,
    pub detail: String,
    pub body: Vec<u8>,
    pub headers: String,
}

/// Takes every message now in `herald.dlq`.
pub async fn drain_dlq(conn: &Connection) -> Vec<Letter> {
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get("herald.dlq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let h = msg.delivery.properties.headers().as_ref();
        out.push(Letter {
            reason: herald::amqp::header_str(h, "x-herald-reason")
                .unwrap_or_default()
                .to_owned(),
            class: herald::amqp::header_str(h, "x-herald-class")
                .unwrap_or_default()
                .to_owned(),
            detail: herald::amqp::header_str(h, "x-herald-detail")
                .unwrap_or_default()
                .to_owned(),
            body: msg.delivery.data.clone(),
            headers: format!("{h:?}"),
        });
    }
    let _ = ch.close(200, "done".into()).await;
    out
}

/// Takes dead letters off `herald.dlq` until `n` have come or `secs` have
/// passed: a letter reaches the queue a moment after its outcome is counted.
pub async fn dlq_reaching(conn: &Connection, n: usize, secs: u64) -> Vec<Letter> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut letters = drain_dlq(conn).await;
    while letters.len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        letters.extend(drain_dlq(conn).await);
    }
    letters
}

/// A queue's (ready messages, consumers), read with a passive declare.
pub async fn queue_counts(conn: &Connection, queue: &str) -> (u32, u32) {
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .unwrap();
    let _ = ch.close(200, "done".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Waits until `queue`'s (ready messages, consumers) satisfy `what`, or
/// panics after `secs`.
pub async fn queue_reaching(
    conn: &Connection,
    queue: &str,
    secs: u64,
    what: impl Fn((u32, u32)) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let counts = queue_counts(conn, queue).await;
        if what(counts) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} stayed at (messages, consumers) {counts:?} for {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `what` holds, or panics after `secs`.
pub async fn eventually(secs: u64, what: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(what(), "condition not reached within {secs}s");
}

/// Fetches `/metrics`, the whole exposition.
pub async fn metrics_text(addr: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Fetches `/metrics` and returns the value of one series (0 if absent).
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    metric_in(&metrics_text(addr).await, series)
}

/// Waits (up to `secs`) for `series` to reach `want`: metrics move after
/// the provider has answered, so a test that has seen the provider's side
/// must still wait for ours. Returns the value then, for the caller to
/// assert exactly (a value past `want` fails there, not here).
pub async fn metric_reaching(
    addr: std::net::SocketAddr,
    series: &str,
    want: f64,
    secs: u64,
) -> f64 {
    metric_sum_reaching(&[addr], series, want, secs).await
}

/// [`metric_reaching`] for the sum of `series` over several instances.
pub async fn metric_sum_reaching(
    addrs: &[std::net::SocketAddr],
    series: &str,
    want: f64,
    secs: u64,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut v = 0.0;
        for addr in addrs {
            v += metric(*addr, series).await;
        }
        if v >= want || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `herald status ID` against the store at `store_url`, with no config file.
pub fn herald_status(store_url: &str, id: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["status", id])
        .env("HERALD_STORE_URL", store_url)
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap()
}

/// What [`herald_status`] printed, which must have succeeded.
pub fn status_json(store_url: &str, id: &str) -> serde_json::Value {
    let out = herald_status(store_url, id);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The admin API of one engine, with a bearer token.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(engine: &herald::engine::Engine, token: &str) -> Api {
        Api {
            base: format!("http://{}", engine.http_addr),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The answer's status and body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// The body of an answer that must be 200.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }
}
