-- The attempts' foreign key to messages goes (PostgreSQL only). Checking
-- it ran a trigger per inserted attempt that locked its message row
-- (FOR KEY SHARE): ~19 % of the server's time in a commit, ~9 % of
-- throughput (docs/benchmarks.md, 2026-12-06). A claim writes an event's
-- message before its attempt in the same transaction, so the key held by
-- construction; retention, the only delete of messages, now deletes their
-- attempts in the same statement (`purge_sent`/`purge_failed` in
-- src/store/sql.rs). SQLite keeps its key: there the check is one
-- primary-key probe.
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_event_id_fkey;
