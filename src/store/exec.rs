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
    Real(Option<f64>),
    Blob(&'a [u8]),
}

/// A row of a set statement on PostgreSQL: the values as JSON, a blob as
/// its hex (the statement decodes it).
impl serde::Serialize for Arg<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Arg::Text(Some(v)) if v.contains('\0') => s.serialize_str(&without_nul(v)),
            Arg::Text(v) => v.serialize(s),
            Arg::Int(v) => v.serialize(s),
            Arg::Real(v) => v.serialize(s),
            Arg::Blob(v) => s.serialize_str(&hex::encode(v)),
        }
    }
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
        Arg::Real(Some(v))
    }
}

impl From<Option<f64>> for Arg<'_> {
    fn from(v: Option<f64>) -> Self {
        Arg::Real(v)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(Some(v.into()))
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
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

/// The statements of one transaction. No method commits.
pub(crate) trait Exec {
    /// Runs one of the hot path's statements (`sql::Bulk`) over a batch,
    /// each row its values in the order the statement names them.
    /// PostgreSQL runs one set statement with the rows as one JSON array;
    /// SQLite runs a one-row statement per row (in the process, a row costs
    /// no round trip, and no JSON is written or read). No rows, no
    /// statement.
    fn bulk<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// [`Exec::bulk`], returning the first value of each row that changed
    /// the store (its event id): on PostgreSQL what the statement's
    /// `RETURNING` names, on SQLite each row whose statement changed one.
    fn bulk_changed<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>>;

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

/// PostgreSQL's text (and `jsonb`) cannot hold U+0000, and a batch with
/// one such value would fail every time the journal tried it again, holding
/// up every class. Event ids are refused with a NUL on arrival
/// (`src/event.rs`); text that comes from a provider (an error, an id) has
/// each NUL replaced by U+FFFD instead.
fn without_nul(v: &str) -> String {
    v.replace('\0', "\u{FFFD}")
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
            Arg::Text(Some(v)) if v.contains('\0') => q.bind(without_nul(v)),
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
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

/// The rows of a set statement: one JSON array of arrays.
fn pg_rows<const N: usize>(rows: &[[Arg<'_>; N]]) -> String {
    let rows: Vec<&[Arg<'_>]> = rows.iter().map(|r| r.as_slice()).collect();
    serde_json::to_string(&rows).expect("rows serialise")
}

impl Exec for PgExec {
    async fn bulk<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> Result<(), StoreError> {
        if !rows.is_empty() {
            self.run(sql, args![&pg_rows(rows)]).await?;
        }
        Ok(())
    }

    async fn bulk_changed<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> Result<Vec<String>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .rows(sql, args![&pg_rows(rows)])
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next()?.into_text())
            .collect())
    }

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
    /// The statement, from the connection's cache, and for each of its
    /// parameters the index of its value in `args` (SQLite names the `$N`
    /// parameters; a `$N` used twice is one parameter).
    fn prepared(
        &self,
        sql: &'static str,
        width: usize,
    ) -> Result<(rusqlite::CachedStatement<'_>, Vec<usize>), StoreError> {
        let stmt = self.0.prepare_cached(sql)?;
        let places = (1..=stmt.parameter_count())
            .map(|i| {
                stmt.parameter_name(i)
                    .and_then(|name| name.strip_prefix('$')?.parse::<usize>().ok())
                    .filter(|n| (1..=width).contains(n))
                    .map(|n| n - 1)
                    .ok_or_else(|| StoreError::Unexpected {
                        column: "statement parameters",
                        value: format!("parameter {i} of {sql:?}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((stmt, places))
    }

    /// The statement with `args` bound to its `$N` parameters.
    fn bound(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let (mut stmt, places) = self.prepared(sql, args.len())?;
        bind(&mut stmt, &places, args)?;
        Ok(stmt)
    }

    /// Runs the one-row statement `sql` once per row; calls `changed` with
    /// each row that changed the store.
    fn each<'r, 'a, const N: usize>(
        &self,
        sql: &'static str,
        rows: &'r [[Arg<'a>; N]],
        mut changed: impl FnMut(&'r [Arg<'a>; N]),
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (mut stmt, places) = self.prepared(sql, N)?;
        for row in rows {
            bind(&mut stmt, &places, row)?;
            if stmt.raw_execute()? > 0 {
                changed(row);
            }
        }
        Ok(())
    }
}

/// Binds `args[places[i]]` to each parameter `i + 1`.
fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    places: &[usize],
    args: &[Arg<'_>],
) -> Result<(), StoreError> {
    for (i, &place) in places.iter().enumerate() {
        match args[place] {
            Arg::Text(v) => stmt.raw_bind_parameter(i + 1, v)?,
            Arg::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
            Arg::Real(v) => stmt.raw_bind_parameter(i + 1, v)?,
            Arg::Blob(v) => stmt.raw_bind_parameter(i + 1, v)?,
        }
    }
    Ok(())
}

impl Exec for LiteExec<'_> {
    async fn bulk<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> Result<(), StoreError> {
        self.each(sql, rows, |_| ())
    }

    async fn bulk_changed<const N: usize>(
        &mut self,
        sql: &'static str,
        rows: &[[Arg<'_>; N]],
    ) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        self.each(sql, rows, |row| {
            if let Some(Arg::Text(Some(id))) = row.first() {
                ids.push((*id).to_owned());
            }
        })?;
        Ok(ids)
    }

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
