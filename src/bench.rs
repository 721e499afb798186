//! `herald bench`: one command that measures herald against the bare-consumer
//! baseline on the same broker, in the same run.
//!
//! It starts local fake providers (with the latency asked for), then:
//! 1. **baseline** — publishes N messages to a plain queue and consumes them
//!    with a bare lapin consumer: one HTTP POST to the fake per message, then
//!    an ack (one per message, or `multiple` every 50);
//! 2. **herald** — publishes N events across the classes (confirmed, each
//!    with the AMQP priority `herald publish` gives its class), starts
//!    `herald run` as a child process on a bench config (limits set high, the
//!    store chosen), and times from its first send (its start-up is
//!    printed, not timed) until the fakes have accepted all N; it reads the
//!    child's CPU seconds and peak RSS from /proc.
//!
//! Latency is publish (the event's own timestamp) to the provider request
//! (the fake's receive time): p50, p99, max. `--rate` publishes at a steady
//! pace while herald runs instead of building a backlog first.
//! `--instances N` runs N `herald run` processes on one PostgreSQL store
//! (CPU seconds summed, peak RSS the largest); `--error-rate` has the fakes
//! answer that share of herald's requests with a 500, which herald retries
//! (the bench's classes retry up to 20 times, from 50 ms, so every event is
//! sent in the end; the baseline runs without errors).
//! Each run also says where the rest of the machine's CPU went while it was
//! timed: this process (the fakes; the publisher too with `--rate`, the
//! bare consumer too in the baseline),
//! the broker when it runs on this machine (the process listening on the
//! broker URL's port), and the share no process used.
//! Everything happens in vhost `herald-bench` (created with `rabbitmqctl` when
//! it can be), so a running herald is never disturbed. A policy there gives
//! every queue of the vhost, the baseline's and herald's alike, one classic
//! queue version (`--queue-version`, 2 unless asked: the version RabbitMQ
//! runs from 4.0 on, and what `docs/deploy.md` advises on 3.10).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;

use crate::config::SHIPPED_CONFIG;
use crate::fakes::{
    FakeResend, FakeTwilio, RESEND_KEY as KEY, TWILIO_SID as SID, TWILIO_TOKEN as TOKEN,
};

const BASELINE_QUEUE: &str = "bench.baseline";

/// The baseline's prefetch: how many deliveries it holds at once.
const BASELINE_PREFETCH: u16 = 500;

/// herald's prefetch per class in the bench (the shipped config has 64, see
/// `docs/deploy.md`). A class moves at most its prefetch over the provider's
/// response time (192 ÷ 20 ms = 9,600 a second), and a fuller window makes
/// larger batches (commits, multiple-acks): against 128, herald drained the
/// bench's backlog 4–8 % faster at the same peak RSS (`docs/benchmarks.md`,
/// a twelfth session).
pub const BENCH_PREFETCH: u16 = 192;

/// Provider calls in flight per provider in the bench (the shipped config
/// has Twilio's 16 and Resend's 8). Each open connection costs herald
/// ~40 KB of buffers; 256 a provider keeps up with 512 deliveries in flight.
const BENCH_MAX_CONCURRENCY: u32 = 256;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events to send.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Fake provider latency, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Classes to spread events over (comma-separated; default: all shipped).
    #[arg(long)]
    pub classes: Option<String>,
    /// Delivery store: `sqlite` or `postgres` (a fresh database on the local server).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// Publish at this many events per second while herald runs (default:
    /// publish everything first, then start herald on the backlog).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Ack mode of the baseline: `each` or `multiple` (every 50).
    #[arg(long, default_value = "multiple")]
    pub ack: String,
    /// herald's prefetch per class queue (`amqp.prefetch`): the deliveries
    /// each class may hold at once, which bounds herald's memory.
    #[arg(long, default_value_t = BENCH_PREFETCH)]
    pub prefetch: u16,
    /// Share of herald's provider requests (0 to 0.5) the fakes answer
    /// with a 500, retried by herald.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// herald processes to run at once, sharing the broker and the store
    /// (more than one needs `--store postgres`).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Skip the baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Rounds to run, each the baseline then herald, alternated; the
    /// figures reported are the median round's (by herald's ratio to the
    /// baseline; without one by herald's throughput; with `--rate` by its
    /// p99), every round's listed beside them.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Classic queue version (1 or 2) of every queue in the bench vhost,
    /// the baseline's and herald's, set by policy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub queue_version: u8,
    /// Broker root URL (the bench uses vhost `herald-bench` on it).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    pub broker: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The herald binary to run (this one unless a test says otherwise).
    #[arg(skip)]
    pub herald_exe: Option<PathBuf>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub name: String,
    pub events: usize,
    /// The timed part: for herald, from its first send (on a backlog) or
    /// from every instance ready (`--rate`) to its N-th send.
    pub seconds: f64,
    /// Events a second over the timed part (those sent before it began,
    /// while herald's first batch went out, are not counted).
    pub per_second: f64,
    /// herald's: milliseconds from starting it to the timed part (its
    /// start-up: configuration, store, broker, topology, consumers).
    pub started_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// The engine's CPU seconds: herald's processes over their lives; for
    /// the baseline, this process's threads other than the fakes' over the
    /// timed part (the bare consumer and its lapin thread).
    pub cpu_seconds: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// Requests the fakes answered with a 500 (`--error-rate`).
    pub provider_errors: Option<usize>,
    /// Where the rest of the machine's CPU went in the timed part: this
    /// process (the fakes; with `--rate` the publisher too; in the
    /// baseline the bare consumer too) ...
    pub bench_cpu_seconds: Option<f64>,
    /// ... of which the fakes' threads, the providers' share ...
    pub fakes_cpu_seconds: Option<f64>,
    /// ... the broker, when it runs on this machine ...
    pub broker_cpu_seconds: Option<f64>,
    /// ... the PostgreSQL server with its backends, for herald on
    /// `--store postgres` when the server runs on this machine (a SQLite
    /// store works inside herald's processes, in `cpu_seconds`) ...
    pub store_cpu_seconds: Option<f64>,
    /// ... and what no process used (0 to 1 of all cores).
    pub machine_idle_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub events: usize,
    pub provider_latency_ms: u64,
    pub store: String,
    pub ack_mode: String,
    pub error_rate: f64,
    pub instances: usize,
    /// herald's prefetch per class queue in this run.
    pub prefetch: u16,
    /// Provider calls herald may have in flight, per provider.
    pub provider_max_concurrency: u32,
    /// The classic queue version the bench's policy gave every queue of the
    /// run (`None`: `rabbitmqctl` was not at hand, the broker's own).
    pub queue_version: Option<u8>,
    /// Which of `rounds` is the median (from 0).
    pub median_round: usize,
    /// Every round, in the order they ran.
    pub rounds: Vec<Round>,
}

