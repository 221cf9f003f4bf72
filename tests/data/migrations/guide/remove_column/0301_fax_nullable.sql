-- deploy 1: this version no longer reads or writes fax_number
ALTER TABLE guardians ALTER COLUMN fax_number DROP NOT NULL;
