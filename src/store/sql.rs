//! The statements, one text for both backends (SQLite reads `$N` as the Nth
//! bound value, as PostgreSQL does). What differs, the locking read of a
//! claim, the table functions over JSON and retention's deletes of
//! messages, is in [`Dialect`].

/// The statements whose text differs per backend.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Reads what a claim of a stored message needs (`claim_read!`: its
    /// status, provider id and latest attempt), locking the row until the
    /// transaction ends. SQLite needs no row lock: the claim transaction
    /// already holds the database's write lock from its first INSERT.
    pub select_for_claim: &'static str,
    /// Which of a batch's recipients are suppressed, in one statement:
    /// `$1` is the addresses as a JSON array. (Addresses of the two
    /// channels never collide: phones start with `+`, emails hold `@`.)
    pub suppressed_among: &'static str,
    /// Leases the earliest due events not leased to another scheduler:
    /// `$1` now, `$2` the lease's end, `$3` limit. Returns them (in no
    /// particular order). PostgreSQL skips rows another transaction is
    /// leasing, so concurrent schedulers take disjoint sets.
    pub take_due: &'static str,
    /// One retention batch of delivered messages and their attempts,
    /// returning the messages' ids: `$1` cutoff, `$2` batch size.
    pub purge_sent: &'static str,
    /// The same for failed messages.
    pub purge_failed: &'static str,
    /// The hot path's statements over a whole batch.
    pub bulk: Bulk,
}

/// What a claim of a stored event reads of its message, in this order
/// (`commit::Stored`).
macro_rules! claim_read {
    () => {
        "SELECT status, provider_id, latest_attempt, latest_finished_at, owner, lease_until"
    };
}

macro_rules! claim_insert_message {
    () => {
        "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, fallback_from, \
created_at, updated_at, latest_attempt, latest_channel, latest_started_at, owner, lease_until) \
VALUES ($1, $2, $3, $4, 'sending', 1, $5, $6, $6, $7, $4, $6, $8, $9) ON CONFLICT (event_id) DO NOTHING"
    };
}

/// A first claim: creates the message with its attempt 1 open. No row
/// affected means it exists. `$1` event id, `$2` class, `$3` user id, `$4`
/// channel, `$5` fallback from, `$6` now, `$7` the delivery's attempt
/// number, `$8` this process, `$9` the lease's end.
pub(crate) const CLAIM_INSERT_MESSAGE: &str = claim_insert_message!();

/// Whether a message's latest attempt is open, in the messages table's
/// own columns.
macro_rules! latest_open {
    () => {
        "latest_attempt IS NOT NULL AND latest_finished_at IS NULL"
    };
}

/// Writes an event's latest attempt, if it is on the message, to
/// `attempts`: as it finished, or, still open, finished now as
/// `outcome_unknown` with `$3` as its error. (The claim that runs it opens
/// the next attempt in its place, `RECLAIM_MESSAGE`.) `$1` event id, `$2`
/// now.
pub(crate) const SHELVE_LATEST_ATTEMPT: &str = "\
INSERT INTO attempts (event_id, seq, attempt, channel, started_at, owner, lease_until, finished_at, \
outcome, error, provider_id, cost_usd) SELECT event_id, attempts, latest_attempt, latest_channel, \
latest_started_at, owner, lease_until, COALESCE(latest_finished_at, $2), \
CASE WHEN latest_finished_at IS NULL THEN 'outcome_unknown' ELSE latest_outcome END, \
CASE WHEN latest_finished_at IS NULL THEN $3 ELSE latest_error END, latest_provider_id, \
latest_cost_usd FROM messages WHERE event_id = $1 AND latest_attempt IS NOT NULL";

/// Renews the lease of this process's open attempt of an event: `$1` event
/// id, `$2` this process, `$3` the lease's new end. Changes no row once
/// another process's claim closed that attempt.
pub(crate) const RENEW_LEASE: &str = concat!(
    "UPDATE messages SET lease_until = $3 WHERE event_id = $1 AND owner = $2 AND ",
    latest_open!()
);

