//! The delivery store: one record per event and one per provider attempt,
//! in embedded SQLite (the default, `sqlite://data/herald.db`) or
//! PostgreSQL (`postgres://...`), with the same schema and the same SQL.
//!
//! The store turns the broker's at-least-once delivery into one send per
//! event: before a provider call the event is [claimed](Store::claim), and a
//! claim of an event a provider already accepted answers
//! [`ClaimOutcome::AlreadySent`]. Every outcome is [recorded](Store::record).
//! Both take whole batches in one transaction, which is what keeps the
//! store off the hot path's critical cost. docs/specs/store.md holds the
//! schema, the status machine and the delivery guarantees.
//!
//! # Layout
//! - `model.rs`: claims, records, statuses and the views.
//! - `commit.rs`: the hot path (the journal's commit) and suppression
//!   changes, written once over `exec.rs`'s statement interface.
//! - `exec.rs`: that interface: sqlx on PostgreSQL, rusqlite on the SQLite
//!   writer's handle.
//! - `ops.rs`: the other operations, compiled once per backend.
//! - `sql.rs`: every statement's text.
//! - `error.rs`: [`StoreError`].

mod checkpoint;
mod commit;
mod error;
mod exec;
mod model;
mod ops;
mod sql;

use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use checkpoint::Checkpointer;

use futures_util::FutureExt;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

pub use error::StoreError;
pub use model::{
    millis, now_ms, AttemptView, AuditView, ChannelCost, Claim, ClaimOutcome, ClassCost, EventView,
    FrequencyCap, KeptEvent, MessageView, Outcome, Receipt, ReceiptOutcome, Record, ScheduledEvent,
    Status, SuppressionAction, SuppressionChange, SuppressionView, UserCost, Waiting,
};

/// How long an accepted SMS's event is kept for a fallback on an
/// undelivered receipt (carriers report within hours; three days is ample).
pub const KEEP_FOR_RECEIPT_MS: i64 = 3 * 24 * 3600 * 1000;

/// The default store, relative to the working directory.
pub const DEFAULT_URL: &str = "sqlite://data/herald.db";

/// How long a SQLite writer waits for another to finish before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers, so two pooled connections serve the readers,
/// beside the one [`SqliteWriter`]. Each keeps its own page cache
/// ([`SQLITE_CACHE_KIB`]): measured with `herald bench`, caches of 2 MiB
/// beat 512 KiB by ~8 % in throughput, and 8 MiB for the writer gained
/// nothing measurable for 7 MB more memory (docs/benchmarks.md).
const SQLITE_MAX_CONNECTIONS: u32 = 2;
/// SQLite's page cache per connection, in KiB. Smaller, and a batch's
/// writes spill from the cache mid-transaction and are read back.
const SQLITE_CACHE_KIB: u32 = 2048;
/// PostgreSQL connections per herald process.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long a caller waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The call lease of [`Store::with_call_lease`] until one is given.
const DEFAULT_CALL_LEASE: Duration = Duration::from_secs(60);

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The delivery store. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    /// The pool of the backend the URL chose.
    backend: Backend,
    /// This process as its claims' attempts name it.
    claimer: commit::Claimer,
}

/// One pool type per backend, so each runs its own driver with the same
/// statement text (sqlx's `Any` driver would lose the native types).
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool, SqliteWriter),
    Postgres(PgPool),
}

/// The one SQLite connection that runs every write, the journal's commits
/// (the hot path) first among them, apart from the pool that serves the
/// reads. In WAL mode a connection drops its whole page cache when another
/// has written since its last transaction; sqlx hands out idle connections
/// first-in first-out, so commits alternating between pooled connections
/// found a cold cache every time and read every page back from the file. A
/// connection of its own keeps the B-tree pages it writes to warm.
///
/// The journal's commits run on the same connection through rusqlite
/// ([`SqliteWriter::transaction`]), whose prepared statements are kept
/// between commits: preparing the hot path's statements anew took more
/// time than running them for a batch of a few rows.
#[derive(Debug, Clone)]
struct SqliteWriter(Arc<Writer>);

