//! The delivery store's suite. Every test body is written once, as an async
//! fn taking a [`Db`], and runs twice: against a fresh SQLite file in a
//! temporary directory (`sqlite::...`) and against a fresh database on the
//! machine's PostgreSQL (`postgres::...`), created per test and dropped at
//! the end. PostgreSQL is `postgres://postgres@127.0.0.1:5432` unless
//! `HERALD_TEST_POSTGRES_URL` names another server (its maintenance
//! database; the user must be allowed to create databases).
//!
//! `cargo test --release --test store -- --ignored --nocapture` runs the
//! batch throughput measurement.

use std::time::Instant;

use herald::store::{
    Claim, ClaimOutcome, FrequencyCap, KeptEvent, MessageView, Outcome, Receipt, ReceiptOutcome,
    Record, ScheduledEvent, Status, Store, SuppressionAction, SuppressionChange,
};
use sqlx::{Connection, Executor};

/// A day in milliseconds.
const DAY: i64 = 86_400_000;
/// 2025-01-15T00:00:00Z, the suite's "today".
const T0: i64 = 1_736_899_200_000;

// ---------------------------------------------------------------------------
// The two backends.

/// A fresh, migrated store and the URL it was opened with.
struct Db {
    /// The store under test.
    store: Store,
    /// Its URL, to open it again (a restart) or to look at raw rows.
    url: String,
    /// Removes the database when the test ends, passed or not.
    _guard: Guard,
}

/// Held only for its `Drop`.
#[allow(dead_code)]
enum Guard {
    /// The SQLite file lives in this directory.
    Sqlite(tempfile::TempDir),
    /// The PostgreSQL database to drop.
    Postgres(PgDatabase),
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: open must create it.
        let url = format!("sqlite://{}/data/herald.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        Db {
            store,
            url,
            _guard: Guard::Sqlite(dir),
        }
    }

    async fn postgres() -> Db {
        let database = PgDatabase::create().await;
        let url = database.url();
        let store = Store::open(&url).await.unwrap();
        Db {
            store,
            url,
            _guard: Guard::Postgres(database),
        }
    }

    /// Opens the same database again, as a restarted herald would.
    async fn reopen(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }

    /// Runs SQL behind the store's back: `sqlite` or `postgres` by backend.
    async fn raw(&self, sqlite: &str, postgres: &str) {
        let sql = if self.url.starts_with("sqlite:") {
            sqlite
        } else {
            postgres
        };
        raw_at(&self.url, sql).await;
    }

    /// Rows in `attempts` for an event, read behind the store's back.
    async fn attempt_rows(&self, event_id: &str) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM attempts WHERE event_id = $1",
            event_id,
        )
        .await
    }

    /// Rows in `receipt_keys` for a provider id, read behind the store's back.
    async fn receipt_key_rows(&self, provider_id: &str) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM receipt_keys WHERE provider_id = $1",
            provider_id,
        )
        .await
    }

    /// `sql`, a count with one parameter `key`, read behind the store's back.
    async fn count(&self, sql: &str, key: &str) -> i64 {
        if self.url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

fn postgres_server() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs SQL on the store at `url` (SQLite or PostgreSQL, by its scheme),
/// behind the store's back.
async fn raw_at(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// A database of its own for one test, dropped (connections and all) when
/// this is dropped, even after a failed assertion.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let name = format!("herald_test_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&postgres_server())
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (or HERALD_TEST_POSTGRES_URL)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        PgDatabase { name }
    }

    fn url(&self) -> String {
        let mut url = url::Url::parse(&postgres_server()).unwrap();
        url.set_path(&self.name);
        url.to_string()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs outside any runtime we may block: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_server()).await {
                    let _ = admin.execute(statement.as_str()).await;
                }
            });
        })
        .join();
    }
}

/// Runs each named test body against both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::Db::postgres().await;
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

on_both_backends!(
    fresh_claim_sends,
    claim_after_sent_is_already_sent,
    crash_mid_call_is_recorded_outcome_unknown,
    retry_then_sent,
    sms_falls_back_to_email,
    dead_letter_and_suppression_are_final,
    release_makes_a_dead_letter_claimable,
    same_event_twice_in_one_batch,
    sent_never_moves_backwards,
    a_second_record_of_an_attempt_moves_its_message_not_its_attempt,
    record_without_claim_creates_the_message,
    unknown_outcome_can_be_claimed_again,
    message_view_lists_attempts_oldest_first,
    user_cost_counts_one_day_per_channel,
    purge_deletes_by_age_and_status_with_attempts,
    migrations_run_again_harmlessly,
    concurrent_batches_all_commit,
    suppressed_recipients_are_refused_until_allowed,
    a_provider_opt_out_is_listed_with_its_record,
    one_commit_applies_its_records_before_its_claims,
    a_failed_commit_applies_none_of_its_records_or_claims,
    a_batch_of_sends_is_found_by_its_receipts_and_keeps_its_bodies,
    a_due_event_is_leased_to_one_scheduler_until_its_lease_ends,
    a_call_in_flight_on_another_instance_is_not_sent_again,
    a_waiting_claim_renews_its_lease_unless_another_instance_took_the_event,
    a_record_closes_its_attempt_on_a_message_already_sent,
    a_webhook_delivery_applies_once,
    a_frequency_cap_counts_the_batch_in_order,
    erasing_a_user_keeps_anonymous_counts_only,
    provider_text_with_a_nul_is_stored,
);

// ---------------------------------------------------------------------------
// Building claims and records.

fn claim(event_id: &str, channel: &'static str, attempt: u32, now_ms: i64) -> Claim {
    Claim {
        event_id: event_id.to_owned(),
        class: "payment_reminder".to_owned(),
        user_id: "user_1".to_owned(),
        channel,
        attempt,
        fallback_from: None,
        address: None,
        cap: None,
        now_ms,
    }
}

fn record(
    event_id: &str,
    channel: &'static str,
    attempt: u32,
    outcome: Outcome,
    now_ms: i64,
) -> Record {
    Record {
        event_id: event_id.to_owned(),
        class: "payment_reminder".to_owned(),
        user_id: "user_1".to_owned(),
        channel,
        attempt,
        outcome,
        opt_out: None,
        keep_for_fallback: None,
        track_receipts: false,
        now_ms,
    }
}

/// An SMS of user `u1` held until `due_at_ms` (`send_at`).
fn held(event_id: &str, due_at_ms: i64) -> ScheduledEvent {
    ScheduledEvent {
        event_id: event_id.to_owned(),
        class: "payment_reminder".to_owned(),
        user_id: "u1".to_owned(),
        due_at_ms,
        reason: "send_at".to_owned(),
        channel: "sms".to_owned(),
        attempt: 0,
        fallback_from: None,
        priority: 5,
        published_at_ms: None,
        body: b"{}".to_vec(),
        created_at_ms: T0,
    }
}

fn sent(provider_id: &str, cost_usd: f64, segments: u32) -> Outcome {
    Outcome::Sent {
        provider_id: Some(provider_id.to_owned()),
        cost_usd,
        segments,
    }
}

fn retry(error: &str) -> Outcome {
    Outcome::Retry {
        error: error.to_owned(),
    }
}

fn dead_letter(reason: &str, error: &str) -> Outcome {
    Outcome::DeadLetter {
        reason: reason.to_owned(),
        error: Some(error.to_owned()),
    }
}

const SEND: ClaimOutcome = ClaimOutcome::Send {
    previous_unknown: false,
};
const SEND_AFTER_UNKNOWN: ClaimOutcome = ClaimOutcome::Send {
    previous_unknown: true,
};

async fn view(store: &Store, event_id: &str) -> MessageView {
    store
        .message(event_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record of {event_id}"))
}

/// The attempt log as `(attempt, channel, outcome)`.
fn log(view: &MessageView) -> Vec<(u32, &str, Option<&str>)> {
    view.attempt_log
        .iter()
        .map(|a| (a.attempt, a.channel.as_str(), a.outcome.as_deref()))
        .collect()
}

// ---------------------------------------------------------------------------
// The suite.

async fn fresh_claim_sends(db: &Db) {
    let store = &db.store;
    store.ping().await.unwrap();
    assert_eq!(
        store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sending);
    assert_eq!(v.class, "payment_reminder");
    assert_eq!(v.user_id, "user_1");
    assert_eq!(v.channel, "sms");
    assert_eq!(v.attempts, 1);
    assert_eq!(v.created_at_ms, T0);
    assert_eq!(v.updated_at_ms, T0);
    assert_eq!(v.finished_at_ms, None);
    assert_eq!(v.provider_id, None);
    assert_eq!(log(&v), [(1, "sms", None)]);
    assert_eq!(v.attempt_log[0].started_at_ms, T0);
    assert_eq!(v.attempt_log[0].finished_at_ms, None);
    // The latest attempt lives on the message; `attempts` holds only those
    // a later claim took over from (ADR 0005, 0006).
    assert_eq!(db.attempt_rows("e1").await, 0);
}

async fn claim_after_sent_is_already_sent(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record("e1", "sms", 1, sent("SM1", 0.0075, 1), T0 + 5)])
        .await
        .unwrap();
    let again = store
        .claim(&[
            claim("e1", "sms", 1, T0 + 60_000),
            claim("e1", "email", 1, T0 + 60_001),
        ])
        .await
        .unwrap();
    let already = ClaimOutcome::AlreadySent {
        provider_id: Some("SM1".to_owned()),
    };
    assert_eq!(again, [already.clone(), already]);
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.attempts, 1);
    assert_eq!(v.channel, "sms");
    assert_eq!(v.updated_at_ms, T0 + 5);
    assert_eq!(log(&v), [(1, "sms", Some("sent"))]);
}

