-- deploy 3: this version reads and writes first_name only, so given_name must accept NULL
ALTER TABLE students ALTER COLUMN given_name DROP NOT NULL;
