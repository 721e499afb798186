//! The dashboard at `/` in a real browser: Debian's Chromium, driven by
//! `tests/browser/dashboard.mjs` (playwright-core), against a running
//! herald with events flowing and dead letters waiting. The page must show
//! live numbers that change, and its replay button must empty the DLQ.
//! Screenshots land in `target/test-output/`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use herald::engine::Engine;
use herald::fakes::FakeResponse;
use support::*;

const TOKEN: &str = "dashboard-test-token";

#[actix_rt::test]
async fn the_dashboard_shows_live_numbers_and_its_replay_button_empties_the_dlq() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci --prefix tests/browser` first (.ci/run does)"
    );
    let out_dir = root.join("target/test-output");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("dashboard.png");

    let mut w = World::new();
    w.config.admin_token = Some(TOKEN.into());
    // Three events that fail until their retries are spent, then succeed
    // when replayed.
    let doomed = ["+15550004001", "+15550004002", "+15550004003"];
    for n in doomed {
        w.twilio.script_for(n, vec![FakeResponse::Status(503); 3]);
    }
    let engine = Engine::start(w.config.clone()).await.unwrap();
    let conn = w.vhost.connect().await;
    for (i, n) in doomed.iter().enumerate() {
        publish_raw(
            &conn,
            "weekly_checkin",
            &event(&format!("doomed-{i}"), Some(n), None),
        )
        .await;
    }
    let dlq = r#"herald_queue_messages{queue="herald.dlq"}"#;
    assert_eq!(metric_reaching(engine.http_addr, dlq, 3.0, 30).await, 3.0);

    // Traffic while the browser watches: a few events a second.
    let url = w.vhost.url();
    let traffic = tokio::spawn(async move {
        let conn = lapin::Connection::connect(&url, Default::default())
            .await
            .unwrap();
        for i in 0.. {
            let class = if i % 3 == 0 {
                "monthly_report"
            } else {
                "weekly_checkin"
            };
            publish_raw(
                &conn,
                class,
                &event(
                    &format!("live-{i}"),
                    Some("+15550005000"),
                    Some("live@example.com"),
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });

    let browser = std::process::Command::new("node")
        .arg(&script)
        .args(["--url", &format!("http://{}/", engine.http_addr)])
        .args(["--token", TOKEN])
        .arg("--screenshot")
        .arg(&shot)
        .args(["--settle-secs", "8", "--timeout-secs", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`node` on PATH");
    // The script gives up by itself (--timeout-secs per step).
    let out = tokio::task::spawn_blocking(move || browser.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    traffic.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("a JSON summary"),
    )
    .unwrap();
    let sent = |k: &str| {
        summary[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {summary}"))
    };
    assert!(sent("sent_after") > sent("sent_before"), "{summary}");
    assert_eq!(summary["dlq_before"], 3, "{summary}");
    assert_eq!(summary["dlq_after"], 0, "{summary}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    // The broker agrees: the DLQ is empty and the replayed events were sent.
    assert!(drain_dlq(&conn).await.is_empty());
    eventually(20, || {
        let sent = w.twilio.sent();
        (0..3).all(|i| {
            sent.iter()
                .any(|m| m.body.contains(&format!("ref doomed-{i}")))
        })
    })
    .await;
    engine.stop(Duration::from_secs(5)).await;
}
