ALTER TABLE students ADD COLUMN homeroom text NOT NULL;
