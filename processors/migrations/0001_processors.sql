-- Derived state of the processors: rebuildable from the events table at any time
-- (processors/derived.py folds job.*, replica.caps and file records into these).

-- What each replica offers: its replica.caps event with the highest lamport.
CREATE TABLE proc_caps (
    author BLOB PRIMARY KEY,
    lamport INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    caps TEXT NOT NULL                  -- JSON array of capability names, sorted
) WITHOUT ROWID;

-- Every job.claim / job.result / job.fail, reduced to what the claim rule reads.
CREATE TABLE proc_records (
    rowid INTEGER PRIMARY KEY,          -- = events.rowid
    type TEXT NOT NULL,
    processor TEXT NOT NULL,
    version TEXT NOT NULL,
    doc BLOB NOT NULL,
    input BLOB NOT NULL,
    author BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    lease_until_ms INTEGER,
    reason TEXT,
    permanent INTEGER
);
CREATE INDEX proc_records_by_job ON proc_records (processor, version, doc, input);

-- The result of each job that counts: the lowest (lamport, author) result of its key.
CREATE TABLE proc_results (
    processor TEXT NOT NULL,
    version TEXT NOT NULL,
    doc BLOB NOT NULL,
    input BLOB NOT NULL,
    author BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    rowid INTEGER NOT NULL,             -- the result event's local rowid
    output BLOB NOT NULL,               -- msgpack map: the processor's output fields
    PRIMARY KEY (processor, version, doc, input)
) WITHOUT ROWID;
CREATE INDEX proc_results_by_doc ON proc_results (doc, processor, lamport);

-- Which embedding result of each document the search index holds (the newest by lamport).
CREATE TABLE proc_indexed (
    doc BLOB PRIMARY KEY,
    version TEXT NOT NULL,
    input BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    author BLOB NOT NULL
) WITHOUT ROWID;

-- The text each document offers to text processors, by hash (recomputed when it changes).
CREATE TABLE proc_sources (
    doc BLOB PRIMARY KEY,
    mark TEXT NOT NULL,                 -- what it was computed from (events count / result)
    title TEXT NOT NULL,
    origin TEXT NOT NULL,               -- 'body' or 'extract'
    text_hash BLOB NOT NULL,
    chars INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE proc_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO proc_state VALUES ('folded_upto', 0);

-- Which embedder (and dimension) the vector index holds; other embedders' chunks are
-- indexed for keywords only.
CREATE TABLE proc_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
