-- Derived state of a full replica: rebuildable from the events table at any time.
-- It may hold plaintext (titles, bodies): the home is trusted and these never leave it.

-- One row per event the engine has applied: its payload type and document, if any.
CREATE TABLE event_index (
    rowid INTEGER PRIMARY KEY,          -- = events.rowid
    type TEXT,                          -- payload 't'; NULL when the body could not be opened
    doc BLOB,
    size INTEGER NOT NULL,              -- bytes on the wire
    note TEXT                           -- why it was not applied, if it was not
);
CREATE INDEX event_index_by_doc ON event_index (doc, rowid);
CREATE INDEX event_index_by_type ON event_index (type, rowid);

-- The listing of documents.
CREATE TABLE docs (
    doc BLOB PRIMARY KEY,
    title TEXT NOT NULL,
    tags TEXT NOT NULL,                 -- JSON array, sorted
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,              -- body length in UTF-8 bytes
    events INTEGER NOT NULL,
    since_snapshot INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Each document's latest snapshot, apart from the listing so listing never reads blobs.
CREATE TABLE snapshots (
    doc BLOB PRIMARY KEY,
    state BLOB NOT NULL,                -- full Yjs state as of upto_rowid
    upto_rowid INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE replica_names (
    author BLOB PRIMARY KEY,
    name TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE engine_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO engine_state VALUES ('applied_upto', 0);
