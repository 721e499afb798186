-- The delivery store: one row per event, one row per provider attempt.
-- Timestamps are INTEGER milliseconds since the Unix epoch (UTC) so that the
-- same values work in SQLite and PostgreSQL. docs/specs/store.md explains
-- every column and the status machine.

CREATE TABLE messages (
    event_id      TEXT    PRIMARY KEY NOT NULL,
    class         TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    channel       TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    status        TEXT    NOT NULL CHECK (status IN ('sending', 'retrying', 'sent', 'fallback',
                                                     'dead_lettered', 'suppressed', 'outcome_unknown')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    provider_id   TEXT,
    cost_usd      REAL    NOT NULL DEFAULT 0,
    segments      INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    last_error    TEXT,
    fallback_from TEXT    CHECK (fallback_from IN ('sms', 'email')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER
) WITHOUT ROWID;

-- Retention: `status = ? AND finished_at < ?`.
CREATE INDEX messages_status_finished ON messages (status, finished_at);
-- Per-user daily cost: `user_id = ? AND finished_at BETWEEN ...`.
CREATE INDEX messages_user_finished ON messages (user_id, finished_at);

-- One row per provider attempt. `seq` numbers an event's attempts 1, 2, ...
-- in claim order; the latest is `messages.attempts`, and only the latest can
-- be open (a claim closes any open one), so a record finds its attempt by
-- primary key.
CREATE TABLE attempts (
    event_id    TEXT    NOT NULL REFERENCES messages (event_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    channel     TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT    CHECK (outcome IN ('sent', 'retry', 'fallback', 'dead_letter',
                                           'suppressed', 'outcome_unknown')),
    error       TEXT,
    provider_id TEXT,
    cost_usd    REAL,
    PRIMARY KEY (event_id, seq)
) WITHOUT ROWID;
