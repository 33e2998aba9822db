-- The log: what every replica and the relay store. Only ciphertext and public headers.
CREATE TABLE vault (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- rowid is the local arrival order; (author, seq) is the event's place in its author's log.
CREATE TABLE events (
    rowid INTEGER PRIMARY KEY,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    raw BLOB NOT NULL,
    UNIQUE (author, seq)
);
CREATE UNIQUE INDEX events_by_id ON events (id);

-- The version vector, kept in the same transaction as every insert.
CREATE TABLE heads (
    author BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    lamport INTEGER NOT NULL
) WITHOUT ROWID;

-- Events that verified but cannot be placed yet: a missing predecessor or an unknown author.
CREATE TABLE pending (
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    raw BLOB NOT NULL,
    reason TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (author, seq)
) WITHOUT ROWID;

-- Evidence: two signed events by one author at one seq. The author is frozen.
CREATE TABLE equivocations (
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    raw BLOB NOT NULL,
    detected_ms INTEGER NOT NULL,
    PRIMARY KEY (author, seq, id)
) WITHOUT ROWID;

-- The roster folded from public membership events (derived, rebuildable from events).
CREATE TABLE members (
    author BLOB PRIMARY KEY,
    kx BLOB NOT NULL,
    role TEXT NOT NULL,
    added_by BLOB NOT NULL,
    added_event BLOB NOT NULL,
    added_ms INTEGER NOT NULL
) WITHOUT ROWID;