async fn crash_mid_call_is_recorded_outcome_unknown(db: &Db) {
    assert_eq!(
        db.store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    // herald dies mid-call; a restarted herald gets the redelivery. It is
    // another process to the store: until the dead one's lease (the
    // default, 60 s) runs out, the call may still be running.
    db.store.close().await;
    let store = db.reopen().await;
    assert_eq!(
        store
            .claim(&[claim("e1", "sms", 1, T0 + 1_000)])
            .await
            .unwrap(),
        [ClaimOutcome::InFlightElsewhere]
    );
    assert_eq!(log(&view(&store, "e1").await), [(1, "sms", None)]);
    const LEASE_OVER: i64 = T0 + 60_000;
    assert_eq!(
        store
            .claim(&[claim("e1", "sms", 1, LEASE_OVER)])
            .await
            .unwrap(),
        [SEND_AFTER_UNKNOWN]
    );
    let v = view(&store, "e1").await;
    assert_eq!(v.status, Status::Sending);
    assert_eq!(v.attempts, 2);
    assert_eq!(
        log(&v),
        [(1, "sms", Some("outcome_unknown")), (1, "sms", None)]
    );
    assert_eq!(v.attempt_log[0].finished_at_ms, Some(LEASE_OVER));
    assert!(v.attempt_log[0].error.is_some());
    store
        .record(&[record(
            "e1",
            "sms",
            1,
            sent("SM2", 0.0075, 1),
            LEASE_OVER + 500,
        )])
        .await
        .unwrap();
    let v = view(&store, "e1").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.provider_id.as_deref(), Some("SM2"));
    assert_eq!(
        log(&v),
        [
            (1, "sms", Some("outcome_unknown")),
            (1, "sms", Some("sent"))
        ]
    );
    store.close().await;
}

async fn retry_then_sent(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record("e1", "sms", 1, retry("twilio_5xx: 503"), T0 + 10)])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Retrying);
    assert_eq!(v.last_error.as_deref(), Some("twilio_5xx: 503"));
    assert_eq!(v.finished_at_ms, None);
    assert_eq!(log(&v), [(1, "sms", Some("retry"))]);
    // Finished on its message, until the next claim writes it to `attempts`.
    assert_eq!(db.attempt_rows("e1").await, 0);
    assert_eq!(
        store
            .claim(&[claim("e1", "sms", 2, T0 + 60_000)])
            .await
            .unwrap(),
        [SEND]
    );
    assert_eq!(view(store, "e1").await.status, Status::Sending);
    store
        .record(&[record("e1", "sms", 2, sent("SM9", 0.015, 2), T0 + 60_100)])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.attempts, 2);
    assert_eq!(v.segments, 2);
    assert_eq!(v.cost_usd, 0.015);
    assert_eq!(v.finished_at_ms, Some(T0 + 60_100));
    assert_eq!(v.last_error.as_deref(), Some("twilio_5xx: 503"));
    assert_eq!(
        log(&v),
        [(1, "sms", Some("retry")), (2, "sms", Some("sent"))]
    );
    assert_eq!(v.attempt_log[0].error.as_deref(), Some("twilio_5xx: 503"));
    assert_eq!(v.attempt_log[0].finished_at_ms, Some(T0 + 10));
    assert_eq!(v.attempt_log[1].provider_id.as_deref(), Some("SM9"));
    assert_eq!(v.attempt_log[1].cost_usd, Some(0.015));
    assert_eq!(v.attempt_log[1].finished_at_ms, Some(T0 + 60_100));
    assert_eq!(db.attempt_rows("e1").await, 1);
}

async fn sms_falls_back_to_email(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record(
            "e1",
            "sms",
            1,
            Outcome::Fallback {
                error: "twilio 21610".to_owned(),
            },
            T0 + 10,
        )])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Fallback);
    assert_eq!(v.finished_at_ms, None);
    let email = Claim {
        fallback_from: Some("sms"),
        ..claim("e1", "email", 1, T0 + 20)
    };
    assert_eq!(store.claim(&[email]).await.unwrap(), [SEND]);
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sending);
    assert_eq!(v.channel, "email");
    assert_eq!(v.fallback_from.as_deref(), Some("sms"));
    store
        .record(&[record("e1", "email", 1, sent("re_1", 0.0001, 1), T0 + 30)])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.channel, "email");
    assert_eq!(v.provider_id.as_deref(), Some("re_1"));
    assert_eq!(v.cost_usd, 0.0001);
    assert_eq!(v.attempts, 2);
    assert_eq!(v.last_error.as_deref(), Some("twilio 21610"));
    assert_eq!(
        log(&v),
        [(1, "sms", Some("fallback")), (1, "email", Some("sent"))]
    );
    // A late sms retry record must not disturb the sent email.
    store
        .record(&[record("e1", "sms", 1, retry("late"), T0 + 40)])
        .await
        .unwrap();
    assert_eq!(view(store, "e1").await.status, Status::Sent);
}

/// PostgreSQL's text cannot hold U+0000: a provider's error or id with one
/// must not fail the commit (the journal would try that batch forever).
async fn provider_text_with_a_nul_is_stored(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("nul", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record("nul", "sms", 1, retry("bad\0gateway"), T0 + 1)])
        .await
        .expect("an error with a NUL commits");
    let again = store
        .claim(&[claim("nul", "sms", 2, T0 + 2)])
        .await
        .unwrap();
    assert_eq!(again, vec![SEND]);
    store
        .record(&[record("nul", "sms", 2, sent("SM\0one", 0.0079, 1), T0 + 3)])
        .await
        .expect("a provider id with a NUL commits");
    let v = view(store, "nul").await;
    assert_eq!(v.status.as_str(), "sent");
    let kept = |s: &str| s.replace('\u{FFFD}', "\0");
    assert_eq!(kept(v.provider_id.as_deref().unwrap()), "SM\0one");
    assert_eq!(
        kept(v.attempt_log[0].error.as_deref().unwrap()),
        "bad\0gateway"
    );
}

async fn dead_letter_and_suppression_are_final(db: &Db) {
    let store = &db.store;
    store
        .claim(&[claim("dead", "sms", 1, T0), claim("quiet", "sms", 1, T0)])
        .await
        .unwrap();
    store
        .record(&[
            record(
                "dead",
                "sms",
                1,
                dead_letter("permanent_failure", "twilio 21211"),
                T0 + 1,
            ),
            record(
                "quiet",
                "sms",
                1,
                Outcome::Suppressed {
                    reason: "opted_out".to_owned(),
                },
                T0 + 2,
            ),
        ])
        .await
        .unwrap();
    let again = store
        .claim(&[
            claim("dead", "sms", 1, T0 + 10),
            claim("quiet", "email", 1, T0 + 10),
        ])
        .await
        .unwrap();
    assert_eq!(
        again,
        [
            ClaimOutcome::AlreadyFinal {
                status: Status::DeadLettered
            },
            ClaimOutcome::AlreadyFinal {
                status: Status::Suppressed
            },
        ]
    );
    let dead = view(store, "dead").await;
    assert_eq!(dead.status, Status::DeadLettered);
    assert_eq!(dead.reason.as_deref(), Some("permanent_failure"));
    assert_eq!(dead.last_error.as_deref(), Some("twilio 21211"));
    assert_eq!(dead.finished_at_ms, Some(T0 + 1));
    assert_eq!(dead.attempts, 1);
    assert_eq!(log(&dead), [(1, "sms", Some("dead_letter"))]);
    let quiet = view(store, "quiet").await;
    assert_eq!(quiet.status, Status::Suppressed);
    assert_eq!(quiet.reason.as_deref(), Some("opted_out"));
    assert_eq!(quiet.finished_at_ms, Some(T0 + 2));
    assert_eq!(log(&quiet), [(1, "sms", Some("suppressed"))]);
    // A later retry record cannot revive either.
    store
        .record(&[
            record("dead", "sms", 1, retry("late"), T0 + 20),
            record("quiet", "sms", 1, retry("late"), T0 + 20),
        ])
        .await
        .unwrap();
    assert_eq!(view(store, "dead").await.status, Status::DeadLettered);
    assert_eq!(view(store, "quiet").await.status, Status::Suppressed);
}

