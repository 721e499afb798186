//! The hot pure functions, one criterion group each: template rendering,
//! event decoding (JSON, validation and rendering together), the GCRA
//! limiter, SMS segment counting and ack coalescing.
//!
//! `cargo bench --bench hot` (add `-- --quick` for a fast look).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::amqp::acks::AckWindow;
use herald::config::{Config, SHIPPED_CONFIG};
use herald::event::{self, Envelope};
use herald::template;
use herald_actors::rate_limiter::Gcra;
use herald_actors::segments;
use herald_actors::ticket::Disposition;
use serde_json::{Map, Value};

const EVENT: &str = r#"{
  "id": "evt-7f3a",
  "user_id": "user_123",
  "to": {"phone": "+15551234567", "email": "jane@example.com",
         "timezone": "America/New_York", "name": "Jane"},
  "template": "Reminder: {bill_name} due {due_date} - ${amount}",
  "subject": "Your bill",
  "data": {"bill_name": "Electric Bill", "due_date": "2025-01-15", "amount": "125.50"}
}"#;

fn render(c: &mut Criterion) {
    let data: Map<String, Value> = serde_json::from_str(
        r#"{"bill_name": "Electric Bill", "due_date": "2025-01-15", "amount": "125.50"}"#,
    )
    .unwrap();
    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render", |b| {
        b.iter(|| {
            template::render(
                black_box("Hi {name}. Reminder: {bill_name} due {due_date} - ${amount}"),
                black_box(&data),
                &[("name", "Jane")],
            )
            .unwrap()
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let config = Config::from_toml_str(SHIPPED_CONFIG, &|_| None).unwrap();
    let env = Envelope {
        class: "payment_reminder".into(),
        attempt: 0,
        channel: None,
        fallback_from: None,
        priority: 5,
        ..Envelope::default()
    };
    let body = EVENT.as_bytes();
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| event::decode(black_box(&config), black_box(&env), black_box(body)).unwrap())
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limiter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("gcra_try_acquire", |b| {
        let mut gcra = Gcra::per_second(1_000_000.0);
        let mut now = tokio::time::Instant::now();
        b.iter(|| {
            now += Duration::from_micros(1);
            black_box(gcra.try_acquire(black_box(now)))
        })
    });
    g.finish();
}

fn sms_segments(c: &mut Criterion) {
    let gsm = "Reminder: Electric Bill due 2025-01-15 - $125.50. Reply STOP to opt out.";
    let ucs2 = "Rappel : facture d'électricité due le 15/01 — 125,50 € 🙂";
    let mut g = c.benchmark_group("segments");
    g.bench_function("gsm7", |b| b.iter(|| segments::count(black_box(gsm))));
    g.bench_function("ucs2", |b| b.iter(|| segments::count(black_box(ucs2))));
    g.finish();
}

fn acks(c: &mut Criterion) {
    let mut g = c.benchmark_group("acks");
    g.throughput(Throughput::Elements(512));
    g.bench_function("window_512_out_of_order", |b| {
        let mut frames = Vec::with_capacity(64);
        b.iter(|| {
            let mut w = AckWindow::new();
            // Settled in pairs swapped: 2, 1, 4, 3, ...
            for pair in (1..=512u64).step_by(2) {
                w.settle(pair + 1, Disposition::Ack, &mut frames);
                w.settle(pair, Disposition::Ack, &mut frames);
                w.advance(&mut frames);
            }
            frames.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, render, decode, limiter, sms_segments, acks);
criterion_main!(benches);
