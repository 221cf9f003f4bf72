-- Build the index without blocking blue's writes. CONCURRENTLY cannot run inside a
-- transaction, so this file holds nothing else.
CREATE INDEX CONCURRENTLY IF NOT EXISTS enrollments_student_id_idx ON enrollments (student_id);
