-- Files: every version a file.put / file.delete event made, the chunks the vault holds, and
-- each file's current state. Derived: rebuildable from the events table like the rest.

CREATE TABLE file_versions (
    rowid INTEGER PRIMARY KEY,          -- = events.rowid of the file.put / file.delete
    doc BLOB NOT NULL,
    event_id BLOB NOT NULL,
    author BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ms INTEGER NOT NULL,
    mime TEXT NOT NULL,
    hash BLOB,                          -- keyed content hash; NULL for a deletion
    deleted INTEGER NOT NULL,
    text INTEGER NOT NULL,              -- the document body carries the content (merges)
    chunks BLOB NOT NULL,               -- concatenated 32-byte chunk ids, in order
    superseded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX file_versions_by_doc ON file_versions (doc, rowid);
CREATE UNIQUE INDEX file_versions_by_id ON file_versions (event_id);

-- "version X was based on Y": a version is a head while nothing names it as its base.
-- Kept apart from file_versions because the base can arrive after the version naming it.
CREATE TABLE file_bases (
    base BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (base, version)
) WITHOUT ROWID;

-- Where each chunk's bytes are: inside which event, at which place of its payload.
CREATE TABLE chunks (
    id BLOB PRIMARY KEY,
    rowid INTEGER NOT NULL,
    slot INTEGER NOT NULL,              -- -1: a blob.chunk event; n: the n-th inline chunk
    size INTEGER NOT NULL
) WITHOUT ROWID;

-- The current state of each file document: the winning head, and whether heads disagree.
CREATE TABLE files (
    doc BLOB PRIMARY KEY,
    version INTEGER NOT NULL,           -- rowid of the winning head in file_versions
    path TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    heads INTEGER NOT NULL,             -- distinct contents among the heads (>1: a conflict)
    versions INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX files_by_path ON files (path);
