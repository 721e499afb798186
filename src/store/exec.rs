//! One statement interface over the two drivers of the hot path, so the
//! journal's commit ([`super::commit`]) is written once: on PostgreSQL it
//! runs through sqlx in a transaction; on SQLite through rusqlite on the
//! writer connection's own handle, locked out of sqlx's worker thread for
//! the whole commit (one hand-off in, one out, however many statements).
//!
//! Through sqlx's SQLite worker every statement was a round trip between
//! threads: with ~9 statements a commit, a commit carried ~4 ms of
//! hand-offs on a busy two-core machine before any row was written, and
//! every message waits for one commit before its provider call and another
//! before its ack (docs/benchmarks.md, ADR 0003).

use std::future::Future;

use sqlx::postgres::PgRow;
use sqlx::{Column, Postgres, Row, Transaction, TypeInfo};

use super::StoreError;

/// A value bound to a statement's `$N`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Real(f64),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Real(v)
    }
}

/// The `Arg`s of a statement, in `$N` order.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::exec::Arg::from($v)),*]
    };
}
pub(crate) use args;

/// A value read from a row: only what the hot path's statements return
/// (text and integer columns; any other is an error on both backends).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    /// The text of a text column (`None` for NULL or a number).
    pub(crate) fn into_text(self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an integer column (0 for NULL or text).
    pub(crate) fn int(&self) -> i64 {
        match self {
            Val::Int(n) => *n,
            _ => 0,
        }
    }
}

/// The statements of one transaction. Neither method commits.
pub(crate) trait Exec {
    /// Runs `sql` and returns every row it yields, each its columns in order.
    fn rows(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Vec<Val>>, StoreError>>;

    /// Runs `sql` and returns how many rows it changed.
    fn run(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>>;
}

/// A PostgreSQL transaction through sqlx.
pub(crate) struct PgExec(pub Transaction<'static, Postgres>);

fn pg_query<'q>(
    sql: &'q str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match *a {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
        };
    }
    q
}

fn pg_val(row: &PgRow, i: usize) -> Result<Val, StoreError> {
    let column = row.column(i);
    let name = column.type_info().name();
    Ok(match name {
        "INT8" => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Val::Null, Val::Int),
        "INT4" => row
            .try_get::<Option<i32>, _>(i)?
            .map_or(Val::Null, |n| Val::Int(n.into())),
        _ => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Val::Null, Val::Text),
    })
}

impl Exec for PgExec {
    async fn rows(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let rows = pg_query(sql, args).fetch_all(&mut *self.0).await?;
        rows.iter()
            .map(|row| (0..row.len()).map(|i| pg_val(row, i)).collect())
            .collect()
    }

    async fn run(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(pg_query(sql, args)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }
}

/// A SQLite transaction through rusqlite, on a handle the caller holds
/// exclusively. Statements come from the connection's cache, prepared the
/// first time they run (`SqliteWriter` keeps the connection, and so the
/// cache, between commits).
pub(crate) struct LiteExec<'c>(pub &'c rusqlite::Connection);

impl LiteExec<'_> {
    /// The statement with `args` bound to its `$N` parameters (SQLite names
    /// them; a `$N` used twice is one parameter).
    fn bound(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        for i in 1..=stmt.parameter_count() {
            let n: usize = stmt
                .parameter_name(i)
                .and_then(|name| name.strip_prefix('$')?.parse().ok())
                .filter(|n| (1..=args.len()).contains(n))
                .ok_or_else(|| StoreError::Unexpected {
                    column: "statement parameters",
                    value: format!("parameter {i} of {sql:?}"),
                })?;
            match args[n - 1] {
                Arg::Text(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Int(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Real(v) => stmt.raw_bind_parameter(i, v)?,
            }
        }
        Ok(stmt)
    }
}

impl Exec for LiteExec<'_> {
    async fn rows(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let mut stmt = self.bound(sql, args)?;
        let width = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut vals = Vec::with_capacity(width);
            for i in 0..width {
                use rusqlite::types::ValueRef;
                vals.push(match row.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(n) => Val::Int(n),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    // As on PostgreSQL (`pg_val`): the hot path reads no
                    // other kind of column.
                    other => {
                        return Err(StoreError::Unexpected {
                            column: "a hot-path result column",
                            value: format!("{:?}", other.data_type()),
                        })
                    }
                });
            }
            out.push(vals);
        }
        Ok(out)
    }

    async fn run(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.bound(sql, args)?;
        Ok(stmt.raw_execute()? as u64)
    }
}
