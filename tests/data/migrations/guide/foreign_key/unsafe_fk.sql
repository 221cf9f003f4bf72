ALTER TABLE grades
    ADD CONSTRAINT grades_course_fk FOREIGN KEY (course_id) REFERENCES courses (id);