impl Results {
    /// The median round (the only one, with one round).
    pub fn median(&self) -> &Round {
        &self.rounds[self.median_round]
    }
}

/// The JSON the bench writes: the results with the median round's runs and
/// ratio at the top level (`baseline`, `herald`, `ratio`, as a run of one
/// round has always written them).
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    results: &'a Results,
    #[serde(flatten)]
    median: &'a Round,
}

/// The baseline, then herald, on the same broker and fakes.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub baseline: Option<Run>,
    pub herald: Run,
    /// herald's throughput over the baseline's.
    pub ratio: Option<f64>,
}

impl Round {
    /// The baseline's run, if it ran, then herald's.
    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.baseline.iter().chain(std::iter::once(&self.herald))
    }
}

/// What ranks a run's rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RankedBy {
    /// herald's ratio to the baseline.
    Ratio,
    /// Without a baseline, herald's throughput.
    Throughput,
    /// At a steady rate, where the throughput is the rate, herald's p99
    /// latency (lower is better).
    P99,
}

impl RankedBy {
    fn of(steady: bool, baseline: bool) -> RankedBy {
        match (steady, baseline) {
            (true, _) => RankedBy::P99,
            (false, true) => RankedBy::Ratio,
            (false, false) => RankedBy::Throughput,
        }
    }

    /// How good `round` was: higher is better.
    fn goodness(self, round: &Round) -> f64 {
        match self {
            RankedBy::Ratio => round.ratio.unwrap_or(f64::NEG_INFINITY),
            RankedBy::Throughput => round.herald.per_second,
            RankedBy::P99 => -round.herald.latency_p99_ms.unwrap_or(f64::INFINITY),
        }
    }

    /// What ranks, as printed.
    fn label(self) -> &'static str {
        match self {
            RankedBy::Ratio => "herald / baseline",
            RankedBy::Throughput => "herald msg/s",
            RankedBy::P99 => "herald's p99 ms",
        }
    }

    /// The figure that ranked `round`, as printed.
    fn figure(self, round: &Round) -> String {
        match self {
            RankedBy::Ratio => fmt_opt(round.ratio, 2),
            RankedBy::Throughput => format!("{:.0}", round.herald.per_second),
            RankedBy::P99 => fmt_opt(round.herald.latency_p99_ms, 1),
        }
    }
}

/// The index of the median round by `by`; of an even number, the worse of
/// the two middle ones (the figure reported is never the better of a
/// pair).
fn median_of(rounds: &[Round], by: RankedBy) -> usize {
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| by.goodness(&rounds[a]).total_cmp(&by.goodness(&rounds[b])));
    order[(rounds.len() - 1) / 2]
}

/// Microseconds since the epoch: an event's publish time, and its
/// latency's resolution (milliseconds would make a 10 ms p99 anything
/// from 9 to 11).
fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

/// The bench vhost's policy, which sets every queue's classic queue version.
pub const QUEUE_VERSION_POLICY: &str = "herald-bench-queue-version";

