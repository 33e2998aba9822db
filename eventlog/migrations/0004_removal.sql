-- Device removal: the roster keeps removed members with who removed them and their cutoff
-- (their last valid seq). The roster is a fold over the membership events, re-run whenever
-- one arrives, so those events are indexed apart from the (many) data events.
ALTER TABLE members ADD COLUMN removed_by BLOB;
ALTER TABLE members ADD COLUMN removed_event BLOB;
ALTER TABLE members ADD COLUMN removed_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN cutoff INTEGER;
CREATE INDEX events_roster ON events (kind, rowid) WHERE kind != 2;