/// A later claim of a claimable message, opening its next attempt in
/// place of its latest (which was written to `attempts` first,
/// `SHELVE_LATEST_ATTEMPT`). `$1` event id, `$2`
/// channel, `$3` fallback from, `$4` now, `$5` class, `$6` user id, `$7` the
/// delivery's attempt number, `$8` this process, `$9` the lease's end.
pub(crate) const RECLAIM_MESSAGE: &str = "\
UPDATE messages SET status = 'sending', channel = $2, fallback_from = $3, attempts = attempts + 1, \
class = $5, user_id = $6, finished_at = NULL, updated_at = $4, latest_attempt = $7, \
latest_channel = $2, latest_started_at = $4, owner = $8, lease_until = $9, latest_finished_at = NULL, \
latest_outcome = NULL, latest_error = NULL, latest_provider_id = NULL, latest_cost_usd = NULL \
WHERE event_id = $1";

/// Finishes a message's open attempt if it is the one a record names, for a
/// record whose update of the message did not apply (and so did not finish
/// it; `Bulk::record_sent`, `Bulk::record_other`), with the same condition
/// as theirs: the record's channel and attempt number, still open. `$1`
/// event id, `$2` channel, `$3` attempt, `$4` now, `$5` outcome, `$6`
/// error, `$7` provider id, `$8` cost.
pub(crate) const FINISH_ATTEMPT: &str = concat!(
    "UPDATE messages SET latest_finished_at = $4, latest_outcome = $5, latest_error = $6, \
latest_provider_id = $7, latest_cost_usd = $8 WHERE event_id = $1 AND latest_attempt = $3 \
AND latest_channel = $2 AND ",
    latest_open!()
);

/// A record for an event never claimed (a decode dead letter). `$1` event
/// id, `$2` class, `$3` user id, `$4` channel, `$5` status, `$6` provider id,
/// `$7` cost, `$8` segments, `$9` reason, `$10` error, `$11` now, `$12`
/// finished at.
pub(crate) const INSERT_RECORDED: &str = "\
INSERT INTO messages (event_id, class, user_id, channel, status, attempts, provider_id, cost_usd, segments, \
reason, last_error, created_at, updated_at, finished_at) \
VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $11, $12) \
ON CONFLICT (event_id) DO NOTHING";

/// Makes a dead-lettered or unknown message claimable again (DLQ replay).
/// `$1` event id, `$2` now.
pub(crate) const RELEASE: &str = "\
UPDATE messages SET status = 'retrying', finished_at = NULL, updated_at = $2 \
WHERE event_id = $1 AND status IN ('dead_lettered', 'outcome_unknown')";

pub(crate) const SELECT_MESSAGE: &str = "\
SELECT event_id, class, user_id, channel, status, attempts, provider_id, cost_usd, segments, reason, \
last_error, fallback_from, created_at, updated_at, finished_at, delivery, delivery_error \
FROM messages WHERE event_id = $1";

/// `$1` most rows: the latest events that ended badly, newest first.
/// (Such events always have `finished_at`; saying so lets the query use
/// the index of finished messages.)
pub(crate) const RECENT_FAILURES: &str = "\
SELECT event_id, class, user_id, channel, status, attempts, provider_id, cost_usd, segments, reason, \
last_error, fallback_from, created_at, updated_at, finished_at, delivery, delivery_error \
FROM messages WHERE status IN ('dead_lettered', 'outcome_unknown') AND finished_at IS NOT NULL \
ORDER BY finished_at DESC LIMIT $1";

