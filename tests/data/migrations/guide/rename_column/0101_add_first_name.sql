-- deploy 1 (expand): the new column; this version writes both, reads given_name
ALTER TABLE students ADD COLUMN IF NOT EXISTS first_name text;
