//! The store's operations, written once and compiled per backend: the
//! `backend!` macro below is instantiated for SQLite and for PostgreSQL, so
//! each gets its own driver's native types while sharing every line of
//! logic and SQL text. (sqlx's generic `Database` bounds for this many
//! types would be longer than the code.)
//!
//! The hot path, [`claim`](sqlite::claim) and [`record`](sqlite::record),
//! writes a batch in one transaction with multi-row statements: the first
//! occurrence of each event in the batch goes in chunks of up to
//! a backend's chunk size (`sql::SQLITE_MAX_CHUNK`, `sql::POSTGRES_MAX_CHUNK`) rows; what the bulk statements do not settle (events
//! already stored, an event repeated in the batch) falls to the per-event
//! path, in batch order, so a later entry sees an earlier one's effect.

use crate::store::model::{Outcome, Record, Status};

/// The values a record writes, derived once from its outcome.
pub(crate) struct Written<'a> {
    /// The message status it moves to.
    pub status: Status,
    /// Provider id, for a sent record.
    pub provider_id: Option<&'a str>,
    /// Cost, for a sent record (`None` marks every other outcome).
    pub cost_usd: Option<f64>,
    /// Segments, for a sent record.
    pub segments: i64,
    /// Set for the statuses that end a message's life (or pause it, for
    /// `outcome_unknown`): what retention counts from.
    pub finished_at: Option<i64>,
}

