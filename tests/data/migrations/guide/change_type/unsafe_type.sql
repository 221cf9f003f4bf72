ALTER TABLE grades ALTER COLUMN points TYPE numeric(5, 2);