async fn release_makes_a_dead_letter_claimable(db: &Db) {
    let store = &db.store;
    store
        .claim(&[
            claim("dead", "sms", 3, T0),
            claim("sent", "sms", 1, T0),
            claim("quiet", "sms", 1, T0),
        ])
        .await
        .unwrap();
    store
        .record(&[
            record(
                "dead",
                "sms",
                3,
                dead_letter("retries_exhausted", "503"),
                T0 + 1,
            ),
            record("sent", "sms", 1, sent("SM1", 0.0075, 1), T0 + 1),
            record(
                "quiet",
                "sms",
                1,
                Outcome::Suppressed {
                    reason: "opted_out".to_owned(),
                },
                T0 + 1,
            ),
        ])
        .await
        .unwrap();
    assert!(store.release("dead", T0 + 100).await.unwrap());
    assert!(!store.release("sent", T0 + 100).await.unwrap());
    assert!(!store.release("quiet", T0 + 100).await.unwrap());
    assert!(!store.release("missing", T0 + 100).await.unwrap());
    let v = view(store, "dead").await;
    assert_eq!(v.status, Status::Retrying);
    assert_eq!(v.finished_at_ms, None);
    assert_eq!(v.updated_at_ms, T0 + 100);
    // Released once: a second release finds nothing to release.
    assert!(!store.release("dead", T0 + 101).await.unwrap());
    assert_eq!(
        store
            .claim(&[claim("dead", "sms", 1, T0 + 200)])
            .await
            .unwrap(),
        [SEND]
    );
    store
        .record(&[record("dead", "sms", 1, sent("SM2", 0.0075, 1), T0 + 300)])
        .await
        .unwrap();
    let v = view(store, "dead").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.attempts, 2);
    assert_eq!(
        log(&v),
        [(3, "sms", Some("dead_letter")), (1, "sms", Some("sent"))]
    );
    assert_eq!(view(store, "sent").await.status, Status::Sent);
    assert_eq!(view(store, "quiet").await.status, Status::Suppressed);
}

async fn same_event_twice_in_one_batch(db: &Db) {
    let store = &db.store;
    let outcomes = store
        .claim(&[
            claim("e1", "sms", 1, T0),
            claim("e1", "sms", 1, T0 + 1),
            claim("e2", "sms", 1, T0 + 2),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [SEND, SEND_AFTER_UNKNOWN, SEND]);
    let v = view(store, "e1").await;
    assert_eq!(v.attempts, 2);
    assert_eq!(
        log(&v),
        [(1, "sms", Some("outcome_unknown")), (1, "sms", None)]
    );
    // Records in one batch apply in order too: the second sees the first.
    store
        .record(&[
            record("e2", "sms", 1, sent("SM2", 0.0075, 1), T0 + 10),
            record("e2", "sms", 1, retry("late duplicate"), T0 + 11),
            record("e1", "sms", 1, retry("503"), T0 + 12),
        ])
        .await
        .unwrap();
    assert_eq!(view(store, "e2").await.status, Status::Sent);
    assert_eq!(view(store, "e1").await.status, Status::Retrying);
    // A batch mixing a sent event, a retried one and a new one.
    let outcomes = store
        .claim(&[
            claim("e2", "sms", 1, T0 + 20),
            claim("e1", "sms", 2, T0 + 20),
            claim("e3", "email", 1, T0 + 20),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            ClaimOutcome::AlreadySent {
                provider_id: Some("SM2".to_owned())
            },
            SEND,
            SEND,
        ]
    );
}

async fn sent_never_moves_backwards(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record("e1", "sms", 1, sent("SM1", 0.0075, 1), T0 + 1)])
        .await
        .unwrap();
    store
        .record(&[
            record("e1", "sms", 1, retry("late"), T0 + 2),
            record(
                "e1",
                "sms",
                1,
                Outcome::Fallback {
                    error: "late".to_owned(),
                },
                T0 + 3,
            ),
            record(
                "e1",
                "sms",
                1,
                dead_letter("permanent_failure", "late"),
                T0 + 4,
            ),
            record(
                "e1",
                "sms",
                1,
                Outcome::Suppressed {
                    reason: "opted_out".to_owned(),
                },
                T0 + 5,
            ),
            record(
                "e1",
                "sms",
                1,
                Outcome::Unknown {
                    error: "late".to_owned(),
                },
                T0 + 6,
            ),
            record("e1", "sms", 1, sent("SM-other", 0.5, 9), T0 + 7),
        ])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.provider_id.as_deref(), Some("SM1"));
    assert_eq!(v.cost_usd, 0.0075);
    assert_eq!(v.segments, 1);
    assert_eq!(v.finished_at_ms, Some(T0 + 1));
    assert_eq!(v.updated_at_ms, T0 + 1);
    assert_eq!(v.last_error, None);
    assert_eq!(v.reason, None);
    assert_eq!(log(&v), [(1, "sms", Some("sent"))]);
}

/// An attempt finishes once: a second record naming it (in a later
/// batch) still moves the message as the status machine allows, but the
/// attempt keeps the outcome it finished with.
async fn a_second_record_of_an_attempt_moves_its_message_not_its_attempt(db: &Db) {
    let store = &db.store;
    store
        .claim(&[claim("e1", "sms", 1, T0), claim("e2", "sms", 1, T0)])
        .await
        .unwrap();
    store
        .record(&[
            record("e1", "sms", 1, retry("503"), T0 + 1),
            record("e2", "sms", 1, retry("503"), T0 + 1),
        ])
        .await
        .unwrap();
    store
        .record(&[
            record(
                "e1",
                "sms",
                1,
                dead_letter("permanent_failure", "x"),
                T0 + 2,
            ),
            record("e2", "sms", 1, sent("SM2", 0.0075, 1), T0 + 2),
        ])
        .await
        .unwrap();
    for (id, status) in [("e1", Status::DeadLettered), ("e2", Status::Sent)] {
        let v = view(store, id).await;
        assert_eq!(v.status, status, "{id}");
        assert_eq!(log(&v), [(1, "sms", Some("retry"))], "{id}");
        let attempt = &v.attempt_log[0];
        assert_eq!(attempt.finished_at_ms, Some(T0 + 1), "{id}");
        assert_eq!(attempt.error.as_deref(), Some("503"), "{id}");
        assert_eq!(attempt.provider_id, None, "{id}");
    }
}

async fn record_without_claim_creates_the_message(db: &Db) {
    let store = &db.store;
    // Bad input with an id: dead-lettered on decode, never claimed.
    store
        .record(&[Record {
            user_id: String::new(),
            ..record(
                "bad-1",
                "sms",
                1,
                Outcome::DeadLetter {
                    reason: "invalid_phone".to_owned(),
                    error: None,
                },
                T0,
            )
        }])
        .await
        .unwrap();
    let v = view(store, "bad-1").await;
    assert_eq!(v.status, Status::DeadLettered);
    assert_eq!(v.reason.as_deref(), Some("invalid_phone"));
    assert_eq!(v.last_error, None);
    assert_eq!(v.user_id, "");
    assert_eq!(v.class, "payment_reminder");
    assert_eq!(v.attempts, 0);
    assert!(v.attempt_log.is_empty());
    assert_eq!(v.created_at_ms, T0);
    assert_eq!(v.finished_at_ms, Some(T0));
    assert_eq!(
        store
            .claim(&[claim("bad-1", "sms", 1, T0 + 1)])
            .await
            .unwrap(),
        [ClaimOutcome::AlreadyFinal {
            status: Status::DeadLettered
        }]
    );
    // A sent record never claimed (cannot happen in herald, but must not
    // be lost).
    store
        .record(&[record("odd", "email", 1, sent("re_9", 0.0001, 1), T0 + 2)])
        .await
        .unwrap();
    let v = view(store, "odd").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(v.provider_id.as_deref(), Some("re_9"));
    assert_eq!(v.attempts, 0);
}

