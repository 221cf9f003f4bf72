-- deploy 2, next file (its own transaction): VALIDATE scans without blocking reads or writes;
-- SET NOT NULL then trusts the validated check instead of scanning under its lock
ALTER TABLE students VALIDATE CONSTRAINT students_homeroom_not_null;
ALTER TABLE students ALTER COLUMN homeroom SET NOT NULL;
ALTER TABLE students DROP CONSTRAINT IF EXISTS students_homeroom_not_null;
