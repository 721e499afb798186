//! The `herald` command line. Parses arguments and calls into the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use herald::amqp::publisher::Publisher;
use herald::amqp::topology;
use herald::config::Config;
use herald::engine::Engine;

/// jemalloc, not glibc's malloc: herald allocates on its I/O threads and
/// frees on the actor thread, where glibc spent ~14 % of herald's CPU
/// (docs/adr/0004-jemalloc.md has the measurements).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: two arenas (herald has a few
/// busy threads, not a pool of hundreds) and freed pages returned within a
/// second, which keeps peak RSS near glibc's. `_RJEM_MALLOC_CONF` in the
/// environment overrides them.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "herald", version, about = "An actor-based notification engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the engine.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Prints every problem in the config with its key path; exits 1 if any.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Publishes one event the way a client should.
    Publish(Box<PublishArgs>),
    /// Prints the delivery record of one event, with its attempts.
    Status {
        /// The event id.
        id: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Measures herald against a bare consumer on the same broker.
    Bench(Box<herald::bench::BenchArgs>),
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PublishArgs {
    #[arg(long)]
    class: String,
    #[arg(long)]
    to_phone: Option<String>,
    #[arg(long)]
    to_email: Option<String>,
    #[arg(long)]
    to_name: Option<String>,
    #[arg(long)]
    timezone: Option<String>,
    #[arg(long, default_value = "cli")]
    user: String,
    /// `key=value`, repeatable.
    #[arg(long = "data", value_parser = parse_kv)]
    data: Vec<(String, String)>,
    /// RFC 3339 time to deliver at.
    #[arg(long)]
    send_at: Option<String>,
    /// The event id (default: a new random one).
    #[arg(long)]
    id: Option<String>,
    /// Template text or the name of a configured template (default: the class's).
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    /// AMQP priority 1-10 (default: from the class's priority).
    #[arg(long)]
    priority: Option<u8>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Lists dead letters (addresses masked); the queue is unchanged.
    List,
    /// Republishes dead letters to their class.
    Replay {
        #[arg(long)]
        class: Option<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = Config::resolve_path(path.as_deref());
    Config::load(&path).map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", path.display()))
}

/// glibc gives a process up to eight malloc arenas per core, and each keeps
/// its own freed memory; herald's few threads (the actor thread, the I/O
/// runtime, lapin's, sqlx's) spread their allocations over them. One arena
/// per I/O worker (two to four) holds the same throughput with a smaller
/// peak: a 100,000-event backlog peaked at 62 MB with the default, 56 MB
/// with two (docs/benchmarks.md, a fifth session). Set before any thread
/// starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        // SAFETY: mallopt only sets a tunable; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    herald::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let path = Config::resolve_path(config.as_deref());
            match Config::load(&path) {
                Ok(cfg) => {
                    println!("{}: ok ({} classes)", path.display(), cfg.classes.len());
                    Ok(())
                }
                Err(e) => {
                    for p in &e.problems {
                        println!("{p}");
                    }
                    eprintln!("{}: {} problem(s)", path.display(), e.problems.len());
                    std::process::exit(1);
                }
            }
        }
        Command::Run { config } => {
            let path = Config::resolve_path(config.as_deref());
            let cfg = load(config)?;
            actix_rt::System::new().block_on(async move {
                let grace = Duration::from_secs_f64(cfg.supervisor.shutdown_grace_secs);
                let engine = Engine::start(cfg).await.context("starting herald")?;
                engine.controls.reload_from(path);
                shutdown_signal(&engine.controls).await;
                tracing::info!(?grace, "shutting down");
                engine.stop(grace).await;
                Ok(())
            })
        }
        Command::Publish(args) => {
            let cfg = load(args.config.clone())?;
            actix_rt::System::new().block_on(publish(cfg, *args))
        }
        Command::Status { id, config } => {
            let cfg = load(config)?;
            actix_rt::System::new().block_on(status(cfg, id))
        }
        Command::Bench(args) => actix_rt::System::new().block_on(async move {
            herald::bench::run(*args).await?;
            Ok(())
        }),
        Command::Dlq { command, config } => {
            let cfg = load(config)?;
            actix_rt::System::new().block_on(dlq(cfg, command))
        }
    }
}

/// Waits for SIGTERM or Ctrl-C, reloading the config on every SIGHUP
/// meanwhile (a bad file is logged and changes nothing).
async fn shutdown_signal(controls: &herald::controls::Controls) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match controls.reload() {
                Ok(r) => tracing::info!(
                    restart_required = ?r.restart_required,
                    "SIGHUP: config reloaded"
                ),
                Err(e) => tracing::error!(error = %e, "SIGHUP: config not reloaded"),
            },
        }
    }
}

async fn publish(cfg: Config, args: PublishArgs) -> anyhow::Result<()> {
    let Some(class) = cfg.classes.get(&args.class) else {
        bail!("no class named {:?} in the config", args.class);
    };
    let priority = args
        .priority
        .unwrap_or_else(|| topology::amqp_priority(class.priority));
    let id = args
        .id
        .unwrap_or_else(|| format!("evt-{:016x}", rand::random::<u64>()));
    let mut to = serde_json::Map::new();
    for (k, v) in [
        ("phone", args.to_phone),
        ("email", args.to_email),
        ("name", args.to_name),
        ("timezone", args.timezone),
    ] {
        if let Some(v) = v {
            to.insert(k.into(), v.into());
        }
    }
    let data: HashMap<String, String> = args.data.into_iter().collect();
    let mut event = serde_json::json!({ "id": id, "user_id": args.user, "to": to, "data": data });
    if let Some(t) = args.template {
        event["template"] = t.into();
    }
    if let Some(s) = args.subject {
        event["subject"] = s.into();
    }
    if let Some(at) = args.send_at {
        event["send_at"] = at.into();
    }
    let body = serde_json::to_vec(&event)?;
    let conn = herald::amqp::connect(&cfg.amqp.url, cfg.amqp.heartbeat_secs)
        .await
        .context("connecting to the broker")?;
    let publisher = Publisher::open(Arc::new(conn)).await?;
    publisher
        .publish_event(&args.class, &id, &body, priority)
        .await?;
    println!("{id}");
    Ok(())
}

async fn status(cfg: Config, id: String) -> anyhow::Result<()> {
    let store = herald::store::Store::open(&cfg.store.url)
        .await
        .context("opening the delivery store")?;
    let found = store.event(&id).await;
    store.close().await;
    let Some(view) = found? else {
        bail!(
            "no delivery record for event {id:?} (an event rejected as bad input has none: \
             it is in the dead-letter queue with its reason, `herald dlq list`)"
        );
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}

async fn dlq(cfg: Config, command: DlqCommand) -> anyhow::Result<()> {
    let conn = Arc::new(
        herald::amqp::connect(&cfg.amqp.url, cfg.amqp.heartbeat_secs)
            .await
            .context("connecting to the broker")?,
    );
    match command {
        DlqCommand::List => {
            for letter in herald::dlq::list(&conn).await.map_err(anyhow::Error::msg)? {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        DlqCommand::Replay { class } => {
            let publisher = Publisher::open(conn.clone()).await?;
            let store = herald::store::Store::open(&cfg.store.url)
                .await
                .context("opening the delivery store")?;
            let which = herald::dlq::Which {
                class: class.as_deref(),
                id: None,
            };
            let n = herald::dlq::replay(&conn, &publisher, &store, which)
                .await
                .map_err(anyhow::Error::msg)?;
            store.close().await;
            println!("replayed {n}");
        }
    }
    Ok(())
}
