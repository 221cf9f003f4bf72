-- deploy 1 (expand): nullable; this version writes homeroom on every insert and update
ALTER TABLE students ADD COLUMN IF NOT EXISTS homeroom text;
