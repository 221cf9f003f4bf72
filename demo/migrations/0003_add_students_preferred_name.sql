-- Expand: a nullable column. Blue does not know it and keeps working; green starts using it.
ALTER TABLE students ADD COLUMN IF NOT EXISTS preferred_name text;