/// The writer's connection and rusqlite's view of it. The fields drop in
/// this order: the kept statements are finalised before the last pool
/// handle closes the connection (sqlx cannot close a connection that
/// still has statements). When the last `Store` clone drops without
/// [`Store::close`], nothing is running on the connection: every
/// operation holds a `Store`.
#[derive(Debug)]
struct Writer {
    /// rusqlite's view of the connection's handle, made on the first
    /// commit and kept with its statement cache; used only while the
    /// handle is locked out of sqlx's worker thread.
    lite: Mutex<Option<Lite>>,
    pool: SqlitePool,
    /// Copies the log back into the database file off the commits' path
    /// (`checkpoint.rs`); none for an in-memory database. Taken (stopped)
    /// by `close`.
    checkpoints: Mutex<Option<Checkpointer>>,
}

/// Statements rusqlite keeps prepared: every statement of `commit.rs`.
const LITE_STATEMENTS: usize = 32;

#[derive(Debug)]
struct Lite {
    /// The raw handle it wraps: a different one (sqlx reconnected) means a
    /// new wrapper.
    handle: usize,
    conn: rusqlite::Connection,
}

impl SqliteWriter {
    fn new(pool: SqlitePool, checkpoints: Option<Checkpointer>) -> SqliteWriter {
        SqliteWriter(Arc::new(Writer {
            lite: Mutex::new(None),
            pool,
            checkpoints: Mutex::new(checkpoints),
        }))
    }

    fn pool(&self) -> &SqlitePool {
        &self.0.pool
    }

    /// Runs `work` in one transaction on the writer's handle, through
    /// rusqlite, with sqlx's worker thread locked out until it ends: one
    /// hand-off to that thread and back, however many statements `work`
    /// runs (see `exec.rs`). Commits if `work` returns `Ok`, else rolls
    /// back.
    async fn transaction<T>(
        &self,
        work: impl for<'c> AsyncFnOnce(&mut exec::LiteExec<'c>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let raw = handle.as_raw_handle().as_ptr();
        let mut lite = lock(&self.0.lite);
        if lite.as_ref().is_none_or(|l| l.handle != raw as usize) {
            // SAFETY: rusqlite uses the handle only below, while it is
            // locked out of sqlx's worker thread; it never closes it (a
            // wrapper `from_handle`), and its kept statements are finalised
            // before sqlx closes the connection (`close`, and `Writer`'s
            // field order when it is dropped).
            let conn = unsafe { rusqlite::Connection::from_handle(raw)? };
            conn.set_prepared_statement_cache_capacity(LITE_STATEMENTS);
            *lite = Some(Lite {
                handle: raw as usize,
                conn,
            });
        }
        let lite = &mut lite.as_mut().expect("set above").conn;
        let tx = lite.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Every statement of `LiteExec` completes at once, so the work is
        // done on its first poll.
        let out = work(&mut exec::LiteExec(&tx))
            .now_or_never()
            .expect("LiteExec never waits")?;
        tx.commit()?;
        if let Some(checkpoints) = lock(&self.0.checkpoints).as_ref() {
            checkpoints.poke();
        }
        Ok(out)
    }

    /// Stops the background checkpoints, finalises the kept statements
    /// (with the handle locked, if it can be), then closes the connection.
    async fn close(&self) {
        let checkpoints = lock(&self.0.checkpoints).take();
        drop(checkpoints); // joins its thread, the lock released
        let forget = || lock(&self.0.lite).take();
        if let Ok(mut conn) = self.pool().acquire().await {
            if let Ok(_locked) = conn.lock_handle().await {
                drop(forget());
            }
        }
        drop(forget());
        self.pool().close().await;
    }
}

/// Nothing done under the writer's locks can leave their data half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls the operation `$op` of the store's backend module (see
/// `ops.rs`) with its pool and the remaining arguments. `write` marks an
/// operation that writes: on SQLite it runs on the [`SqliteWriter`], so
/// writes queue there rather than in SQLite's busy wait, and none of them
/// makes the writer drop its page cache.
macro_rules! dispatch {
    ($store:expr, $op:ident($($arg:expr),*)) => {
        match &$store.backend {
            Backend::Sqlite(pool, _) => ops::sqlite::$op(pool, $($arg),*).await,
            Backend::Postgres(pool) => ops::postgres::$op(pool, $($arg),*).await,
        }
    };
    ($store:expr, write $op:ident($($arg:expr),*)) => {
        match &$store.backend {
            Backend::Sqlite(_, writer) => ops::sqlite::$op(writer.pool(), $($arg),*).await,
            Backend::Postgres(pool) => ops::postgres::$op(pool, $($arg),*).await,
        }
    };
}