/// An event's attempt log, `$1` event id: the attempts later ones took
/// over from, then the latest, from the message.
pub(crate) const SELECT_ATTEMPTS: &str = "\
SELECT attempt, channel, started_at, finished_at, outcome, error, provider_id, cost_usd FROM (\
SELECT seq, attempt, channel, started_at, finished_at, outcome, error, provider_id, cost_usd \
FROM attempts WHERE event_id = $1 UNION ALL \
SELECT attempts, latest_attempt, latest_channel, latest_started_at, latest_finished_at, \
latest_outcome, latest_error, latest_provider_id, latest_cost_usd \
FROM messages WHERE event_id = $1 AND latest_attempt IS NOT NULL) AS log ORDER BY seq";

/// `$1` user id, `$2` from (inclusive), `$3` to (exclusive). The unary
/// `+` keeps SQLite, which has no statistics, on the per-user index rather
/// than the day's finished messages of every user.
pub(crate) const USER_COST: &str = "\
SELECT channel, COUNT(*) AS messages, SUM(cost_usd) AS cost_usd FROM messages \
WHERE user_id = $1 AND +finished_at >= $2 AND +finished_at < $3 AND status = 'sent' \
GROUP BY channel ORDER BY channel";

/// Every class's sends finished in `[$1, $2)`, per channel.
pub(crate) const CLASS_COST: &str = "\
SELECT class, channel, COUNT(*) AS messages, SUM(cost_usd) AS cost_usd FROM messages \
WHERE status = 'sent' AND finished_at >= $1 AND finished_at < $2 \
GROUP BY class, channel ORDER BY class, channel";

/// Retention: which delivered messages are due for deletion. `$1` cutoff.
macro_rules! purge_sent_where {
    () => {
        "status = 'sent' AND finished_at < $1"
    };
}

/// Retention: which failed messages are due for deletion. `$1` cutoff.
macro_rules! purge_failed_where {
    () => {
        "status IN ('dead_lettered', 'outcome_unknown', 'suppressed') AND finished_at < $1"
    };
}

/// Deletes one retention batch of the messages `$where` picks (`$1` cutoff,
/// `$2` batch size), returning their ids. The condition is stated again on
/// the deleted row itself: on PostgreSQL a row a claim changed meanwhile
/// is checked again at its new version and kept. SQLite's `attempts`
/// follow by their foreign key's cascade.
macro_rules! sqlite_purge {
    ($where:expr) => {
        concat!(
            "DELETE FROM messages WHERE event_id IN (SELECT event_id FROM messages WHERE ",
            $where,
            " LIMIT $2) AND ",
            $where,
            " RETURNING event_id"
        )
    };
}

/// PostgreSQL's `attempts` have no foreign key (migration 0008): the same
/// statement deletes the deleted messages' attempts.
macro_rules! postgres_purge {
    ($where:expr) => {
        concat!(
            "WITH gone AS (DELETE FROM messages WHERE event_id IN (SELECT event_id FROM messages WHERE ",
            $where,
            " LIMIT $2) AND ",
            $where,
            " RETURNING event_id), \
their_attempts AS (DELETE FROM attempts WHERE event_id IN (SELECT event_id FROM gone)) \
SELECT event_id FROM gone"
        )
    };
}

pub(crate) const PING: &str = "SELECT 1";

/// Puts an address on the suppression list; no row affected means it was
/// there already. `$1` address, `$2` channel, `$3` source, `$4` reason,
/// `$5` now.
pub(crate) const SUPPRESS: &str = "\
INSERT INTO suppressions (address, channel, source, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
ON CONFLICT (address, channel) DO NOTHING";

/// Takes an address off the list. `$1` address, `$2` channel.
pub(crate) const ALLOW: &str = "DELETE FROM suppressions WHERE address = $1 AND channel = $2";

/// Audits one change. `$1` address, `$2` channel, `$3` action, `$4` actor,
/// `$5` source, `$6` reason, `$7` now.
pub(crate) const AUDIT: &str = "\
INSERT INTO suppression_audit (address, channel, action, actor, source, reason, at) \
VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// The list, newest first. `$1` limit.
pub(crate) const LIST_SUPPRESSIONS: &str = "\
SELECT address, channel, source, reason, created_at FROM suppressions \
ORDER BY created_at DESC, address, channel LIMIT $1";