/// Creates the bench vhost and sets its queues' version if `rabbitmqctl` is
/// at hand (a remote broker needs both done beforehand); returns the
/// version set.
fn ensure_vhost(queue_version: u8) -> Option<u8> {
    let run = |args: &[&str]| Command::new("rabbitmqctl").arg("-q").args(args).output();
    let _ = run(&["add_vhost", "herald-bench"]);
    let _ = run(&[
        "set_permissions",
        "-p",
        "herald-bench",
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let definition = format!(r#"{{"queue-version":{queue_version}}}"#);
    let set = run(&[
        "set_policy",
        "-p",
        "herald-bench",
        "--apply-to",
        "queues",
        QUEUE_VERSION_POLICY,
        ".*",
        &definition,
    ]);
    set.is_ok_and(|out| out.status.success())
        .then_some(queue_version)
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {}", crate::store::redact(url)))
}

/// A ~400-byte event whose text carries its publish time.
fn event_body(i: usize, class_is_sms: bool) -> Vec<u8> {
    let t = now_us();
    let mut to = serde_json::Map::new();
    if class_is_sms {
        to.insert("phone".into(), format!("+1555{:07}", i % 10_000_000).into());
    }
    to.insert("email".into(), format!("user{i}@example.com").into());
    to.insert("name".into(), "Bench".into());
    serde_json::to_vec(&serde_json::json!({
        "id": format!("bench-{t}-{i}"),
        "user_id": format!("user_{}", i % 1000),
        "to": to,
        "template": "Bench message {i} published at {t}; padding to make the event about four hundred bytes long like real ones are.",
        "subject": "Bench {i}",
        "data": {"i": i.to_string(), "t": t.to_string(), "pad": "x".repeat(60)},
    }))
    .expect("json")
}

/// A class the bench publishes to, and how a client publishes its events.
#[derive(Clone)]
struct Target {
    class: String,
    sms: bool,
    /// The AMQP priority `herald publish` gives the class's events.
    priority: u8,
}

/// The bench's classes as a client publishes to them: each event with the
/// AMQP priority `herald publish` gives its class.
fn targets(shipped: &crate::config::Config, classes: &[String]) -> anyhow::Result<Vec<Target>> {
    classes
        .iter()
        .map(|c| {
            let cfg = shipped
                .classes
                .get(c)
                .with_context(|| format!("no class {c}"))?;
            Ok(Target {
                class: c.clone(),
                sms: cfg.channel() == herald_actors::model::Channel::Sms,
                priority: crate::amqp::topology::amqp_priority(cfg.priority),
            })
        })
        .collect()
}

/// Publishes with confirms, `rate` per second if given, all confirms awaited.
async fn publish(
    conn: &Connection,
    targets: &[Target],
    n: usize,
    rate: Option<u64>,
    to_queue: Option<&str>,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(1024);
    for i in 0..n {
        let target = &targets[i % targets.len()];
        let body = event_body(i, target.sms);
        let (exchange, key) = match to_queue {
            Some(q) => ("", q),
            None => ("herald", target.class.as_str()),
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(target.priority);
        pending.push(
            ch.basic_publish(
                exchange.into(),
                key.into(),
                Default::default(),
                &body,
                props,
            )
            .await?,
        );
        if pending.len() >= 1000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / r as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    let _ = ch.close(200, "published".into()).await;
    Ok(())
}

/// The bare consumer: POST per message, ack each or every 50.
async fn baseline(
    args: &BenchArgs,
    vhost_url: &str,
    twilio: &FakeTwilio,
    broker: Option<u32>,
) -> anyhow::Result<Run> {
    let conn = connect(vhost_url).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        BASELINE_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_purge(BASELINE_QUEUE.into(), QueuePurgeOptions::default())
        .await?;
    publish(
        &conn,
        &[Target {
            class: String::new(),
            sms: true,
            // A plain queue ignores it.
            priority: 0,
        }],
        args.events,
        None,
        Some(BASELINE_QUEUE),
    )
    .await?;
    let before = twilio.sent_count();
    ch.basic_qos(BASELINE_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            BASELINE_QUEUE.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/2010-04-01/Accounts/{SID}/Messages.json",
        twilio.base_url()
    );
    let multiple = args.ack == "multiple";
    let marks = CpuMarks::take(Watched {
        broker,
        store: None,
    });
    let start = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut taken = 0usize;
    let mut acked = 0usize;
    let mut highest_done = Vec::new();
    while acked < args.events {
        tokio::select! {
            Some(d) = consumer.next(), if taken < args.events => {
                let d = d?;
                taken += 1;
                let http = http.clone();
                let url = url.clone();
                let tx = done_tx.clone();
                let tag = d.delivery_tag;
                tokio::spawn(async move {
                    let _ = http
                        .post(&url)
                        .basic_auth(SID, Some(TOKEN))
                        .form(&[("To", "+15550000000"), ("From", "+15005550006"), ("Body", "bench")])
                        .send()
                        .await;
                    let _ = tx.send(tag);
                });
            }
            Some(tag) = done_rx.recv() => {
                highest_done.push(tag);
                if !multiple {
                    ch.basic_ack(tag, BasicAckOptions::default()).await?;
                    acked += 1;
                } else if highest_done.len() >= 50 || taken == args.events {
                    // Ack the contiguous prefix with one multiple-ack.
                    highest_done.sort_unstable();
                    let mut upto = acked as u64;
                    let mut used = 0;
                    for t in &highest_done {
                        if *t == upto + 1 {
                            upto = *t;
                            used += 1;
                        } else {
                            break;
                        }
                    }
                    if used > 0 {
                        ch.basic_ack(upto, BasicAckOptions { multiple: true }).await?;
                        highest_done.drain(..used);
                        acked = upto as usize;
                    }
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let shares = marks.since();
    let _ = conn.close(200, "bench done".into()).await;
    if twilio.sent_count() - before < args.events {
        bail!("baseline: the fake accepted fewer requests than messages");
    }
    Ok(Run {
        name: format!("bare consumer (ack {})", args.ack),
        events: args.events,
        seconds,
        per_second: args.events as f64 / seconds,
        started_ms: None,
        latency_p50_ms: None,
        latency_p99_ms: None,
        latency_max_ms: None,
        cpu_seconds: shares
            .bench
            .zip(shares.fakes)
            .map(|(all, fakes)| all - fakes),
        peak_rss_mb: None,
        provider_errors: None,
        bench_cpu_seconds: shares.bench,
        fakes_cpu_seconds: shares.fakes,
        broker_cpu_seconds: shares.broker,
        store_cpu_seconds: shares.store,
        machine_idle_share: shares.idle,
    })
}

/// The shipped config with some keys rewritten: each line whose key starts
/// with an override's prefix is replaced by the override's text; with
/// `classes`, only those classes are kept. For benchmarks and tests that need
/// the real config with other numbers.
pub fn rewrite_config(classes: Option<&[String]>, overrides: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in SHIPPED_CONFIG.lines() {
        let t = line.trim_start();
        if let Some(name) = t
            .strip_prefix("[classes.")
            .and_then(|r| r.strip_suffix(']'))
        {
            skip = classes.is_some_and(|keep| !keep.iter().any(|c| c == name));
        } else if t.starts_with('[') {
            skip = false;
        }
        if skip {
            continue;
        }
        match overrides.iter().find(|(prefix, _)| t.starts_with(prefix)) {
            Some((_, text)) => out.push_str(text),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn bench_config(classes: &[String], args: &BenchArgs) -> String {
    let mut overrides = vec![
        (
            "rate_limit = ",
            "rate_limit = { sms = 10000000, email = 10000000 }".to_owned(),
        ),
        (
            "max_concurrency = ",
            format!("max_concurrency = {BENCH_MAX_CONCURRENCY}"),
        ),
        ("prefetch = ", format!("prefetch = {}", args.prefetch)),
        ("rate_per_sec = ", "rate_per_sec = 1000000.0".to_owned()),
        // The time of day must not decide what a benchmark measures.
        ("enabled = true", "enabled = false".to_owned()),
        ("instances = ", format!("instances = {}", args.instances)),
    ];
    if args.error_rate > 0.0 {
        // Every event is sent in the end, and soon: 21 errors in a row at
        // a rate of 0.5 come once in two million events.
        overrides.push(("retries = ", "retries = 20".to_owned()));
        overrides.push((
            "base_delay_secs = ",
            "base_delay_secs = 0.05\nmax_delay_secs = 1.0".to_owned(),
        ));
    }
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rewrite_config(Some(classes), &overrides)
}

/// CPU seconds (user + system) and peak RSS (MB) of a process, from /proc.
fn proc_usage(pid: u32) -> (Option<f64>, Option<f64>) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu(&s));
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        });
    (cpu, rss)
}

/// A `/proc/.../stat` line's command name (between the parentheses, which
/// it may itself contain) and the fields after it.
fn stat_parts(stat: &str) -> Option<(&str, &str)> {
    let (head, rest) = stat.rsplit_once(')')?;
    Some((head.split_once('(')?.1, rest))
}

/// The CPU seconds (user and system) of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<f64> {
    stat_seconds(stat, 11..=12)
}

/// The sum of a `/proc/.../stat` line's clock-tick fields `fields`
/// (counted after the command name: state 0, ppid 1, ..., utime 11, stime
/// 12, cutime 13, cstime 14), in seconds.
fn stat_seconds(stat: &str, fields: std::ops::RangeInclusive<usize>) -> Option<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let (_, rest) = stat_parts(stat)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let sum = fields
        .map(|i| f.get(i)?.parse::<f64>().ok())
        .sum::<Option<f64>>()?;
    Some(sum / ticks)
}

/// Whether a thread of this process serves the fakes: each fake's own
/// thread (`fake-twilio`, `fake-resend`) and the actix threads it starts.
/// The bench itself runs on its main thread and lapin's.
fn is_fake_thread(name: &str) -> bool {
    name.starts_with("fake-") || name.starts_with("actix-")
}

/// This process's fake-serving threads: name and CPU seconds so far.
fn fake_threads() -> Option<Vec<(String, f64)>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let name = stat_parts(&stat).map_or("", |(name, _)| name);
        if is_fake_thread(name) {
            found.push((name.to_owned(), stat_cpu(&stat)?));
        }
    }
    Some(found)
}

/// The CPU seconds of this process's fake-serving threads so far.
fn fakes_cpu() -> Option<f64> {
    Some(fake_threads()?.iter().map(|(_, cpu)| cpu).sum())
}

/// The machine's idle and total CPU time so far (clock ticks, all cores),
/// from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait ...: idle and iowait are no one's.
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((idle, ticks.iter().sum()))
}

/// The CPU seconds of a server that forks a process per connection
/// (PostgreSQL's postmaster): its own, its children's, and those of its
/// children that have ended (`cutime`, `cstime`).
fn server_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut sum = stat_seconds(&stat, 11..=14)?;
    let parent = pid.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // not a process, or it ended meanwhile
        };
        let ppid = stat_parts(&stat).and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(parent.as_str()) {
            sum += stat_cpu(&stat).unwrap_or(0.0);
        }
    }
    Some(sum)
}

