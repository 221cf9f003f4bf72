CREATE INDEX attendance_student_day_idx ON attendance (student_id, day);