/// Runs `$body`, a future of `commit.rs` given `$db` (an `Exec`) and
/// `$dialect` (the backend's SQL), in one transaction: on SQLite through
/// [`SqliteWriter::transaction`], on PostgreSQL through sqlx. Commits if it
/// returns `Ok`, else rolls back.
macro_rules! transaction {
    ($store:expr, |$db:ident, $dialect:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(_, writer) => {
                writer
                    .transaction(async |$db| {
                        let $dialect = &sql::SQLITE;
                        $body.await
                    })
                    .await
            }
            Backend::Postgres(pool) => {
                let mut tx = exec::PgExec(pool.begin().await?);
                let ($db, $dialect) = (&mut tx, &sql::POSTGRES);
                let out = $body.await?;
                tx.0.commit().await?;
                Ok(out)
            }
        }
    };
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` (relative to the working directory; parent
    /// directories and the file are created) or `sqlite::memory:`;
    /// `postgres://...` or `postgresql://...`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let shown = redact(url);
        let backend = if url.starts_with("sqlite:") {
            let (pool, writer) = open_sqlite(url, &shown).await?;
            Backend::Sqlite(pool, writer)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(open_postgres(url, &shown).await?)
        } else {
            return Err(StoreError::UnsupportedUrl { url: shown });
        };
        Ok(Store {
            backend,
            claimer: commit::Claimer {
                owner: format!("{:016x}", rand::random::<u64>()).into(),
                lease_ms: millis(DEFAULT_CALL_LEASE),
            },
        })
    }

    /// The same store, its claims leasing their attempts for `lease`: how
    /// long another process sharing the store leaves an unfinished attempt
    /// of this one alone. It must outlast this process's longest provider
    /// call; after a crash, its unfinished events wait this long before
    /// another process (or its own restart) sends them again.
    pub fn with_call_lease(mut self, lease: Duration) -> Store {
        self.claimer.lease_ms = millis(lease);
        self
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(..) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, ping())
    }

    /// Waits for open transactions and closes every connection (shutdown).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool, writer) => {
                writer.close().await;
                pool.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    /// Claims events for a provider call, in one transaction for the whole
    /// batch, in order: a later claim of the same event sees the earlier
    /// one. Returns one outcome per claim, in the same order. On error
    /// nothing of the batch is applied.
    pub async fn claim(&self, claims: &[Claim]) -> Result<Vec<ClaimOutcome>, StoreError> {
        self.commit(&[], claims).await
    }

    /// Applies outcome records in one transaction, in order. A record
    /// closes the open attempt it names and moves the message (see
    /// docs/specs/store.md for which moves are allowed: `sent` never moves
    /// back); a record for an event never claimed creates its message. On
    /// error nothing of the batch is applied.
    pub async fn record(&self, records: &[Record]) -> Result<(), StoreError> {
        self.commit(records, &[]).await.map(drop)
    }

    /// [`record`](Store::record) and then [`claim`](Store::claim) in one
    /// transaction: the journal's group commit. On error nothing of either
    /// is applied.
    pub async fn commit(
        &self,
        records: &[Record],
        claims: &[Claim],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        if records.is_empty() && claims.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |db, dialect| commit::commit(
            db,
            dialect,
            &self.claimer,
            records,
            claims
        ))
    }

    /// Renews the lease of this process's unfinished attempt of `event_id`
    /// (see [`with_call_lease`](Store::with_call_lease)) from now, before a
    /// call that waited: `false` if the attempt is no longer open and
    /// this process's, because another process found its lease run out
    /// and claimed the event itself.
    pub async fn renew_lease(&self, event_id: &str) -> Result<bool, StoreError> {
        let now_ms = now_ms();
        transaction!(self, |db, _dialect| commit::renew(
            db,
            &self.claimer,
            event_id,
            now_ms
        ))
    }

    /// Applies changes to the suppression list in one transaction, each
    /// audited if it changed the list; returns which did.
    pub async fn change_suppressions(
        &self,
        changes: &[SuppressionChange],
    ) -> Result<Vec<bool>, StoreError> {
        let changed = self.change_suppressions_in(changes, None).await?;
        Ok(changed.unwrap_or_default())
    }

    /// The same for a webhook delivery `id`, once: `None` if that delivery
    /// was processed before (a replay), and then nothing changes.
    pub async fn change_suppressions_once(
        &self,
        id: &str,
        changes: &[SuppressionChange],
    ) -> Result<Option<Vec<bool>>, StoreError> {
        self.change_suppressions_in(changes, Some((id, now_ms())))
            .await
    }

    async fn change_suppressions_in(
        &self,
        changes: &[SuppressionChange],
        webhook_id: Option<(&str, i64)>,
    ) -> Result<Option<Vec<bool>>, StoreError> {
        transaction!(self, |db, _dialect| commit::change_suppressions(
            db, changes, webhook_id
        ))
    }

    /// Holds events until their time (one transaction); an event already
    /// held for its class is held anew.
    pub async fn schedule(&self, events: &[ScheduledEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        dispatch!(self, write schedule(events))
    }

    /// Held events due at `now_ms`, earliest first, at most `limit`, each
    /// leased to the caller for `lease_ms`: until then no other caller (no
    /// other herald instance on the store) is given them. The caller
    /// publishes them and [`unschedule`](Store::unschedule)s them; if it
    /// dies first, they are given out again when the lease ends.
    pub async fn take_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ScheduledEvent>, StoreError> {
        dispatch!(self, write take_due(now_ms, now_ms + lease_ms, limit))
    }

    /// One event's held entries (one per class it was published to).
    pub async fn scheduled(&self, event_id: &str) -> Result<Vec<ScheduledEvent>, StoreError> {
        dispatch!(self, scheduled(event_id))
    }

    /// Drops entries published again (those held anew since stay).
    pub async fn unschedule(&self, events: &[ScheduledEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        dispatch!(self, write unschedule(events))
    }

    /// GDPR erasure of one user: their messages keep their status, class,
    /// channel and cost (anonymous counts) but lose the user id and the
    /// provider ids; their held events are deleted, never to be sent.
    /// Returns (messages anonymised, held events deleted). The suppression
    /// list is keyed by address, not user, and stays (an opt-out outlives
    /// the account).
    pub async fn erase_user(&self, user_id: &str) -> Result<(u64, u64), StoreError> {
        if user_id.is_empty() {
            return Ok((0, 0));
        }
        dispatch!(self, write erase_user(user_id))
    }

    /// Applies a provider's delivery receipt: the message's delivery status
    /// moves forward only (a late or repeated receipt is `Stale`). A final
    /// failure of an SMS whose event was kept schedules its email fallback
    /// (in the same transaction: the scheduler publishes it), once.
    pub async fn receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, StoreError> {
        dispatch!(self, write receipt(receipt))
    }

    /// How many events are held.
    pub async fn scheduled_count(&self) -> Result<u64, StoreError> {
        dispatch!(self, scheduled_count())
    }

    /// The suppression list, newest first, at most `limit` entries.
    pub async fn suppressions(&self, limit: u32) -> Result<Vec<SuppressionView>, StoreError> {
        dispatch!(self, suppressions(limit))
    }

    /// Every change to one address's suppression, oldest first.
    pub async fn audit(&self, address: &str) -> Result<Vec<AuditView>, StoreError> {
        dispatch!(self, audit(address))
    }

    /// Makes a `dead_lettered` or `outcome_unknown` message claimable again
    /// (status `retrying`), for a DLQ replay. False if there is no such
    /// message in one of those statuses (`sent` and `suppressed` are never
    /// released).
    pub async fn release(&self, event_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, write release(event_id, now_ms))
    }

    /// One event as `herald status` and the admin API show it: its record
    /// and its held entries; `None` if it has neither.
    pub async fn event(&self, event_id: &str) -> Result<Option<EventView>, StoreError> {
        let record = self.message(event_id).await?;
        let held = self.scheduled(event_id).await?;
        Ok(EventView::of(record, held))
    }

    /// One event's record with its attempts, oldest first.
    pub async fn message(&self, event_id: &str) -> Result<Option<MessageView>, StoreError> {
        dispatch!(self, message(event_id))
    }

    /// The latest `limit` events that ended dead-lettered or with an
    /// unknown outcome, newest first (no attempt log).
    pub async fn recent_failures(&self, limit: u32) -> Result<Vec<MessageView>, StoreError> {
        dispatch!(self, recent_failures(limit))
    }

    /// Every class's messages sent (finished) in `[from_ms, to_ms)`, counted
    /// and priced per channel: what all instances sharing the store spent.
    pub async fn class_cost(&self, from_ms: i64, to_ms: i64) -> Result<Vec<ClassCost>, StoreError> {
        dispatch!(self, class_cost(from_ms, to_ms))
    }

    /// A user's messages sent (finished) in `[from_ms, to_ms)`, counted and
    /// priced per channel. The day's window is the caller's: it knows the
    /// time zone.
    pub async fn user_cost(
        &self,
        user_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<UserCost, StoreError> {
        let channels = dispatch!(self, user_cost(user_id, from_ms, to_ms))?;
        Ok(UserCost {
            user_id: user_id.to_owned(),
            from_ms,
            to_ms,
            messages: channels.iter().map(|c| c.messages).sum(),
            cost_usd: channels.iter().map(|c| c.cost_usd).sum(),
            channels,
        })
    }

    /// Retention: deletes `sent` messages finished before
    /// `delivered_before_ms` and failed ones (`dead_lettered`,
    /// `outcome_unknown`, `suppressed`) finished before `failed_before_ms`,
    /// at most `batch` per statement (each its own short transaction),
    /// until none is left. Attempts go with their message. Returns the
    /// number of messages deleted.
    pub async fn purge(
        &self,
        delivered_before_ms: i64,
        failed_before_ms: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let delivered = dispatch!(self, write purge(|d| d.purge_sent, delivered_before_ms, batch))?;
        let failed = dispatch!(self, write purge(|d| d.purge_failed, failed_before_ms, batch))?;
        // Events kept for a receipt's fallback hold addresses: kept no
        // longer than a receipt can take to come.
        let kept = delivered_before_ms.max(now_ms() - KEEP_FOR_RECEIPT_MS);
        dispatch!(self, write purge(|_| sql::PURGE_FALLBACK, kept, batch))?;
        dispatch!(self, write purge(|_| sql::PURGE_RECEIPT_KEYS, kept, batch))?;
        Ok(delivered + failed)
    }
}

async fn open_sqlite(url: &str, shown: &str) -> Result<(SqlitePool, SqliteWriter), StoreError> {
    let options = SqliteConnectOptions::from_str(url).map_err(|source| StoreError::InvalidUrl {
        url: shown.to_owned(),
        source,
    })?;
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true)
        .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
        // Statement journals (a multi-row statement's undo) in memory, not
        // in a temporary file created and deleted for each statement.
        .pragma("temp_store", "memory");
    // A connection kept open for good: an in-memory database lives as long
    // as a connection to it, and the writer's cache is what it is for.
    let kept = || {
        SqlitePoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping before each commit was a second hand-off to sqlx's
            // worker thread; a broken connection fails the commit anyway,
            // and the journal tries the batch again.
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    };
    let connect = |pool_options: SqlitePoolOptions, options| async move {
        pool_options
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: shown.to_owned(),
                source,
            })
    };
    let pool = if in_memory {
        connect(kept(), options.clone()).await?
    } else {
        let pool_options = SqlitePoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_connections(SQLITE_MAX_CONNECTIONS);
        connect(pool_options, options.clone()).await?
    };
    SQLITE_MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: shown.to_owned(),
            source,
        })?;
    // One in-memory database has no second connection to share it.
    let (writer, checkpoints) = if in_memory {
        (pool.clone(), None)
    } else {
        let checkpoints = Checkpointer::start(options.get_filename());
        (connect(kept(), options).await?, checkpoints)
    };
    Ok((pool, SqliteWriter::new(writer, checkpoints)))
}

