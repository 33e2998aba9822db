-- file.batch: one event may carry many files' records (design note 32). A version is now
-- numbered rowid << 12 | slot (the record's place in its event; 0 for file.put and
-- file.delete), and is named in bases by a version id (its event's id for a lone record,
-- so every existing version keeps its id). Chunk locations name the record the same way.
-- The shifts go through negative numbers so that no row meets another's new key midway.

UPDATE file_versions SET rowid = -rowid;
UPDATE file_versions SET rowid = (-rowid) << 12;
ALTER TABLE file_versions RENAME COLUMN event_id TO version_id;

UPDATE file_bases SET version = -version;
UPDATE file_bases SET version = (-version) << 12;

UPDATE files SET version = version << 12;

ALTER TABLE chunks RENAME COLUMN rowid TO place;
UPDATE chunks SET place = place << 12;
