-- What this replica last saw (or wrote) in each folder it watches or mirrors: local
-- bookkeeping, like Syncthing's index of its own folder. Not derived from the log; losing it
-- costs one full rescan (every file re-read and compared by content), never data.
CREATE TABLE folder_files (
    root TEXT NOT NULL,                 -- absolute folder path
    path TEXT NOT NULL,                 -- vault path (relative, '/'-separated)
    doc BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash BLOB NOT NULL,                 -- keyed content hash of what is on disk
    base BLOB,                          -- text files: document state the file matches
    PRIMARY KEY (root, path)
) WITHOUT ROWID;
CREATE INDEX folder_files_by_doc ON folder_files (root, doc);
