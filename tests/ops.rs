//! What operators see and do: the admin API's guard, pause and resume, live
//! rate limits, config reload, dead letters through the API, and herald's
//! metrics as Prometheus (the real `prometheus` and `promtool`) reads them.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald::engine::Engine;
use herald::fakes::FakeResponse;
use herald_actors::model::Channel;
use serde_json::Value;
use support::*;

const TOKEN: &str = "ops-test-admin-token";

/// A World whose engine has an admin token.
fn world() -> World {
    let mut w = World::new();
    w.config.admin_token = Some(TOKEN.into());
    w
}

fn sent_with(w: &World, prefix: &str) -> Vec<String> {
    w.twilio
        .sent()
        .into_iter()
        .map(|m| m.body)
        .filter(|b| b.contains(&format!("ref {prefix}-")))
        .collect()
}

#[actix_rt::test]
async fn every_api_route_refuses_a_missing_or_wrong_token_and_guessing_is_slowed() {
    let w = world();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let base = format!("http://{}", engine.http_addr);
    let http = reqwest::Client::new();
    let doc: Value = serde_json::from_str(herald::api::OPENAPI).unwrap();
    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "x")
                .replace("{class}", "weekly_checkin");
            routes.push((method.to_uppercase(), concrete));
        }
    }
    assert!(routes.len() >= 17, "{routes:?}");
    for (method, path) in &routes {
        let resp = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} without a token");
    }
    // Wrong tokens: 401 until the tenth, then 429 — even for the right one.
    for (i, (method, path)) in routes.iter().cycle().take(10).enumerate() {
        let resp = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} with a wrong token");
    }
    let resp = http
        .get(format!("{base}/api/classes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let failures = metric(engine.http_addr, "herald_admin_auth_failures_total").await;
    assert_eq!(failures, 10.0, "only presented tokens count as guesses");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_paused_class_takes_nothing_and_on_resume_sends_everything_once() {
    let w = world();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let conn = w.vhost.connect().await;
    let paused = r#"herald_class_paused{class="weekly_checkin"}"#;
    assert_eq!(metric(engine.http_addr, paused).await, 0.0);
    let v = api
        .ok("POST", "/api/classes/weekly_checkin/pause", None)
        .await;
    assert_eq!(v["paused"], true);
    assert_eq!(metric(engine.http_addr, paused).await, 1.0);
    publish_many(&conn, "weekly_checkin", &sms_events("paused", 20)).await;
    // Another class still flows meanwhile.
    publish_raw(
        &conn,
        "milestone_reminder",
        &event("other-1", Some("+15550001111"), None),
    )
    .await;
    eventually(10, || w.twilio.sent_count() == 1).await;
    let depth = r#"herald_queue_messages{queue="herald.weekly_checkin"}"#;
    assert_eq!(
        metric_reaching(engine.http_addr, depth, 20.0, 10).await,
        20.0,
        "the paused class's events wait in its queue"
    );
    assert!(sent_with(&w, "paused").is_empty());
    let classes = api.ok("GET", "/api/classes", None).await;
    let wc = classes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "weekly_checkin")
        .unwrap();
    assert_eq!(wc["paused"], true);

    api.ok("POST", "/api/classes/weekly_checkin/resume", None)
        .await;
    eventually(20, || sent_with(&w, "paused").len() == 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = sent_with(&w, "paused");
    assert_eq!(bodies.len(), 20, "each sent once");
    assert_eq!(bodies.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(metric(engine.http_addr, paused).await, 0.0);
    let (status, _) = api.call("POST", "/api/classes/nope/pause", None).await;
    assert_eq!(status, 404);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn pausing_returns_deliveries_waiting_for_the_rate_limit_and_loses_none() {
    let mut w = world();
    w.class_mut("weekly_checkin").rate_limit.sms = 60;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let conn = w.vhost.connect().await;
    publish_many(&conn, "weekly_checkin", &sms_events("held", 10)).await;
    eventually(10, || !sent_with(&w, "held").is_empty()).await;
    api.ok("POST", "/api/classes/weekly_checkin/pause", None)
        .await;
    // What waited for the limit went back to the queue.
    let sent_at_pause = sent_with(&w, "held").len();
    assert!(sent_at_pause < 10, "{sent_at_pause}");
    let depth = r#"herald_queue_messages{queue="herald.weekly_checkin"}"#;
    let back = metric_reaching(engine.http_addr, depth, 1.0, 10).await;
    assert!(back >= 1.0, "returned to the queue: {back}");
    api.ok(
        "PUT",
        "/api/classes/weekly_checkin/rate_limit",
        Some(serde_json::json!({"per_minute": 6000})),
    )
    .await;
    api.ok("POST", "/api/classes/weekly_checkin/resume", None)
        .await;
    eventually(20, || sent_with(&w, "held").len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = sent_with(&w, "held");
    assert_eq!(bodies.len(), 10, "none lost, none twice: {bodies:?}");
    assert_eq!(bodies.iter().collect::<HashSet<_>>().len(), 10);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_live_rate_change_shows_in_metrics_and_in_the_pace() {
    let mut w = world();
    w.class_mut("weekly_checkin").rate_limit.sms = 30; // one every 2 s
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let conn = w.vhost.connect().await;
    let limit = r#"herald_rate_limit_per_minute{channel="sms",class="weekly_checkin"}"#;
    assert_eq!(metric(engine.http_addr, limit).await, 30.0);
    publish_many(&conn, "weekly_checkin", &sms_events("pace", 30)).await;
    eventually(10, || !sent_with(&w, "pace").is_empty()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // At 30/min: the first at once, then one per 2 s.
    let slow = sent_with(&w, "pace").len();
    assert!(slow <= 4, "{slow} sent in ~3 s at 30/min");
    // 0: nothing more goes.
    api.ok(
        "PUT",
        "/api/classes/weekly_checkin/rate_limit",
        Some(serde_json::json!({"per_minute": 0})),
    )
    .await;
    let stopped = sent_with(&w, "pace").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent_with(&w, "pace").len(),
        stopped,
        "a limit of 0 sends nothing"
    );
    let v = api
        .ok(
            "PUT",
            "/api/classes/weekly_checkin/rate_limit",
            Some(serde_json::json!({"per_minute": 60000, "channel": "sms"})),
        )
        .await;
    assert_eq!(v["rate_limit_per_minute"]["sms"], 60000);
    assert_eq!(metric(engine.http_addr, limit).await, 60000.0);
    // The other 26+ no longer wait 2 s each (that would be 50 s).
    eventually(15, || sent_with(&w, "pace").len() == 30).await;
    let (status, _) = api
        .call(
            "PUT",
            "/api/classes/weekly_checkin/rate_limit",
            Some(serde_json::json!({"per_minute": 10, "channel": "email"})),
        )
        .await;
    assert_eq!(status, 404, "weekly_checkin does not send email");
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn reload_applies_a_valid_file_and_keeps_the_old_config_on_a_bad_one() {
    let mut w = world();
    // Retry delays as shipped, so the file below differs only where it says.
    let shipped_config = herald::config::Config::shipped();
    for (name, c) in w.config.classes.iter_mut() {
        c.base_delay_secs = shipped_config.classes[name].base_delay_secs;
        c.max_delay_secs = shipped_config.classes[name].max_delay_secs;
    }
    // One class's limits as shipped too: the file below leaves them alone.
    w.class_mut("milestone_reminder").rate_limit =
        shipped_config.classes["milestone_reminder"].rate_limit;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let file = w.dir.path().join("herald.toml");
    let (status, v) = api.call("POST", "/api/reload", None).await;
    assert_eq!(status, 409, "no file to reload yet: {v}");
    engine.controls.reload_from(file.clone());
    // A live change to a limit the file below leaves alone.
    engine
        .controls
        .set_rate("milestone_reminder", Some(Channel::Sms), 7)
        .unwrap();

    // As the World runs: no quiet hours (they would hold the SMS below).
    let shipped = herald::config::SHIPPED_CONFIG.replace(
        "[quiet_hours]\n# false turns quiet hours off for every class.\nenabled = true",
        "[quiet_hours]\nenabled = false",
    );
    assert!(shipped.contains("enabled = false"));
    let old = "rate_limit = { sms = 50, email = 25 }\nretries = 2";
    assert_eq!(shipped.matches(old).count(), 1, "weekly_checkin's lines");
    std::fs::write(
        &file,
        shipped.replace(old, "rate_limit = { sms = 1234, email = 25 }\nretries = 3"),
    )
    .unwrap();
    let v = api.ok("POST", "/api/reload", None).await;
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["classes.weekly_checkin"]),
        "retries shape the delay queues: {v}"
    );
    let limit = r#"herald_rate_limit_per_minute{channel="sms",class="weekly_checkin"}"#;
    assert_eq!(metric(engine.http_addr, limit).await, 1234.0);
    let untouched = r#"herald_rate_limit_per_minute{channel="sms",class="milestone_reminder"}"#;
    assert_eq!(
        metric(engine.http_addr, untouched).await,
        7.0,
        "the reload did not undo a live change the file did not touch"
    );

    std::fs::write(&file, shipped.replace("priority = 3", "priority = 99")).unwrap();
    let (status, v) = api.call("POST", "/api/reload", None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("priority"), "{v}");
    assert_eq!(
        metric(engine.http_addr, limit).await,
        1234.0,
        "the old config stays"
    );
    // Events still flow on the config in force.
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("after-reload", Some("+15550002222"), None),
    )
    .await;
    eventually(10, || w.twilio.sent_count() == 1).await;
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn dead_letters_are_listed_masked_replayed_by_id_and_purged_by_class() {
    let w = world();
    // weekly_checkin: 3 attempts, then the DLQ.
    for n in ["+15550003001", "+15550003002"] {
        w.twilio.script_for(n, vec![FakeResponse::Status(503); 3]);
    }
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let conn = w.vhost.connect().await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("dl-a", Some("+15550003001"), None),
    )
    .await;
    publish_raw(
        &conn,
        "weekly_checkin",
        &event("dl-b", Some("+15550003002"), None),
    )
    .await;
    let dlq = r#"herald_queue_messages{queue="herald.dlq"}"#;
    assert_eq!(metric_reaching(engine.http_addr, dlq, 2.0, 20).await, 2.0);
    let (status, raw) = {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/api/dlq", engine.http_addr))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(!raw.contains("5550003001"), "addresses masked: {raw}");
    let letters: Vec<Value> = serde_json::from_str(&raw).unwrap();
    assert_eq!(letters.len(), 2, "{raw}");
    assert!(letters.iter().all(|l| l["reason"] == "retries_exhausted"));

    let v = api
        .ok(
            "POST",
            "/api/dlq/replay",
            Some(serde_json::json!({"id": "dl-a"})),
        )
        .await;
    assert_eq!(v["replayed"], 1);
    eventually(10, || {
        w.twilio.sent().iter().any(|m| m.body.contains("ref dl-a"))
    })
    .await;
    let v = api
        .ok("DELETE", "/api/dlq?class=weekly_checkin", None)
        .await;
    assert_eq!(v["purged"], 1);
    let left = api.ok("GET", "/api/dlq", None).await;
    assert_eq!(left, serde_json::json!([]));
    let failures = api.ok("GET", "/api/failures?limit=5", None).await;
    let ids: Vec<&str> = failures
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["event_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["dl-b"], "dl-a was replayed and sent");
    engine.stop(Duration::from_secs(5)).await;
}

/// A letter the broker made (an event whose publisher-set `expiration` ran
/// out in its class queue, before any herald consumed it) has no
/// `x-herald-*` headers: it is listed under the class its `x-death` names,
/// and replayed and sent like herald's own letters.
#[actix_rt::test]
async fn a_letter_the_broker_dead_lettered_is_listed_by_class_and_replayed() {
    let w = world();
    let conn = w.vhost.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let classes = herald::engine::class_topology(&w.config);
    herald::amqp::topology::declare(&ch, &classes)
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_expiration("1".into());
    let body = event("expired-1", Some("+15550004001"), None);
    ch.basic_publish(
        "herald".into(),
        "weekly_checkin".into(),
        Default::default(),
        &body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // The broker dead-letters it (the class queue names herald.dlq).
    queue_reaching(&conn, "herald.dlq", 20, |(messages, _)| messages == 1).await;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let letters = api.ok("GET", "/api/dlq", None).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["class"], "weekly_checkin", "{letter}");
    assert_eq!(letter["reason"], "broker", "{letter}");
    let detail = letter["detail"].as_str().unwrap();
    assert!(
        detail.contains("herald.weekly_checkin") && detail.contains("expired"),
        "{detail}"
    );
    let v = api
        .ok(
            "POST",
            "/api/dlq/replay",
            Some(serde_json::json!({"class": "weekly_checkin"})),
        )
        .await;
    assert_eq!(v["replayed"], 1);
    eventually(10, || {
        w.twilio
            .sent()
            .iter()
            .any(|m| m.body.contains("ref expired-1"))
    })
    .await;
    assert_eq!(queue_counts(&conn, "herald.dlq").await.0, 0);
    engine.stop(Duration::from_secs(5)).await;
}

/// Series in a `/metrics` text (lines that are not comments).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// A free loopback port (Prometheus cannot report one it picked itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("`prometheus` on PATH (Debian's prometheus package; .ci/run installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, if it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to `secs`) for `query` to read `want`; returns what it read.
    async fn reaching(&self, query: &str, want: f64, secs: u64) -> Option<f64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.value(query).await;
            if v == Some(want) || tokio::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn prometheus_scrapes_what_was_sent_and_what_waits() {
    let w = world();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let api = Api::new(&engine, TOKEN);
    let prom = Prometheus::scraping(engine.http_addr);
    let conn = w.vhost.connect().await;
    publish_many(&conn, "weekly_checkin", &sms_events("prom", 25)).await;
    eventually(20, || w.twilio.sent_count() == 25).await;
    api.ok("POST", "/api/classes/milestone_reminder/pause", None)
        .await;
    publish_many(&conn, "milestone_reminder", &sms_events("wait", 7)).await;

    let sent = r#"sum(herald_deliveries_total{outcome="sent",class="weekly_checkin"})"#;
    assert_eq!(prom.reaching(sent, 25.0, 30).await, Some(25.0));
    let waiting = r#"herald_queue_messages{queue="herald.milestone_reminder"}"#;
    assert_eq!(prom.reaching(waiting, 7.0, 30).await, Some(7.0));
    assert_eq!(
        prom.reaching(
            r#"herald_class_paused{class="milestone_reminder"}"#,
            1.0,
            10
        )
        .await,
        Some(1.0)
    );
    assert_eq!(prom.value("herald_broker_connected").await, Some(1.0));
    // Today's spend, from the store: 25 one-segment SMS (the last records
    // commit a moment after they are counted).
    let weekly = |costs: &Value| -> Vec<Value> {
        costs["classes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["class"] == "weekly_checkin")
            .cloned()
            .collect()
    };
    let mut costs = api.ok("GET", "/api/costs", None).await;
    for _ in 0..100 {
        if weekly(&costs).first().is_some_and(|c| c["messages"] == 25) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        costs = api.ok("GET", "/api/costs", None).await;
    }
    let wc = weekly(&costs);
    assert_eq!(wc.len(), 1, "{costs}");
    assert_eq!(wc[0]["messages"], 25);
    assert!(
        (wc[0]["cost_usd"].as_f64().unwrap() - 25.0 * 0.0075).abs() < 1e-9,
        "{costs}"
    );
    let (status, _) = api.call("GET", "/api/costs?date=yesterday", None).await;
    assert_eq!(status, 400);
    engine.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn promtool_finds_nothing_wrong_and_series_do_not_grow_with_recipients() {
    let mut w = world();
    // 10,000 sends: no limit but the machine's.
    w.class_mut("weekly_checkin").rate_limit.sms = 10_000_000;
    w.config.providers.twilio.rate_per_sec = 0.0;
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    // 100 recipients, each a distinct phone number, user and event.
    publish_many(&conn, "weekly_checkin", &sms_events("card", 100)).await;
    eventually(20, || w.twilio.sent_count() == 100).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_100 = metrics_text(engine.http_addr).await;

    // promtool lints the exposition: names, help, units, histogram shape.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("`promtool` on PATH (Debian's prometheus package; .ci/run installs it)");
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(after_100.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    // 9,900 more distinct recipients: not one series more.
    let all = sms_events("card", 10_000);
    publish_many(&conn, "weekly_checkin", &all[100..]).await;
    eventually(180, || w.twilio.sent_count() == 10_000).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_10k = metrics_text(engine.http_addr).await;
    assert_eq!(series(&after_10k), series(&after_100));
    assert!(!after_10k.contains("555100"), "no recipient in a label");
    engine.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_bad_file_changes_nothing() {
    let w = world();
    let config = w.dir.path().join("herald.toml");
    let shipped = herald::bench::rewrite_config(None, &[("enabled = true", "enabled = false")]);
    let old = "rate_limit = { sms = 50, email = 25 }";
    assert_eq!(shipped.matches(old).count(), 1, "weekly_checkin's limits");
    std::fs::write(&config, &shipped).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let store_url = format!("sqlite://{}/herald.db", w.dir.path().display());
    let log_path = w.dir.path().join("herald.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = herald::bench::HeraldChild {
        exe: env!("CARGO_BIN_EXE_herald").as_ref(),
        config: &config,
        dir: w.dir.path(),
        amqp_url: &w.vhost.url(),
        addr: &addr,
        store_url: &store_url,
        twilio: &w.twilio,
        resend: &w.resend,
    }
    .command()
    .stderr(log)
    .spawn()
    .unwrap();
    herald::bench::wait_ready(&addr, &mut child).await.unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let limit = r#"herald_rate_limit_per_minute{channel="sms",class="weekly_checkin"}"#;
    assert_eq!(metric(addr, limit).await, 50.0);
    let hup = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };

    let limited_to =
        |sms: u32| shipped.replace(old, &format!("rate_limit = {{ sms = {sms}, email = 25 }}"));
    std::fs::write(&config, limited_to(77)).unwrap();
    hup(child.id());
    assert_eq!(metric_reaching(addr, limit, 77.0, 10).await, 77.0);

    std::fs::write(&config, shipped.replace("priority = 3", "priority = 99")).unwrap();
    hup(child.id());
    let refused = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("config reload refused")
    };
    eventually(10, refused).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(metric(addr, limit).await, 77.0, "the old config stays");

    // And the next good file is read.
    std::fs::write(&config, limited_to(88)).unwrap();
    hup(child.id());
    assert_eq!(metric_reaching(addr, limit, 88.0, 10).await, 88.0);

    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(child.wait().unwrap().success());
}