/// One address's audit log, oldest first. `$1` address.
pub(crate) const SELECT_AUDIT: &str = "\
SELECT address, channel, action, actor, source, reason, at FROM suppression_audit \
WHERE address = $1 ORDER BY id";

/// Marks a webhook delivery processed; no row affected means it was
/// already. `$1` id, `$2` now.
pub(crate) const WEBHOOK_RECEIPT: &str = "\
INSERT INTO webhook_receipts (id, received_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Holds an event; the same event held again keeps the later entry.
/// `$1` event id, `$2` class, `$3` due at, `$4` reason, `$5` channel,
/// `$6` attempt, `$7` fallback from, `$8` priority, `$9` published at,
/// `$10` body, `$11` now.
pub(crate) const SCHEDULE: &str = "\
INSERT INTO scheduled (event_id, class, due_at, reason, channel, attempt, fallback_from, priority, \
published_at, body, created_at, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
ON CONFLICT (event_id, class) DO UPDATE SET due_at = excluded.due_at, reason = excluded.reason, \
channel = excluded.channel, attempt = excluded.attempt, fallback_from = excluded.fallback_from, \
priority = excluded.priority, published_at = excluded.published_at, body = excluded.body, \
created_at = excluded.created_at, user_id = excluded.user_id, leased_until = NULL";

/// GDPR erasure, in this order: the provider ids of a user's attempts
/// (they lead to the provider's copy of the address), then the user's
/// messages lose their user id and provider ids, their latest attempt's
/// too (anonymous counts stay),
/// then the user's held events go. `$1` user id.
pub(crate) const ERASE_ATTEMPTS: &str = "\
UPDATE attempts SET provider_id = NULL WHERE event_id IN (SELECT event_id FROM messages WHERE user_id = $1)";
pub(crate) const ERASE_MESSAGES: &str = "UPDATE messages SET user_id = '', provider_id = NULL, \
latest_provider_id = NULL WHERE user_id = $1";
pub(crate) const ERASE_SCHEDULED: &str = "DELETE FROM scheduled WHERE user_id = $1";

/// The columns of a held event, as `scheduled_from_row` reads them.
macro_rules! scheduled_columns {
    () => {
        "event_id, class, user_id, due_at, reason, channel, attempt, fallback_from, priority, \
published_at, body, created_at"
    };
}

/// One event's entries. `$1` event id.
pub(crate) const SCHEDULED_EVENT: &str = concat!(
    "SELECT ",
    scheduled_columns!(),
    " FROM scheduled WHERE event_id = $1 ORDER BY class"
);

/// Removes an entry published again, unless it was held anew meanwhile.
/// `$1` event id, `$2` class, `$3` due at.
pub(crate) const UNSCHEDULE: &str =
    "DELETE FROM scheduled WHERE event_id = $1 AND class = $2 AND due_at = $3";

/// How many events are held.
pub(crate) const SCHEDULED_COUNT: &str = "SELECT COUNT(*) FROM scheduled";

/// A user's messages of a class in a frequency-cap window, other than this
/// event. `$1` user id, `$2` class, `$3` window start, `$4` event id.
pub(crate) const CAP_COUNT: &str = "\
SELECT COUNT(*) FROM messages WHERE user_id = $1 AND class = $2 AND event_id <> $4 \
AND ((status = 'sent' AND finished_at >= $3) OR (status = 'sending' AND updated_at >= $3))";

/// A delivery receipt moves the message's delivery status forward only.
/// `$1` provider id, `$2` status, `$3` its rank, `$4` error, `$5` now.
pub(crate) const RECEIPT: &str = "\
UPDATE messages SET delivery = $2, delivery_rank = $3, delivery_error = $4, delivery_at = $5, updated_at = $5 \
WHERE event_id = (SELECT event_id FROM receipt_keys WHERE provider_id = $1) AND provider_id = $1 \
AND delivery_rank < $3 RETURNING event_id, channel";

