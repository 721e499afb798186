//! Rate limits shared through Redis (`HERALD_REDIS_URL`), end to end: herald
//! as real processes (`herald run`) against the real RabbitMQ, a private
//! `redis-server` per test (so killing it disturbs nothing else) and the
//! fake Twilio. Sends are counted where they land, at the fake provider, by
//! arrival time, over steady windows that leave start-up out.
//!
//! These tests measure rates over long windows, so they take minutes; they
//! run in parallel, each with its own vhost, Redis and fakes. Named `a_`,
//! `b_`, `c_` after the acceptance criteria, and so that the longest (A)
//! starts first: the binary then takes about as long as A alone.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use herald::limits::RedisLimits;
use herald_actors::ports::SharedLimits;
use support::*;

/// The class every test sends: SMS, no fallback.
const CLASS: &str = "weekly_checkin";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test's own, on its own port, keeping nothing
/// on disk. Killed on drop.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Redis must be installed)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .map(|o| o.stdout.starts_with(b"PONG"))
                .unwrap_or(false);
            if pong {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: gone at once, connections reset.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `herald run` child, logging to a file of its own.
struct Herald {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Herald {
    /// Starts an instance on `w`'s vhost and fakes with `config` and
    /// `redis`; `n` tells instances apart (store, log, port).
    async fn start(w: &World, config: &str, redis: &str, n: usize) -> Herald {
        let config_path = w.dir.path().join(format!("herald-{n}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = w.dir.path().join(format!("herald-{n}.log"));
        let addr = format!("127.0.0.1:{}", free_port());
        let child = herald::bench::HeraldChild {
            exe: env!("CARGO_BIN_EXE_herald").as_ref(),
            config: &config_path,
            dir: w.dir.path(),
            amqp_url: &w.vhost.url(),
            addr: &addr,
            store_url: &format!("sqlite://{}/herald-{n}.db", w.dir.path().display()),
            twilio: &w.twilio,
            resend: &w.resend,
        }
        .command()
        .env("HERALD_REDIS_URL", redis)
        .env("RUST_LOG", "warn,herald_actors::pace=info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
        let mut h = Herald { child, addr, log };
        if let Err(e) = herald::bench::wait_ready(&h.addr, &mut h.child).await {
            panic!("{e}; log:\n{}", h.log());
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "herald exited; log:\n{}",
            self.log()
        );
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(self.addr.parse().unwrap(), series).await
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped config with only [`CLASS`], its SMS limit `per_min`, the
/// Twilio account limit `provider_per_sec`, and `instances`.
fn config(per_min: u32, provider_per_sec: f64, instances: u32) -> String {
    herald::bench::rewrite_config(
        Some(&[CLASS.to_owned()]),
        &[
            (
                "rate_limit = ",
                &format!("rate_limit = {{ sms = {per_min}, email = {per_min} }}"),
            ),
            (
                "rate_per_sec = ",
                &format!("rate_per_sec = {provider_per_sec:.1}"),
            ),
            ("instances = ", &format!("instances = {instances}")),
            ("heartbeat_ms = ", "heartbeat_ms = 100"),
            // Seconds of backlog in hand even at 60/s, so a slow moment of
            // the broker never leaves the class without work.
            ("prefetch = ", "prefetch = 500"),
            // What is measured must not depend on the time of day.
            ("enabled = true", "enabled = false"),
        ],
    )
}

/// Publishes `n` events for [`CLASS`] with confirms: the backlog, before
/// any window is measured.
async fn publish_backlog(w: &World, n: usize) {
    let conn = w.vhost.connect().await;
    publish_many(&conn, CLASS, &sms_events("gl", n)).await;
    let _ = conn.close(200, "published".into()).await;
}

/// Sends that reached the fake Twilio in `[from, from + len)`, per minute.
fn rate_per_min(w: &World, from: SystemTime, len: Duration) -> f64 {
    let to = from + len;
    let n = w
        .twilio
        .requests()
        .iter()
        .filter(|r| r.received_at >= from && r.received_at < to)
        .count();
    n as f64 * 60.0 / len.as_secs_f64()
}

/// Measures the send rate over the next `len`, after `warm_up`.
async fn measure(w: &World, warm_up: Duration, len: Duration) -> f64 {
    tokio::time::sleep(warm_up).await;
    let from = SystemTime::now();
    tokio::time::sleep(len + Duration::from_millis(500)).await;
    rate_per_min(w, from, len)
}

fn within(measured: f64, limit: f64, share: f64) -> bool {
    (measured - limit).abs() <= limit * share
}

/// The Lua GCRA itself, against a real Redis: bursts up to the tolerance,
/// reserves only what conforms within the lead, and says when each slot
/// conforms and how long until the next one.
#[tokio::test]
async fn the_script_reserves_what_conforms_and_tells_the_wait() {
    let redis = Redis::start();
    let limits = RedisLimits::new(&redis.url()).unwrap();
    limits.ping().await.expect("redis answers");
    let key: Arc<str> = "herald:rl:sms:script_test".into();
    let second = Duration::from_secs(1);
    // One a second, two seconds of tolerance: three at once, then none.
    let no_lead = Duration::ZERO;
    let g = limits
        .acquire(key.clone(), second, 2 * second, 10, no_lead)
        .await;
    let g = g.unwrap();
    assert_eq!((g.granted, g.starts_in), (3, Duration::ZERO));
    assert!(
        g.ask_after > Duration::from_millis(900) && g.ask_after <= second,
        "{g:?}"
    );
    let g = limits
        .acquire(key.clone(), second, 2 * second, 10, no_lead)
        .await;
    assert_eq!(g.unwrap().granted, 0);
    // Another key is another limit.
    let provider: Arc<str> = "herald:rl:provider:sms".into();
    let other = limits
        .acquire(provider.clone(), second, Duration::ZERO, 5, no_lead)
        .await
        .unwrap();
    assert_eq!(other.granted, 1, "burst 1 grants one at a time");
    // Asked 1.5 s ahead: this second's slot and the next one, reserved.
    let lead = Duration::from_millis(1500);
    let ahead: Arc<str> = "herald:rl:sms:lead_test".into();
    let g = limits.acquire(ahead.clone(), second, Duration::ZERO, 5, lead);
    let g = g.await.unwrap();
    assert_eq!((g.granted, g.starts_in), (2, Duration::ZERO), "{g:?}");
    assert!(
        g.ask_after > Duration::from_millis(400) && g.ask_after <= Duration::from_millis(500),
        "the third slot is 2 s on, so ask 1.5 s before it: {g:?}"
    );
    let g = limits.acquire(ahead, second, Duration::ZERO, 5, lead).await;
    assert_eq!(g.unwrap().granted, 0, "nothing more within the lead");
    let ttl = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "pttl", &*key])
        .output()
        .unwrap();
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 4000, "the key expires: pttl {ttl}");
}

/// A. Three instances, one 600/min class, one Redis: together they send
/// 600/min (±3 %) over three minutes, not 1800 as three local limits would.
#[tokio::test]
async fn a_three_instances_share_a_class_limit() {
    let started = Instant::now();
    let redis = Redis::start();
    let w = World::new();
    let cfg = config(600, 100.0, 3);
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(Herald::start(&w, &cfg, &redis.url(), n).await);
    }
    // (herald declares the exchange.) 3.5 min at the limit would be 2100:
    // the class never starves.
    publish_backlog(&w, 2600).await;
    let rate = measure(&w, Duration::from_secs(10), Duration::from_secs(180)).await;
    let mut per_instance = Vec::new();
    for h in &mut instances {
        h.assert_alive();
        assert_eq!(h.metric("herald_rate_limit_shared").await, 1.0);
        assert_eq!(h.metric("herald_rate_limit_degraded_total").await, 0.0);
        per_instance.push(
            h.metric(&format!(
                "herald_deliveries_total{{channel=\"sms\",class=\"{CLASS}\",outcome=\"sent\"}}"
            ))
            .await,
        );
    }
    eprintln!(
        "A: 3 instances, limit 600/min: measured {rate:.1}/min over 180 s; sent per instance {per_instance:?}; wall {:?}",
        started.elapsed()
    );
    assert!(
        per_instance.iter().all(|n| *n > 0.0),
        "every instance sends its part: {per_instance:?}"
    );
    assert!(
        within(rate, 600.0, 0.03),
        "combined rate {rate:.1}/min, want 600 ±3 %"
    );
}

/// B. One instance at 60/s (3600/min, burst 1) through Redis: ±2 % over 60 s.
#[tokio::test]
async fn b_one_instance_keeps_60_per_second_through_redis() {
    let started = Instant::now();
    let redis = Redis::start();
    let w = World::new();
    let mut h = Herald::start(&w, &config(3600, 100.0, 1), &redis.url(), 0).await;
    publish_backlog(&w, 5000).await;
    let rate = measure(&w, Duration::from_secs(8), Duration::from_secs(60)).await;
    h.assert_alive();
    assert_eq!(h.metric("herald_rate_limit_shared").await, 1.0);
    eprintln!(
        "B: 1 instance, limit 3600/min: measured {rate:.1}/min over 60 s; wall {:?}",
        started.elapsed()
    );
    assert!(
        within(rate, 3600.0, 0.02),
        "rate {rate:.1}/min, want 3600 ±2 %"
    );
}

/// C. The provider's account limit (20/s) through Redis, with two instances
/// configured and one running. Redis killed: sends go on at the local limit
/// divided by two (10/s), no crash, no stall, one warning; Redis back on the
/// same port: the shared 20/s again.
#[tokio::test]
async fn c_redis_killed_mid_run_degrades_then_shared_limits_resume() {
    let started = Instant::now();
    let mut redis = Redis::start();
    let w = World::new();
    // The class limit (6000/min) is far above the provider's 20/s.
    let mut h = Herald::start(&w, &config(6000, 20.0, 2), &redis.url(), 0).await;
    publish_backlog(&w, 2200).await;
    let shared = measure(&w, Duration::from_secs(5), Duration::from_secs(20)).await / 60.0;

    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.metric("herald_rate_limit_shared").await != 0.0 {
        assert!(Instant::now() < deadline, "degraded mode not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let degraded = measure(&w, Duration::from_secs(3), Duration::from_secs(30)).await / 60.0;
    h.assert_alive();

    redis.restart();
    let back_at = Instant::now();
    while h.metric("herald_rate_limit_shared").await != 1.0 {
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "shared limits not resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = back_at.elapsed();
    let resumed = measure(&w, Duration::from_secs(3), Duration::from_secs(20)).await / 60.0;
    h.assert_alive();
    let outages = h.metric("herald_rate_limit_degraded_total").await;
    let log = h.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("shared rate limits unavailable"))
        .count();
    eprintln!(
        "C: provider 20/s, 2 instances configured: shared {shared:.2}/s, degraded {degraded:.2}/s, resumed {resumed:.2}/s (shared again {resumed_after:?} after the restart); wall {:?}",
        started.elapsed()
    );
    assert!(within(shared, 20.0, 0.03), "shared {shared:.2}/s, want 20");
    // At most the local limit halved (10/s, with its burst of 10 spread
    // over the 30 s window), and sends never stopped.
    assert!(
        (9.0..=10.0 * 1.04).contains(&degraded),
        "degraded {degraded:.2}/s, want at most 10/s and no stall"
    );
    assert!(
        within(resumed, 20.0, 0.03),
        "resumed {resumed:.2}/s, want 20"
    );
    assert_eq!(outages, 1.0, "one outage counted once");
    assert_eq!(warnings, 1, "one warning for the outage; log:\n{log}");
    assert!(log.contains("shared rate limits back"), "log:\n{log}");
}
