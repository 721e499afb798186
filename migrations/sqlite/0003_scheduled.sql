-- Events held until a time (send_at, a class's local delivery time, SMS
-- quiet hours): the scheduler publishes each back to its class queue when
-- it is due. docs/specs/store.md explains every column.

CREATE TABLE scheduled (
    event_id      TEXT    NOT NULL,
    class         TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    due_at        INTEGER NOT NULL,
    reason        TEXT    NOT NULL CHECK (reason IN ('send_at', 'local_time', 'quiet_hours', 'receipt_fallback')),
    channel       TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    attempt       INTEGER NOT NULL,
    fallback_from TEXT    CHECK (fallback_from IN ('sms', 'email')),
    priority      INTEGER NOT NULL,
    published_at  INTEGER,
    body          BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (event_id, class)
) WITHOUT ROWID;

CREATE INDEX scheduled_due ON scheduled (due_at);
-- Erasure by user.
CREATE INDEX scheduled_user ON scheduled (user_id);
