//! The hot path, written once over [`Exec`]: the journal's commit (a batch
//! of outcome records, then a batch of claims) and changes to the
//! suppression list, which records also make.
//!
//! The commit writes a step at a time over the whole batch (`sql::Bulk`,
//! `Exec::bulk`): the first occurrence of each event in the batch goes in
//! with each step's statement; what those do not settle (events already
//! stored, an event repeated in the batch) falls to the per-event path, in
//! batch order, so a later entry sees an earlier one's effect.

use std::collections::HashSet;
use std::sync::Arc;

use super::exec::{args, Arg, Exec, Val};
use super::model::{
    Claim, ClaimOutcome, FrequencyCap, KeptEvent, Outcome, Record, Status, SuppressionAction,
    SuppressionChange,
};
use super::sql::{self, Dialect};
use super::{parse_status, StoreError};

/// The values a record writes, derived once from its outcome.
struct Written<'a> {
    /// The message status it moves to.
    status: Status,
    /// Provider id, for a sent record.
    provider_id: Option<&'a str>,
    /// Cost, for a sent record (`None` marks every other outcome).
    cost_usd: Option<f64>,
    /// Segments, for a sent record.
    segments: i64,
    /// Set for the statuses that end a message's life (or pause it, for
    /// `outcome_unknown`): what retention counts from.
    finished_at: Option<i64>,
}

impl<'a> Written<'a> {
    fn of(record: &'a Record) -> Written<'a> {
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
    fn receipt_key(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Sent {
                provider_id: Some(id),
                ..
            } if self.track_receipts => Some(id),
            _ => None,
        }
    }
}

/// Who claims: the process holding a `Store`, as its attempts name it.
#[derive(Debug, Clone)]
pub(crate) struct Claimer {
    /// This process's id in the store, random for each `Store::open`.
    pub owner: Arc<str>,
    /// How long after it opens an attempt of this process may still be
    /// running (its longest provider call, and then some): until then,
    /// another process's claim of the event leaves it alone.
    pub lease_ms: i64,
}

impl Claimer {
    /// The end of a lease of this process's taken or renewed at `now_ms`.
    fn lease_from(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.lease_ms)
    }
}

/// What a claim reads of a stored message (`sql::Dialect::select_for_claim`).
struct Stored {
    status: Status,
    provider_id: Option<String>,
    /// Its latest attempt is on it and has no outcome yet.
    open: bool,
    /// The process that opened the latest attempt.
    owner: Option<String>,
    lease_until: Option<i64>,
}

impl Stored {
    /// The columns of `claim_read!`, in order.
    fn of(row: Vec<Val>) -> Result<Stored, StoreError> {
        let mut row = row.into_iter();
        let mut next = || row.next().unwrap_or(Val::Null);
        let (status, provider_id, attempt) = (next(), next(), next());
        let (finished_at, owner, lease_until) = (next(), next(), next());
        let is_null = |v: &Val| matches!(v, Val::Null);
        Ok(Stored {
            status: parse_status(status.into_text().unwrap_or_default())?,
            provider_id: provider_id.into_text(),
            open: !is_null(&attempt) && is_null(&finished_at),
            owner: owner.into_text(),
            lease_until: (!is_null(&lease_until)).then(|| lease_until.int()),
        })
    }

    /// Whether another process's call of the event may still be running:
    /// its attempt is open and its lease not over at `now_ms`.
    fn in_flight_elsewhere(&self, me: &str, now_ms: i64) -> bool {
        self.open
            && self.owner.as_deref().is_some_and(|owner| owner != me)
            && self.lease_until.is_some_and(|until| until > now_ms)
    }
}

/// The error recorded on an attempt found open by a later claim.
const UNFINISHED_ERROR: &str = "no outcome recorded before the event was claimed again";

/// Records, then claims, in the caller's transaction.
pub(crate) async fn commit(
    db: &mut impl Exec,
    dialect: &Dialect,
    claimer: &Claimer,
    records: &[Record],
    claims: &[Claim],
) -> Result<Vec<ClaimOutcome>, StoreError> {
    if !records.is_empty() {
        record_in(db, dialect, records).await?;
    }
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    claim_in(db, dialect, claimer, claims).await
}

