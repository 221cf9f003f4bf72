ALTER TABLE students RENAME COLUMN given_name TO first_name;
