-- deploy 4 (contract, --contract)
ALTER TABLE grades DROP COLUMN IF EXISTS points;
