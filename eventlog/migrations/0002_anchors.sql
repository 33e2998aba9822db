-- An anchor is an event whose own signature was checked (every local event, every event
-- accepted alone, the last event of each verified segment). The events between anchors are
-- authenticated by the hash chain; batches served to peers end at anchors so that every
-- receiver can verify them the same way.
ALTER TABLE events ADD COLUMN anchor INTEGER NOT NULL DEFAULT 1;
ALTER TABLE pending ADD COLUMN anchor INTEGER NOT NULL DEFAULT 1;
