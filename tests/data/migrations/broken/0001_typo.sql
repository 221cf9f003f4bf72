ALTER TABLE students ADD COLUMN IF NOT EXISTS nickname text;

CREATE TABL report_cards (id bigint);
