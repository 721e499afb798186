-- A due event is leased to one scheduler while it publishes it, so herald
-- instances sharing a store do not publish the same held event at once
-- (docs/specs/store.md, "Held events"). NULL: not leased. Holding an event
-- anew clears its lease.
ALTER TABLE scheduled ADD COLUMN leased_until INTEGER;
