-- Delegate members (invites, the recovery key) may expire; 0 = never.
ALTER TABLE members ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;
