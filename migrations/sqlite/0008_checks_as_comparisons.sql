-- The hot path writes one row per statement (src/store/sql.rs, `SQLITE`),
-- and SQLite codes a CHECK of `IN` with more than two values as a
-- temporary table, built again each time a statement runs: per row, that
-- was most of a commit's time (docs/benchmarks.md). The same checks as
-- chains of comparisons cost a few instructions. SQLite cannot change a
-- table's CHECK in place, so `messages` and `attempts` are made again,
-- with the same columns, keys and indexes, and their rows copied.
--
-- The old tables are renamed out of the way first (which points the old
-- `attempts` at the old `messages`) and dropped child first, so dropping
-- them deletes nothing through `ON DELETE CASCADE`: this runs in the
-- migration's transaction, with foreign keys on.

DROP INDEX messages_finished;
DROP INDEX messages_user;
ALTER TABLE messages RENAME TO messages_old;
ALTER TABLE attempts RENAME TO attempts_old;

CREATE TABLE messages (
    event_id       TEXT    PRIMARY KEY NOT NULL,
    class          TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    channel        TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    status         TEXT    NOT NULL CHECK (status = 'sending' OR status = 'retrying'
                                           OR status = 'sent' OR status = 'fallback'
                                           OR status = 'dead_lettered' OR status = 'suppressed'
                                           OR status = 'outcome_unknown'),
    attempts       INTEGER NOT NULL DEFAULT 0,
    provider_id    TEXT,
    cost_usd       REAL    NOT NULL DEFAULT 0,
    segments       INTEGER NOT NULL DEFAULT 0,
    reason         TEXT,
    last_error     TEXT,
    fallback_from  TEXT    CHECK (fallback_from IN ('sms', 'email')),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    delivery       TEXT,
    delivery_rank  INTEGER NOT NULL DEFAULT 0,
    delivery_error TEXT,
    delivery_at    INTEGER
) WITHOUT ROWID;

INSERT INTO messages (event_id, class, user_id, channel, status, attempts, provider_id, cost_usd,
    segments, reason, last_error, fallback_from, created_at, updated_at, finished_at, delivery,
    delivery_rank, delivery_error, delivery_at)
SELECT event_id, class, user_id, channel, status, attempts, provider_id, cost_usd,
    segments, reason, last_error, fallback_from, created_at, updated_at, finished_at, delivery,
    delivery_rank, delivery_error, delivery_at
FROM messages_old;

CREATE INDEX messages_finished ON messages (status, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX messages_user ON messages (user_id);

CREATE TABLE attempts (
    event_id    TEXT    NOT NULL REFERENCES messages (event_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    channel     TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT    CHECK (outcome = 'sent' OR outcome = 'retry' OR outcome = 'fallback'
                               OR outcome = 'dead_letter' OR outcome = 'suppressed'
                               OR outcome = 'outcome_unknown'),
    error       TEXT,
    provider_id TEXT,
    cost_usd    REAL,
    owner       TEXT,
    lease_until INTEGER,
    PRIMARY KEY (event_id, seq)
) WITHOUT ROWID;

INSERT INTO attempts (event_id, seq, attempt, channel, started_at, finished_at, outcome, error,
    provider_id, cost_usd, owner, lease_until)
SELECT event_id, seq, attempt, channel, started_at, finished_at, outcome, error,
    provider_id, cost_usd, owner, lease_until
FROM attempts_old;

DROP TABLE attempts_old;
DROP TABLE messages_old;