async fn claim_in(
    db: &mut impl Exec,
    dialect: &Dialect,
    claimer: &Claimer,
    claims: &[Claim],
) -> Result<Vec<ClaimOutcome>, StoreError> {
    let suppressed = suppressed_among(db, dialect, claims).await?;
    let is_suppressed = |c: &Claim| {
        !suppressed.is_empty()
            && c.address
                .as_deref()
                .is_some_and(|a| suppressed.contains(&(a.to_owned(), c.channel)))
    };
    let mut seen = HashSet::with_capacity(claims.len());
    let mut firsts: Vec<&Claim> = claims
        .iter()
        .filter(|c| !is_suppressed(c) && c.cap.is_none() && seen.insert(c.event_id.as_str()))
        .collect();
    // One lock order for every writer (PostgreSQL row locks).
    firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
    let mut fresh = insert_new(db, dialect, claimer, &firsts).await?;
    let mut outcomes = Vec::with_capacity(claims.len());
    for claim in claims {
        // Only an event's first claim in the batch can be in `fresh`;
        // removing it sends the next one the long way.
        if is_suppressed(claim) {
            let done = final_outcome(db, claim).await?;
            outcomes.push(done.unwrap_or(ClaimOutcome::Suppressed));
        } else if let Some(cap) = claim.cap {
            outcomes.push(claim_capped(db, dialect, claimer, claim, cap).await?);
        } else if fresh.remove(claim.event_id.as_str()) {
            outcomes.push(ClaimOutcome::Send {
                previous_unknown: false,
            });
        } else {
            outcomes.push(claim_one(db, dialect, claimer, claim).await?);
        }
    }
    Ok(outcomes)
}

/// The (address, channel) pairs of the batch that are on the suppression
/// list.
async fn suppressed_among(
    db: &mut impl Exec,
    dialect: &Dialect,
    claims: &[Claim],
) -> Result<HashSet<(String, &'static str)>, StoreError> {
    let addresses: HashSet<&str> = claims.iter().filter_map(|c| c.address.as_deref()).collect();
    let mut found = HashSet::new();
    if addresses.is_empty() {
        return Ok(found);
    }
    // One statement per batch, whatever its size.
    let list = serde_json::to_string(&addresses).expect("strings serialise");
    for row in db.rows(dialect.suppressed_among, args![&list]).await? {
        let mut row = row.into_iter();
        let address = row.next().and_then(|v| v.into_text()).unwrap_or_default();
        let channel = match row.next().and_then(|v| v.into_text()).as_deref() {
            Some("sms") => "sms",
            _ => "email",
        };
        found.insert((address, channel));
    }
    Ok(found)
}

/// A claim of a class with a frequency cap, in batch order: the count sees
/// every earlier claim of the batch.
async fn claim_capped(
    db: &mut impl Exec,
    dialect: &Dialect,
    claimer: &Claimer,
    claim: &Claim,
    cap: FrequencyCap,
) -> Result<ClaimOutcome, StoreError> {
    if let Some(done) = final_outcome(db, claim).await? {
        return Ok(done);
    }
    let args = args![&claim.user_id, &claim.class, cap.since_ms, &claim.event_id];
    let n = first(db.rows(sql::CAP_COUNT, args).await?).map_or(0, |v| v.int());
    if n >= i64::from(cap.max) {
        return Ok(ClaimOutcome::Capped);
    }
    claim_one(db, dialect, claimer, claim).await
}

/// The first column of the first row.
fn first(rows: Vec<Vec<Val>>) -> Option<Val> {
    rows.into_iter().next()?.into_iter().next()
}

/// What any claim of an event that already ended is answered (`None` if it
/// has not ended).
async fn final_outcome(
    db: &mut impl Exec,
    claim: &Claim,
) -> Result<Option<ClaimOutcome>, StoreError> {
    let status = first(db.rows(sql::SELECT_STATUS, args![&claim.event_id]).await?)
        .and_then(|v| v.into_text())
        .map(parse_status)
        .transpose()?;
    Ok(match status {
        Some(Status::Sent) => Some(ClaimOutcome::AlreadySent { provider_id: None }),
        Some(status) if status.is_final() => Some(ClaimOutcome::AlreadyFinal { status }),
        _ => None,
    })
}

/// Applies suppression changes, each audited if it changed the list;
/// returns which did. With `webhook_id`, the changes apply only if that
/// webhook delivery was not processed before (`None` if it was).
pub(crate) async fn change_suppressions(
    db: &mut impl Exec,
    changes: &[SuppressionChange],
    webhook_id: Option<(&str, i64)>,
) -> Result<Option<Vec<bool>>, StoreError> {
    if let Some((id, now_ms)) = webhook_id {
        if db.run(sql::WEBHOOK_RECEIPT, args![id, now_ms]).await? == 0 {
            return Ok(None);
        }
    }
    let mut changed = Vec::with_capacity(changes.len());
    for change in changes {
        changed.push(change_suppression(db, change).await?);
    }
    Ok(Some(changed))
}

