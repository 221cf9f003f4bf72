-- its own file: the scan takes a lock that lets blue read and write
ALTER TABLE grades VALIDATE CONSTRAINT grades_course_fk;
