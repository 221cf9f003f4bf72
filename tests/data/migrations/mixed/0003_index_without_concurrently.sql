-- blocks blue's writes while the index builds
CREATE INDEX IF NOT EXISTS students_nickname_idx ON students (nickname);