/// Whether a send with this provider id was recorded for receipts (and is
/// still the message's latest). `$1` provider id.
pub(crate) const PROVIDER_ID_KNOWN: &str = "\
SELECT 1 FROM receipt_keys k JOIN messages m ON m.event_id = k.event_id \
WHERE k.provider_id = $1 AND m.provider_id = $1";

/// Receipt keys past the time a receipt can take. `$1` cutoff, `$2` batch.
pub(crate) const PURGE_RECEIPT_KEYS: &str = "\
DELETE FROM receipt_keys WHERE provider_id IN (\
SELECT provider_id FROM receipt_keys WHERE created_at < $1 LIMIT $2) RETURNING provider_id";

/// Erasure: a user's receipt keys (they lead to the provider's copy of the
/// address). `$1` user id.
pub(crate) const ERASE_RECEIPT_KEYS: &str = "\
DELETE FROM receipt_keys WHERE event_id IN (SELECT event_id FROM messages WHERE user_id = $1)";

/// Takes a kept event for its fallback. `$1` event id.
pub(crate) const TAKE_FALLBACK: &str = "\
DELETE FROM fallback_pending WHERE event_id = $1 RETURNING class, user_id, priority, published_at, body";

/// The SMS came back undelivered: its message waits for the email claim.
/// `$1` event id, `$2` error, `$3` now.
pub(crate) const RECEIPT_FALLBACK: &str = "\
UPDATE messages SET status = 'fallback', last_error = $2, finished_at = NULL, updated_at = $3 \
WHERE event_id = $1 AND status = 'sent'";

/// Kept events past their use. `$1` cutoff, `$2` batch size.
pub(crate) const PURGE_FALLBACK: &str = "\
DELETE FROM fallback_pending WHERE event_id IN (\
SELECT event_id FROM fallback_pending WHERE created_at < $1 LIMIT $2) RETURNING event_id";

/// Erasure: a user's kept events. `$1` user id.
pub(crate) const ERASE_FALLBACK: &str = "DELETE FROM fallback_pending WHERE user_id = $1";

/// The status of a message, if it exists. `$1` event id.
pub(crate) const SELECT_STATUS: &str = "SELECT status FROM messages WHERE event_id = $1";

// ---------------------------------------------------------------------------
// The hot path's statements over a batch (`Exec::bulk`). On PostgreSQL,
// one set statement per batch, whatever its size: `$1` is the batch as one
// JSON array of rows, each row an array; `value ->> k` is a row's kth value
// (from 0). One statement saves a round trip to the server per row. On
// SQLite, a one-row statement run once per row with `$N` the row's Nth
// value: rusqlite runs it in the process, so a row costs no round trip,
// and SQLite neither parses JSON nor keeps a statement journal for a
// statement that changes one row. Nothing in those may make SQLite build
// a temporary table, which it would build again for every row: no
// `RETURNING` (`Exec::bulk_changed` counts the rows changed instead), no
// `IN` list of more than two values, in the statement or in a CHECK of
// the table it writes (migration `0008`). A test below holds them to it.