async fn open_postgres(url: &str, shown: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|source| StoreError::InvalidUrl {
            url: shown.to_owned(),
            source,
        })?
        // The hot path's set statements join the batch's JSON rows to the
        // tables; a generic plan cached while a table was small (a fresh
        // database) keeps scanning it whole as it grows. Custom plans see
        // the current size each time, for a fraction of a millisecond.
        .options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            url: shown.to_owned(),
            source,
        })?;
    POSTGRES_MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: shown.to_owned(),
            source,
        })?;
    Ok(pool)
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: a URL with a password has a host.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn parse_status(value: String) -> Result<Status, StoreError> {
    value.parse().map_err(|value| StoreError::Unexpected {
        column: "messages.status",
        value,
    })
}

/// Stored counts are never negative or near `u32::MAX`; clamp rather than
/// fail a lookup if a hand edit made them so.
fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

pub(crate) fn scheduled_from_row<R>(row: &R) -> Result<ScheduledEvent, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ScheduledEvent {
        event_id: row.try_get("event_id")?,
        class: row.try_get("class")?,
        user_id: row.try_get("user_id")?,
        due_at_ms: row.try_get("due_at")?,
        reason: row.try_get("reason")?,
        channel: row.try_get("channel")?,
        attempt: count(row.try_get("attempt")?),
        fallback_from: row.try_get("fallback_from")?,
        priority: u8::try_from(row.try_get::<i64, _>("priority")?).unwrap_or(0),
        published_at_ms: row.try_get("published_at")?,
        body: row.try_get("body")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

pub(crate) fn message_from_row<R>(row: &R) -> Result<MessageView, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(MessageView {
        event_id: row.try_get("event_id")?,
        class: row.try_get("class")?,
        user_id: row.try_get("user_id")?,
        channel: row.try_get("channel")?,
        status: parse_status(row.try_get("status")?)?,
        attempts: count(row.try_get("attempts")?),
        provider_id: row.try_get("provider_id")?,
        cost_usd: row.try_get("cost_usd")?,
        segments: count(row.try_get("segments")?),
        reason: row.try_get("reason")?,
        last_error: row.try_get("last_error")?,
        fallback_from: row.try_get("fallback_from")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        delivery: row.try_get("delivery")?,
        delivery_error: row.try_get("delivery_error")?,
        attempt_log: Vec::new(),
    })
}

