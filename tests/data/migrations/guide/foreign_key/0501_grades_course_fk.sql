-- new and updated rows are checked at once; existing rows are not scanned yet
ALTER TABLE grades
    ADD CONSTRAINT grades_course_fk FOREIGN KEY (course_id) REFERENCES courses (id) NOT VALID;
