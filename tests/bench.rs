//! `herald bench` itself, small: its options for several instances and for
//! provider errors do what they say. (Its figures are for
//! docs/benchmarks.md, never asserted here.) Uses the real broker (vhost
//! `herald-bench`) and PostgreSQL, as the bench does.

use herald::bench::{run, BenchArgs, BENCH_PREFETCH};

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
        broker: "amqp://guest:guest@127.0.0.1:5672".into(),
        json: None,
        herald_exe: Some(env!("CARGO_BIN_EXE_herald").into()),
    }
}

#[tokio::test]
async fn two_instances_on_postgres_send_every_event_through_provider_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let results = run(BenchArgs {
        store: "postgres".into(),
        instances: 2,
        error_rate: 0.2,
        json: Some(json.clone()),
        ..args(400)
    })
    .await
    .unwrap();
    // `run` fails unless the fakes accepted every event.
    assert_eq!(results.herald.events, 400);
    assert_eq!(results.instances, 2);
    assert!(
        results.herald.name.contains("2 instances"),
        "{}",
        results.herald.name
    );
    let errors = results.herald.provider_errors.expect("errors counted");
    // ~20 % of at least 400 requests, each retried until accepted.
    assert!((20..=200).contains(&errors), "{errors} provider errors");
    assert!(results.herald.cpu_seconds.is_some_and(|s| s > 0.0));
    // The broker runs on this machine: its CPU is told apart from the
    // fakes' (this process) and from the idle share.
    let h = &results.herald;
    assert!(h.broker_cpu_seconds.is_some_and(|s| s > 0.0), "{h:?}");
    assert!(h.bench_cpu_seconds.is_some_and(|s| s > 0.0), "{h:?}");
    assert!(
        h.machine_idle_share
            .is_some_and(|s| (0.0..=1.0).contains(&s)),
        "{h:?}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written["instances"], 2);
    assert_eq!(written["prefetch"], BENCH_PREFETCH);
    assert_eq!(written["error_rate"], 0.2);
    assert_eq!(written["herald"]["provider_errors"], errors);
    assert!(written["herald"]["broker_cpu_seconds"].as_f64().is_some());
}

#[tokio::test]
async fn options_out_of_range_are_refused_before_anything_runs() {
    let refused = |a: BenchArgs| async move { run(a).await.unwrap_err().to_string() };
    let e = refused(BenchArgs {
        error_rate: 0.9,
        ..args(10)
    })
    .await;
    assert!(e.contains("--error-rate must be from 0 to 0.5"), "{e}");
    let e = refused(BenchArgs {
        instances: 2,
        ..args(10)
    })
    .await;
    assert!(e.contains("--store postgres"), "{e}");
    let e = refused(BenchArgs {
        instances: 0,
        ..args(10)
    })
    .await;
    assert!(e.contains("at least 1"), "{e}");
}