/// The statements over a batch. Each field names its row's values in
/// order.
#[derive(Debug)]
pub(crate) struct Bulk {
    /// First claims of events, each message created with its attempt 1
    /// open: event id, class, user id, channel, fallback from, now,
    /// attempt, owner, lease until. Changes the new events only.
    /// (PostgreSQL returns their ids.)
    pub claim_insert: &'static str,
    /// `sent` wins over every status but itself: event id, channel,
    /// provider id, cost, segments, now, attempt. Finishes the open attempt
    /// if it is the record's (one record per event: its channel and attempt
    /// number). (PostgreSQL returns the ids it moved.)
    pub record_sent: &'static str,
    /// Every other outcome moves only an unfinished message, and only from
    /// the channel it is on: event id, channel, status, reason, error,
    /// finished at, now, attempt, the attempt's outcome. Finishes the open
    /// attempt if it is the record's. (PostgreSQL returns the ids it
    /// moved.) A record whose message neither statement moves finishes its
    /// attempt with `FINISH_ATTEMPT`.
    pub record_other: &'static str,
    /// Makes accepted sends findable by their receipts: provider id, event
    /// id, now. A provider id already there keeps its event.
    pub receipt_keys: &'static str,
    /// Keeps accepted SMS events for a fallback on an undelivered receipt:
    /// event id, class, user id, priority, published at, body, now. An
    /// event already kept stays as it was.
    pub keep_fallback: &'static str,
}

/// PostgreSQL's table of a set statement's rows: `$1`, one JSON array of
/// arrays.
macro_rules! pg_rows {
    () => {
        "jsonb_array_elements($1::jsonb) AS j(value)"
    };
}

/// The assignments that finish a message's open attempt when it is the
/// one a record names (`$attempt`, `$channel`: its attempt number and
/// channel), each column to its value, and keep every column otherwise (a
/// late record after a newer claim, or a repeated one): `FINISH_ATTEMPT`'s
/// condition. `$m` is how the statement names the message's columns.
macro_rules! finish_latest {
    ($m:literal, $attempt:literal, $channel:literal;
     $col0:literal = $val0:literal $(, $col:literal = $val:literal)*) => {
        concat!(
            finish_latest!(@one $m, $attempt, $channel, $col0, $val0)
            $(, ", ", finish_latest!(@one $m, $attempt, $channel, $col, $val))*
        )
    };
    (@one $m:literal, $attempt:literal, $channel:literal, $col:literal, $val:literal) => {
        concat!(
            $col, " = CASE WHEN ", $m, "latest_attempt = ", $attempt, " AND ", $m,
            "latest_channel = ", $channel, " AND ", $m, "latest_finished_at IS NULL THEN ",
            $val, " ELSE ", $m, $col, " END"
        )
    };
}