async fn unknown_outcome_can_be_claimed_again(db: &Db) {
    let store = &db.store;
    store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    store
        .record(&[record(
            "e1",
            "sms",
            1,
            Outcome::Unknown {
                error: "timeout after request".to_owned(),
            },
            T0 + 30_000,
        )])
        .await
        .unwrap();
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::OutcomeUnknown);
    assert_eq!(v.finished_at_ms, Some(T0 + 30_000));
    assert_eq!(log(&v), [(1, "sms", Some("outcome_unknown"))]);
    assert_eq!(
        store
            .claim(&[claim("e1", "sms", 2, T0 + 60_000)])
            .await
            .unwrap(),
        [SEND]
    );
    let v = view(store, "e1").await;
    assert_eq!(v.status, Status::Sending);
    assert_eq!(v.finished_at_ms, None);
    assert_eq!(v.attempts, 2);
}

async fn message_view_lists_attempts_oldest_first(db: &Db) {
    let store = &db.store;
    assert!(store.message("missing").await.unwrap().is_none());
    for attempt in 1..=3u32 {
        let at = T0 + i64::from(attempt) * 1_000;
        store
            .claim(&[claim("e1", "sms", attempt, at)])
            .await
            .unwrap();
        let outcome = if attempt < 3 {
            retry(&format!("error {attempt}"))
        } else {
            dead_letter("retries_exhausted", "error 3")
        };
        store
            .record(&[record("e1", "sms", attempt, outcome, at + 100)])
            .await
            .unwrap();
    }
    let v = view(store, "e1").await;
    assert_eq!(v.attempts, 3);
    assert_eq!(
        log(&v),
        [
            (1, "sms", Some("retry")),
            (2, "sms", Some("retry")),
            (3, "sms", Some("dead_letter")),
        ]
    );
    let starts: Vec<i64> = v.attempt_log.iter().map(|a| a.started_at_ms).collect();
    assert_eq!(starts, [T0 + 1_000, T0 + 2_000, T0 + 3_000]);
    let errors: Vec<Option<&str>> = v.attempt_log.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(errors, [Some("error 1"), Some("error 2"), Some("error 3")]);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["status"], "dead_lettered");
    assert_eq!(json["attempt_log"][2]["outcome"], "dead_letter");
    assert_eq!(json["attempt_log"].as_array().unwrap().len(), 3);
}

