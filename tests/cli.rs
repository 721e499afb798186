//! The `herald` binary as a user runs it.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

/// The allocator's options compiled into the binary are the ones in force
/// (a wrong symbol name would leave jemalloc on its defaults, silently).
#[cfg(not(target_env = "msvc"))]
#[test]
fn the_binary_runs_on_jemalloc_with_its_own_options() {
    let out = herald()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 2",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option} not in:\n{stats}");
    }
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let out = herald()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/herald.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_config_reports_every_problem_with_its_key_path_and_exits_1() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/herald.toml"))
            .unwrap();
    let bad = shipped
        .replace(
            "rate_limit = { sms = 20, email = 10 }",
            "rate_limit = { sms = -5, email = 10 }",
        )
        .replace(
            "[classes.weekly_checkin]\npriority = 3\nchannel = \"sms\"\n",
            "[classes.weekly_checkin]\npriority = 3\n",
        )
        .replace("[amqp]\n", "[amqp]\nprefetch_count = 10\n");
    assert_ne!(bad, shipped);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bad.as_bytes()).unwrap();
    let out = herald()
        .args(["check-config", "--config"])
        .arg(file.path())
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for path in [
        "amqp.prefetch_count: unknown key",
        "classes.payment_reminder.rate_limit.sms:",
        "classes.weekly_checkin.channel:",
    ] {
        assert!(stdout.contains(path), "missing {path:?} in:\n{stdout}");
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `herald run` with no environment at all (sandbox providers, embedded
/// defaults, the local broker's default vhost), then `herald publish`.
#[test]
fn run_with_no_environment_records_published_events_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut engine = Running(
        herald()
            .arg("run")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = || {
        client
            .get("http://127.0.0.1:9464/readyz")
            .send()
            .is_ok_and(|r| r.status().is_success())
    };
    while !ready() {
        assert!(Instant::now() < deadline, "herald run did not become ready");
        assert!(engine.0.try_wait().unwrap().is_none(), "herald run exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = herald()
        .args([
            "publish",
            // Exempt from quiet hours: the test must not depend on the
            // time of day (tests/schedule.rs covers quiet hours).
            "--class",
            "critical_financial",
            "--to-phone",
            "+15551239999",
            "--user",
            "u1",
            "--data",
            "name=Jane",
            "--data",
            "message=see you",
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("evt-"), "{id}");
    let outbox = dir.path().join("data/sandbox-outbox.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            assert!(line.contains("Important: see you"), "{line}");
            assert!(
                !line.contains("+15551239999"),
                "the outbox masks recipients: {line}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "event {id} not recorded as sent; outbox: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Counted once the provider's answer is back, a moment after the outbox.
    let series =
        r#"herald_deliveries_total{channel="sms",class="critical_financial",outcome="sent"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let metrics = client
            .get("http://127.0.0.1:9464/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
        let sent = support::metric_in(&metrics, series);
        if sent >= 1.0 || Instant::now() > deadline {
            break sent;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(sent >= 1.0, "{sent}");
    // SIGTERM stops it cleanly.
    let pid = engine.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = engine.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "herald run did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The benchmark harness runs end to end and reports what it measured (no
/// figure is asserted: timing belongs to `herald bench`, not to tests).
#[test]
fn bench_runs_and_reports_both_runs_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = herald()
        .args([
            "bench",
            "--events",
            "300",
            "--latency-ms",
            "0",
            "--classes",
            "weekly_checkin,monthly_report",
            "--json",
        ])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("bare consumer") && table.contains("herald (sqlite store)"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["herald"]["events"], 300);
    assert_eq!(r["baseline"]["events"], 300);
    assert!(r["herald"]["per_second"].as_f64().unwrap() > 0.0);
    assert!(r["ratio"].as_f64().unwrap() > 0.0);
    assert!(r["herald"]["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert!(r["herald"]["latency_p99_ms"].as_f64().is_some());
}
