-- deploy 4 (contract, --contract): no running version uses given_name any more
ALTER TABLE students DROP COLUMN IF EXISTS given_name;
