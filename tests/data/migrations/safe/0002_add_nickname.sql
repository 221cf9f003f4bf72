-- expand: a nullable column blue does not know about
ALTER TABLE students ADD COLUMN IF NOT EXISTS nickname text;
