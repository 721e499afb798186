-- Fewer index writes per message on the hot path (docs/benchmarks.md).
--
-- The finished-message index now holds finished messages only: a claim
-- (status 'sending', no finished_at) adds no entry to it, and the record
-- that finishes the message adds one instead of moving one. Retention, the
-- cost reports and the recent failures all ask for finished messages.
--
-- The per-user index no longer carries finished_at, which every record
-- changes: it is written once, at the claim. A user's cost is read from
-- that user's rows.
DROP INDEX messages_status_finished;
CREATE INDEX messages_finished ON messages (status, finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX messages_user_finished;
CREATE INDEX messages_user ON messages (user_id);
