//! `herald bench` itself, small: its options for several instances and for
//! provider errors do what they say. (Its figures are for
//! docs/benchmarks.md, never asserted here.) Uses the real broker (vhost
//! `herald-bench`) and PostgreSQL, as the bench does.

mod support;

use herald::bench::{run, BenchArgs, Results, BENCH_PREFETCH, QUEUE_VERSION_POLICY};
use support::rabbitmqctl;
use tokio::sync::Mutex;

/// Held by each test that runs the bench: runs share the vhost and its
/// queue-version policy.
static VHOST: Mutex<()> = Mutex::const_new(());

fn args(events: usize) -> BenchArgs {
    BenchArgs {
        events,
        latency_ms: 0,
        classes: None,
        store: "sqlite".into(),
        rate: None,
        ack: "multiple".into(),
        prefetch: BENCH_PREFETCH,
        error_rate: 0.0,
        instances: 1,
        no_baseline: true,
        rounds: 1,
        queue_version: 2,
        broker: "amqp://guest:guest@127.0.0.1:5672".into(),
        json: None,
        herald_exe: Some(env!("CARGO_BIN_EXE_herald").into()),
    }
}

/// Runs the bench with its JSON written; returns the results and what the
/// JSON file holds.
async fn run_written(args: BenchArgs) -> (Results, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let results = run(BenchArgs {
        json: Some(json.clone()),
        ..args
    })
    .await
    .unwrap();
    let written = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (results, written)
}

#[tokio::test]
async fn two_instances_on_postgres_send_every_event_through_provider_errors() {
    let _vhost = VHOST.lock().await;
    let (results, written) = run_written(BenchArgs {
        store: "postgres".into(),
        instances: 2,
        error_rate: 0.2,
        ..args(400)
    })
    .await;
    // `run` fails unless the fakes accepted every event.
    let h = &results.median().herald;
    assert_eq!(h.events, 400);
    assert_eq!(results.instances, 2);
    assert!(h.name.contains("2 instances"), "{}", h.name);
    let errors = h.provider_errors.expect("errors counted");
    // ~20 % of at least 400 requests, each retried until accepted.
    assert!((20..=200).contains(&errors), "{errors} provider errors");
    assert!(h.cpu_seconds.is_some_and(|s| s > 0.0));
    // The broker runs on this machine: its CPU is told apart from the
    // fakes' (this process) and from the idle share.
    assert!(h.broker_cpu_seconds.is_some_and(|s| s > 0.0), "{h:?}");
    assert!(h.bench_cpu_seconds.is_some_and(|s| s > 0.0), "{h:?}");
    // So does the PostgreSQL server: it wrote every event's claim and
    // record, on backends of its own.
    assert!(h.store_cpu_seconds.is_some_and(|s| s > 0.0), "{h:?}");
    assert!(
        h.machine_idle_share
            .is_some_and(|s| (0.0..=1.0).contains(&s)),
        "{h:?}"
    );
    assert_eq!(written["instances"], 2);
    assert_eq!(written["prefetch"], BENCH_PREFETCH);
    assert_eq!(written["error_rate"], 0.2);
    assert_eq!(written["herald"]["provider_errors"], errors);
    assert!(written["herald"]["broker_cpu_seconds"].as_f64().is_some());
    assert!(written["herald"]["store_cpu_seconds"].as_f64().is_some());
}

/// The storage version the broker reports for a plain queue of the bench
/// vhost (a priority queue adds up its priorities' figures).
fn storage_version(queue: &str) -> Option<String> {
    let expr = format!(
        "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"herald-bench\">>, queue, \
         <<\"{queue}\">>)), rabbit_amqqueue:info(Q, [backing_queue_status])."
    );
    let status: String = rabbitmqctl(&["eval", &expr])
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (_, after) = status.split_once("{version,")?;
    Some(after.chars().take_while(char::is_ascii_digit).collect())
}

#[tokio::test]
async fn every_queue_of_a_run_the_baseline_included_gets_the_queue_version_asked_for() {
    let _vhost = VHOST.lock().await;
    for version in [1u8, 2] {
        let results = run(BenchArgs {
            queue_version: version,
            no_baseline: false,
            ..args(200)
        })
        .await
        .unwrap();
        assert_eq!(results.queue_version, Some(version));
        assert_eq!(storage_version("bench.baseline"), Some(version.to_string()));
        // herald's queues run under the same policy.
        let listed = rabbitmqctl(&["list_queues", "-p", "herald-bench", "name", "policy"]);
        for queue in ["herald.weekly_checkin", "herald.career_insights"] {
            assert!(
                listed
                    .lines()
                    .any(|l| l == format!("{queue}\t{QUEUE_VERSION_POLICY}")),
                "{queue} not under {QUEUE_VERSION_POLICY}: {listed}"
            );
        }
    }
}

#[tokio::test]
async fn rounds_alternate_baseline_and_herald_and_the_median_round_is_reported() {
    let _vhost = VHOST.lock().await;
    let (results, written) = run_written(BenchArgs {
        rounds: 3,
        no_baseline: false,
        ..args(200)
    })
    .await;
    assert_eq!(results.rounds.len(), 3);
    let mut ratios = Vec::new();
    for round in &results.rounds {
        let base = round
            .baseline
            .as_ref()
            .expect("each round runs the baseline");
        assert_eq!((base.events, round.herald.events), (200, 200));
        // A SQLite store works inside herald; the baseline has none.
        assert_eq!(round.herald.store_cpu_seconds, None);
        assert_eq!(base.store_cpu_seconds, None);
        let ratio = round.ratio.expect("each round has its ratio");
        assert_eq!(ratio, round.herald.per_second / base.per_second);
        ratios.push(ratio);
    }
    // Of three, the median is the one neither above nor below both others.
    let median = ratios[results.median_round];
    let above = ratios.iter().filter(|r| **r > median).count();
    let below = ratios.iter().filter(|r| **r < median).count();
    assert!(
        above <= 1 && below <= 1,
        "{ratios:?}, median #{}",
        results.median_round
    );
    assert_eq!(results.median().ratio, Some(median));
    assert_eq!(written["rounds"].as_array().map(Vec::len), Some(3));
    // The top level holds the median round's ratio. (serde_json reads a
    // float back to within its last bit, not always to it.)
    assert_eq!(
        written["ratio"],
        written["rounds"][results.median_round]["ratio"]
    );
    let read_back = written["ratio"].as_f64().expect("a ratio");
    assert!(
        (read_back - median).abs() <= 1e-12 * median,
        "{read_back} {median}"
    );
    assert_eq!(
        written["herald"]["per_second"],
        written["rounds"][results.median_round]["herald"]["per_second"]
    );
}

#[tokio::test]
async fn options_out_of_range_are_refused_before_anything_runs() {
    let cases = [
        (
            BenchArgs {
                error_rate: 0.9,
                ..args(10)
            },
            "--error-rate must be from 0 to 0.5",
        ),
        (
            BenchArgs {
                instances: 2,
                ..args(10)
            },
            "--store postgres",
        ),
        (
            BenchArgs {
                instances: 0,
                ..args(10)
            },
            "--instances must be at least 1",
        ),
        (
            BenchArgs {
                rounds: 0,
                ..args(10)
            },
            "--rounds must be at least 1",
        ),
    ];
    for (refused, why) in cases {
        let e = run(refused).await.unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}
