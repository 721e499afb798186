//! The store's operations, written once and compiled per backend: the
//! `backend!` macro below is instantiated for SQLite and for PostgreSQL, so
//! each gets its own driver's native types while sharing every line of
//! logic and SQL text. (sqlx's generic `Database` bounds for this many
//! types would be longer than the code.)
//!
//! The hot path, [`commit`](sqlite::commit) (a batch of outcome records,
//! then a batch of claims), writes in one transaction with set statements
//! (`sql::Bulk`): the first occurrence of each event in the batch goes in
//! one statement per step, the rows as one JSON parameter; what those do
//! not settle (events already stored, an event repeated in the batch) falls
//! to the per-event path, in batch order, so a later entry sees an earlier
//! one's effect.

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

impl Record {
    /// The provider id that receipts for this record's send will name, if
    /// they are to find it (an accepted send of a class that tracks them).
    pub(crate) fn receipt_key(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Sent {
                provider_id: Some(id),
                ..
            } if self.track_receipts => Some(id),
            _ => None,
        }
    }
}

/// The error recorded on an attempt found open by a later claim.
pub(crate) const UNFINISHED_ERROR: &str = "no outcome recorded before the event was claimed again";

macro_rules! backend {
    ($module:ident, $db:ty, $dialect:path) => {
        /// The operations on this backend's pool.
        pub(crate) mod $module {
            use std::collections::HashSet;

            use sqlx::{Pool, Row, Transaction};

            use super::{Written, UNFINISHED_ERROR};
            use crate::store::model::{
                AuditView, ChannelCost, Claim, ClaimOutcome, ClassCost, FrequencyCap, KeptEvent,
                MessageView, Outcome, Receipt, ReceiptOutcome, Record, ScheduledEvent, Status,
                SuppressionAction, SuppressionChange, SuppressionView,
            };
            use crate::store::{
                attempt_from_row, channel_cost_from_row, message_from_row, parse_status,
                scheduled_from_row, sql, StoreError,
            };

            type Tx = Transaction<'static, $db>;

            pub(crate) async fn ping(pool: &Pool<$db>) -> Result<(), StoreError> {
                sqlx::query(sql::PING).execute(pool).await?;
                Ok(())
            }

            /// Records, then claims, in one transaction.
            pub(crate) async fn commit(
                pool: &Pool<$db>,
                records: &[Record],
                claims: &[Claim],
            ) -> Result<Vec<ClaimOutcome>, StoreError> {
                let mut tx = pool.begin().await?;
                if !records.is_empty() {
                    record_in(&mut tx, records).await?;
                }
                let outcomes = if claims.is_empty() {
                    Vec::new()
                } else {
                    claim_in(&mut tx, claims).await?
                };
                tx.commit().await?;
                Ok(outcomes)
            }

            async fn claim_in(
                tx: &mut Tx,
                claims: &[Claim],
            ) -> Result<Vec<ClaimOutcome>, StoreError> {
                let suppressed = suppressed_among(tx, claims).await?;
                let is_suppressed = |c: &Claim| {
                    !suppressed.is_empty()
                        && c.address
                            .as_deref()
                            .is_some_and(|a| suppressed.contains(&(a.to_owned(), c.channel)))
                };
                let mut seen = HashSet::with_capacity(claims.len());
                let mut firsts: Vec<&Claim> = claims
                    .iter()
                    .filter(|c| {
                        !is_suppressed(c) && c.cap.is_none() && seen.insert(c.event_id.as_str())
                    })
                    .collect();
                // One lock order for every writer (PostgreSQL row locks).
                firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
                let mut fresh = insert_new(tx, &firsts).await?;
                let opened: Vec<&Claim> = firsts
                    .into_iter()
                    .filter(|c| fresh.contains(c.event_id.as_str()))
                    .collect();
                open_attempts(tx, &opened, 1).await?;
                let mut outcomes = Vec::with_capacity(claims.len());
                for claim in claims {
                    // Only an event's first claim in the batch can be in
                    // `fresh`; removing it sends the next one the long way.
                    if is_suppressed(claim) {
                        let done = final_outcome(tx, claim).await?;
                        outcomes.push(done.unwrap_or(ClaimOutcome::Suppressed));
                    } else if let Some(cap) = claim.cap {
                        outcomes.push(claim_capped(tx, claim, cap).await?);
                    } else if fresh.remove(claim.event_id.as_str()) {
                        outcomes.push(ClaimOutcome::Send {
                            previous_unknown: false,
                        });
                    } else {
                        outcomes.push(claim_one(tx, claim).await?);
                    }
                }
                Ok(outcomes)
            }

            /// The (address, channel) pairs of the batch that are on the
            /// suppression list.
            async fn suppressed_among(
                tx: &mut Tx,
                claims: &[Claim],
            ) -> Result<HashSet<(String, &'static str)>, StoreError> {
                let addresses: HashSet<&str> =
                    claims.iter().filter_map(|c| c.address.as_deref()).collect();
                let mut found = HashSet::new();
                if addresses.is_empty() {
                    return Ok(found);
                }
                // One statement per batch, whatever its size.
                let list = serde_json::to_string(&addresses).expect("strings serialise");
                let rows = sqlx::query($dialect.suppressed_among)
                    .bind(list)
                    .fetch_all(&mut **tx)
                    .await?;
                for row in rows {
                    let channel: String = row.try_get(1)?;
                    let channel = if channel == "sms" { "sms" } else { "email" };
                    found.insert((row.try_get(0)?, channel));
                }
                Ok(found)
            }

            /// A claim of a class with a frequency cap, in batch order: the
            /// count sees every earlier claim of the batch.
            async fn claim_capped(
                tx: &mut Tx,
                claim: &Claim,
                cap: FrequencyCap,
            ) -> Result<ClaimOutcome, StoreError> {
                if let Some(done) = final_outcome(tx, claim).await? {
                    return Ok(done);
                }
                let n: i64 = sqlx::query(sql::CAP_COUNT)
                    .bind(claim.user_id.as_str())
                    .bind(claim.class.as_str())
                    .bind(cap.since_ms)
                    .bind(claim.event_id.as_str())
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
                if n >= i64::from(cap.max) {
                    return Ok(ClaimOutcome::Capped);
                }
                claim_one(tx, claim).await
            }

            /// What any claim of an event that already ended is answered
            /// (`None` if it has not ended).
            async fn final_outcome(
                tx: &mut Tx,
                claim: &Claim,
            ) -> Result<Option<ClaimOutcome>, StoreError> {
                let status = sqlx::query(sql::SELECT_STATUS)
                    .bind(claim.event_id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|row| row.try_get::<String, _>(0))
                    .transpose()?
                    .map(parse_status)
                    .transpose()?;
                Ok(match status {
                    Some(Status::Sent) => Some(ClaimOutcome::AlreadySent { provider_id: None }),
                    Some(status) if status.is_final() => {
                        Some(ClaimOutcome::AlreadyFinal { status })
                    }
                    _ => None,
                })
            }

            /// Applies suppression changes in one transaction, each audited
            /// if it changed the list; returns which did. With
            /// `webhook_id`, the changes apply only if that webhook
            /// delivery was not processed before (`None` if it was).
            pub(crate) async fn change_suppressions(
                pool: &Pool<$db>,
                changes: &[SuppressionChange],
                webhook_id: Option<(&str, i64)>,
            ) -> Result<Option<Vec<bool>>, StoreError> {
                let mut tx = pool.begin().await?;
                if let Some((id, now_ms)) = webhook_id {
                    let fresh = sqlx::query(sql::WEBHOOK_RECEIPT)
                        .bind(id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if fresh == 0 {
                        return Ok(None);
                    }
                }
                let mut changed = Vec::with_capacity(changes.len());
                for change in changes {
                    changed.push(change_suppression(&mut tx, change).await?);
                }
                tx.commit().await?;
                Ok(Some(changed))
            }

            async fn change_suppression(
                tx: &mut Tx,
                c: &SuppressionChange,
            ) -> Result<bool, StoreError> {
                let n = match c.action {
                    SuppressionAction::Suppress => sqlx::query(sql::SUPPRESS)
                        .bind(c.address.as_str())
                        .bind(c.channel)
                        .bind(c.source.as_str())
                        .bind(c.reason.as_deref())
                        .bind(c.now_ms)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected(),
                    SuppressionAction::Allow => sqlx::query(sql::ALLOW)
                        .bind(c.address.as_str())
                        .bind(c.channel)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected(),
                };
                if n > 0 {
                    sqlx::query(sql::AUDIT)
                        .bind(c.address.as_str())
                        .bind(c.channel)
                        .bind(c.action.as_str())
                        .bind(c.actor.as_str())
                        .bind(c.source.as_str())
                        .bind(c.reason.as_deref())
                        .bind(c.now_ms)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(n > 0)
            }

            pub(crate) async fn schedule(
                pool: &Pool<$db>,
                events: &[ScheduledEvent],
            ) -> Result<(), StoreError> {
                let mut tx = pool.begin().await?;
                for e in events {
                    sqlx::query(sql::SCHEDULE)
                        .bind(e.event_id.as_str())
                        .bind(e.class.as_str())
                        .bind(e.due_at_ms)
                        .bind(e.reason.as_str())
                        .bind(e.channel.as_str())
                        .bind(i64::from(e.attempt))
                        .bind(e.fallback_from.as_deref())
                        .bind(i64::from(e.priority))
                        .bind(e.published_at_ms)
                        .bind(e.body.as_slice())
                        .bind(e.created_at_ms)
                        .bind(e.user_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn take_due(
                pool: &Pool<$db>,
                now_ms: i64,
                until_ms: i64,
                limit: u32,
            ) -> Result<Vec<ScheduledEvent>, StoreError> {
                let mut due = sqlx::query($dialect.take_due)
                    .bind(now_ms)
                    .bind(until_ms)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(scheduled_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                due.sort_by_key(|e| e.due_at_ms);
                Ok(due)
            }

            pub(crate) async fn scheduled(
                pool: &Pool<$db>,
                event_id: &str,
            ) -> Result<Vec<ScheduledEvent>, StoreError> {
                sqlx::query(sql::SCHEDULED_EVENT)
                    .bind(event_id)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(scheduled_from_row)
                    .collect()
            }

            pub(crate) async fn unschedule(
                pool: &Pool<$db>,
                events: &[ScheduledEvent],
            ) -> Result<(), StoreError> {
                let mut tx = pool.begin().await?;
                for e in events {
                    sqlx::query(sql::UNSCHEDULE)
                        .bind(e.event_id.as_str())
                        .bind(e.class.as_str())
                        .bind(e.due_at_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// Erases a user's personal data; returns (messages
            /// anonymised, held events deleted).
            pub(crate) async fn erase_user(
                pool: &Pool<$db>,
                user_id: &str,
            ) -> Result<(u64, u64), StoreError> {
                let mut tx = pool.begin().await?;
                // Before the messages lose the user id these find them by.
                for statement in [
                    sql::ERASE_ATTEMPTS,
                    sql::ERASE_RECEIPT_KEYS,
                    sql::ERASE_FALLBACK,
                ] {
                    sqlx::query(statement)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                let messages = sqlx::query(sql::ERASE_MESSAGES)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let scheduled = sqlx::query(sql::ERASE_SCHEDULED)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok((messages, scheduled))
            }

            pub(crate) async fn receipt(
                pool: &Pool<$db>,
                r: &Receipt,
            ) -> Result<ReceiptOutcome, StoreError> {
                let mut tx = pool.begin().await?;
                let moved = sqlx::query(sql::RECEIPT)
                    .bind(r.provider_id.as_str())
                    .bind(r.status.as_str())
                    .bind(r.rank)
                    .bind(r.error.as_deref())
                    .bind(r.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = moved else {
                    let known = sqlx::query(sql::PROVIDER_ID_KNOWN)
                        .bind(r.provider_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    return Ok(if known {
                        ReceiptOutcome::Stale
                    } else {
                        ReceiptOutcome::Unknown
                    });
                };
                let event_id: String = row.try_get(0)?;
                let channel: String = row.try_get(1)?;
                let mut fallback = None;
                if r.failed && channel == "sms" {
                    let kept = sqlx::query(sql::TAKE_FALLBACK)
                        .bind(event_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(kept) = kept {
                        let error = format!("sms {}", r.status);
                        sqlx::query(sql::RECEIPT_FALLBACK)
                            .bind(event_id.as_str())
                            .bind(error.as_str())
                            .bind(r.now_ms)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(sql::SCHEDULE)
                            .bind(event_id.as_str())
                            .bind(kept.try_get::<String, _>(0)?)
                            .bind(r.now_ms)
                            .bind("receipt_fallback")
                            .bind("email")
                            .bind(0_i64)
                            .bind("sms")
                            .bind(kept.try_get::<i64, _>(2)?)
                            .bind(kept.try_get::<Option<i64>, _>(3)?)
                            .bind(kept.try_get::<Vec<u8>, _>(4)?)
                            .bind(r.now_ms)
                            .bind(kept.try_get::<String, _>(1)?)
                            .execute(&mut *tx)
                            .await?;
                        fallback = Some(kept.try_get::<String, _>(0)?);
                    }
                }
                tx.commit().await?;
                Ok(ReceiptOutcome::Applied { fallback })
            }

            pub(crate) async fn scheduled_count(pool: &Pool<$db>) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query(sql::SCHEDULED_COUNT)
                    .fetch_one(pool)
                    .await?
                    .try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            pub(crate) async fn suppressions(
                pool: &Pool<$db>,
                limit: u32,
            ) -> Result<Vec<SuppressionView>, StoreError> {
                let rows = sqlx::query(sql::LIST_SUPPRESSIONS)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SuppressionView {
                            address: row.try_get(0)?,
                            channel: row.try_get(1)?,
                            source: row.try_get(2)?,
                            reason: row.try_get(3)?,
                            created_at: row.try_get(4)?,
                        })
                    })
                    .collect()
            }

            pub(crate) async fn audit(
                pool: &Pool<$db>,
                address: &str,
            ) -> Result<Vec<AuditView>, StoreError> {
                let rows = sqlx::query(sql::SELECT_AUDIT)
                    .bind(address)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AuditView {
                            address: row.try_get(0)?,
                            channel: row.try_get(1)?,
                            action: row.try_get(2)?,
                            actor: row.try_get(3)?,
                            source: row.try_get(4)?,
                            reason: row.try_get(5)?,
                            at: row.try_get(6)?,
                        })
                    })
                    .collect()
            }

            /// Runs one of the dialect's bulk statements over `items`, each
            /// made a row by `row` (the rows go as one JSON array); returns
            /// the first column of each row the statement returns. No items,
            /// no statement.
            async fn bulk<'a, T, R: serde::Serialize>(
                tx: &mut Tx,
                text: &'static str,
                items: &'a [T],
                row: impl Fn(&'a T) -> R,
            ) -> Result<Vec<String>, StoreError> {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                let rows: Vec<R> = items.iter().map(row).collect();
                let json = serde_json::to_string(&rows).expect("rows serialise");
                sqlx::query(text)
                    .bind(json)
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(|row| Ok(row.try_get::<String, _>(0)?))
                    .collect()
            }

            /// Inserts the messages of events not yet stored; returns their
            /// ids.
            async fn insert_new<'c>(
                tx: &mut Tx,
                claims: &[&'c Claim],
            ) -> Result<HashSet<&'c str>, StoreError> {
                let inserted: HashSet<String> = bulk(tx, $dialect.bulk.claim_insert, claims, |c| {
                    let Claim {
                        event_id,
                        class,
                        user_id,
                        ..
                    } = c;
                    (
                        event_id,
                        class,
                        user_id,
                        c.channel,
                        c.fallback_from,
                        c.now_ms,
                    )
                })
                .await?
                .into_iter()
                .collect();
                Ok(claims
                    .iter()
                    .map(|c| c.event_id.as_str())
                    .filter(|id| inserted.contains(*id))
                    .collect())
            }

            /// Opens one attempt per claim, each its event's attempt `seq`.
            async fn open_attempts(
                tx: &mut Tx,
                claims: &[&Claim],
                seq: i64,
            ) -> Result<(), StoreError> {
                bulk(tx, $dialect.bulk.insert_attempts, claims, |c| {
                    (&c.event_id, seq, c.attempt, c.channel, c.now_ms)
                })
                .await?;
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

            async fn record_in(tx: &mut Tx, records: &[Record]) -> Result<(), StoreError> {
                let mut seen = HashSet::with_capacity(records.len());
                let (mut firsts, later): (Vec<&Record>, Vec<&Record>) = records
                    .iter()
                    .partition(|r| seen.insert(r.event_id.as_str()));
                firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
                close_attempts(tx, &firsts).await?;
                let (sent, other): (Vec<&Record>, Vec<&Record>) = firsts
                    .iter()
                    .partition(|r| matches!(r.outcome, Outcome::Sent { .. }));
                let mut moved = HashSet::with_capacity(firsts.len());
                move_sent(tx, &sent, &mut moved).await?;
                move_other(tx, &other, &mut moved).await?;
                for record in firsts {
                    if !moved.contains(record.event_id.as_str()) {
                        insert_recorded(tx, record).await?;
                    }
                }
                for record in later {
                    record_one(tx, record).await?;
                }
                for change in records.iter().filter_map(|r| r.opt_out.as_ref()) {
                    change_suppression(tx, change).await?;
                }
                let keyed: Vec<(&str, &Record)> = records
                    .iter()
                    .filter_map(|r| Some((r.receipt_key()?, r)))
                    .collect();
                bulk(tx, $dialect.bulk.receipt_keys, &keyed, |(key, r)| {
                    (key, &r.event_id, r.now_ms)
                })
                .await?;
                let kept: Vec<(&Record, &KeptEvent)> = records
                    .iter()
                    .filter_map(|r| Some((r, r.keep_for_fallback.as_ref()?)))
                    .collect();
                bulk(tx, $dialect.bulk.keep_fallback, &kept, |(r, k)| {
                    (
                        &r.event_id,
                        &r.class,
                        &r.user_id,
                        k.priority,
                        k.published_at_ms,
                        hex::encode(&k.body),
                        r.now_ms,
                    )
                })
                .await?;
                Ok(())
            }

            /// Closes the open attempt each record names (one per event).
            async fn close_attempts(tx: &mut Tx, records: &[&Record]) -> Result<(), StoreError> {
                bulk(tx, $dialect.bulk.close_attempts, records, |r| {
                    let w = Written::of(r);
                    (
                        &r.event_id,
                        r.channel,
                        r.attempt,
                        r.now_ms,
                        r.outcome.attempt_outcome(),
                        r.outcome.error(),
                        w.provider_id,
                        w.cost_usd,
                    )
                })
                .await?;
                Ok(())
            }

            /// Moves messages to `sent`; adds the ids moved to `moved`.
            async fn move_sent(
                tx: &mut Tx,
                records: &[&Record],
                moved: &mut HashSet<String>,
            ) -> Result<(), StoreError> {
                let ids = bulk(tx, $dialect.bulk.record_sent, records, |r| {
                    let w = Written::of(r);
                    let cost = w.cost_usd.unwrap_or(0.0);
                    (
                        &r.event_id,
                        r.channel,
                        w.provider_id,
                        cost,
                        w.segments,
                        r.now_ms,
                    )
                })
                .await?;
                moved.extend(ids);
                Ok(())
            }

            /// Moves messages to every other outcome's status; adds the ids
            /// moved to `moved`.
            async fn move_other(
                tx: &mut Tx,
                records: &[&Record],
                moved: &mut HashSet<String>,
            ) -> Result<(), StoreError> {
                let ids = bulk(tx, $dialect.bulk.record_other, records, |r| {
                    let w = Written::of(r);
                    let (reason, error) = (r.outcome.reason(), r.outcome.error());
                    let status = w.status.as_str();
                    (
                        &r.event_id,
                        r.channel,
                        status,
                        reason,
                        error,
                        w.finished_at,
                        r.now_ms,
                    )
                })
                .await?;
                moved.extend(ids);
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

            pub(crate) async fn recent_failures(
                pool: &Pool<$db>,
                limit: u32,
            ) -> Result<Vec<MessageView>, StoreError> {
                sqlx::query(sql::RECENT_FAILURES)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(message_from_row)
                    .collect()
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

            pub(crate) async fn class_cost(
                pool: &Pool<$db>,
                from_ms: i64,
                to_ms: i64,
            ) -> Result<Vec<ClassCost>, StoreError> {
                sqlx::query(sql::CLASS_COST)
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(ClassCost {
                            class: row.try_get("class")?,
                            cost: channel_cost_from_row(row)?,
                        })
                    })
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

backend!(sqlite, sqlx::Sqlite, sql::SQLITE);
backend!(postgres, sqlx::Postgres, sql::POSTGRES);
