-- alone in its file: CONCURRENTLY cannot run inside a transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS attendance_student_day_idx ON attendance (student_id, day);
