-- Delivery receipts: what the provider said happened after it accepted a
-- message (Twilio status callbacks, Resend events), and the event bodies
-- kept to fall back to email if an accepted SMS comes back undelivered.
-- docs/specs/store.md explains every column.

ALTER TABLE messages ADD COLUMN delivery TEXT;
ALTER TABLE messages ADD COLUMN delivery_rank INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN delivery_error TEXT;
ALTER TABLE messages ADD COLUMN delivery_at INTEGER;

-- Receipts find their message by the provider's id. A table of its own,
-- written only while receipts can come (HERALD_PUBLIC_URL set): an index
-- on messages.provider_id would cost every send (measured: 13 percent of
-- throughput) for a lookup most deployments never make.
CREATE TABLE receipt_keys (
    provider_id TEXT    PRIMARY KEY NOT NULL,
    event_id    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX receipt_keys_created ON receipt_keys (created_at);

-- An accepted SMS of a class with an email fallback, until its receipt is
-- final (or retention drops it).
CREATE TABLE fallback_pending (
    event_id     TEXT    PRIMARY KEY NOT NULL,
    class        TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    published_at INTEGER,
    body         BLOB    NOT NULL,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX fallback_pending_created ON fallback_pending (created_at);
CREATE INDEX fallback_pending_user ON fallback_pending (user_id);
