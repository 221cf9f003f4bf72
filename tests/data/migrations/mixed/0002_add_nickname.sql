-- safe, but not idempotent: a warning only
ALTER TABLE students ADD COLUMN nickname text;