/// PostgreSQL's set statements, one per step over the whole batch.
const PG_BULK: Bulk = Bulk {
    claim_insert: concat!(
        "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, \
fallback_from, created_at, updated_at, latest_attempt, latest_channel, latest_started_at, owner, \
lease_until) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'sending', 1, value ->> 4, \
CAST(value ->> 5 AS BIGINT), CAST(value ->> 5 AS BIGINT), CAST(value ->> 6 AS BIGINT), value ->> 3, \
CAST(value ->> 5 AS BIGINT), value ->> 7, CAST(value ->> 8 AS BIGINT) FROM ",
        pg_rows!(),
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    ),
    record_sent: concat!(
        "UPDATE messages SET status = 'sent', channel = v.channel, provider_id = v.provider_id, \
cost_usd = v.cost_usd, segments = v.segments, finished_at = v.at, updated_at = v.at, \
delivery = NULL, delivery_rank = 0, delivery_error = NULL, delivery_at = NULL, ",
        finish_latest!("messages.", "v.attempt", "v.channel";
            "latest_finished_at" = "v.at", "latest_outcome" = "'sent'", "latest_error" = "NULL",
            "latest_provider_id" = "v.provider_id", "latest_cost_usd" = "v.cost_usd"),
        " FROM (SELECT value ->> 0 AS event_id, value ->> 1 AS channel, value ->> 2 AS provider_id, \
CAST(value ->> 3 AS DOUBLE PRECISION) AS cost_usd, CAST(value ->> 4 AS BIGINT) AS segments, \
CAST(value ->> 5 AS BIGINT) AS at, CAST(value ->> 6 AS BIGINT) AS attempt FROM ",
        pg_rows!(),
        ") AS v WHERE messages.event_id = v.event_id AND messages.status <> 'sent' \
RETURNING messages.event_id"
    ),
    record_other: concat!(
        "UPDATE messages SET status = v.status, reason = COALESCE(v.reason, messages.reason), \
last_error = COALESCE(v.error, messages.last_error), finished_at = v.finished_at, updated_at = v.at, ",
        finish_latest!("messages.", "v.attempt", "v.channel";
            "latest_finished_at" = "v.at", "latest_outcome" = "v.outcome",
            "latest_error" = "v.error", "latest_provider_id" = "NULL",
            "latest_cost_usd" = "NULL"),
        " FROM (SELECT value ->> 0 AS event_id, value ->> 1 AS channel, value ->> 2 AS status, \
value ->> 3 AS reason, value ->> 4 AS error, CAST(value ->> 5 AS BIGINT) AS finished_at, \
CAST(value ->> 6 AS BIGINT) AS at, CAST(value ->> 7 AS BIGINT) AS attempt, \
value ->> 8 AS outcome FROM ",
        pg_rows!(),
        ") AS v WHERE messages.event_id = v.event_id AND messages.channel = v.channel \
AND messages.status IN ('sending', 'retrying', 'fallback', 'outcome_unknown') \
RETURNING messages.event_id"
    ),
    receipt_keys: concat!(
        "INSERT INTO receipt_keys (provider_id, event_id, created_at) \
SELECT value ->> 0, value ->> 1, CAST(value ->> 2 AS BIGINT) FROM ",
        pg_rows!(),
        " ON CONFLICT (provider_id) DO NOTHING"
    ),
    keep_fallback: concat!(
        "INSERT INTO fallback_pending (event_id, class, user_id, priority, published_at, body, \
created_at) SELECT value ->> 0, value ->> 1, value ->> 2, CAST(value ->> 3 AS BIGINT), \
CAST(value ->> 4 AS BIGINT), decode(value ->> 5, 'hex'), CAST(value ->> 6 AS BIGINT) FROM ",
        pg_rows!(),
        " ON CONFLICT (event_id) DO NOTHING"
    ),
};

/// The keys of the held events due and free: `$1` now, `$3` limit. (The
/// keys are renamed so the lease's `RETURNING` names the table's columns
/// unqualified.)
macro_rules! free_due {
    () => {
        "SELECT event_id AS due_id, class AS due_class FROM scheduled WHERE due_at <= $1 \
AND (leased_until IS NULL OR leased_until <= $1) ORDER BY due_at LIMIT $3"
    };
}

pub(crate) const SQLITE: Dialect = Dialect {
    select_for_claim: concat!(claim_read!(), " FROM messages WHERE event_id = $1"),
    // SQLite has one writer at a time: the UPDATE is the lease.
    take_due: concat!(
        "UPDATE scheduled SET leased_until = $2 WHERE (event_id, class) IN (",
        free_due!(),
        ") RETURNING ",
        scheduled_columns!()
    ),
    suppressed_among: "SELECT address, channel FROM suppressions \
WHERE address IN (SELECT value FROM json_each($1))",
    purge_sent: sqlite_purge!(purge_sent_where!()),
    purge_failed: sqlite_purge!(purge_failed_where!()),
    bulk: Bulk {
        claim_insert: claim_insert_message!(),
        record_sent: concat!(
            "UPDATE messages SET status = 'sent', channel = $2, provider_id = $3, cost_usd = $4, \
segments = $5, finished_at = $6, updated_at = $6, delivery = NULL, delivery_rank = 0, \
delivery_error = NULL, delivery_at = NULL, ",
            finish_latest!("", "$7", "$2";
                "latest_finished_at" = "$6", "latest_outcome" = "'sent'", "latest_error" = "NULL",
                "latest_provider_id" = "$3", "latest_cost_usd" = "$4"),
            " WHERE event_id = $1 AND status <> 'sent'"
        ),
        record_other: concat!(
            "UPDATE messages SET status = $3, reason = COALESCE($4, reason), \
last_error = COALESCE($5, last_error), finished_at = $6, updated_at = $7, ",
            finish_latest!("", "$8", "$2";
                "latest_finished_at" = "$7", "latest_outcome" = "$9", "latest_error" = "$5",
                "latest_provider_id" = "NULL", "latest_cost_usd" = "NULL"),
            " WHERE event_id = $1 AND channel = $2 \
AND status <> 'sent' AND status <> 'dead_lettered' AND status <> 'suppressed'"
        ),
        receipt_keys: "INSERT INTO receipt_keys (provider_id, event_id, created_at) \
VALUES ($1, $2, $3) ON CONFLICT (provider_id) DO NOTHING",
        keep_fallback: "INSERT INTO fallback_pending (event_id, class, user_id, priority, \
published_at, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
ON CONFLICT (event_id) DO NOTHING",
    },
};

