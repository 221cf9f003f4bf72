-- deploy 2 (contract, --contract): the last version that used fax_number is retired
ALTER TABLE guardians DROP COLUMN IF EXISTS fax_number;