async fn change_suppression(db: &mut impl Exec, c: &SuppressionChange) -> Result<bool, StoreError> {
    let (address, channel, source, reason) = (
        c.address.as_str(),
        c.channel,
        c.source.as_str(),
        c.reason.as_deref(),
    );
    let n = match c.action {
        SuppressionAction::Suppress => {
            let args = args![address, channel, source, reason, c.now_ms];
            db.run(sql::SUPPRESS, args).await?
        }
        SuppressionAction::Allow => db.run(sql::ALLOW, args![address, channel]).await?,
    };
    if n > 0 {
        let (action, actor) = (c.action.as_str(), c.actor.as_str());
        let args = args![address, channel, action, actor, source, reason, c.now_ms];
        db.run(sql::AUDIT, args).await?;
    }
    Ok(n > 0)
}

/// The rows of a bulk statement ([`Exec::bulk`]): each item made a row
/// by `row`.
fn rows_of<'a, T, const N: usize>(
    items: &'a [T],
    row: impl Fn(&'a T) -> [Arg<'a>; N],
) -> Vec<[Arg<'a>; N]> {
    items.iter().map(row).collect()
}

/// Inserts the messages of events not yet stored, each with its attempt 1
/// open; returns their ids.
async fn insert_new<'c>(
    db: &mut impl Exec,
    dialect: &Dialect,
    claimer: &Claimer,
    claims: &[&'c Claim],
) -> Result<HashSet<&'c str>, StoreError> {
    let inserted: HashSet<String> = db
        .bulk_changed(
            dialect.bulk.claim_insert,
            &rows_of(claims, |c| {
                *args![
                    &c.event_id,
                    &c.class,
                    &c.user_id,
                    c.channel,
                    c.fallback_from,
                    c.now_ms,
                    c.attempt,
                    &*claimer.owner,
                    claimer.lease_from(c.now_ms),
                ]
            }),
        )
        .await?
        .into_iter()
        .collect();
    Ok(claims
        .iter()
        .map(|c| c.event_id.as_str())
        .filter(|id| inserted.contains(*id))
        .collect())
}

/// Renews the lease of this process's open attempt of `event_id` from
/// `now_ms`; `false` if it has none (another process's claim closed it).
/// The lease is on the message's row, which a claim locks: a claim and a
/// renewal of one event are one before the other, so a renewal never
/// succeeds beside a claim that found the old lease run out.
pub(crate) async fn renew(
    db: &mut impl Exec,
    claimer: &Claimer,
    event_id: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let args = args![event_id, &*claimer.owner, claimer.lease_from(now_ms)];
    Ok(db.run(sql::RENEW_LEASE, args).await? > 0)
}

/// One claim the bulk insert did not settle.
async fn claim_one(
    db: &mut impl Exec,
    dialect: &Dialect,
    claimer: &Claimer,
    claim: &Claim,
) -> Result<ClaimOutcome, StoreError> {
    let existing = db
        .rows(dialect.select_for_claim, args![&claim.event_id])
        .await?
        .into_iter()
        .next();
    let Some(row) = existing else {
        // Deleted by retention since the bulk insert: new again.
        let args = args![
            &claim.event_id,
            &claim.class,
            &claim.user_id,
            claim.channel,
            claim.fallback_from,
            claim.now_ms,
            claim.attempt,
            &*claimer.owner,
            claimer.lease_from(claim.now_ms),
        ];
        db.run(sql::CLAIM_INSERT_MESSAGE, args).await?;
        return Ok(ClaimOutcome::Send {
            previous_unknown: false,
        });
    };
    let stored = Stored::of(row)?;
    match stored.status {
        Status::Sent => Ok(ClaimOutcome::AlreadySent {
            provider_id: stored.provider_id,
        }),
        status @ (Status::DeadLettered | Status::Suppressed) => {
            Ok(ClaimOutcome::AlreadyFinal { status })
        }
        Status::Sending | Status::Retrying | Status::Fallback | Status::OutcomeUnknown => {
            // Another process's call may still be running: leave it alone
            // (a crashed one's lease runs out, and then it is unfinished).
            if stored.in_flight_elsewhere(&claimer.owner, claim.now_ms) {
                return Ok(ClaimOutcome::InFlightElsewhere);
            }
            let args = args![&claim.event_id, claim.now_ms, UNFINISHED_ERROR];
            db.run(sql::SHELVE_LATEST_ATTEMPT, args).await?;
            let args = args![
                &claim.event_id,
                claim.channel,
                claim.fallback_from,
                claim.now_ms,
                &claim.class,
                &claim.user_id,
                claim.attempt,
                &*claimer.owner,
                claimer.lease_from(claim.now_ms),
            ];
            db.run(sql::RECLAIM_MESSAGE, args).await?;
            Ok(ClaimOutcome::Send {
                previous_unknown: stored.open,
            })
        }
    }
}

