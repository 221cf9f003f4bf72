-- deploy 2, after the backfill: new rows are checked at once, old rows not yet (no scan)
ALTER TABLE students
    ADD CONSTRAINT students_homeroom_not_null CHECK (homeroom IS NOT NULL) NOT VALID;