async fn user_cost_counts_one_day_per_channel(db: &Db) {
    let store = &db.store;
    let day = |n: i64| T0 + n * DAY;
    // (event, user, channel, finished, outcome)
    let cases: [(&str, &str, &'static str, i64, Outcome); 7] = [
        ("a", "u1", "sms", day(0) + 1, sent("SM1", 0.0075, 1)),
        ("b", "u1", "sms", day(1) - 1, sent("SM2", 0.015, 2)),
        ("c", "u1", "email", day(0) + 5, sent("re_1", 0.0001, 1)),
        ("d", "u1", "sms", day(1), sent("SM3", 0.0075, 1)),
        ("e", "u1", "sms", day(0) - 1, sent("SM4", 0.0075, 1)),
        (
            "f",
            "u1",
            "sms",
            day(0) + 9,
            dead_letter("permanent_failure", "x"),
        ),
        ("g", "u2", "sms", day(0) + 9, sent("SM5", 0.0075, 1)),
    ];
    let claims: Vec<Claim> = cases
        .iter()
        .map(|(id, user, channel, at, _)| Claim {
            user_id: (*user).to_owned(),
            ..claim(id, channel, 1, at - 1)
        })
        .collect();
    store.claim(&claims).await.unwrap();
    let records: Vec<Record> = cases
        .iter()
        .map(|(id, user, channel, at, outcome)| Record {
            user_id: (*user).to_owned(),
            ..record(id, channel, 1, outcome.clone(), *at)
        })
        .collect();
    store.record(&records).await.unwrap();

    let cost = store.user_cost("u1", day(0), day(1)).await.unwrap();
    assert_eq!(cost.user_id, "u1");
    assert_eq!((cost.from_ms, cost.to_ms), (day(0), day(1)));
    assert_eq!(cost.messages, 3);
    assert!((cost.cost_usd - 0.0226).abs() < 1e-9, "{cost:?}");
    let channels: Vec<(&str, u64)> = cost
        .channels
        .iter()
        .map(|c| (c.channel.as_str(), c.messages))
        .collect();
    assert_eq!(channels, [("email", 1), ("sms", 2)]);
    assert!((cost.channels[0].cost_usd - 0.0001).abs() < 1e-9);
    assert!((cost.channels[1].cost_usd - 0.0225).abs() < 1e-9);

    let next = store.user_cost("u1", day(1), day(2)).await.unwrap();
    assert_eq!(next.messages, 1);
    assert_eq!(next.channels.len(), 1);
    let nobody = store.user_cost("nobody", day(0), day(1)).await.unwrap();
    assert_eq!(nobody.messages, 0);
    assert_eq!(nobody.cost_usd, 0.0);
    assert!(nobody.channels.is_empty());
}

async fn purge_deletes_by_age_and_status_with_attempts(db: &Db) {
    let store = &db.store;
    let now = T0 + 200 * DAY;
    let delivered_before = now - 90 * DAY;
    let failed_before = now - 30 * DAY;
    let old = now - 100 * DAY;
    let middle = now - 60 * DAY;
    let recent = now - DAY;
    // (event, finished, outcome); `None` leaves the claim open.
    let cases: Vec<(String, i64, Option<Outcome>)> = vec![
        ("sent-old-1".into(), old, Some(sent("SM1", 0.0075, 1))),
        ("sent-old-2".into(), old, Some(sent("SM2", 0.0075, 1))),
        ("sent-old-3".into(), old, Some(sent("SM3", 0.0075, 1))),
        ("sent-middle".into(), middle, Some(sent("SM4", 0.0075, 1))),
        ("sent-recent".into(), recent, Some(sent("SM5", 0.0075, 1))),
        (
            "dead-middle".into(),
            middle,
            Some(dead_letter("permanent_failure", "x")),
        ),
        (
            "dead-recent".into(),
            recent,
            Some(dead_letter("permanent_failure", "x")),
        ),
        (
            "quiet-old".into(),
            old,
            Some(Outcome::Suppressed {
                reason: "opted_out".into(),
            }),
        ),
        (
            "unknown-middle".into(),
            middle,
            Some(Outcome::Unknown {
                error: "timeout".into(),
            }),
        ),
        ("retrying-old".into(), old, Some(retry("503"))),
        ("sending-old".into(), old, None),
    ];
    // sent-old-1 was retried once: its first attempt is in `attempts`.
    store
        .claim(&[claim("sent-old-1", "sms", 1, old - 3)])
        .await
        .unwrap();
    store
        .record(&[record("sent-old-1", "sms", 1, retry("503"), old - 2)])
        .await
        .unwrap();
    let claims: Vec<Claim> = cases
        .iter()
        .map(|(id, at, _)| claim(id, "sms", 1, at - 1))
        .collect();
    store.claim(&claims).await.unwrap();
    let records: Vec<Record> = cases
        .iter()
        .filter_map(|(id, at, outcome)| {
            Some(Record {
                track_receipts: true,
                ..record(id, "sms", 1, outcome.clone()?, *at)
            })
        })
        .collect();
    store.record(&records).await.unwrap();
    assert_eq!(db.attempt_rows("sent-old-1").await, 1);
    let sids = ["SM1", "SM2", "SM3", "SM4", "SM5"];
    for sid in sids {
        assert_eq!(db.receipt_key_rows(sid).await, 1, "{sid}");
    }

    // A batch of 2 makes both deletes loop.
    let deleted = store
        .purge(delivered_before, failed_before, 2)
        .await
        .unwrap();
    assert_eq!(deleted, 6);
    for gone in [
        "sent-old-1",
        "sent-old-2",
        "sent-old-3",
        "dead-middle",
        "quiet-old",
        "unknown-middle",
    ] {
        assert!(store.message(gone).await.unwrap().is_none(), "{gone} kept");
        assert_eq!(db.attempt_rows(gone).await, 0, "attempts of {gone} kept");
    }
    for kept in [
        "sent-middle",
        "sent-recent",
        "dead-recent",
        "retrying-old",
        "sending-old",
    ] {
        let v = store.message(kept).await.unwrap();
        assert!(v.is_some(), "{kept} deleted");
        // `sending-old`'s attempt is open, on its message.
        assert_eq!(v.unwrap().attempt_log.len(), 1, "attempts of {kept}");
    }
    // Receipt keys go once no receipt can come (days, whatever the
    // messages' retention): all five, two a statement.
    for sid in sids {
        assert_eq!(db.receipt_key_rows(sid).await, 0, "{sid}");
    }
    assert_eq!(
        store
            .purge(delivered_before, failed_before, 2)
            .await
            .unwrap(),
        0
    );
}

async fn migrations_run_again_harmlessly(db: &Db) {
    db.store.claim(&[claim("e1", "sms", 1, T0)]).await.unwrap();
    let second = db.reopen().await;
    let third = db.reopen().await;
    assert_eq!(view(&second, "e1").await.status, Status::Sending);
    assert_eq!(
        third.claim(&[claim("e2", "email", 1, T0)]).await.unwrap(),
        [SEND]
    );
    assert_eq!(view(&db.store, "e2").await.attempts, 1);
    second.close().await;
    third.close().await;
}

async fn concurrent_batches_all_commit(db: &Db) {
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let store = db.store.clone();
            tokio::spawn(async move {
                for batch in 0..5 {
                    let claims: Vec<Claim> = (0..50)
                        .map(|i| claim(&format!("c-{task}-{batch}-{i}"), "sms", 1, T0))
                        .collect();
                    let outcomes = store.claim(&claims).await.unwrap();
                    assert!(outcomes.iter().all(|o| *o == SEND));
                    let records: Vec<Record> = claims
                        .iter()
                        .map(|c| record(&c.event_id, "sms", 1, sent("SM", 0.0075, 1), T0 + 1))
                        .collect();
                    store.record(&records).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let v = view(&db.store, "c-3-4-49").await;
    assert_eq!(v.status, Status::Sent);
    let cost = db.store.user_cost("user_1", T0, T0 + DAY).await.unwrap();
    assert_eq!(cost.messages, 1_000);
}

// ---------------------------------------------------------------------------
// Throughput (ignored by default; run in release mode).

async fn measure(db: &Db) {
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let batches = setting("HERALD_STORE_BENCH_BATCHES", 40);
    let batch = setting("HERALD_STORE_BENCH_BATCH", 500);
    let store = &db.store;
    let mut claim_time = std::time::Duration::ZERO;
    let mut record_time = std::time::Duration::ZERO;
    for b in 0..batches {
        let claims: Vec<Claim> = (0..batch)
            .map(|i| claim(&format!("evt-{b}-{i}"), "sms", 1, T0))
            .collect();
        let started = Instant::now();
        let outcomes = store.claim(&claims).await.unwrap();
        claim_time += started.elapsed();
        assert_eq!(outcomes.len(), batch);
        let records: Vec<Record> = claims
            .iter()
            .map(|c| record(&c.event_id, "sms", 1, sent("SM", 0.0075, 1), T0 + 1))
            .collect();
        let started = Instant::now();
        store.record(&records).await.unwrap();
        record_time += started.elapsed();
    }
    let events = (batch * batches) as f64;
    println!(
        "{}: {} batches of {batch}: claim {:.0} events/s, record {:.0} events/s, claim+record {:.0} events/s",
        store.backend(),
        batches,
        events / claim_time.as_secs_f64(),
        events / record_time.as_secs_f64(),
        events / (claim_time + record_time).as_secs_f64(),
    );
}

/// The journal's commits keep prepared statements on the SQLite writer's
/// connection; closing the store must still close that connection cleanly.
/// SQLite's last connection to close checkpoints the WAL and deletes it, so
/// a `-wal` file left behind means a connection stayed open.
#[tokio::test]
async fn closing_a_sqlite_store_closes_its_writer_after_commits() {
    let (db, path) = sqlite_file_with_20_claims("w").await;
    let wal = format!("{path}-wal");
    assert!(std::path::Path::new(&wal).exists(), "{wal} while open");
    db.store.close().await;
    assert!(
        !std::path::Path::new(&wal).exists(),
        "{wal} left after close"
    );
}

/// The writer's commits reach the database file through the background
/// checkpoint (`src/store/checkpoint.rs`), with no later commit and the log
/// far below SQLite's own threshold of 1,000 pages.
#[tokio::test]
async fn a_sqlite_stores_commits_reach_its_file_without_another_commit() {
    let (_db, path) = sqlite_file_with_20_claims("f").await;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let in_file = messages_in_file(&path);
        if in_file == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{in_file} of 20 messages in the database file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A SQLite file store that has committed 20 claims (event ids `prefix`0
/// to 19), and its file's path.
async fn sqlite_file_with_20_claims(prefix: &str) -> (Db, String) {
    let db = Db::sqlite().await;
    let claims: Vec<Claim> = (0..20)
        .map(|i| claim(&format!("{prefix}{i}"), "sms", 1, T0))
        .collect();
    db.store.claim(&claims).await.unwrap();
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    (db, path)
}

/// The messages that the database file at `path` holds without its log: a
/// copy of the file alone, opened. 0 if the copy cannot be read (a
/// checkpoint was writing the file meanwhile).
fn messages_in_file(path: &str) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    std::fs::copy(path, &copy).unwrap();
    rusqlite::Connection::open(&copy)
        .and_then(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// Runs the shipped migrations of `dialect` before `first_not_run` on
/// `url`, as an earlier herald did.
async fn migrate_before(url: &str, dialect: &str, first_not_run: &str) {
    let dir = tempfile::tempdir().unwrap();
    let shipped = format!("{}/migrations/{dialect}", env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(shipped).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < first_not_run {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    if dialect == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        migrator.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        migrator.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// Migration 0009 moves each event's open attempt from `attempts` onto its
/// message: the store made before it still shows the attempt open, its
/// owner's lease still holds, and its record closes it. An open attempt
/// that was not its event's latest (none should exist) is closed as an
/// unknown outcome.
async fn open_attempts_move_onto_their_messages(url: &str, dialect: &str) {
    migrate_before(url, dialect, "0009").await;
    let rows = "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, \
created_at, updated_at) VALUES ('m-open', 'otp', 'u1', 'sms', 'sending', 2, 10, 30), \
('m-done', 'otp', 'u1', 'sms', 'sent', 1, 10, 20); \
INSERT INTO attempts (event_id, seq, attempt, channel, started_at, finished_at, outcome, \
owner, lease_until) VALUES ('m-open', 1, 1, 'sms', 10, NULL, NULL, 'gone', 15), \
('m-open', 2, 2, 'sms', 30, NULL, NULL, 'other', 9000000000000), \
('m-done', 1, 1, 'sms', 10, 20, 'sent', 'a', 15);";
    raw_at(url, rows).await;
    let store = Store::open(url).await.unwrap();
    let v = view(&store, "m-open").await;
    assert_eq!(
        log(&v),
        [(1, "sms", Some("outcome_unknown")), (2, "sms", None)]
    );
    assert_eq!(v.attempt_log[1].started_at_ms, 30);
    assert_eq!(
        log(&view(&store, "m-done").await),
        [(1, "sms", Some("sent"))]
    );
    // Another owner's lease, moved with its attempt, still holds.
    open_attempt_2_holds_then_finishes(&store, "m-open", "outcome_unknown").await;
    store.close().await;
}

/// `id`'s attempt 2, open on its message and another owner's within its
/// lease, keeps a claim off; its record then finishes it, after attempt
/// 1, which finished as `first`.
async fn open_attempt_2_holds_then_finishes(store: &Store, id: &str, first: &str) {
    assert_eq!(
        store.claim(&[claim(id, "sms", 2, T0)]).await.unwrap(),
        [ClaimOutcome::InFlightElsewhere]
    );
    store
        .record(&[record(id, "sms", 2, sent("SM2", 0.0075, 1), T0)])
        .await
        .unwrap();
    let v = view(store, id).await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(log(&v), [(1, "sms", Some(first)), (2, "sms", Some("sent"))]);
    assert_eq!(v.attempt_log[1].provider_id.as_deref(), Some("SM2"));
}

/// Runs a test body `(url, dialect)` on a fresh store of each backend,
/// as two tests named `$sqlite` and `$postgres`.
macro_rules! on_fresh_stores {
    ($sqlite:ident, $postgres:ident, $body:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/herald.db?mode=rwc", dir.path().display());
            $body(&url, "sqlite").await;
        }

        #[tokio::test]
        async fn $postgres() {
            let database = PgDatabase::create().await;
            $body(&database.url(), "postgres").await;
        }
    };
}

on_fresh_stores!(
    sqlite_open_attempts_move_onto_their_messages,
    postgres_open_attempts_move_onto_their_messages,
    open_attempts_move_onto_their_messages
);

/// Migration 0010 keeps an event's latest attempt on its message once it
/// finishes: a store made before it keeps its finished attempts in
/// `attempts` and its open ones open on their messages, and a later claim
/// or record carries on from either.
async fn a_store_from_before_0010_keeps_its_attempts(url: &str, dialect: &str) {
    migrate_before(url, dialect, "0010").await;
    let rows = "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, \
created_at, updated_at, open_attempt, open_channel, open_started_at, owner, lease_until) VALUES \
('m-open', 'otp', 'u1', 'sms', 'sending', 2, 10, 30, 2, 'sms', 30, 'other', 9000000000000), \
('m-retry', 'otp', 'u1', 'sms', 'retrying', 1, 10, 20, NULL, NULL, NULL, NULL, NULL); \
INSERT INTO attempts (event_id, seq, attempt, channel, started_at, finished_at, outcome, error, \
owner, lease_until) VALUES ('m-open', 1, 1, 'sms', 10, 20, 'retry', '503', 'a', 15), \
('m-retry', 1, 1, 'sms', 10, 20, 'retry', '503', 'a', 15);";
    raw_at(url, rows).await;
    let store = Store::open(url).await.unwrap();
    let v = view(&store, "m-open").await;
    assert_eq!(log(&v), [(1, "sms", Some("retry")), (2, "sms", None)]);
    assert_eq!(v.attempt_log[1].started_at_ms, 30);
    open_attempt_2_holds_then_finishes(&store, "m-open", "retry").await;
    // A message whose attempts are all in `attempts` takes its next one.
    assert_eq!(
        store
            .claim(&[claim("m-retry", "sms", 2, T0)])
            .await
            .unwrap(),
        [SEND]
    );
    store
        .record(&[record("m-retry", "sms", 2, sent("SM3", 0.0075, 1), T0 + 1)])
        .await
        .unwrap();
    assert_eq!(
        log(&view(&store, "m-retry").await),
        [(1, "sms", Some("retry")), (2, "sms", Some("sent"))]
    );
    store.close().await;
}

on_fresh_stores!(
    a_sqlite_store_from_before_0010_keeps_its_attempts,
    a_postgres_store_from_before_0010_keeps_its_attempts,
    a_store_from_before_0010_keeps_its_attempts
);

/// Migration 0008 makes `messages` and `attempts` again (their CHECKs as
/// comparisons): a SQLite store made before it keeps every row, the
/// attempts still belong to their messages, and deleting a message still
/// deletes its attempts.
#[tokio::test]
async fn a_sqlite_store_from_before_0008_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db?mode=rwc", dir.path().display());
    migrate_before(&url, "sqlite", "0008").await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, provider_id, \
cost_usd, segments, created_at, updated_at, finished_at, delivery, delivery_rank) \
VALUES ('old-1', 'otp', 'u1', 'sms', 'sent', 1, 'SM1', 0.0079, 1, 10, 20, 20, 'delivered', 3), \
('old-2', 'digest', 'u2', 'email', 'sending', 1, NULL, 0, 0, 30, 30, NULL, NULL, 0); \
INSERT INTO attempts (event_id, seq, attempt, channel, started_at, finished_at, outcome, \
provider_id, cost_usd, owner, lease_until) \
VALUES ('old-1', 1, 1, 'sms', 10, 20, 'sent', 'SM1', 0.0079, 'a', 15), \
('old-2', 1, 1, 'email', 30, NULL, NULL, NULL, NULL, 'a', 45);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = Store::open(&url).await.unwrap();
    let done = view(&store, "old-1").await;
    assert_eq!(
        (done.status, done.provider_id.as_deref(), done.segments),
        (Status::Sent, Some("SM1"), 1)
    );
    assert_eq!(done.delivery.as_deref(), Some("delivered"));
    assert_eq!(done.attempt_log.len(), 1);
    assert_eq!(done.attempt_log[0].outcome.as_deref(), Some("sent"));
    let open = view(&store, "old-2").await;
    assert_eq!(open.status, Status::Sending);
    assert_eq!(open.attempt_log[0].finished_at_ms, None);
    // The open attempt is still found and closed by its record.
    store
        .record(&[record("old-2", "email", 1, sent("re_1", 0.0, 1), T0)])
        .await
        .unwrap();
    let closed = view(&store, "old-2").await;
    assert_eq!(closed.status, Status::Sent);
    assert_eq!(closed.attempt_log[0].outcome.as_deref(), Some("sent"));
    store.close().await;

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let schema: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'messages'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!schema.contains("status IN"), "{schema}");
    sqlx::query("DELETE FROM messages WHERE event_id = 'old-1'")
        .execute(&mut conn)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE event_id = 'old-1'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "attempts cascade with their message");
}

#[tokio::test]
#[ignore = "throughput measurement; run with --release -- --ignored --nocapture"]
async fn throughput_sqlite() {
    measure(&Db::sqlite().await).await;
}

#[tokio::test]
#[ignore = "throughput measurement; run with --release -- --ignored --nocapture"]
async fn throughput_postgres() {
    let db = Db::postgres().await;
    measure(&db).await;
    db.store.close().await;
}

// ---------------------------------------------------------------------------
// Suppression.

const PHONE: &str = "+15005550006";

fn change(address: &str, channel: &'static str, action: SuppressionAction) -> SuppressionChange {
    SuppressionChange {
        address: address.to_owned(),
        channel,
        action,
        actor: "twilio".to_owned(),
        source: "inbound_stop".to_owned(),
        reason: Some("STOP".to_owned()),
        now_ms: T0,
    }
}

fn to(event_id: &str, channel: &'static str, address: &str) -> Claim {
    Claim {
        address: Some(address.to_owned()),
        ..claim(event_id, channel, 1, T0 + 1)
    }
}

async fn suppressed_recipients_are_refused_until_allowed(db: &Db) {
    let store = &db.store;
    let stop = change(PHONE, "sms", SuppressionAction::Suppress);
    assert_eq!(
        store
            .change_suppressions(std::slice::from_ref(&stop))
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        store.change_suppressions(&[stop]).await.unwrap(),
        [false],
        "already on the list"
    );
    // The same address on the other channel, and another number, go ahead;
    // the suppressed one is refused and nothing is written for it.
    let outcomes = store
        .claim(&[
            to("s1", "sms", PHONE),
            to("s2", "sms", "+15005550007"),
            to("s3", "email", "a@example.com"),
            to("s1", "sms", PHONE),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            ClaimOutcome::Suppressed,
            SEND,
            SEND,
            ClaimOutcome::Suppressed
        ]
    );
    assert!(store.message("s1").await.unwrap().is_none());
    // An event that already went out stays what it was.
    store
        .record(&[record("s2", "sms", 1, sent("SM2", 0.0075, 1), T0 + 2)])
        .await
        .unwrap();
    let stop2 = change("+15005550007", "sms", SuppressionAction::Suppress);
    store.change_suppressions(&[stop2]).await.unwrap();
    assert!(matches!(
        store
            .claim(&[to("s2", "sms", "+15005550007")])
            .await
            .unwrap()[..],
        [ClaimOutcome::AlreadySent { .. }]
    ));
    // START: allowed again, and the log holds both changes.
    let start = SuppressionChange {
        source: "inbound_start".to_owned(),
        reason: Some("START".to_owned()),
        ..change(PHONE, "sms", SuppressionAction::Allow)
    };
    assert_eq!(store.change_suppressions(&[start]).await.unwrap(), [true]);
    assert_eq!(
        store.claim(&[to("s1", "sms", PHONE)]).await.unwrap(),
        [SEND]
    );
    let audit = store.audit(PHONE).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.source.as_str()))
        .collect();
    assert_eq!(
        actions,
        [("suppress", "inbound_stop"), ("allow", "inbound_start")]
    );
    let list = store.suppressions(100).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].address, "+15005550007");
}

async fn a_provider_opt_out_is_listed_with_its_record(db: &Db) {
    let store = &db.store;
    assert_eq!(
        store.claim(&[to("o1", "sms", PHONE)]).await.unwrap(),
        [SEND]
    );
    let suppressed = Outcome::Suppressed {
        reason: "unsubscribed".to_owned(),
    };
    store
        .record(&[Record {
            opt_out: Some(SuppressionChange {
                actor: "twilio".to_owned(),
                source: "send_error".to_owned(),
                ..change(PHONE, "sms", SuppressionAction::Suppress)
            }),
            ..record("o1", "sms", 1, suppressed, T0 + 2)
        }])
        .await
        .unwrap();
    let v = view(store, "o1").await;
    assert_eq!(v.status, Status::Suppressed);
    assert_eq!(v.reason.as_deref(), Some("unsubscribed"));
    assert_eq!(
        store.claim(&[to("o2", "sms", PHONE)]).await.unwrap(),
        [ClaimOutcome::Suppressed]
    );
    assert_eq!(store.audit(PHONE).await.unwrap()[0].source, "send_error");
}

/// The journal's transaction: a claim in the same commit as a record sees
/// it — a sent outcome, and an opt-out the record listed.
async fn one_commit_applies_its_records_before_its_claims(db: &Db) {
    let store = &db.store;
    assert_eq!(
        store
            .claim(&[to("c1", "sms", PHONE), claim("c2", "sms", 1, T0)])
            .await
            .unwrap(),
        [SEND, SEND]
    );
    let opted_out = Record {
        opt_out: Some(change(PHONE, "sms", SuppressionAction::Suppress)),
        ..record(
            "c1",
            "sms",
            1,
            Outcome::Suppressed {
                reason: "unsubscribed".to_owned(),
            },
            T0 + 2,
        )
    };
    let sent_c2 = record("c2", "sms", 1, sent("SMc2", 0.0075, 1), T0 + 2);
    let verdicts = store
        .commit(
            &[opted_out, sent_c2],
            &[
                claim("c2", "sms", 2, T0 + 3),
                to("c3", "sms", PHONE),
                claim("c4", "sms", 1, T0 + 3),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        verdicts,
        [
            ClaimOutcome::AlreadySent {
                provider_id: Some("SMc2".to_owned())
            },
            ClaimOutcome::Suppressed,
            SEND,
        ]
    );
    assert_eq!(view(store, "c2").await.status, Status::Sent);
    assert_eq!(view(store, "c4").await.status, Status::Sending);
    // Nothing to do is no transaction and no verdict.
    assert!(store.commit(&[], &[]).await.unwrap().is_empty());
}

/// A statement that fails late in a commit (a trigger refuses the message
/// of event `boom`) undoes the commit's records and its other claims; the
/// same commit goes through once the trigger is gone.
async fn a_failed_commit_applies_none_of_its_records_or_claims(db: &Db) {
    let store = &db.store;
    assert_eq!(
        store.claim(&[claim("f1", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    db.raw(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON messages WHEN NEW.event_id = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN \
         IF NEW.event_id = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; \
         END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_boom BEFORE INSERT ON messages FOR EACH ROW \
         EXECUTE FUNCTION refuse_boom()",
    )
    .await;
    let records = [record("f1", "sms", 1, sent("SMf1", 0.0075, 1), T0 + 1)];
    let claims = [
        claim("f2", "sms", 1, T0 + 2),
        claim("boom", "sms", 1, T0 + 2),
    ];
    let err = store.commit(&records, &claims).await.unwrap_err();
    assert!(err.to_string().contains("boom refused"), "{err}");
    assert_eq!(view(store, "f1").await.status, Status::Sending);
    assert!(store.message("f2").await.unwrap().is_none());
    assert!(store.message("boom").await.unwrap().is_none());

    db.raw(
        "DROP TRIGGER refuse_boom",
        "DROP TRIGGER refuse_boom ON messages; DROP FUNCTION refuse_boom()",
    )
    .await;
    assert_eq!(store.commit(&records, &claims).await.unwrap(), [SEND, SEND]);
    assert_eq!(view(store, "f1").await.status, Status::Sent);
    assert_eq!(view(store, "f2").await.status, Status::Sending);
}

/// Receipt keys and kept events go in with the batch's other records (one
/// statement each per batch): every tracked send is found by its provider
/// id, an untracked one is not, and an undelivered SMS falls back with its
/// body byte for byte, as the first record of its event in the batch kept it.
async fn a_batch_of_sends_is_found_by_its_receipts_and_keeps_its_bodies(db: &Db) {
    let store = &db.store;
    let ids = ["k1", "k2", "k3"];
    let claims: Vec<Claim> = ids.iter().map(|id| claim(id, "sms", 1, T0)).collect();
    assert_eq!(store.claim(&claims).await.unwrap(), [SEND, SEND, SEND]);
    // Not UTF-8: the body is bytes, not text.
    let body_k1 = vec![0x7b, 0x00, 0xff, 0xfe, 0x7d];
    let tracked = |id: &str, sid: &str, body: &[u8]| Record {
        track_receipts: true,
        keep_for_fallback: Some(KeptEvent {
            priority: 7,
            published_at_ms: Some(T0 - 5),
            body: body.to_vec(),
        }),
        ..record(id, "sms", 1, sent(sid, 0.0079, 1), T0 + 1)
    };
    store
        .record(&[
            tracked("k1", "SMk1", &body_k1),
            tracked("k2", "SMk2", b"{\"k\":2}"),
            // The same event again later in the batch keeps the first body.
            tracked("k2", "SMk2", b"{\"k\":\"later\"}"),
            record("k3", "sms", 1, sent("SMk3", 0.0079, 1), T0 + 1),
        ])
        .await
        .unwrap();
    let receipt = |sid: &str, status: &str, failed: bool| Receipt {
        provider_id: sid.to_owned(),
        status: status.to_owned(),
        rank: 3,
        error: failed.then(|| "30003".to_owned()),
        failed,
        now_ms: T0 + 10,
    };
    let applied = |fallback: Option<&str>| ReceiptOutcome::Applied {
        fallback: fallback.map(str::to_owned),
    };
    for (sid, id, body) in [("SMk1", "k1", &body_k1[..]), ("SMk2", "k2", b"{\"k\":2}")] {
        let outcome = store
            .receipt(&receipt(sid, "undelivered", true))
            .await
            .unwrap();
        assert_eq!(outcome, applied(Some("payment_reminder")), "{sid}");
        let held = store.scheduled(id).await.unwrap();
        assert_eq!(held.len(), 1, "{id}");
        assert_eq!(held[0].body, body, "{id}");
        assert_eq!(
            (held[0].priority, held[0].published_at_ms),
            (7, Some(T0 - 5))
        );
        assert_eq!(held[0].reason, "receipt_fallback");
    }
    // Untracked: no receipt can find it.
    assert_eq!(
        store
            .receipt(&receipt("SMk3", "delivered", false))
            .await
            .unwrap(),
        ReceiptOutcome::Unknown
    );
}

/// Two herald instances on one store (the test's, and the same database
/// opened again), each with a call lease of 10 s.
async fn two_instances(db: &Db) -> (Store, Store) {
    let lease = std::time::Duration::from_secs(10);
    let a = db.store.clone().with_call_lease(lease);
    let b = db.reopen().await.with_call_lease(lease);
    (a, b)
}

/// Two herald instances on one store, each handed a copy of one event at
/// once (a publisher that published twice): the second leaves the first's
/// call alone while its lease lasts, and finds it sent once recorded. An
/// instance's own unfinished attempt is not in flight elsewhere.
async fn a_call_in_flight_on_another_instance_is_not_sent_again(db: &Db) {
    let (a, b) = two_instances(db).await;
    assert_eq!(
        a.claim(&[claim("twin", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    for at in [T0, T0 + 9_999] {
        assert_eq!(
            b.claim(&[claim("twin", "sms", 1, at)]).await.unwrap(),
            [ClaimOutcome::InFlightElsewhere]
        );
    }
    // Nothing written by the refused claims.
    let v = view(&a, "twin").await;
    assert_eq!((v.status, v.attempts), (Status::Sending, 1));
    assert_eq!(log(&v), [(1, "sms", None)]);
    a.record(&[record("twin", "sms", 1, sent("SM1", 0.0075, 1), T0 + 20)])
        .await
        .unwrap();
    assert_eq!(
        b.claim(&[claim("twin", "sms", 1, T0 + 30)]).await.unwrap(),
        [ClaimOutcome::AlreadySent {
            provider_id: Some("SM1".to_owned())
        }]
    );
    // An instance that died mid-call: its lease runs out, then the other
    // sends, the cut-off attempt recorded as an unknown outcome.
    assert_eq!(
        a.claim(&[claim("cut", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    assert_eq!(
        b.claim(&[claim("cut", "sms", 1, T0 + 10_000)])
            .await
            .unwrap(),
        [SEND_AFTER_UNKNOWN]
    );
    // Its own unfinished attempt, claimed again by the same instance (a
    // copy let through once the first copy's delivery was gone): unknown,
    // sent again.
    assert_eq!(
        a.claim(&[claim("own", "sms", 1, T0)]).await.unwrap(),
        [SEND]
    );
    assert_eq!(
        a.claim(&[claim("own", "sms", 1, T0 + 1)]).await.unwrap(),
        [SEND_AFTER_UNKNOWN]
    );
    b.close().await;
}

/// A record closes its own attempt even where its update of the message
/// does not apply: here the message is already `sent`, by a late record
/// of the attempt before it (an instance that outlived its lease). The
/// attempt is finished in the log, and nothing of it stays open on the
/// message for a lease or a later claim to find.
async fn a_record_closes_its_attempt_on_a_message_already_sent(db: &Db) {
    let (a, b) = two_instances(db).await;
    let now = herald::store::now_ms();
    let long_ago = now - 20_000;
    assert_eq!(
        a.claim(&[claim("late", "sms", 1, long_ago)]).await.unwrap(),
        [SEND]
    );
    // a's lease is over: b takes the retry's copy, attempt 2.
    assert_eq!(
        b.claim(&[claim("late", "sms", 2, now)]).await.unwrap(),
        [SEND_AFTER_UNKNOWN]
    );
    // a's call did go through after all: `sent` wins, b's attempt stays
    // open.
    a.record(&[record("late", "sms", 1, sent("SM1", 0.0075, 1), now + 1)])
        .await
        .unwrap();
    let v = view(&a, "late").await;
    assert_eq!(v.status, Status::Sent);
    assert_eq!(
        log(&v),
        [(1, "sms", Some("outcome_unknown")), (2, "sms", None)]
    );
    assert!(b.renew_lease("late").await.unwrap());
    // b's outcome moves nothing (already sent) but closes its attempt.
    b.record(&[record("late", "sms", 2, retry("503"), now + 2)])
        .await
        .unwrap();
    let v = view(&a, "late").await;
    assert_eq!(
        (v.status, v.provider_id.as_deref()),
        (Status::Sent, Some("SM1"))
    );
    assert_eq!(
        log(&v),
        [
            (1, "sms", Some("outcome_unknown")),
            (2, "sms", Some("retry"))
        ]
    );
    assert!(!b.renew_lease("late").await.unwrap());
    // Attempt 1 in `attempts`, attempt 2 finished on the message.
    assert_eq!(db.attempt_rows("late").await, 1);
    assert_eq!(
        a.claim(&[claim("late", "sms", 3, now + 3)]).await.unwrap(),
        [ClaimOutcome::AlreadySent {
            provider_id: Some("SM1".to_owned())
        }]
    );
    b.close().await;
}

/// A claim that waited (for its provider's capacity) past its lease renews
/// it before the call, and another instance then leaves the event alone;
/// once another instance took it over, the renewal fails and the first must
/// not send. The renewal's lease counts from the store's now.
async fn a_waiting_claim_renews_its_lease_unless_another_instance_took_the_event(db: &Db) {
    let (a, b) = two_instances(db).await;
    let now = herald::store::now_ms();
    let long_ago = now - 20_000;
    assert_eq!(
        a.claim(&[claim("waited", "sms", 1, long_ago)])
            .await
            .unwrap(),
        [SEND]
    );
    assert!(a.renew_lease("waited").await.unwrap());
    assert_eq!(
        b.claim(&[claim("waited", "sms", 1, now)]).await.unwrap(),
        [ClaimOutcome::InFlightElsewhere]
    );
    // Not renewed in time: the other instance takes it over.
    assert_eq!(
        a.claim(&[claim("taken", "sms", 1, long_ago)])
            .await
            .unwrap(),
        [SEND]
    );
    assert_eq!(
        b.claim(&[claim("taken", "sms", 1, now)]).await.unwrap(),
        [SEND_AFTER_UNKNOWN]
    );
    assert!(!a.renew_lease("taken").await.unwrap());
    assert!(b.renew_lease("taken").await.unwrap());
    // A finished attempt, and an event never claimed, have no lease.
    a.record(&[record("waited", "sms", 1, sent("SM1", 0.0075, 1), now)])
        .await
        .unwrap();
    assert!(!a.renew_lease("waited").await.unwrap());
    assert!(!a.renew_lease("missing").await.unwrap());
    b.close().await;
}

/// Two herald instances on one store (two `Store`s on one database): a due
/// event goes to one scheduler until its lease ends (the other instance
/// gets it then, as after a crash); an event held anew is free at once.
async fn a_due_event_is_leased_to_one_scheduler_until_its_lease_ends(db: &Db) {
    const LEASE: i64 = 30_000;
    let (a, b) = (&db.store, &db.reopen().await);
    a.schedule(&[
        held("d2", T0 + 2),
        held("d1", T0 + 1),
        held("later", T0 + DAY),
    ])
    .await
    .unwrap();
    let ids = |events: Vec<ScheduledEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.event_id).collect()
    };
    // Earliest first; not yet due stays.
    assert_eq!(
        ids(a.take_due(T0 + 5, LEASE, 10).await.unwrap()),
        ["d1", "d2"]
    );
    assert!(b.take_due(T0 + 6, LEASE, 10).await.unwrap().is_empty());
    // Held anew while leased: free at once, with its new time.
    a.schedule(&[held("d2", T0 + 7)]).await.unwrap();
    let taken = b.take_due(T0 + 8, LEASE, 10).await.unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|e| (e.event_id.as_str(), e.due_at_ms))
            .collect::<Vec<_>>(),
        [("d2", T0 + 7)]
    );
    b.unschedule(&taken).await.unwrap();
    // `a` died before publishing d1: its lease ends and `b` gets it.
    assert!(b
        .take_due(T0 + 5 + LEASE - 1, LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(b.take_due(T0 + 5 + LEASE, LEASE, 10).await.unwrap()),
        ["d1"]
    );
}

async fn a_webhook_delivery_applies_once(db: &Db) {
    let store = &db.store;
    let bounce = SuppressionChange {
        actor: "resend".to_owned(),
        source: "email.bounced".to_owned(),
        ..change("a@example.com", "email", SuppressionAction::Suppress)
    };
    let first = store.change_suppressions_once("msg_1", std::slice::from_ref(&bounce));
    assert_eq!(first.await.unwrap(), Some(vec![true]));
    // Taken off by an operator, then the same delivery replayed: ignored.
    let allow = change("a@example.com", "email", SuppressionAction::Allow);
    store.change_suppressions(&[allow]).await.unwrap();
    let replay = store.change_suppressions_once("msg_1", std::slice::from_ref(&bounce));
    assert_eq!(replay.await.unwrap(), None);
    assert!(store.suppressions(10).await.unwrap().is_empty());
}

async fn a_frequency_cap_counts_the_batch_in_order(db: &Db) {
    let store = &db.store;
    let capped = |id: &str, user: &str, since_ms: i64| Claim {
        user_id: user.to_owned(),
        cap: Some(FrequencyCap { max: 2, since_ms }),
        ..claim(id, "sms", 1, T0 + 10)
    };
    // Two per user: the third of u1 in the same batch is refused, u2's not.
    let outcomes = store
        .claim(&[
            capped("f1", "u1", T0),
            capped("f2", "u1", T0),
            capped("f3", "u1", T0),
            capped("f4", "u2", T0),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [SEND, SEND, ClaimOutcome::Capped, SEND]);
    assert!(
        store.message("f3").await.unwrap().is_none(),
        "nothing written"
    );
    store
        .record(&[
            record("f1", "sms", 1, sent("SM1", 0.0075, 1), T0 + 20),
            record(
                "f2",
                "sms",
                1,
                dead_letter("invalid_recipient", "x"),
                T0 + 20,
            ),
        ])
        .await
        .unwrap();
    // f1 sent counts, f2 dead-lettered does not; a redelivered f1 is
    // already sent, whatever the cap.
    let outcomes = store
        .claim(&[
            capped("f5", "u1", T0),
            capped("f6", "u1", T0),
            capped("f1", "u1", T0),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[..2], [SEND, ClaimOutcome::Capped]);
    assert!(matches!(outcomes[2], ClaimOutcome::AlreadySent { .. }));
    // A window that starts after f1 was sent counts only f5.
    let later = store.claim(&[capped("f7", "u1", T0 + 21)]).await.unwrap();
    assert_eq!(later, [SEND]);
}

async fn erasing_a_user_keeps_anonymous_counts_only(db: &Db) {
    let store = &db.store;
    let of = |id: &str, user: &str| Claim {
        user_id: user.to_owned(),
        ..claim(id, "sms", 1, T0)
    };
    store
        .claim(&[of("g1", "u1"), of("g2", "u2")])
        .await
        .unwrap();
    store
        .record(&[
            Record {
                user_id: "u1".to_owned(),
                ..record("g1", "sms", 1, sent("SM1", 0.0075, 1), T0 + 1)
            },
            Record {
                user_id: "u2".to_owned(),
                ..record("g2", "sms", 1, sent("SM2", 0.0075, 1), T0 + 1)
            },
        ])
        .await
        .unwrap();
    store.schedule(&[held("g3", T0 + DAY)]).await.unwrap();
    assert_eq!(store.erase_user("u1").await.unwrap(), (1, 1));
    let v = view(store, "g1").await;
    assert_eq!((v.user_id.as_str(), v.provider_id.as_deref()), ("", None));
    assert_eq!(v.status, Status::Sent, "the count stays");
    assert_eq!(v.attempt_log[0].provider_id, None);
    assert!(store.scheduled("g3").await.unwrap().is_empty());
    assert_eq!(
        store.user_cost("u1", T0, T0 + DAY).await.unwrap().messages,
        0
    );
    assert_eq!(view(store, "g2").await.user_id, "u2", "others untouched");
    assert_eq!(store.erase_user("u1").await.unwrap(), (0, 0));
}