pub(crate) fn attempt_from_row<R>(row: &R) -> Result<AttemptView, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AttemptView {
        attempt: count(row.try_get("attempt")?),
        channel: row.try_get("channel")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
        provider_id: row.try_get("provider_id")?,
        cost_usd: row.try_get("cost_usd")?,
    })
}

pub(crate) fn channel_cost_from_row<R>(row: &R) -> Result<ChannelCost, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ChannelCost {
        channel: row.try_get("channel")?,
        messages: u64::from(count(row.try_get("messages")?)),
        cost_usd: row.try_get("cost_usd")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(event_id: &str, channel: &'static str, attempt: u32, now_ms: i64) -> Claim {
        Claim {
            event_id: event_id.into(),
            class: "payment_reminder".into(),
            user_id: "user_1".into(),
            channel,
            attempt,
            fallback_from: None,
            address: None,
            cap: None,
            now_ms,
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://herald:s3cret@db.internal:5432/herald"),
            "postgres://herald:***@db.internal:5432/herald"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/herald"),
            "postgres://postgres@127.0.0.1/herald"
        );
        assert_eq!(redact(DEFAULT_URL), DEFAULT_URL);
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused_without_the_password() {
        let err = Store::open("mysql://root:hunter2@localhost/herald")
            .await
            .unwrap_err();
        assert_eq!(err.label(), "config");
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@localhost/herald"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn in_memory_store_claims_and_records() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        store.ping().await.unwrap();
        assert_eq!(
            store.claim(&[claim("e1", "sms", 1, 10)]).await.unwrap(),
            [ClaimOutcome::Send {
                previous_unknown: false
            }]
        );
        store
            .record(&[Record {
                event_id: "e1".into(),
                class: "payment_reminder".into(),
                user_id: "user_1".into(),
                channel: "sms",
                attempt: 1,
                outcome: Outcome::Sent {
                    provider_id: Some("SM1".into()),
                    cost_usd: 0.0075,
                    segments: 1,
                },
                opt_out: None,
                keep_for_fallback: None,
                track_receipts: false,
                now_ms: 20,
            }])
            .await
            .unwrap();
        assert_eq!(
            store.claim(&[claim("e1", "sms", 1, 30)]).await.unwrap(),
            [ClaimOutcome::AlreadySent {
                provider_id: Some("SM1".into())
            }]
        );
        let view = store.message("e1").await.unwrap().unwrap();
        assert_eq!(view.status, Status::Sent);
        assert_eq!(view.attempts, 1);
        assert_eq!(view.finished_at_ms, Some(20));
    }
}
