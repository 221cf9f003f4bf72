BEGIN;
CREATE INDEX CONCURRENTLY IF NOT EXISTS attendance_student_day_idx ON attendance (student_id, day);
COMMIT;
