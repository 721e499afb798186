-- An event's latest attempt stays on its message's row once it finishes;
-- `attempts` holds the attempts a later claim took over from, each written
-- once, when that claim opens the next one
-- (docs/adr/0006-latest-attempt-on-the-message.md). A record finishes the
-- attempt in the update that moves the message: a message sent at its first
-- attempt costs two row writes (the claim's insert, the record's update),
-- not three. The latest attempt's `seq` is `messages.attempts`.
-- `latest_attempt` NULL: the message has none on its row (its attempts, if
-- any, are all in `attempts`); `latest_finished_at` NULL: it is open.
ALTER TABLE messages RENAME COLUMN open_attempt TO latest_attempt;
ALTER TABLE messages RENAME COLUMN open_channel TO latest_channel;
ALTER TABLE messages RENAME COLUMN open_started_at TO latest_started_at;
ALTER TABLE messages ADD COLUMN latest_finished_at BIGINT;
ALTER TABLE messages ADD COLUMN latest_outcome TEXT CHECK (latest_outcome IN
    ('sent', 'retry', 'fallback', 'dead_letter', 'suppressed', 'outcome_unknown'));
ALTER TABLE messages ADD COLUMN latest_error TEXT;
ALTER TABLE messages ADD COLUMN latest_provider_id TEXT;
ALTER TABLE messages ADD COLUMN latest_cost_usd DOUBLE PRECISION;
-- Attempts finished before this migration stay in `attempts`; an attempt
-- open now is open on its message, as it was.
