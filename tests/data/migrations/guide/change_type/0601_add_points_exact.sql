-- deploy 1 (expand): the new column; this version writes both, reads points
ALTER TABLE grades ADD COLUMN IF NOT EXISTS points_exact numeric(5, 2);
