-- Who opened an attempt, and until when it may still be running, so that
-- a claim by another herald process sharing the store leaves a call in
-- flight alone instead of sending again (docs/guarantees.md). NULL (an
-- attempt from before this migration): treated as unfinished, as before.
ALTER TABLE attempts ADD COLUMN owner TEXT;
ALTER TABLE attempts ADD COLUMN lease_until INTEGER;