impl<'a> Written<'a> {
    pub(crate) fn of(record: &'a Record) -> Written<'a> {
        let status = record.outcome.status();
        let (provider_id, cost_usd, segments) = match &record.outcome {
            Outcome::Sent {
                provider_id,
                cost_usd,
                segments,
            } => (
                provider_id.as_deref(),
                Some(*cost_usd),
                i64::from(*segments),
            ),
            _ => (None, None, 0),
        };
        let finished_at = matches!(
            status,
            Status::Sent | Status::DeadLettered | Status::Suppressed | Status::OutcomeUnknown
        )
        .then_some(record.now_ms);
        Written {
            status,
            provider_id,
            cost_usd,
            segments,
            finished_at,
        }
    }
}

/// The error recorded on an attempt found open by a later claim.
pub(crate) const UNFINISHED_ERROR: &str = "no outcome recorded before the event was claimed again";

macro_rules! backend {
    ($module:ident, $db:ty, $dialect:path, $max_chunk:path) => {
        /// The operations on this backend's pool.
        pub(crate) mod $module {
            use std::collections::HashSet;

            use sqlx::{Pool, Row, Transaction};

            use super::{Written, UNFINISHED_ERROR};
            use crate::store::model::{
                ChannelCost, Claim, ClaimOutcome, MessageView, Outcome, Record, Status,
            };
            use crate::store::{
                attempt_from_row, channel_cost_from_row, message_from_row, parse_status, sql,
                StoreError,
            };

            type Tx = Transaction<'static, $db>;

            pub(crate) async fn ping(pool: &Pool<$db>) -> Result<(), StoreError> {
                sqlx::query(sql::PING).execute(pool).await?;
                Ok(())
            }

            pub(crate) async fn claim(
                pool: &Pool<$db>,
                claims: &[Claim],
            ) -> Result<Vec<ClaimOutcome>, StoreError> {
                let mut tx = pool.begin().await?;
                let mut seen = HashSet::with_capacity(claims.len());
                let mut firsts: Vec<&Claim> = claims
                    .iter()
                    .filter(|c| seen.insert(c.event_id.as_str()))
                    .collect();
                // One lock order for every writer (PostgreSQL row locks).
                firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
                let mut fresh = insert_new(&mut tx, &firsts).await?;
                let opened: Vec<&Claim> = firsts
                    .into_iter()
                    .filter(|c| fresh.contains(c.event_id.as_str()))
                    .collect();
                open_attempts(&mut tx, &opened, 1).await?;
                let mut outcomes = Vec::with_capacity(claims.len());
                for claim in claims {
                    // Only an event's first claim in the batch can be in
                    // `fresh`; removing it sends the next one the long way.
                    if fresh.remove(claim.event_id.as_str()) {
                        outcomes.push(ClaimOutcome::Send {
                            previous_unknown: false,
                        });
                    } else {
                        outcomes.push(claim_one(&mut tx, claim).await?);
                    }
                }
                tx.commit().await?;
                Ok(outcomes)
            }

            /// Inserts the messages of events not yet stored; returns their
            /// ids.
            async fn insert_new<'c>(
                tx: &mut Tx,
                claims: &[&'c Claim],
            ) -> Result<HashSet<&'c str>, StoreError> {
                let mut fresh = HashSet::with_capacity(claims.len());
                for chunk in sql::chunks(claims, $max_chunk) {
                    let size = chunk.len();
                    let text = sql::CLAIM_INSERT_MANY.text(size);
                    let mut query = sqlx::query(&text);
                    for c in chunk {
                        query = query
                            .bind(c.event_id.as_str())
                            .bind(c.class.as_str())
                            .bind(c.user_id.as_str())
                            .bind(c.channel)
                            .bind(c.fallback_from)
                            .bind(c.now_ms);
                    }
                    let inserted: HashSet<String> = query
                        .fetch_all(&mut **tx)
                        .await?
                        .iter()
                        .map(|row| row.try_get::<String, _>(0))
                        .collect::<Result<_, _>>()?;
                    fresh.extend(
                        chunk
                            .iter()
                            .map(|c| c.event_id.as_str())
                            .filter(|id| inserted.contains(*id)),
                    );
                }
                Ok(fresh)
            }

            /// Opens one attempt per claim, each its event's attempt `seq`.
            async fn open_attempts(
                tx: &mut Tx,
                claims: &[&Claim],
                seq: i64,
            ) -> Result<(), StoreError> {
                for chunk in sql::chunks(claims, $max_chunk) {
                    let size = chunk.len();
                    let text = sql::INSERT_ATTEMPTS_MANY.text(size);
                    let mut query = sqlx::query(&text);
                    for c in chunk {
                        query = query
                            .bind(c.event_id.as_str())
                            .bind(seq)
                            .bind(i64::from(c.attempt))
                            .bind(c.channel)
                            .bind(c.now_ms);
                    }
                    query.execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// One claim the bulk insert did not settle.
            async fn claim_one(tx: &mut Tx, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
                let existing = sqlx::query($dialect.select_for_claim)
                    .bind(claim.event_id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = existing else {
                    // Deleted by retention since the bulk insert: new again.
                    sqlx::query(sql::CLAIM_INSERT_MESSAGE)
                        .bind(claim.event_id.as_str())
                        .bind(claim.class.as_str())
                        .bind(claim.user_id.as_str())
                        .bind(claim.channel)
                        .bind(claim.fallback_from)
                        .bind(claim.now_ms)
                        .execute(&mut **tx)
                        .await?;
                    open_attempts(tx, &[claim], 1).await?;
                    return Ok(ClaimOutcome::Send {
                        previous_unknown: false,
                    });
                };
                let status = parse_status(row.try_get("status")?)?;
                match status {
                    Status::Sent => Ok(ClaimOutcome::AlreadySent {
                        provider_id: row.try_get("provider_id")?,
                    }),
                    Status::DeadLettered | Status::Suppressed => {
                        Ok(ClaimOutcome::AlreadyFinal { status })
                    }
                    Status::Sending
                    | Status::Retrying
                    | Status::Fallback
                    | Status::OutcomeUnknown => {
                        let unfinished = sqlx::query(sql::CLOSE_OPEN_ATTEMPTS)
                            .bind(claim.event_id.as_str())
                            .bind(claim.now_ms)
                            .bind(UNFINISHED_ERROR)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                        let seq: i64 = sqlx::query(sql::RECLAIM_MESSAGE)
                            .bind(claim.event_id.as_str())
                            .bind(claim.channel)
                            .bind(claim.fallback_from)
                            .bind(claim.now_ms)
                            .bind(claim.class.as_str())
                            .bind(claim.user_id.as_str())
                            .fetch_one(&mut **tx)
                            .await?
                            .try_get(0)?;
                        open_attempts(tx, &[claim], seq).await?;
                        Ok(ClaimOutcome::Send {
                            previous_unknown: unfinished > 0,
                        })
                    }
                }
            }

            pub(crate) async fn record(
                pool: &Pool<$db>,
                records: &[Record],
            ) -> Result<(), StoreError> {
                let mut tx = pool.begin().await?;
                let mut seen = HashSet::with_capacity(records.len());
                let (mut firsts, later): (Vec<&Record>, Vec<&Record>) = records
                    .iter()
                    .partition(|r| seen.insert(r.event_id.as_str()));
                firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
                close_attempts(&mut tx, &firsts).await?;
                let (sent, other): (Vec<&Record>, Vec<&Record>) = firsts
                    .iter()
                    .partition(|r| matches!(r.outcome, Outcome::Sent { .. }));
                let mut moved = HashSet::with_capacity(firsts.len());
                move_sent(&mut tx, &sent, &mut moved).await?;
                move_other(&mut tx, &other, &mut moved).await?;
                for record in firsts {
                    if !moved.contains(record.event_id.as_str()) {
                        insert_recorded(&mut tx, record).await?;
                    }
                }
                for record in later {
                    record_one(&mut tx, record).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// Closes the open attempt each record names (one per event).
            async fn close_attempts(tx: &mut Tx, records: &[&Record]) -> Result<(), StoreError> {
                for chunk in sql::chunks(records, $max_chunk) {
                    let size = chunk.len();
                    let text = sql::CLOSE_ATTEMPTS_MANY.text(size);
                    let mut query = sqlx::query(&text);
                    for r in chunk {
                        let w = Written::of(r);
                        query = query
                            .bind(r.event_id.as_str())
                            .bind(r.channel)
                            .bind(i64::from(r.attempt))
                            .bind(r.now_ms)
                            .bind(r.outcome.attempt_outcome())
                            .bind(r.outcome.error())
                            .bind(w.provider_id)
                            .bind(w.cost_usd);
                    }
                    query.execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Moves messages to `sent`; adds the ids moved to `moved`.
            async fn move_sent(
                tx: &mut Tx,
                records: &[&Record],
                moved: &mut HashSet<String>,
            ) -> Result<(), StoreError> {
                for chunk in sql::chunks(records, $max_chunk) {
                    let size = chunk.len();
                    let text = sql::RECORD_SENT_MANY.text(size);
                    let mut query = sqlx::query(&text);
                    for r in chunk {
                        let w = Written::of(r);
                        query = query
                            .bind(r.event_id.as_str())
                            .bind(r.channel)
                            .bind(w.provider_id)
                            .bind(w.cost_usd.unwrap_or(0.0))
                            .bind(w.segments)
                            .bind(r.now_ms);
                    }
                    for row in query.fetch_all(&mut **tx).await? {
                        moved.insert(row.try_get(0)?);
                    }
                }
                Ok(())
            }

            /// Moves messages to every other outcome's status; adds the ids
            /// moved to `moved`.
            async fn move_other(
                tx: &mut Tx,
                records: &[&Record],
                moved: &mut HashSet<String>,
            ) -> Result<(), StoreError> {
                for chunk in sql::chunks(records, $max_chunk) {
                    let size = chunk.len();
                    let text = sql::RECORD_OTHER_MANY.text(size);
                    let mut query = sqlx::query(&text);
                    for r in chunk {
                        let w = Written::of(r);
                        query = query
                            .bind(r.event_id.as_str())
                            .bind(r.channel)
                            .bind(w.status.as_str())
                            .bind(r.outcome.reason())
                            .bind(r.outcome.error())
                            .bind(w.finished_at)
                            .bind(r.now_ms);
                    }
                    for row in query.fetch_all(&mut **tx).await? {
                        moved.insert(row.try_get(0)?);
                    }
                }
                Ok(())
            }

            /// One record the bulk statements did not settle: the same three
            /// steps, for one event.
            async fn record_one(tx: &mut Tx, record: &Record) -> Result<(), StoreError> {
                close_attempts(tx, &[record]).await?;
                let mut moved = HashSet::new();
                if matches!(record.outcome, Outcome::Sent { .. }) {
                    move_sent(tx, &[record], &mut moved).await?;
                } else {
                    move_other(tx, &[record], &mut moved).await?;
                }
                if moved.is_empty() {
                    insert_recorded(tx, record).await?;
                }
                Ok(())
            }

            /// Creates the message of an event never claimed; does nothing
            /// if it exists (in a status the record may not move).
            async fn insert_recorded(tx: &mut Tx, record: &Record) -> Result<(), StoreError> {
                let w = Written::of(record);
                sqlx::query(sql::INSERT_RECORDED)
                    .bind(record.event_id.as_str())
                    .bind(record.class.as_str())
                    .bind(record.user_id.as_str())
                    .bind(record.channel)
                    .bind(w.status.as_str())
                    .bind(w.provider_id)
                    .bind(w.cost_usd.unwrap_or(0.0))
                    .bind(w.segments)
                    .bind(record.outcome.reason())
                    .bind(record.outcome.error())
                    .bind(record.now_ms)
                    .bind(w.finished_at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            pub(crate) async fn release(
                pool: &Pool<$db>,
                event_id: &str,
                now_ms: i64,
            ) -> Result<bool, StoreError> {
                let released = sqlx::query(sql::RELEASE)
                    .bind(event_id)
                    .bind(now_ms)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(released > 0)
            }

            pub(crate) async fn message(
                pool: &Pool<$db>,
                event_id: &str,
            ) -> Result<Option<MessageView>, StoreError> {
                let Some(row) = sqlx::query(sql::SELECT_MESSAGE)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await?
                else {
                    return Ok(None);
                };
                let mut view = message_from_row(&row)?;
                for row in sqlx::query(sql::SELECT_ATTEMPTS)
                    .bind(event_id)
                    .fetch_all(pool)
                    .await?
                {
                    view.attempt_log.push(attempt_from_row(&row)?);
                }
                Ok(Some(view))
            }

            pub(crate) async fn user_cost(
                pool: &Pool<$db>,
                user_id: &str,
                from_ms: i64,
                to_ms: i64,
            ) -> Result<Vec<ChannelCost>, StoreError> {
                sqlx::query(sql::USER_COST)
                    .bind(user_id)
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(channel_cost_from_row)
                    .collect()
            }

            /// One retention statement, repeated until it deletes less
            /// than a full batch.
            pub(crate) async fn purge(
                pool: &Pool<$db>,
                statement: &'static str,
                cutoff_ms: i64,
                batch: u32,
            ) -> Result<u64, StoreError> {
                let mut deleted = 0;
                loop {
                    let n = sqlx::query(statement)
                        .bind(cutoff_ms)
                        .bind(i64::from(batch))
                        .execute(pool)
                        .await?
                        .rows_affected();
                    deleted += n;
                    if n < u64::from(batch) {
                        return Ok(deleted);
                    }
                }
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite, sql::SQLITE, sql::SQLITE_MAX_CHUNK);
backend!(
    postgres,
    sqlx::Postgres,
    sql::POSTGRES,
    sql::POSTGRES_MAX_CHUNK
);
