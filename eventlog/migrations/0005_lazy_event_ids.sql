-- Event ids are hashes, so a B-tree over them takes each insert to a random page; under WAL
-- every commit rewrites all the pages it dirtied. On a receiving replica that index cost
-- ~20 us of the ~80 us an event took and quadrupled the bytes written. Lookups by id are rare
-- (CLI prefixes, the roster's "added by" event), so the index is built on demand instead: the
-- lookup that needs it first files the events after `upto`, sorted by id (Store.index_ids).
-- Events are never deleted, so a rowid watermark says exactly what is filed.
DROP INDEX events_by_id;
CREATE TABLE event_ids (
    id BLOB PRIMARY KEY,
    event INTEGER NOT NULL  -- rowid in events
) WITHOUT ROWID;
CREATE TABLE event_ids_filed (upto INTEGER NOT NULL);
INSERT INTO event_ids SELECT id, rowid FROM events ORDER BY id;
INSERT INTO event_ids_filed SELECT coalesce(max(rowid), 0) FROM events;
