-- Big events' bytes live in the pack file beside the database (eventlog/pack.py): such a
-- row keeps an empty `raw` and says where its bytes are. Rows from before keep theirs.
ALTER TABLE events ADD COLUMN pack_at INTEGER;   -- offset in the pack; NULL: bytes in `raw`
ALTER TABLE events ADD COLUMN pack_len INTEGER;
-- Where the next packed bytes go: moves in the transaction that stores them.
CREATE TABLE pack_end (at INTEGER NOT NULL);
INSERT INTO pack_end VALUES (0);
