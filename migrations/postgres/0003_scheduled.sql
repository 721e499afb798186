-- PostgreSQL twin of migrations/sqlite/0003_scheduled.sql.
-- Events held until a time (send_at, a class's local delivery time, SMS
-- quiet hours): the scheduler publishes each back to its class queue when
-- it is due. docs/specs/store.md explains every column.

CREATE TABLE scheduled (
    event_id      TEXT    NOT NULL,
    class         TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    due_at        BIGINT  NOT NULL,
    reason        TEXT    NOT NULL CHECK (reason IN ('send_at', 'local_time', 'quiet_hours', 'receipt_fallback')),
    channel       TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    attempt       BIGINT  NOT NULL,
    fallback_from TEXT    CHECK (fallback_from IN ('sms', 'email')),
    priority      BIGINT  NOT NULL,
    published_at  BIGINT,
    body          BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (event_id, class)
);

CREATE INDEX scheduled_due ON scheduled (due_at);
-- Erasure by user.
CREATE INDEX scheduled_user ON scheduled (user_id);