async fn record_in(
    db: &mut impl Exec,
    dialect: &Dialect,
    records: &[Record],
) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(records.len());
    let (mut firsts, later): (Vec<&Record>, Vec<&Record>) = records
        .iter()
        .partition(|r| seen.insert(r.event_id.as_str()));
    firsts.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
    settle(db, dialect, &firsts).await?;
    // In batch order, each alone: it sees what the earlier ones did.
    for record in later {
        settle(db, dialect, &[record]).await?;
    }
    for change in records.iter().filter_map(|r| r.opt_out.as_ref()) {
        change_suppression(db, change).await?;
    }
    let keyed: Vec<(&str, &Record)> = records
        .iter()
        .filter_map(|r| Some((r.receipt_key()?, r)))
        .collect();
    db.bulk(
        dialect.bulk.receipt_keys,
        &rows_of(&keyed, |(key, r)| *args![*key, &r.event_id, r.now_ms]),
    )
    .await?;
    let kept: Vec<(&Record, &KeptEvent)> = records
        .iter()
        .filter_map(|r| Some((r, r.keep_for_fallback.as_ref()?)))
        .collect();
    db.bulk(
        dialect.bulk.keep_fallback,
        &rows_of(&kept, |(r, k)| {
            *args![
                &r.event_id,
                &r.class,
                &r.user_id,
                i64::from(k.priority),
                k.published_at_ms,
                k.body.as_slice(),
                r.now_ms,
            ]
        }),
    )
    .await?;
    Ok(())
}

/// Applies records of distinct events: moves their messages, finishing
/// the attempt each names on its message, and creates the message of an
/// event never claimed.
async fn settle(
    db: &mut impl Exec,
    dialect: &Dialect,
    records: &[&Record],
) -> Result<(), StoreError> {
    let (sent, other): (Vec<&Record>, Vec<&Record>) = records
        .iter()
        .partition(|r| matches!(r.outcome, Outcome::Sent { .. }));
    let mut moved = HashSet::with_capacity(records.len());
    move_sent(db, dialect, &sent, &mut moved).await?;
    move_other(db, dialect, &other, &mut moved).await?;
    for record in records {
        if moved.contains(record.event_id.as_str()) {
            continue;
        }
        // The update that moves a message finishes the attempt the record
        // names; one that did not apply (a message already `sent`, say)
        // leaves that to this, on the same condition. An attempt finished
        // here is on a message, so there is none to create.
        let w = Written::of(record);
        let args = args![
            &record.event_id,
            record.channel,
            record.attempt,
            record.now_ms,
            record.outcome.attempt_outcome(),
            record.outcome.error(),
            w.provider_id,
            w.cost_usd,
        ];
        if db.run(sql::FINISH_ATTEMPT, args).await? == 0 {
            insert_recorded(db, record).await?;
        }
    }
    Ok(())
}

/// Moves messages to `sent`; adds the ids moved to `moved`.
async fn move_sent(
    db: &mut impl Exec,
    dialect: &Dialect,
    records: &[&Record],
    moved: &mut HashSet<String>,
) -> Result<(), StoreError> {
    let ids = db
        .bulk_changed(
            dialect.bulk.record_sent,
            &rows_of(records, |r| {
                let w = Written::of(r);
                let cost = w.cost_usd.unwrap_or(0.0);
                *args![
                    &r.event_id,
                    r.channel,
                    w.provider_id,
                    cost,
                    w.segments,
                    r.now_ms,
                    r.attempt,
                ]
            }),
        )
        .await?;
    moved.extend(ids);
    Ok(())
}

/// Moves messages to every other outcome's status; adds the ids moved to
/// `moved`.
async fn move_other(
    db: &mut impl Exec,
    dialect: &Dialect,
    records: &[&Record],
    moved: &mut HashSet<String>,
) -> Result<(), StoreError> {
    let ids = db
        .bulk_changed(
            dialect.bulk.record_other,
            &rows_of(records, |r| {
                let w = Written::of(r);
                let (reason, error) = (r.outcome.reason(), r.outcome.error());
                let status = w.status.as_str();
                *args![
                    &r.event_id,
                    r.channel,
                    status,
                    reason,
                    error,
                    w.finished_at,
                    r.now_ms,
                    r.attempt,
                    r.outcome.attempt_outcome(),
                ]
            }),
        )
        .await?;
    moved.extend(ids);
    Ok(())
}

/// Creates the message of an event never claimed; does nothing if it
/// exists (in a status the record may not move).
async fn insert_recorded(db: &mut impl Exec, record: &Record) -> Result<(), StoreError> {
    let w = Written::of(record);
    let args = args![
        &record.event_id,
        &record.class,
        &record.user_id,
        record.channel,
        w.status.as_str(),
        w.provider_id,
        w.cost_usd.unwrap_or(0.0),
        w.segments,
        record.outcome.reason(),
        record.outcome.error(),
        record.now_ms,
        w.finished_at,
    ];
    db.run(sql::INSERT_RECORDED, args).await?;
    Ok(())
}
