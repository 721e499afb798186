//! The store's other operations (everything but the hot path's commit, in
//! `commit.rs`), written once and compiled per backend: the `backend!`
//! macro below is instantiated for SQLite and for PostgreSQL, so each gets
//! its own driver's native types while sharing every line of logic and SQL
//! text. (sqlx's generic `Database` bounds for this many types would be
//! longer than the code.)

macro_rules! backend {
    ($module:ident, $db:ty, $dialect:path) => {
        /// The operations on this backend's pool.
        pub(crate) mod $module {
            use sqlx::{Pool, Row};

            use crate::store::model::{
                AuditView, ChannelCost, ClassCost, MessageView, Receipt, ReceiptOutcome,
                ScheduledEvent, SuppressionView,
            };
            use crate::store::{
                attempt_from_row, channel_cost_from_row, message_from_row, scheduled_from_row, sql,
                StoreError,
            };

            pub(crate) async fn ping(pool: &Pool<$db>) -> Result<(), StoreError> {
                sqlx::query(sql::PING).execute(pool).await?;
                Ok(())
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

            /// One retention statement, this backend's text of it picked
            /// by `statement`, repeated until it deletes less than a full
            /// batch. Each returns one row per row it deleted.
            pub(crate) async fn purge(
                pool: &Pool<$db>,
                statement: fn(&sql::Dialect) -> &'static str,
                cutoff_ms: i64,
                batch: u32,
            ) -> Result<u64, StoreError> {
                let statement = statement(&$dialect);
                let mut deleted = 0;
                loop {
                    let n = sqlx::query(statement)
                        .bind(cutoff_ms)
                        .bind(i64::from(batch))
                        .fetch_all(pool)
                        .await?
                        .len() as u64;
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
