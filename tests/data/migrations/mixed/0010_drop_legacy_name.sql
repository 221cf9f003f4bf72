-- contract: blue may still read this column
ALTER TABLE students DROP COLUMN IF EXISTS legacy_name;