pub(crate) const POSTGRES: Dialect = Dialect {
    select_for_claim: concat!(
        claim_read!(),
        " FROM messages WHERE event_id = $1 FOR UPDATE"
    ),
    take_due: concat!(
        "UPDATE scheduled SET leased_until = $2 FROM (",
        free_due!(),
        " FOR UPDATE SKIP LOCKED) AS d WHERE event_id = due_id AND class = due_class RETURNING ",
        scheduled_columns!()
    ),
    suppressed_among: "SELECT address, channel FROM suppressions \
WHERE address IN (SELECT jsonb_array_elements_text($1::jsonb))",
    purge_sent: postgres_purge!(purge_sent_where!()),
    purge_failed: postgres_purge!(purge_failed_where!()),
    bulk: PG_BULK,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `k` after `marker` in `text` (`None` if none).
    fn highest(text: &str, marker: &str) -> Option<usize> {
        text.split(marker)
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
    }

    /// Every statement of a `Bulk`, in one order.
    fn steps(b: &Bulk) -> [&'static str; 5] {
        [
            b.claim_insert,
            b.record_sent,
            b.record_other,
            b.receipt_keys,
            b.keep_fallback,
        ]
    }

    #[test]
    fn both_backends_read_rows_of_the_same_width() {
        for (lite, pg) in steps(&SQLITE.bulk).into_iter().zip(steps(&POSTGRES.bulk)) {
            // PostgreSQL: one parameter, the JSON rows, read from 0.
            assert!(pg.contains("FROM jsonb_array_elements($1::jsonb)"), "{pg}");
            assert_eq!(highest(pg, "$"), Some(1), "{pg}");
            let pg_width = highest(pg, "value ->> ").map(|k| k + 1);
            // SQLite: one row, its values `$1`..`$N`, no JSON.
            assert!(!lite.contains("json"), "{lite}");
            assert_eq!(highest(lite, "$"), pg_width, "{lite}\n{pg}");
            assert!(!lite.contains("RETURNING"), "{lite}");
        }
    }

    /// SQLite codes some expressions (an `IN` list of more than two values,
    /// a `RETURNING`) with a temporary table, built again every time the
    /// statement runs: for a statement run once per row, that was most of
    /// the commit's time. None of the hot path's one-row statements may
    /// build one, against the schema the migrations make (whose CHECKs
    /// count too).
    #[test]
    fn sqlites_one_row_statements_build_no_temporary_table() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            db.execute_batch(&std::fs::read_to_string(file).unwrap())
                .unwrap();
        }
        for text in steps(&SQLITE.bulk) {
            let mut plan = db.prepare(&format!("EXPLAIN {text}")).unwrap();
            // Unbound parameters are NULL: nothing here runs the statement.
            let mut listing = plan.raw_query();
            let mut opcodes: Vec<String> = Vec::new();
            while let Some(row) = listing.next().unwrap() {
                opcodes.push(row.get(1).unwrap());
            }
            assert!(opcodes.iter().any(|op| op == "Halt"), "{opcodes:?}");
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "{text} builds a temporary table"
            );
        }
    }
}
