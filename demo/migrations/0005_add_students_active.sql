-- Expand: a column with a constant default is metadata-only on PostgreSQL 11+ (no rewrite),
-- and blue's INSERTs, which do not set it, get the default.
ALTER TABLE students ADD COLUMN IF NOT EXISTS active boolean NOT NULL DEFAULT true;