/// The processes outside this one whose CPU a run counts, when they run on
/// this machine.
#[derive(Clone, Copy, Default)]
struct Watched {
    /// The broker ([`local_listener`]).
    broker: Option<u32>,
    /// The PostgreSQL server's postmaster, for herald on `--store postgres`.
    store: Option<u32>,
}

/// CPU counters at the start of a timed part.
struct CpuMarks {
    watched: Watched,
    bench: Option<f64>,
    fakes: Option<f64>,
    broker: Option<f64>,
    store: Option<f64>,
    machine: Option<(u64, u64)>,
}

/// What [`CpuMarks`] counted up to the end of the timed part.
struct CpuShares {
    bench: Option<f64>,
    fakes: Option<f64>,
    broker: Option<f64>,
    store: Option<f64>,
    idle: Option<f64>,
}

impl CpuMarks {
    fn take(watched: Watched) -> CpuMarks {
        CpuMarks {
            watched,
            bench: proc_usage(std::process::id()).0,
            fakes: fakes_cpu(),
            broker: watched.broker.and_then(|pid| proc_usage(pid).0),
            store: watched.store.and_then(server_cpu),
            machine: machine_ticks(),
        }
    }

    fn since(&self) -> CpuShares {
        let now = CpuMarks::take(self.watched);
        let spent = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let idle = match (self.machine, now.machine) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                Some(i1.saturating_sub(i0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        CpuShares {
            bench: spent(self.bench, now.bench),
            fakes: spent(self.fakes, now.fakes),
            broker: spent(self.broker, now.broker),
            store: spent(self.store, now.store),
            idle,
        }
    }
}

/// The broker's process, when it runs on this machine.
fn broker_pid(broker: &str) -> Option<u32> {
    local_listener(broker, 5672)
}

/// The process of a server on this machine: the one holding the listening
/// socket of the URL's port (`default_port` if it names none; Linux; `None`
/// if it cannot be told, say without the right to read other processes'
/// descriptors).
fn local_listener(server: &str, default_port: u16) -> Option<u32> {
    let url = url::Url::parse(server).ok()?;
    // `amqp` and `postgres` are not schemes the URL standard knows, so an
    // IPv4 host is kept as written (a bracketed IPv6 one is still parsed).
    let local = match url.host()? {
        url::Host::Domain(d) => {
            d == "localhost"
                || d.parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    if !local {
        return None;
    }
    let port = url.port().unwrap_or(default_port);
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
                .then_some(pid)
        })
}

/// The inodes of the sockets listening on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The local PostgreSQL server that `--store postgres` makes its databases
/// on (`psql -h 127.0.0.1 -U postgres`).
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

async fn herald_run(
    args: &BenchArgs,
    vhost_url: &str,
    twilio: &FakeTwilio,
    resend: &FakeResend,
    watched: Watched,
) -> anyhow::Result<Run> {
    let mut scratch = Scratch {
        dir: tempfile_dir()?,
        database: None,
    };
    let dir = scratch.dir.clone();
    let shipped = crate::config::Config::from_toml_str(SHIPPED_CONFIG, &|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let classes: Vec<String> = match &args.classes {
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => shipped.classes.keys().cloned().collect(),
    };
    let targets = targets(&shipped, &classes)?;
    let config_path = dir.join("bench.toml");
    let config_text = bench_config(&classes, args);
    std::fs::write(&config_path, &config_text)?;
    let config = crate::config::Config::from_toml_str(&config_text, &|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store_url = match args.store.as_str() {
        "sqlite" => format!("sqlite://{}/bench.db", dir.display()),
        "postgres" => {
            let db = format!("herald_bench_{}", rand::random::<u32>());
            if !psql(&format!("CREATE DATABASE {db}")) {
                bail!("could not create a PostgreSQL database (psql -h 127.0.0.1 -U postgres)");
            }
            let url = format!("{PG_SERVER}/{db}");
            scratch.database = Some(db);
            url
        }
        other => bail!("--store must be sqlite or postgres, not {other:?}"),
    };
    // Declare the topology (the backlog is published before herald starts)
    // and purge what an earlier bench may have left.
    let conn = connect(vhost_url).await?;
    let ch = conn.create_channel().await?;
    crate::amqp::topology::declare(&ch, &crate::engine::class_topology(&config)).await?;
    for t in &targets {
        let _ = ch
            .queue_purge(
                crate::amqp::topology::class_queue(&t.class).as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await;
    }
    let _ = ch.close(200, "purged".into()).await;
    let sent_before = twilio.sent_count() + resend.sent_count();
    let errors_before = twilio.random_errors() + resend.random_errors();
    let mark = SystemTime::now();
    if args.rate.is_none() {
        publish(&conn, &targets, args.events, None, None).await?;
    }
    let exe = match &args.herald_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?,
    };
    let mut children = Vec::with_capacity(args.instances);
    for i in 0..args.instances {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let home = dir.join(format!("instance-{i}"));
        std::fs::create_dir_all(&home)?;
        let child = HeraldChild {
            exe: &exe,
            config: &config_path,
            dir: &home,
            amqp_url: vhost_url,
            addr: &addr,
            store_url: &store_url,
            twilio,
            resend,
        }
        .command()
        .stderr(Stdio::inherit())
        .spawn()?;
        children.push(Instance { child, addr });
    }
    let marks = CpuMarks::take(watched);
    let spawned = Instant::now();
    let deadline = spawned + Duration::from_secs(1800);
    let sent = || twilio.sent_count() + resend.sent_count() - sent_before;
    // herald's clock measures herald running, not herald starting (the
    // baseline's starts with its consumer already registered): a steady load
    // starts once every instance is ready, a backlog at herald's first send.
    if args.rate.is_some() {
        for h in &mut children {
            wait_ready(&h.addr, &mut h.child).await?;
        }
    } else {
        wait_for(|| sent() > 0, &mut children, deadline).await?;
    }
    let first_send_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    let (start, sent_at_start) = (Instant::now(), sent());
    let publisher = args.rate.map(|r| {
        let targets = targets.clone();
        let n = args.events;
        tokio::spawn(async move { publish(&conn, &targets, n, Some(r), None).await })
    });
    wait_for(|| sent() >= args.events, &mut children, deadline).await?;
    let seconds = start.elapsed().as_secs_f64();
    let shares = marks.since();
    let usage: Vec<(Option<f64>, Option<f64>)> =
        children.iter().map(|h| proc_usage(h.child.id())).collect();
    let cpu_seconds = usage.iter().map(|u| u.0).sum::<Option<f64>>();
    let peak_rss_mb = usage.iter().filter_map(|u| u.1).reduce(f64::max);
    for h in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &h.child.id().to_string()])
            .status();
        let _ = h.child.wait();
    }
    if let Some(p) = publisher {
        p.await??;
    }
    // Publish-to-provider latency, from the events' own timestamps, read
    // off the accepted messages (the fakes keep no request ledger in a run:
    // the baseline's did not either).
    let mut lat: Vec<f64> = twilio
        .sent()
        .into_iter()
        .chain(resend.sent())
        .filter(|m| m.received_at >= mark)
        .filter_map(|m| {
            let t: u128 = m
                .body
                .split("published at ")
                .nth(1)?
                .split(';')
                .next()?
                .parse()
                .ok()?;
            let got = m.received_at.duration_since(UNIX_EPOCH).ok()?.as_micros();
            Some(got.saturating_sub(t) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let name = match args.instances {
        1 => format!("herald ({} store)", args.store),
        n => format!("herald ({} store, {n} instances)", args.store),
    };
    Ok(Run {
        name,
        events: args.events,
        seconds,
        per_second: (args.events - sent_at_start) as f64 / seconds,
        started_ms: Some(first_send_ms),
        latency_p50_ms: percentile(&lat, 0.5),
        latency_p99_ms: percentile(&lat, 0.99),
        latency_max_ms: lat.last().copied(),
        cpu_seconds,
        peak_rss_mb,
        provider_errors: (args.error_rate > 0.0)
            .then(|| twilio.random_errors() + resend.random_errors() - errors_before),
        bench_cpu_seconds: shares.bench,
        fakes_cpu_seconds: shares.fakes,
        broker_cpu_seconds: shares.broker,
        store_cpu_seconds: shares.store,
        machine_idle_share: shares.idle,
    })
}

/// One `herald run` process of a bench run, killed if the run fails.
struct Instance {
    child: std::process::Child,
    /// Its HTTP address.
    addr: String,
}

/// Waits (polling every millisecond) until `done`, or fails if an
/// instance exits or the deadline passes.
async fn wait_for(
    done: impl Fn() -> bool,
    children: &mut [Instance],
    deadline: Instant,
) -> anyhow::Result<()> {
    while !done() {
        if Instant::now() > deadline {
            bail!("herald did not send all events in 30 minutes");
        }
        for h in children.iter_mut() {
            if let Some(status) = h.child.try_wait()? {
                bail!("herald exited early: {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `herald run` child that sends live to the fake providers: for the
/// bench and the tests that run herald as a process.
pub struct HeraldChild<'a> {
    /// The herald binary.
    pub exe: &'a Path,
    pub config: &'a Path,
    /// Its working directory.
    pub dir: &'a Path,
    pub amqp_url: &'a str,
    /// `HERALD_HTTP_ADDR`.
    pub addr: &'a str,
    pub store_url: &'a str,
    pub twilio: &'a FakeTwilio,
    pub resend: &'a FakeResend,
}

impl HeraldChild<'_> {
    /// The command, its output discarded and `RUST_LOG=warn`; the caller
    /// adds what else it needs (stderr, more variables) and spawns it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.exe);
        cmd.args(["run", "--config"])
            .arg(self.config)
            .current_dir(self.dir)
            .env("HERALD_AMQP_URL", self.amqp_url)
            .env("HERALD_HTTP_ADDR", self.addr)
            .env("HERALD_PROVIDER_MODE", "live")
            .env("HERALD_STORE_URL", self.store_url)
            .env("TWILIO_ACCOUNT_SID", SID)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("TWILIO_PHONE_NUMBER", "+15005550006")
            .env("TWILIO_BASE_URL", self.twilio.base_url())
            .env("RESEND_API_KEY", KEY)
            .env("RESEND_FROM", "Herald <herald@example.com>")
            .env("RESEND_BASE_URL", self.resend.base_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }
}

/// Waits until herald at `addr` answers 200 on `/readyz` (broker and store
/// up); an error if it exits first or takes over 60 s.
pub async fn wait_ready(addr: &str, child: &mut std::process::Child) -> anyhow::Result<()> {
    let url = format!("http://{addr}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("herald exited early: {status}");
        }
        if Instant::now() > deadline {
            bail!("herald was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one statement as `postgres` on 127.0.0.1; whether it succeeded.
fn psql(statement: &str) -> bool {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-c", statement])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What one herald run leaves behind (its directory, and its PostgreSQL
/// database with `--store postgres`), removed when the run ends, however it
/// ends.
struct Scratch {
    dir: PathBuf,
    database: Option<String>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(db) = &self.database {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-bench-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Runs the benchmark and prints a table (and JSON if asked).
pub async fn run(args: BenchArgs) -> anyhow::Result<Results> {
    if !(0.0..=0.5).contains(&args.error_rate) {
        bail!(
            "--error-rate must be from 0 to 0.5, not {}",
            args.error_rate
        );
    }
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.instances > 1 && args.store != "postgres" {
        bail!("several instances share a store only on PostgreSQL: add --store postgres");
    }
    let queue_version = ensure_vhost(args.queue_version);
    let vhost_url = format!("{}/herald-bench", args.broker.trim_end_matches('/'));
    let twilio = FakeTwilio::start(SID, TOKEN)?;
    let resend = FakeResend::start(KEY)?;
    twilio.set_latency(Duration::from_millis(args.latency_ms));
    resend.set_latency(Duration::from_millis(args.latency_ms));
    twilio.set_record_requests(false);
    resend.set_record_requests(false);
    // Looked up once: every run reads the same processes' counters.
    let watched = Watched {
        broker: broker_pid(&args.broker),
        store: (args.store == "postgres")
            .then(|| local_listener(PG_SERVER, 5432))
            .flatten(),
    };
    let mut rounds = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let base = if args.no_baseline {
            None
        } else {
            twilio.set_error_rate(0.0, 0);
            resend.set_error_rate(0.0, 0);
            Some(baseline(&args, &vhost_url, &twilio, watched.broker).await?)
        };
        let seed = rand::random::<u64>();
        twilio.set_error_rate(args.error_rate, seed);
        resend.set_error_rate(args.error_rate, seed.wrapping_add(1));
        let herald = herald_run(&args, &vhost_url, &twilio, &resend, watched).await?;
        let ratio = base.as_ref().map(|b| herald.per_second / b.per_second);
        rounds.push(Round {
            baseline: base,
            herald,
            ratio,
        });
    }
    let ranked_by = RankedBy::of(args.rate.is_some(), !args.no_baseline);
    let median_round = median_of(&rounds, ranked_by);
    let results = Results {
        events: args.events,
        provider_latency_ms: args.latency_ms,
        store: args.store.clone(),
        ack_mode: args.ack.clone(),
        error_rate: args.error_rate,
        instances: args.instances,
        prefetch: args.prefetch,
        provider_max_concurrency: BENCH_MAX_CONCURRENCY,
        queue_version,
        median_round,
        rounds,
    };
    println!(
        "{:<36} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "run",
        "events",
        "seconds",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s",
        "rss MB",
        "bench s",
        "fakes s",
        "broker s",
        "store s",
        "idle %"
    );
    let numbered = results.rounds.len() > 1;
    for (i, round) in results.rounds.iter().enumerate() {
        for r in round.runs() {
            let name = if numbered {
                format!("{} #{}", r.name, i + 1)
            } else {
                r.name.clone()
            };
            println!(
                "{:<36} {:>8} {:>9.2} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
                name,
                r.events,
                r.seconds,
                r.per_second,
                fmt_opt(r.latency_p50_ms, 1),
                fmt_opt(r.latency_p99_ms, 1),
                fmt_opt(r.latency_max_ms, 1),
                fmt_opt(r.cpu_seconds, 2),
                fmt_opt(r.peak_rss_mb, 1),
                fmt_opt(r.bench_cpu_seconds, 2),
                fmt_opt(r.fakes_cpu_seconds, 2),
                fmt_opt(r.broker_cpu_seconds, 2),
                fmt_opt(r.store_cpu_seconds, 2),
                fmt_opt(r.machine_idle_share.map(|s| s * 100.0), 0)
            );
        }
    }
    let median = results.median();
    if numbered {
        // Each round by what ranked it.
        let by_round: Vec<String> = results.rounds.iter().map(|r| ranked_by.figure(r)).collect();
        println!(
            "{} by round: {}; the median round is #{} ({}), whose figures the JSON's top level holds",
            ranked_by.label(),
            by_round.join(", "),
            results.median_round + 1,
            ranked_by.figure(median)
        );
    } else if let Some(r) = median.ratio {
        println!("herald / baseline: {r:.2}");
    }
    // On a machine with no idle core, throughput follows what a message
    // costs everyone: these figures compare across machines and runs.
    // A PostgreSQL store's server is a fourth party (a SQLite store works
    // inside the engine).
    let store = median.herald.store_cpu_seconds.is_some();
    let costs: Vec<String> = median
        .runs()
        .map(|r| {
            let who = r
                .name
                .split_once(" (")
                .map_or(r.name.as_str(), |(who, _)| who);
            let mut parties = vec![r.cpu_seconds, r.fakes_cpu_seconds, r.broker_cpu_seconds];
            if store {
                parties.push(r.store_cpu_seconds);
            }
            let per_message: Vec<String> = parties
                .into_iter()
                .map(|s| fmt_opt(s.map(|s| s * 1e6 / r.events as f64), 0))
                .collect();
            format!("{who} {}", per_message.join(" / "))
        })
        .collect();
    println!(
        "CPU µs per message (engine / fakes / broker{}){}: {}",
        if store { " / store server" } else { "" },
        if numbered { ", the median round" } else { "" },
        costs.join("; ")
    );
    println!(
        "herald ran at prefetch {} per class, {} calls in flight per provider",
        results.prefetch, results.provider_max_concurrency
    );
    if let Some(ms) = median.herald.started_ms {
        println!("herald's timed part began {ms:.0} ms after it was started (its start-up is not in its seconds)");
    }
    match results.queue_version {
        Some(v) => println!(
            "every queue of the run (the baseline's and herald's) was a classic queue v{v}"
        ),
        None => println!("the queues' version is the broker's own (rabbitmqctl was not at hand)"),
    }
    if let Some(n) = median.herald.provider_errors {
        println!(
            "provider errors answered (error rate {}): {n}, each retried",
            results.error_rate
        );
    }
    if let Some(path) = &args.json {
        let written = Written {
            results: &results,
            median,
        };
        std::fs::write(path, serde_json::to_string_pretty(&written)?)?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(herald_per_second: f64, baseline_per_second: Option<f64>) -> Round {
        let run = |name: &str, per_second: f64| Run {
            name: name.into(),
            events: 1,
            seconds: 1.0,
            per_second,
            started_ms: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            latency_max_ms: None,
            cpu_seconds: None,
            peak_rss_mb: None,
            provider_errors: None,
            bench_cpu_seconds: None,
            fakes_cpu_seconds: None,
            broker_cpu_seconds: None,
            store_cpu_seconds: None,
            machine_idle_share: None,
        };
        Round {
            baseline: baseline_per_second.map(|b| run("baseline", b)),
            herald: run("herald", herald_per_second),
            ratio: baseline_per_second.map(|b| herald_per_second / b),
        }
    }

    #[test]
    fn the_median_round_goes_by_the_ratio_and_of_two_middles_takes_the_worse() {
        // By ratio (0.9, 0.5, 0.7), not by herald's throughput.
        let by_ratio = [
            round(9.0, Some(10.0)),
            round(10.0, Some(20.0)),
            round(7.0, Some(10.0)),
        ];
        assert_eq!(median_of(&by_ratio, RankedBy::Ratio), 2);
        // Four rounds without a baseline: 5, 8, 6, 7 a second; the middles
        // are 6 and 7.
        let even = [5.0, 8.0, 6.0, 7.0].map(|h| round(h, None));
        assert_eq!(median_of(&even, RankedBy::Throughput), 2);
        assert_eq!(median_of(&[round(3.0, None)], RankedBy::Throughput), 0);
    }

    #[test]
    fn a_steady_rate_ranks_by_the_p99_and_a_baseline_by_the_ratio() {
        assert_eq!(RankedBy::of(true, true), RankedBy::P99);
        assert_eq!(RankedBy::of(true, false), RankedBy::P99);
        assert_eq!(RankedBy::of(false, true), RankedBy::Ratio);
        assert_eq!(RankedBy::of(false, false), RankedBy::Throughput);
    }

    #[test]
    fn at_a_steady_rate_the_median_round_goes_by_the_p99() {
        // The same throughput (the rate); p99 12, 9, 10, 15 ms: the middles
        // are 10 and 12, and 12 is the worse.
        let rounds = [12.0, 9.0, 10.0, 15.0].map(|p99| {
            let mut r = round(2000.0, None);
            r.herald.latency_p99_ms = Some(p99);
            r
        });
        assert_eq!(median_of(&rounds, RankedBy::P99), 0);
        assert_eq!(median_of(&rounds[1..], RankedBy::P99), 1);
    }

    #[test]
    fn the_fakes_threads_are_told_apart_from_the_benchs_own() {
        let twilio = FakeTwilio::start(SID, TOKEN).unwrap();
        let resend = FakeResend::start(KEY).unwrap();
        // The actix worker threads start when each server is first polled,
        // after `start` returns: one answered request proves they are up.
        for base in [twilio.base_url(), resend.base_url()] {
            reqwest::blocking::get(base).expect("the fake answers");
        }
        let found = fake_threads().expect("/proc/self/task");
        let names: Vec<String> = found.into_iter().map(|(name, _)| name).collect();
        // Each fake's own thread, and the actix worker that serves it.
        assert!(names.iter().any(|n| n == "fake-twilio"), "{names:?}");
        assert!(names.iter().any(|n| n == "fake-resend"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("actix-")), "{names:?}");
        // Not the threads the bench and the bare consumer run on: the
        // process's main thread (named after the binary) and lapin's.
        let main = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(!is_fake_thread(main.trim()), "{main}");
        assert!(!names.iter().any(|n| *n == main.trim()), "{names:?}");
        assert!(!is_fake_thread("lapin-io-loop"));
        drop((twilio, resend));
    }

    #[test]
    fn a_stat_line_splits_after_the_last_parenthesis() {
        // A thread may name itself with parentheses and spaces.
        let stat = "42 (tokio (io) 1) S 1 42 42 0 -1 4194560 0 0 0 0 250 130 0 0";
        assert_eq!(
            stat_parts(stat),
            Some((
                "tokio (io) 1",
                " S 1 42 42 0 -1 4194560 0 0 0 0 250 130 0 0"
            ))
        );
        assert_eq!(stat_cpu(stat), Some(3.8));
    }

    #[test]
    fn the_bench_config_sets_what_the_bench_says_it_runs_at() {
        // As the command line gives them, its defaults included.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let args =
            <Cli as clap::Parser>::parse_from(["bench", "--events", "10", "--prefetch", "96"]).args;
        let classes = vec!["weekly_checkin".to_owned(), "payment_reminder".to_owned()];
        let text = bench_config(&classes, &args);
        let config = crate::config::Config::from_toml_str(&text, &|_| None).unwrap();
        assert_eq!(config.amqp.prefetch, 96);
        assert_eq!(
            config.providers.twilio.max_concurrency,
            BENCH_MAX_CONCURRENCY
        );
        assert_eq!(
            config.providers.resend.max_concurrency,
            BENCH_MAX_CONCURRENCY
        );
        assert_eq!(
            config.classes.keys().collect::<Vec<_>>(),
            ["payment_reminder", "weekly_checkin"]
        );
    }

    #[test]
    fn the_bench_publishes_each_class_at_the_priority_a_client_would() {
        let shipped = crate::config::Config::from_toml_str(SHIPPED_CONFIG, &|_| None).unwrap();
        let classes: Vec<String> = shipped.classes.keys().cloned().collect();
        let published = targets(&shipped, &classes).unwrap();
        let by_class = |name: &str| published.iter().find(|t| t.class == name).unwrap();
        // SPEC.md's default classes: priority 1 is AMQP 10, priority 8 is 3.
        assert_eq!(by_class("critical_financial").priority, 10);
        assert!(by_class("critical_financial").sms);
        assert_eq!(by_class("onboarding_sequence").priority, 3);
        assert!(!by_class("monthly_report").sms);
        let mut priorities: Vec<u8> = published.iter().map(|t| t.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        assert_eq!(priorities.len(), classes.len(), "one level a class");
        assert!(targets(&shipped, &["no_such_class".to_owned()]).is_err());
    }

    #[test]
    fn a_servers_cpu_counts_its_children_running_and_ended() {
        let me = std::process::id();
        let before = server_cpu(me).expect("this process's CPU");
        // A child that spends CPU until it is stopped.
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let child_cpu = || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()?;
            stat_cpu(&stat)
        };
        while child_cpu().is_some_and(|s| s < 0.1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Running, it is counted among the children ...
        let running = server_cpu(me).unwrap() - before;
        child.kill().unwrap();
        child.wait().unwrap();
        // ... and ended and reaped, in this process's own `cutime`.
        let ended = server_cpu(me).unwrap() - before;
        assert!(running >= 0.1, "{running} s while the child ran");
        assert!(
            ended >= running,
            "{ended} s after it ended, {running} s before"
        );
    }

    #[test]
    fn the_listening_socket_of_a_port_is_found_in_a_proc_table() {
        // Read off /proc/net/tcp: RabbitMQ on 5672 (0x1628) listening, a
        // connection to it, and another port listening.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 8178 1 0000000077d4242c 100 0 0 10 0
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4670 1 000000003cbe1903 100 0 0 10 0
   2: 0100007F:1628 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000   106        0 9912 1 0000000077d4242c 20 4 30 10 -1
";
        assert_eq!(listening_inodes(table, 5672), vec![8178]);
        assert_eq!(listening_inodes(table, 6379), vec![4670]);
        assert!(listening_inodes(table, 5432).is_empty());
    }

    #[test]
    fn a_broker_elsewhere_has_no_process_here() {
        assert_eq!(
            broker_pid("amqp://guest:guest@rabbit.example.com:5672"),
            None
        );
        assert_eq!(broker_pid("not a url"), None);
        // What `broker_pid` relies on: an amqp URL keeps an IPv4 host as
        // written and parses a bracketed IPv6 one.
        let host = |u: &str| url::Url::parse(u).unwrap().host().map(|h| h.to_owned());
        assert_eq!(
            host("amqp://127.0.0.1:5672"),
            Some(url::Host::Domain("127.0.0.1".to_owned()))
        );
        assert_eq!(
            host("amqp://[::1]:5672"),
            Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        );
    }

    #[test]
    fn the_local_broker_is_found_by_its_port() {
        // The machine's RabbitMQ, as the bench and the suite use it.
        let pid = broker_pid("amqp://guest:guest@127.0.0.1:5672").expect("a local broker");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert!(comm.starts_with("beam"), "{comm}");
        assert_eq!(broker_pid("amqp://guest:guest@localhost:5672"), Some(pid));
        // Nothing listens on port 1.
        assert_eq!(broker_pid("amqp://127.0.0.1:1"), None);
    }
}
