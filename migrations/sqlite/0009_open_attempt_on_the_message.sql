-- An event's open attempt (a claim whose outcome is not recorded yet) lives
-- on its message's row; `attempts` holds finished attempts only, each
-- written once, when it finishes (docs/adr/0005-open-attempt-on-the-message.md).
-- A claim writes the open attempt in the message's insert or update it
-- already makes, and a record writes the finished attempt and clears the
-- open one in the update that moves the message: three row writes a
-- message instead of four. The open attempt's `seq` is `messages.attempts`.
-- `open_attempt` NULL: none is open (the other four columns then mean
-- nothing). The CHECK is a comparison, not an `IN` (migration 0008).
ALTER TABLE messages ADD COLUMN open_attempt INTEGER;
ALTER TABLE messages ADD COLUMN open_channel TEXT CHECK (open_channel = 'sms' OR open_channel = 'email');
ALTER TABLE messages ADD COLUMN open_started_at INTEGER;
ALTER TABLE messages ADD COLUMN owner TEXT;
ALTER TABLE messages ADD COLUMN lease_until INTEGER;

-- Each event's open attempt moves onto its message. There is at most one,
-- the latest (docs/specs/store.md); one that is not the latest would be a
-- call nobody can finish any more, and is closed as `outcome_unknown`.
UPDATE messages SET (open_attempt, open_channel, open_started_at, owner, lease_until) = (
    SELECT a.attempt, a.channel, a.started_at, a.owner, a.lease_until FROM attempts a
    WHERE a.event_id = messages.event_id AND a.seq = messages.attempts AND a.finished_at IS NULL)
WHERE EXISTS (SELECT 1 FROM attempts a
    WHERE a.event_id = messages.event_id AND a.seq = messages.attempts AND a.finished_at IS NULL);
UPDATE attempts SET finished_at = started_at, outcome = 'outcome_unknown',
    error = 'no outcome recorded before the store moved open attempts (migration 0009)'
WHERE finished_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.event_id = attempts.event_id AND m.attempts = attempts.seq);
DELETE FROM attempts WHERE finished_at IS NULL;
